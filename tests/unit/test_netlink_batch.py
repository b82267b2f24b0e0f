"""The batch client's mapping of netlink answers to operations.

A fake socket plays the kernel's side (netlink_rcv_skb): it answers the
IPVS family lookup, carries out every IPVS message sent, in order, within the
send, and answers each one that fails (with the error code the case gives),
or asks for an ack; it can fill its receive buffer (the answers that do not
fit are dropped and the next read says ENOBUFS, then the queued answers come,
as the kernel does) or fail the send. The messages are the module's own
encoding, the answers are built with its own header layout.
"""
from __future__ import annotations

import errno
import socket

import pytest

from lvs_agent import genl as G
from lvs_agent import netlink_batch as NB
from lvs_agent import ops as O
from lvs_agent.plan import settle
from lvs_agent.state import Ownership, outcome_unknown
from lvs_model.nodespec import Dest, Service

FAMILY = 0x21


class FakeKernel:
    """One netlink socket as the kernel treats it (see the module doc).

    ``codes``: op index -> errno the kernel answers it with (0: done).
    ``fits``: how many answers fit in the receive buffer (None: all).
    ``send_error``: the send fails with it."""

    def __init__(self, codes: dict[int, int] | None = None, fits: int | None = None,
                 send_error: int | None = None):
        self.codes, self.fits, self.send_error = codes or {}, fits, send_error
        self.reads = 0
        self.queue: list[bytes] = []
        self.overrun = False
        self.blocking = True
        self.done: list[int] = []  # indices of the ops the kernel carried out
        self._ipvs_sent = 0

    # -- socket API used by IPVSConnection ------------------------------------
    def bind(self, addr) -> None:
        pass

    def getsockname(self):
        return (4242, 0)

    def setsockopt(self, *a) -> None:
        pass

    def getsockopt(self, level, opt):
        return 8 * 1024 * 1024

    def settimeout(self, t) -> None:
        self.blocking = True

    def setblocking(self, flag: bool) -> None:
        self.blocking = flag

    def close(self) -> None:
        pass

    def sendto(self, data: bytes, addr) -> int:
        off = 0
        msgs = []
        while off < len(data):
            ln, typ, flags, seq, pid = G.NLH.unpack_from(data, off)
            msgs.append((typ, data[off:off + 16], seq, flags))
            off += G.pad(ln)
        if msgs[0][0] == G.GENL_ID_CTRL:  # the family lookup
            _, hdr, seq, _ = msgs[0]
            body = G.nla(G.CTRL_ATTR_FAMILY_ID, G.U16.pack(FAMILY))
            self.queue.append(G.NLH_GENL.pack(20 + len(body), G.GENL_ID_CTRL, 0, seq, 4242,
                                               1, 1, 0) + body)
            self.queue.append(self._ack(hdr, seq, 0))
            return len(data)
        if self.send_error is not None:
            raise OSError(self.send_error, "send")
        for typ, hdr, seq, flags in msgs:
            assert typ == FAMILY
            idx = self._ipvs_sent
            self._ipvs_sent += 1
            code = self.codes.get(idx, 0)
            if not code:
                self.done.append(idx)
            if not (flags & G.NLM_F_ACK or code):
                continue
            if self.fits is not None and len(self.queue) >= self.fits:
                self.overrun = True  # netlink_overrun: the ack is dropped
                continue
            self.queue.append(self._ack(hdr, seq, code))
        return len(data)

    def recv_into(self, buf) -> int:
        self.reads += 1
        if self.overrun:
            self.overrun = False  # reported once (sock_error clears it)
            raise OSError(errno.ENOBUFS, "No buffer space available")
        if not self.queue:
            if self.blocking:
                raise socket.timeout("timed out")
            raise BlockingIOError(errno.EAGAIN, "again")
        msg = self.queue.pop(0)
        buf[:len(msg)] = msg
        return len(msg)

    @staticmethod
    def _ack(request_header: bytes, seq: int, code: int) -> bytes:
        body = G.I32.pack(-code) + request_header  # NETLINK_CAP_ACK: the header only
        return G.NLH.pack(16 + len(body), G.NLMSG_ERROR, 0x100, seq, 4242) + body


def connection(kernel: FakeKernel, monkeypatch) -> NB.IPVSConnection:
    monkeypatch.setattr(G, "netlink_socket", lambda netns, proto: kernel)
    return NB.IPVSConnection()


def services(n: int) -> list[O.Op]:
    return [O.AddService(Service(address=f"10.0.{i // 250}.{i % 250 + 1}", port=80, scheduler="rr"))
            for i in range(n)]


def codes(results: list[str | None]) -> list[str]:
    """Each result as "" (done), its errno name (refused) or "unknown"."""
    return ["" if r is None else "unknown" if outcome_unknown(r) else r.split(":")[0] for r in results]


CASES = [
    # (name, kernel, ops, expected per op)
    ("all done", dict(), 4, [""] * 4),
    ("the kernel refuses two", dict(codes={1: errno.EEXIST, 3: errno.EINVAL}), 4,
     ["", "EEXIST", "", "EINVAL"]),
    # The answers to ops 0 and 2 fit, those to 4 and 5 were dropped: which of the
    # ops not answered failed is not known, so none of them is a success, and
    # none is refused with ENOBUFS either.
    ("ENOBUFS after two answers", dict(codes={0: errno.EEXIST, 2: errno.EEXIST, 4: errno.EINVAL,
                                              5: errno.EEXIST}, fits=2), 8,
     ["EEXIST", "unknown", "EEXIST"] + ["unknown"] * 5),
    ("the send fails", dict(send_error=errno.ENOBUFS), 3, ["unknown"] * 3),
]


@pytest.mark.parametrize("kernel,n,want", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_failure_maps_to_its_op_and_a_lost_answer_is_an_unknown_outcome(monkeypatch, kernel, n, want):
    """Before: the ops of a chunk whose answers overran the buffer were all
    marked ENOBUFS, and a failed send by the socket's errno: settle read each
    as the kernel refusing the op."""
    k = FakeKernel(**kernel)
    c = connection(k, monkeypatch)
    assert c.family == FAMILY
    assert codes(c.execute(services(n))) == want


def test_a_service_created_without_an_answer_read_stays_ours(monkeypatch):
    """The kernel refused services 0 and 1 and created the rest, but only the
    first refusal fit in the buffer: settle keeps the claims of all seven not
    answered (the next pass reads them back: those in the kernel are ours),
    and drops the one refusal it read."""
    k = FakeKernel(codes={0: errno.EEXIST, 1: errno.EEXIST}, fits=1)
    c = connection(k, monkeypatch)
    ops = services(8)
    results = list(zip(ops, c.execute(ops)))
    claimed = Ownership(services={op.key for op in ops}, dests={op.key: set() for op in ops})
    settled = settle(claimed, results)
    assert settled.services == {op.key for op in ops[1:]}
    assert k.done == [2, 3, 4, 5, 6, 7]


def test_changes_ask_for_no_ack_and_a_chunk_that_succeeds_costs_one_read(monkeypatch):
    """The kernel answers only failures when no ack is asked for: 300 ops that
    succeed are one send and one read (finding nothing queued), not 300 reads
    of acks."""
    k = FakeKernel()
    c = connection(k, monkeypatch)
    k.reads = 0
    assert codes(c.execute(services(300))) == [""] * 300
    assert k.reads == 1


def test_the_next_chunk_is_read_after_an_overrun(monkeypatch):
    """An overrun in one chunk does not leak into the next: its answers are read
    and mapped to the right ops (sequence numbers, not positions)."""
    k = FakeKernel(codes={i: errno.EEXIST for i in range(4)} | {5: errno.EINVAL}, fits=2)
    c = connection(k, monkeypatch)
    ops = services(6)
    first = c.execute(ops[:4])
    k.fits = None
    assert codes(first) == ["EEXIST", "EEXIST", "unknown", "unknown"]
    assert codes(c.execute(ops[4:])) == ["", "EINVAL"]


def test_dest_and_delete_messages_are_acked_like_services(monkeypatch):
    svc = Service(address="10.0.0.1", port=80, scheduler="rr", dests=(Dest("10.1.0.1", 80),))
    ops = [O.AddDest(svc, svc.dests[0]), O.DelDest(svc.key, svc.dests[0].key), O.DelService(svc.key)]
    k = FakeKernel(codes={1: errno.ENOENT})
    assert codes(connection(k, monkeypatch).execute(ops)) == ["", "ENOENT", ""]
