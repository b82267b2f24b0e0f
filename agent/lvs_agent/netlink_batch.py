"""IPVS over raw generic netlink: batched changes and fast dumps.

pyroute2's sync API builds each message attribute by attribute in pure
Python and waits for every ack, an order of magnitude behind
ipvsadm-restore at thousands of rules. This module builds the same IPVS messages from precompiled
``struct`` layouts (one ``pack`` per dest), concatenates them into ~60 KB
``send`` calls, each message with NLM_F_ACK, and reads the acks in bulk,
mapping each back to its operation by sequence number. The kernel handles
the messages of one send in order and acks each one, failures included, so
one bad op never stops the rest. Dumps are parsed straight from the buffer
(no per-attribute objects) and read with one socket round trip each.

Only the IPVS family is spoken here; pyroute2 stays the library for
everything else (links, addresses) and the per-op fallback.

Message layouts follow include/uapi/linux/ip_vs.h and
net/netfilter/ipvs/ip_vs_ctl.c (ip_vs_genl_parse_service/_dest):
- a service key is AF + FWMARK, or AF + PROTOCOL + ADDR + PORT;
- add/set carry SCHED_NAME, FLAGS {flags, mask}, TIMEOUT and NETMASK too
  (the kernel says EINVAL without all four);
- a full dest carries ADDR, PORT, FWD_METHOD, WEIGHT, U_THRESH, L_THRESH
  (+ ADDR_FAMILY and the TUN_* attributes, the tunnel port big-endian).
"""
from __future__ import annotations

import errno
import operator
import os
import socket
import struct
from typing import Callable, Iterable, Sequence

from lvs_model import kernel as K
from lvs_model.nodespec import Dest, DestKey, Service, ServiceKey

from . import ops as O
from .genl import (I32, NLA, NLA_TYPE_MASK, NLH_GENL, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, U16, U32,
                   U64, GenlSocket, NetlinkError, error_text, nest, nla, pad, parse_attrs, set_buffers)
from .observe import (DestRuntime, IPVSTable, Stats, decode_dest, decode_service,
                      svc_flags)
from .state import unknown_result

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10

# IPVS
IPVS_GENL_NAME = b"IPVS"
IPVS_GENL_VERSION = 1
CMD_NEW_SERVICE, CMD_SET_SERVICE, CMD_DEL_SERVICE, CMD_GET_SERVICE = 1, 2, 3, 4
CMD_NEW_DEST, CMD_SET_DEST, CMD_DEL_DEST, CMD_GET_DEST = 5, 6, 7, 8
CMD_GET_INFO = 15
CMD_ATTR_SERVICE, CMD_ATTR_DEST = 1, 2
SVC_AF, SVC_PROTOCOL, SVC_ADDR, SVC_PORT, SVC_FWMARK = 1, 2, 3, 4, 5
SVC_SCHED_NAME, SVC_FLAGS, SVC_TIMEOUT, SVC_NETMASK = 6, 7, 8, 9
SVC_STATS, SVC_PE_NAME, SVC_STATS64 = 10, 11, 12
DEST_ADDR, DEST_PORT, DEST_FWD_METHOD, DEST_WEIGHT, DEST_U_THRESH, DEST_L_THRESH = 1, 2, 3, 4, 5, 6
DEST_ACTIVE_CONNS, DEST_INACT_CONNS, DEST_PERSIST_CONNS = 7, 8, 9
DEST_STATS, DEST_ADDR_FAMILY, DEST_STATS64 = 10, 11, 12
DEST_TUN_TYPE, DEST_TUN_PORT, DEST_TUN_FLAGS = 13, 14, 15
INFO_VERSION, INFO_CONN_TAB_SIZE = 1, 2

# A full dest, one pack: nest header, ADDR, PORT(be), FWD, WEIGHT, U, L,
# ADDR_FAMILY, TUN_TYPE, TUN_PORT(be), TUN_FLAGS.
_DEST_TAIL = "HHH2x HHI HHI HHI HHI HHH2x HHB3x HHH2x HHH2x"
DEST_FULL = {
    4: struct.Struct("=HH HH4s " + _DEST_TAIL),
    16: struct.Struct("=HH HH16s " + _DEST_TAIL),
}
# A dest key (delete): nest header, ADDR, PORT(be), ADDR_FAMILY.
DEST_KEY = {
    4: struct.Struct("=HH HH4s HHH2x HHH2x"),
    16: struct.Struct("=HH HH16s HHH2x HHH2x"),
}

# A dest as ip_vs_genl_fill_dest (6.1) writes it: ADDR (always 16 bytes),
# PORT, FWD_METHOD, WEIGHT, TUN_TYPE, TUN_PORT, TUN_FLAGS, U_THRESH, L_THRESH,
# ACTIVE_CONNS, INACT_CONNS, PERSIST_CONNS, ADDR_FAMILY, then the stats nests.
# One unpack reads it; the attribute headers are checked, and any other layout
# (another kernel) takes the generic attribute walk.
DEST_DUMPED = struct.Struct("=HH16s HHH2x HHI HHI HHB3x HHH2x HHH2x HHI HHI HHI HHI HHI HHH2x")
_DUMPED_HDRS = operator.itemgetter(0, 1, 3, 4, 6, 7, 9, 10, 12, 13, 15, 16, 18, 19, 21, 22, 24, 25,
                                   27, 28, 30, 31, 33, 34, 36, 37)
_DUMPED_HDRS_WANT = (20, DEST_ADDR, 6, DEST_PORT, 8, DEST_FWD_METHOD, 8, DEST_WEIGHT, 5, DEST_TUN_TYPE,
                     6, DEST_TUN_PORT, 6, DEST_TUN_FLAGS, 8, DEST_U_THRESH, 8, DEST_L_THRESH,
                     8, DEST_ACTIVE_CONNS, 8, DEST_INACT_CONNS, 8, DEST_PERSIST_CONNS, 6, DEST_ADDR_FAMILY)
# (addr16, port_be, fwd, weight, tun_type, tun_port_be, tun_flags, u, l, af)
_DUMPED_KEY = operator.itemgetter(2, 5, 8, 11, 14, 17, 20, 23, 26, 38)
_DUMPED_RT = operator.itemgetter(29, 32, 35)
_dest_cache: dict[tuple, Dest] = {}
_service_cache: dict[bytes, tuple] = {}

SEND_CHUNK = 60 * 1024  # bytes per send(): big enough that the kernel's work dominates, under the 64 KiB default socket buffer
RCVBUF = 8 * 1024 * 1024
RECV_SIZE = 256 * 1024
ACK_TIMEOUT = 60.0


def _addr_bytes(address: str) -> tuple[int, bytes]:
    if ":" in address:
        return socket.AF_INET6, socket.inet_pton(socket.AF_INET6, address)
    return socket.AF_INET, socket.inet_pton(socket.AF_INET, address)


def service_key_attrs(key: ServiceKey) -> bytes:
    """The attributes that name a service (inside IPVS_CMD_ATTR_SERVICE)."""
    af = K.FAMILIES[key.family]
    if key.fwmark:
        return nla(SVC_AF, U16.pack(af)) + nla(SVC_FWMARK, U32.pack(key.fwmark))
    _, raw = _addr_bytes(key.address)
    return (nla(SVC_AF, U16.pack(af)) + nla(SVC_PROTOCOL, U16.pack(K.PROTOCOLS[key.protocol]))
            + nla(SVC_ADDR, raw) + nla(SVC_PORT, struct.pack("!H", key.port)))


def service_netmask_bytes(svc: Service) -> bytes:
    mask = svc.netmask
    if svc.family == "ipv6":
        return U32.pack(int(mask))  # prefix length, read by the kernel in host order
    return socket.inet_aton(mask)


def service_full_attrs(svc: Service) -> bytes:
    return (service_key_attrs(svc.key)
            + nla(SVC_SCHED_NAME, svc.scheduler.encode() + b"\0")
            + nla(SVC_FLAGS, struct.pack("=II", svc_flags(svc), 0xFFFFFFFF))
            + nla(SVC_TIMEOUT, U32.pack(svc.persistence_timeout))
            + nla(SVC_NETMASK, service_netmask_bytes(svc)))


def dest_full(d: Dest) -> bytes:
    af, raw = _addr_bytes(d.address)
    st = DEST_FULL[len(raw)]
    return st.pack(
        st.size, CMD_ATTR_DEST,
        4 + len(raw), DEST_ADDR, raw,
        6, DEST_PORT, socket.htons(d.port),
        8, DEST_FWD_METHOD, K.METHODS[d.method],
        8, DEST_WEIGHT, d.weight,
        8, DEST_U_THRESH, d.upper_threshold,
        8, DEST_L_THRESH, d.lower_threshold,
        6, DEST_ADDR_FAMILY, af,
        5, DEST_TUN_TYPE, K.TUNNEL_TYPES[d.tunnel_type],
        6, DEST_TUN_PORT, socket.htons(d.tunnel_port),
        6, DEST_TUN_FLAGS, K.TUNNEL_CSUM[d.tunnel_csum])


def dest_key(dk: DestKey) -> bytes:
    af, raw = _addr_bytes(dk.address)
    st = DEST_KEY[len(raw)]
    return st.pack(st.size, CMD_ATTR_DEST, 4 + len(raw), DEST_ADDR, raw,
                   6, DEST_PORT, socket.htons(dk.port), 6, DEST_ADDR_FAMILY, af)


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------

def _u(buf, span, default: int = 0) -> int:
    if span is None:
        return default
    s, e = span
    n = e - s
    if n >= 8:
        return U64.unpack_from(buf, s)[0]
    if n >= 4:
        return U32.unpack_from(buf, s)[0]
    if n >= 2:
        return U16.unpack_from(buf, s)[0]
    if n >= 1:
        return buf[s]
    return default


def _be16(buf, span, default: int = 0) -> int:
    if span is None:
        return default
    return struct.unpack_from("!H", buf, span[0])[0]


def _str(buf, span) -> str:
    if span is None:
        return ""
    return bytes(buf[span[0]:span[1]]).split(b"\0", 1)[0].decode(errors="replace")


def _addr(buf, span, af: int) -> str:
    s, e = span
    if af == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, bytes(buf[s:s + 16]))
    return socket.inet_ntop(socket.AF_INET, bytes(buf[s:s + 4]))


_STAT_TYPES = range(1, 11)


def _stats(buf, span) -> Stats:
    if span is None:
        return Stats()
    a = parse_attrs(buf, span[0], span[1])
    return Stats(*(_u(buf, a.get(t)) for t in _STAT_TYPES))


def parse_service(buf, s: int, e: int, with_stats: bool) -> tuple[Service, Stats | None, str, bytes]:
    """One IPVS_CMD_ATTR_SERVICE payload -> (service, stats, pe name, key attrs).

    Decoded services are cached by their attribute bytes up to the counters."""
    a = parse_attrs(buf, s, e)
    st_span = a.get(SVC_STATS) or a.get(SVC_STATS64)
    ckey = bytes(buf[s:st_span[0] - 4 if st_span else e])
    hit = _service_cache.get(ckey)
    if hit is not None:
        svc, pe, key_attrs = hit
        stats = _stats(buf, a.get(SVC_STATS64) or a.get(SVC_STATS)) if with_stats else None
        return svc, stats, pe, key_attrs
    svc, stats, pe, key_attrs = _parse_service(buf, a, with_stats)
    if len(_service_cache) > 100_000:
        _service_cache.clear()
    _service_cache[ckey] = (svc, pe, key_attrs)
    return svc, stats, pe, key_attrs


def _parse_service(buf, a: dict, with_stats: bool) -> tuple[Service, Stats | None, str, bytes]:
    af = _u(buf, a.get(SVC_AF), socket.AF_INET)
    fwmark = _u(buf, a.get(SVC_FWMARK))
    addr = _addr(buf, a[SVC_ADDR], af) if SVC_ADDR in a and not fwmark else None
    flags_span = a.get(SVC_FLAGS)
    flags = U32.unpack_from(buf, flags_span[0])[0] if flags_span else 0
    nm_span = a.get(SVC_NETMASK)
    if nm_span is None:
        netmask = None
    elif af == socket.AF_INET6:
        netmask = U32.unpack_from(buf, nm_span[0])[0]
    else:
        netmask = socket.inet_ntoa(bytes(buf[nm_span[0]:nm_span[0] + 4]))
    svc = decode_service(af, _u(buf, a.get(SVC_PROTOCOL)), addr, _be16(buf, a.get(SVC_PORT)),
                         fwmark, _str(buf, a.get(SVC_SCHED_NAME)), flags,
                         _u(buf, a.get(SVC_TIMEOUT)), netmask)
    # Re-send the kernel's own key attributes to dump this service's dests.
    key_parts = [bytes(buf[sp[0] - 4:sp[0] - 4 + pad(sp[1] - sp[0] + 4)])
                 for t in (SVC_AF, SVC_PROTOCOL, SVC_ADDR, SVC_PORT, SVC_FWMARK)
                 if (sp := a.get(t)) is not None]
    stats = _stats(buf, a.get(SVC_STATS64) or a.get(SVC_STATS)) if with_stats else None
    return svc, stats, _str(buf, a.get(SVC_PE_NAME)), b"".join(key_parts)


def parse_dest_fast(buf, s: int, e: int, with_stats: bool, runtime: bool):
    """The fixed 6.1 layout in one unpack, or None if the layout differs."""
    if e - s < DEST_DUMPED.size:
        return None
    vals = DEST_DUMPED.unpack_from(buf, s)
    if _DUMPED_HDRS(vals) != _DUMPED_HDRS_WANT:
        return None
    k = _DUMPED_KEY(vals)
    d = _dest_cache.get(k)
    if d is None:
        addr16, port_be, fwd, weight, tun_type, tun_port_be, tun_flags, u, l, af = k
        raw = addr16 if af == socket.AF_INET6 else addr16[:4]
        d = decode_dest(socket.inet_ntop(af, raw), socket.ntohs(port_be), fwd, weight, u, l,
                        tun_type, tun_port_be, tun_flags)
        if len(_dest_cache) > 1_000_000:
            _dest_cache.clear()
        _dest_cache[k] = d
    if not runtime and not with_stats:
        return d, None
    stats = Stats()
    if with_stats:
        a = parse_attrs(buf, s + DEST_DUMPED.size, e)
        stats = _stats(buf, a.get(DEST_STATS64) or a.get(DEST_STATS))
    return d, DestRuntime(*_DUMPED_RT(vals), stats)


def parse_dest(buf, s: int, e: int, svc_af: int, with_stats: bool) -> tuple[Dest, DestRuntime]:
    """The generic attribute walk (any attribute order or kernel version)."""
    a = parse_attrs(buf, s, e)
    af = _u(buf, a.get(DEST_ADDR_FAMILY), svc_af)
    d = decode_dest(_addr(buf, a[DEST_ADDR], af), _be16(buf, a.get(DEST_PORT)),
                    _u(buf, a.get(DEST_FWD_METHOD)), _u(buf, a.get(DEST_WEIGHT)),
                    _u(buf, a.get(DEST_U_THRESH)), _u(buf, a.get(DEST_L_THRESH)),
                    _u(buf, a.get(DEST_TUN_TYPE)),
                    # decode_dest takes the port as pyroute2 reads it (host order of the BE bytes).
                    socket.ntohs(_be16(buf, a.get(DEST_TUN_PORT))),
                    _u(buf, a.get(DEST_TUN_FLAGS)))
    rt = DestRuntime(_u(buf, a.get(DEST_ACTIVE_CONNS)), _u(buf, a.get(DEST_INACT_CONNS)),
                     _u(buf, a.get(DEST_PERSIST_CONNS)),
                     _stats(buf, a.get(DEST_STATS64) or a.get(DEST_STATS)) if with_stats else Stats())
    return d, rt


# --------------------------------------------------------------------------
# The connection
# --------------------------------------------------------------------------

class IPVSConnection(GenlSocket):
    """One generic netlink socket speaking IPVS, in ``netns``."""

    def __init__(self, netns: str | None = None):
        super().__init__(netns, ACK_TIMEOUT, RECV_SIZE)
        try:
            set_buffers(self.sock, RCVBUF, 1024 * 1024)
            try:
                self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # acks without the request's payload
            except OSError:
                pass
            self.rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            family = self.family_id(IPVS_GENL_NAME)
            if family is None:
                raise NetlinkError(errno.ENOENT, "generic netlink family IPVS not found (is ip_vs loaded?)")
            self.family = family
        except BaseException:
            self.sock.close()
            raise
        self._keys: dict[ServiceKey, bytes] = {}

    def _key(self, key: ServiceKey) -> bytes:
        b = self._keys.get(key)
        if b is None:
            if len(self._keys) > 200_000:
                self._keys.clear()
            b = self._keys[key] = nest(CMD_ATTR_SERVICE, service_key_attrs(key))
        return b

    # -- messages ------------------------------------------------------------
    def message(self, op: O.Op, seq: int) -> bytes:
        match op:
            case O.AddDest(s, d) | O.SetDest(s, d):
                cmd = CMD_NEW_DEST if isinstance(op, O.AddDest) else CMD_SET_DEST
                body = self._key(s.key) + dest_full(d)
            case O.DelDest(k, dk):
                cmd, body = CMD_DEL_DEST, self._key(k) + dest_key(dk)
            case O.AddService(s) | O.SetService(s):
                cmd = CMD_NEW_SERVICE if isinstance(op, O.AddService) else CMD_SET_SERVICE
                body = nest(CMD_ATTR_SERVICE, service_full_attrs(s))
            case O.DelService(k):
                cmd, body = CMD_DEL_SERVICE, self._key(k)
            case _:
                raise TypeError(op)
        return NLH_GENL.pack(20 + len(body), self.family, NLM_F_REQUEST | NLM_F_ACK, seq, 0,
                             cmd, IPVS_GENL_VERSION, 0) + body

    # -- changes -------------------------------------------------------------
    def execute(self, ops: Sequence[O.Op]) -> list[str | None]:
        """Apply IPVS ops in order; per op None or "ERRNAME: message (op)"."""
        results: list[str | None] = [None] * len(ops)
        # Acks are small skbs but each costs ~1 KB of receive buffer: bound a
        # chunk's message count by the buffer as well as its byte size.
        max_msgs = max(16, self.rcvbuf // 2048)
        i = 0
        n = len(ops)
        while i < n:
            pending: dict[int, int] = {}
            parts: list[bytes] = []
            size = 0
            while i < n and size < SEND_CHUNK and len(pending) < max_msgs:
                seq = self._next_seq()
                try:
                    m = self.message(ops[i], seq)
                except (KeyError, ValueError, OSError, struct.error) as e:
                    results[i] = f"EINVAL: cannot encode: {e} ({O.describe(ops[i])})"
                    i += 1
                    continue
                parts.append(m)
                pending[seq] = i
                size += len(m)
                i += 1
            if not parts:
                continue
            try:
                self._send(b"".join(parts))
                self._collect_acks(pending, results, ops)
            except OSError as e:
                # The send failed, or the socket after it: whether the kernel did
                # each op is not known (settle keeps its claim; the next pass reads).
                for idx in pending.values():
                    results[idx] = unknown_result(error_text(e.errno or errno.EIO, O.describe(ops[idx])))
        return results

    def _collect_acks(self, pending: dict[int, int], results: list, ops: Sequence[O.Op]) -> None:
        """Map each ack to its op. An op whose ack never comes has an unknown
        outcome, never the socket's errno as if the kernel had refused it: on
        ENOBUFS the kernel did the ops and dropped their acks (the buffer was
        full), and a service it created must stay ours."""
        while pending:
            try:
                self._take_acks(self._recv(), pending, results, ops)
            except OSError as e:  # ENOBUFS (acks overran the buffer), timeout
                # The acks that did fit may still be queued behind the error.
                self._drain(pending, results, ops)
                code = e.errno or errno.EIO
                for idx in pending.values():
                    results[idx] = unknown_result(error_text(code, f"no ack: {O.describe(ops[idx])}"))
                pending.clear()

    @staticmethod
    def _take_acks(messages, pending: dict[int, int], results: list, ops: Sequence[O.Op]) -> None:
        for typ, _, seq, s, _, buf in messages:
            if typ != NLMSG_ERROR:
                continue
            idx = pending.pop(seq, None)
            if idx is None:
                continue
            code = -I32.unpack_from(buf, s)[0]
            if code:
                results[idx] = error_text(code, O.describe(ops[idx]))

    def _drain(self, pending: dict[int, int], results: list, ops: Sequence[O.Op]) -> None:
        """Read what is queued without waiting: the acks of ``pending`` are
        mapped, anything else belongs to this chunk and is dropped."""
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    self._take_acks(self._recv(), pending, results, ops)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue
        finally:
            self.sock.settimeout(ACK_TIMEOUT)

    # -- dumps ---------------------------------------------------------------
    def _request(self, cmd: int, body: bytes, flags: int) -> int:
        seq = self._next_seq()
        self._send(NLH_GENL.pack(20 + len(body), self.family, flags, seq, 0, cmd,
                                 IPVS_GENL_VERSION, 0) + body)
        return seq

    def info(self) -> tuple[int, int]:
        """(IPVS version code, connection table size) as ipvsadm prints them."""
        for s, e, buf in self.request(self.family, CMD_GET_INFO, b"", 0, IPVS_GENL_VERSION, "IPVS info"):
            a = parse_attrs(buf, s, e)
            return _u(buf, a.get(INFO_VERSION), 0x010201), _u(buf, a.get(INFO_CONN_TAB_SIZE), 4096)
        raise NetlinkError(errno.EPROTO, "IPVS info: no answer")

    def dump_services(self, with_stats: bool = False):
        """[(service without dests, stats, pe name, key attrs)] in kernel order."""
        seq = self._request(CMD_GET_SERVICE, b"", NLM_F_REQUEST | NLM_F_DUMP)
        out = []
        while True:
            for typ, _, rseq, s, e, buf in self._recv():
                if rseq != seq:
                    continue
                if typ == NLMSG_DONE:
                    return out
                if typ == NLMSG_ERROR:
                    code = -I32.unpack_from(buf, s)[0]
                    if code:
                        raise NetlinkError(code, f"IPVS service dump: {os.strerror(code)}")
                    continue
                a = parse_attrs(buf, s + 4, e)
                span = a.get(CMD_ATTR_SERVICE)
                if span:
                    out.append(parse_service(buf, span[0], span[1], with_stats))

    PAUSE_EVERY = 64  # services between two calls of a dump's ``pause``

    def dump_dests(self, keys: list[tuple[bytes, int]], with_stats: bool = False,
                   runtime: bool = True, pause: Callable[[], object] | None = None,
                   ) -> list[list[tuple[Dest, DestRuntime | None]]]:
        """Dests of many services, one dump each. ``keys``: (service key
        attrs as the kernel sent them, family code). ``pause``: called every
        PAUSE_EVERY services; it may wait (a background read of the whole
        table lets a reconcile go first).

        Dumps cannot be pipelined on one socket: the kernel finishes a dump
        (NLMSG_DONE) only from the reader's next recvmsg, and answers EBUSY
        to a second dump started before that. So: send, read to DONE, next.
        """
        out: list[list[tuple[Dest, DestRuntime]]] = []
        for i, (key_attrs, af) in enumerate(keys):
            if pause is not None and i % self.PAUSE_EVERY == 0:
                pause()
            body = nest(CMD_ATTR_SERVICE, key_attrs)
            seq = self._request(CMD_GET_DEST, body, NLM_F_REQUEST | NLM_F_DUMP)
            dests: list[tuple[Dest, DestRuntime]] = []
            done = False
            while not done:
                for typ, _, rseq, s, e, buf in self._recv():
                    if rseq != seq:
                        continue
                    if typ == NLMSG_DONE:
                        done = True
                    elif typ == NLMSG_ERROR:
                        code = -I32.unpack_from(buf, s)[0]
                        done = True
                        if code not in (0, errno.ESRCH, errno.ENOENT):
                            raise NetlinkError(code, f"IPVS dest dump: {os.strerror(code)}")
                    else:
                        ln, typ = NLA.unpack_from(buf, s + 4)
                        if typ & NLA_TYPE_MASK == CMD_ATTR_DEST:
                            ds, de = s + 8, s + 4 + ln
                        else:
                            span = parse_attrs(buf, s + 4, e).get(CMD_ATTR_DEST)
                            if not span:
                                continue
                            ds, de = span
                        got = parse_dest_fast(buf, ds, de, with_stats, runtime)
                        dests.append(got if got is not None else parse_dest(buf, ds, de, af, with_stats))
            out.append(dests)
        return out

    def get_service(self, key: ServiceKey) -> tuple[Service, Stats | None, str, bytes] | None:
        """One service (IPVS_CMD_GET_SERVICE, no dump), as dump_services gives
        it; None if the kernel has no such service."""
        seq = self._request(CMD_GET_SERVICE, self._key(key), NLM_F_REQUEST)
        for typ, s, e, buf in self._replies(seq):
            if typ == NLMSG_ERROR:
                code = -I32.unpack_from(buf, s)[0]
                if code in (errno.ESRCH, errno.ENOENT):
                    return None
                raise NetlinkError(code, f"IPVS get service {key}: {os.strerror(code)}")
            span = parse_attrs(buf, s + 4, e).get(CMD_ATTR_SERVICE)
            if span is None:
                raise NetlinkError(errno.EIO, f"IPVS get service {key}: reply without a service")
            return parse_service(buf, span[0], span[1], False)
        raise AssertionError("unreachable")

    def read_services(self, keys: Iterable[ServiceKey]) -> dict[ServiceKey, Service]:
        """Just these services, with their dests (no counters): one get and
        one dest dump per service present, instead of the whole table."""
        found = [got for k in sorted(keys) if (got := self.get_service(k)) is not None]
        dests = self.dump_dests([(ka, K.FAMILIES[svc.family]) for svc, _, _, ka in found], runtime=False)
        return {svc.key: _with_dests(svc, ds) for (svc, _, _, _), ds in zip(found, dests)}

    def dump(self, with_stats: bool = False, runtime: bool = True,
             pause: Callable[[], object] | None = None) -> IPVSTable:
        """The whole table. ``runtime=False`` skips per-dest counters (the
        reconcile loop only needs the configuration); ``pause``: as in
        dump_dests."""
        table = IPVSTable()
        if runtime or with_stats:
            try:
                table.version, table.conn_tab_size = self.info()
            except OSError:
                pass
        svcs = self.dump_services(with_stats)
        dests = self.dump_dests([(k, K.FAMILIES[s.family]) for s, _, _, k in svcs], with_stats, runtime, pause)
        for (svc, st, pe, _), ds in zip(svcs, dests):
            key = svc.key
            table.services[key] = _with_dests(svc, ds)
            if st is not None:
                table.service_stats[key] = st
            if pe:
                table.pe_names[key] = pe
            if runtime or with_stats:
                for d, rt in ds:
                    table.dest_runtime[(key, d.key)] = rt
        return table


def _with_dests(svc: Service, ds: list[tuple[Dest, DestRuntime | None]]) -> Service:
    """``svc`` with these dests (dataclasses.replace costs ~1 ms per call in
    the VM: the fields are copied)."""
    full = object.__new__(Service)
    full.__dict__.update(svc.__dict__)
    full.__dict__["dests"] = tuple(d for d, _ in ds)
    return full


def execute(ops: Iterable[O.Op], netns: str | None = None) -> list[str | None]:
    with IPVSConnection(netns) as c:
        return c.execute(list(ops))
