"""Generic netlink, raw: the one transport for every kernel family the agent
speaks without pyroute2 -- IPVS (netlink_batch: batched changes and dumps),
the IPVS sync daemon and timeouts (ipvs_sync, ipvs_config) and FOU (fou).

pyroute2 either lacks those messages (sync daemon, timeouts, the "fou"
family) or builds them too slowly for IPVS at scale, so their messages are
packed with ``struct`` by their own modules and sent through
:class:`GenlSocket`: one socket in a network namespace, sequence numbers, a
receive buffer reused for every read, answers matched to their request, the
family id looked up by name, and error acks raised as :class:`NetlinkError`
naming what was asked. Layouts: include/uapi/linux/netlink.h and genetlink.h.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
import time
from typing import Iterator

from .netns import netlink_socket

# netlink
NETLINK_GENERIC = 16
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

# the generic netlink controller
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2

NLH = struct.Struct("=IHHII")  # nlmsghdr
NLH_GENL = struct.Struct("=IHHIIBBH")  # nlmsghdr + genlmsghdr
NLA = struct.Struct("=HH")
U16 = struct.Struct("=H")
U32 = struct.Struct("=I")
U64 = struct.Struct("=Q")
I32 = struct.Struct("=i")


def pad(n: int) -> int:
    return (n + 3) & ~3


def nla(typ: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return NLA.pack(n, typ) + payload + b"\0" * (pad(n) - n)


def nest(typ: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return NLA.pack(4 + len(body), typ) + body


def parse_attrs(buf, off: int, end: int) -> dict[int, tuple[int, int]]:
    """type -> (payload start, payload end), for one level of attributes."""
    out = {}
    unpack = NLA.unpack_from
    while off + 4 <= end:
        ln, typ = unpack(buf, off)
        if ln < 4:
            break
        out[typ & NLA_TYPE_MASK] = (off + 4, off + ln)
        off += (ln + 3) & ~3
    return out


def error_text(code: int, what: str) -> str:
    return f"{errno.errorcode.get(code, f'E{code}')}: {os.strerror(code)} ({what})"


class NetlinkError(OSError):
    pass


# A local kernel answers at once: the timeout only bounds a read that would hang.
DEFAULT_TIMEOUT = 30.0
# One recv() returns one skb: an answer, or a dump batch the kernel caps at 32 KiB.
DEFAULT_RECV_SIZE = 64 * 1024


class GenlSocket:
    """One generic netlink socket in ``netns`` (None: this process's)."""

    def __init__(self, netns: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 recv_size: int = DEFAULT_RECV_SIZE):
        self.netns = netns
        self.sock = netlink_socket(netns, NETLINK_GENERIC)
        try:
            self.sock.bind((0, 0))
            self.pid = self.sock.getsockname()[0]
            self.sock.settimeout(timeout)
        except BaseException:
            self.sock.close()
            raise
        self._buf = bytearray(recv_size)
        self._seq = int(time.time()) & 0x3FFFFFFF

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def _send(self, data: bytes) -> None:
        self.sock.sendto(data, (0, 0))

    def _recv(self):
        """Yield (type, flags, seq, payload start, end, buffer) per message of
        one read (the buffer is reused by the next read)."""
        n = self.sock.recv_into(self._buf)
        buf = self._buf
        off = 0
        while off + 16 <= n:
            ln, typ, flags, seq, _ = NLH.unpack_from(buf, off)
            if ln < 16:
                break
            yield typ, flags, seq, off + 16, off + ln, buf
            off += pad(ln)

    def _replies(self, seq: int):
        """Yield (type, payload start, end, buffer) of each message answering
        request ``seq``, reading on until the caller stops."""
        while True:
            for typ, _, rseq, s, e, buf in self._recv():
                if rseq == seq:
                    yield typ, s, e, buf

    def request(self, family: int, cmd: int, body: bytes = b"", flags: int = NLM_F_ACK, version: int = 1,
                what: str = "") -> Iterator[tuple[int, int, bytearray]]:
        """Send one request; yield (attributes start, end, buffer) of each
        answer (past its genl header) until the ack or the dump's end. An
        error ack raises NetlinkError naming ``what``. Consume it whole (or
        until what you need): the buffer is reused by the next read."""
        seq = self._next_seq()
        self._send(NLH_GENL.pack(20 + len(body), family, NLM_F_REQUEST | flags, seq, 0, cmd, version, 0) + body)
        for typ, s, e, buf in self._replies(seq):
            if typ == NLMSG_DONE:
                return
            if typ == NLMSG_ERROR:
                code = -I32.unpack_from(buf, s)[0]
                if code:
                    raise NetlinkError(code, error_text(code, what or f"generic netlink command {cmd}"))
                return
            if typ == family:
                yield s + 4, e, buf

    def family_id(self, name: bytes, load: bool = True) -> int | None:
        """The id of the family ``name``; None when the kernel has none.
        ``load``: ask by name, which makes the kernel load its module if need
        be (request_module); otherwise read the list of families, which never
        loads anything."""
        try:
            if load:
                answers = self.request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, nla(CTRL_ATTR_FAMILY_NAME, name + b"\0"),
                                       NLM_F_ACK, what=f"generic netlink family {name.decode()}")
            else:
                answers = self.request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, b"", NLM_F_DUMP,
                                       what="generic netlink families")
            found = None
            for s, e, buf in answers:
                a = parse_attrs(buf, s, e)
                got, fid = a.get(CTRL_ATTR_FAMILY_NAME), a.get(CTRL_ATTR_FAMILY_ID)
                # asked by name, the answer is that family's; a dump lists all of them
                if fid and (load or (got and bytes(buf[got[0]:got[1]]).rstrip(b"\0") == name)):
                    found = U16.unpack_from(buf, fid[0])[0]
            return found
        except NetlinkError as e:
            if e.errno == errno.ENOENT:
                return None
            raise


def set_buffers(sock: socket.socket, rcvbuf: int, sndbuf: int) -> None:
    """Socket buffers past rmem_max/wmem_max where allowed (CAP_NET_ADMIN), else as asked."""
    for force, plain, val in ((33, socket.SO_RCVBUF, rcvbuf), (32, socket.SO_SNDBUF, sndbuf)):  # SO_*BUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, val)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, plain, val)
            except OSError:
                pass
