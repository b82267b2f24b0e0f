"""genl.GenlSocket, the one generic-netlink transport (IPVS batches, the sync
daemon, the timeouts and FOU all go through it), against a scripted socket:
answers are matched to their request by sequence number, a dump ends at
NLMSG_DONE, an error ack raises NetlinkError naming the request, and a family
the kernel does not have is None, asked by name or found in the list."""
from __future__ import annotations

import errno
import os

import pytest

from lvs_agent import genl as G


class Script:
    """A netlink socket that answers each request with ``answer(seq, header)``."""

    def __init__(self, answer):
        self.answer, self.queue, self.sent = answer, [], []

    def bind(self, addr): pass
    def getsockname(self): return (99, 0)
    def settimeout(self, t): pass
    def close(self): pass

    def sendto(self, data, addr):
        ln, typ, flags, seq, _, cmd, version, _ = G.NLH_GENL.unpack_from(data)
        self.sent.append((typ, flags, cmd, version, bytes(data[20:ln])))
        self.queue.extend(self.answer(seq, typ, cmd))
        return len(data)

    def recv_into(self, buf):
        msg = self.queue.pop(0)
        buf[:len(msg)] = msg
        return len(msg)


def msg(typ: int, seq: int, body: bytes, cmd: int = 1) -> bytes:
    return G.NLH_GENL.pack(20 + len(body), typ, 0, seq, 0, cmd, 1, 0) + body


def ack(seq: int, code: int = 0) -> bytes:
    body = G.I32.pack(-code) + b"\0" * 16
    return G.NLH.pack(16 + len(body), G.NLMSG_ERROR, 0, seq, 0) + body


def done(seq: int) -> bytes:
    return G.NLH.pack(20, G.NLMSG_DONE, 0, seq, 0) + b"\0" * 4


def family(name: bytes, fid: int) -> bytes:
    return G.nla(G.CTRL_ATTR_FAMILY_NAME, name + b"\0") + G.nla(G.CTRL_ATTR_FAMILY_ID, G.U16.pack(fid))


def sock(monkeypatch, answer) -> tuple[G.GenlSocket, Script]:
    s = Script(answer)
    monkeypatch.setattr(G, "netlink_socket", lambda netns, proto: s)
    return G.GenlSocket(), s


def test_answers_are_matched_to_their_request_and_a_dump_ends_at_done(monkeypatch):
    def answer(seq, typ, cmd):  # a stray answer to an older request first
        return [msg(0x30, seq - 1, G.nla(1, b"old")), msg(0x30, seq, G.nla(1, b"a")) + msg(0x30, seq, G.nla(1, b"b")),
                done(seq)]
    c, s = sock(monkeypatch, answer)
    got = [bytes(buf[a:b]) for start, end, buf in c.request(0x30, 7, b"", G.NLM_F_DUMP)
           for a, b in G.parse_attrs(buf, start, end).values()]
    assert got == [b"a", b"b"]
    assert s.sent[0][:3] == (0x30, G.NLM_F_REQUEST | G.NLM_F_DUMP, 7)


@pytest.mark.parametrize("code", [errno.EINVAL, errno.EEXIST, errno.ESRCH])
def test_an_error_ack_raises_naming_the_request(monkeypatch, code):
    c, _ = sock(monkeypatch, lambda seq, typ, cmd: [ack(seq, code)])
    with pytest.raises(G.NetlinkError) as e:
        list(c.request(0x30, 9, b"", G.NLM_F_ACK, what="IPVS sync daemon, command 9"))
    assert e.value.errno == code
    assert str(e.value).endswith(f"{errno.errorcode[code]}: {os.strerror(code)} "
                                 "(IPVS sync daemon, command 9)")


def test_a_zero_ack_ends_the_request_quietly(monkeypatch):
    c, _ = sock(monkeypatch, lambda seq, typ, cmd: [ack(seq)])
    assert list(c.request(0x30, 5, G.nla(1, b"x"))) == []


@pytest.mark.parametrize("load, answer, want", [
    (True, lambda seq: [msg(G.GENL_ID_CTRL, seq, G.nla(G.CTRL_ATTR_FAMILY_ID, G.U16.pack(0x25))), ack(seq)], 0x25),
    (True, lambda seq: [ack(seq, errno.ENOENT)], None),  # no such family (and its module would not load)
    (False, lambda seq: [msg(G.GENL_ID_CTRL, seq, family(b"nlctrl", 0x10)), msg(G.GENL_ID_CTRL, seq, family(b"fou", 0x22)),
                         done(seq)], 0x22),
    (False, lambda seq: [msg(G.GENL_ID_CTRL, seq, family(b"nlctrl", 0x10)), done(seq)], None),
])
def test_family_id(monkeypatch, load, answer, want):
    c, s = sock(monkeypatch, lambda seq, typ, cmd: answer(seq))
    assert c.family_id(b"fou", load) == want
    typ, flags, cmd, _, body = s.sent[0]
    assert (typ, cmd) == (G.GENL_ID_CTRL, G.CTRL_CMD_GETFAMILY)
    assert (flags & G.NLM_F_DUMP == G.NLM_F_DUMP) is (not load)  # a dump never loads a module
    assert (b"fou\0" in body) is load


def test_another_error_while_looking_up_a_family_is_raised(monkeypatch):
    c, _ = sock(monkeypatch, lambda seq, typ, cmd: [ack(seq, errno.EPERM)])
    with pytest.raises(G.NetlinkError) as e:
        c.family_id(b"IPVS")
    assert e.value.errno == errno.EPERM and "generic netlink family IPVS" in str(e.value)
