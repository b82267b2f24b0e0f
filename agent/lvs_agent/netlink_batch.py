"""IPVS over raw generic netlink: batched changes and fast dumps.

pyroute2's sync API builds each message attribute by attribute in pure Python
and waits for every ack. This connection takes its messages from ipvs_codec
(one ``struct.pack`` per dest), concatenates them into sends of SEND_CHUNK
bytes, each message with NLM_F_ACK, and reads the acks in bulk, mapping each
back to its operation by sequence number. The kernel handles the messages of
one send in order and acks each one, failures included, so one bad op never
stops the rest. Dumps are parsed straight from the receive buffer.

The codec is pure; what is kept between calls lives here: decoded services and
dests by their attribute bytes (a reconcile reads the same table again and
again) and the key nest of each service.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Callable, Iterable, Sequence

from lvs_model import kernel as K
from lvs_model.nodespec import Dest, Service, ServiceKey

from . import ops as O
from .genl import (I32, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, GenlSocket,
                   NetlinkError, error_text, nest, parse_attrs, set_buffers)
from .ipvs_codec import (CMD_ATTR_DEST, CMD_ATTR_SERVICE, CMD_GET_DEST, CMD_GET_INFO, CMD_GET_SERVICE,
                         IPVS_GENL_NAME, IPVS_GENL_VERSION, DestRuntime, IPVSTable, Stats,
                         decode_dest_attrs, decode_dumped_dest, decode_info, decode_service_attrs,
                         decode_stats, dumped_dest_fields, dumped_dest_stats, first_attr_span,
                         genl_message, op_message, service_key_nest, service_stats_span)
from .state import unknown_result

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10

# Bytes per send(): big enough that the kernel's work dominates the syscall,
# under the 64 KiB default socket send buffer.
SEND_CHUNK = 60 * 1024
# Receive buffer asked for (SO_RCVBUFFORCE where permitted): one chunk's acks
# and a dump's batch of replies fit without ENOBUFS.
RCVBUF = 8 * 1024 * 1024
SNDBUF = 1024 * 1024
# The receive buffer of one recv(), which returns one skb: an ack, or a dump
# batch the kernel caps at 32 KiB; anything above that is headroom.
RECV_SIZE = 256 * 1024
# How long an ack or a dump reply may take before the op's outcome is unknown.
ACK_TIMEOUT = 60.0
# Bounds of the decode memos: far above any table the agent programs, so they
# only stop a long-lived process from growing without end.
SERVICE_MEMO_MAX = 100_000
DEST_MEMO_MAX = 1_000_000
KEY_MEMO_MAX = 200_000

_dest_cache: dict[tuple, Dest] = {}
_service_cache: dict[bytes, tuple] = {}


def parse_service(buf, s: int, e: int, with_stats: bool) -> tuple[Service, Stats | None, str, bytes]:
    """One IPVS_CMD_ATTR_SERVICE payload -> (service, stats, pe name, key attrs),
    memoised by its attribute bytes up to the counters."""
    a = parse_attrs(buf, s, e)
    st_span = service_stats_span(a)
    ckey = bytes(buf[s:st_span[0] - 4 if st_span else e])
    hit = _service_cache.get(ckey)
    if hit is not None:
        svc, pe, key_attrs = hit
        stats = decode_stats(buf, st_span) if with_stats else None
        return svc, stats, pe, key_attrs
    svc, stats, pe, key_attrs = decode_service_attrs(buf, a, with_stats)
    if len(_service_cache) > SERVICE_MEMO_MAX:
        _service_cache.clear()
    _service_cache[ckey] = (svc, pe, key_attrs)
    return svc, stats, pe, key_attrs


def parse_dest_fast(buf, s: int, e: int, with_stats: bool, runtime: bool):
    """A dest in the kernel's usual layout, memoised by its fields, or None
    if the layout differs."""
    got = dumped_dest_fields(buf, s, e)
    if got is None:
        return None
    k, rt = got
    d = _dest_cache.get(k)
    if d is None:
        d = decode_dumped_dest(k)
        if len(_dest_cache) > DEST_MEMO_MAX:
            _dest_cache.clear()
        _dest_cache[k] = d
    if not runtime and not with_stats:
        return d, None
    return d, DestRuntime(*rt, dumped_dest_stats(buf, s, e) if with_stats else Stats())


def parse_dest(buf, s: int, e: int, svc_af: int, with_stats: bool) -> tuple[Dest, DestRuntime]:
    """The generic attribute walk (any attribute order or kernel version)."""
    return decode_dest_attrs(buf, s, e, svc_af, with_stats)


# --------------------------------------------------------------------------
# The connection
# --------------------------------------------------------------------------

class IPVSConnection(GenlSocket):
    """One generic netlink socket speaking IPVS, in ``netns``."""

    def __init__(self, netns: str | None = None):
        super().__init__(netns, ACK_TIMEOUT, RECV_SIZE)
        try:
            set_buffers(self.sock, RCVBUF, SNDBUF)
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
            if len(self._keys) > KEY_MEMO_MAX:
                self._keys.clear()
            b = self._keys[key] = service_key_nest(key)
        return b

    # -- messages ------------------------------------------------------------
    def message(self, op: O.Op, seq: int) -> bytes:
        return op_message(op, self.family, seq, self._key, NLM_F_REQUEST)

    # -- changes -------------------------------------------------------------
    def execute(self, ops: Sequence[O.Op]) -> list[str | None]:
        """Apply IPVS ops in order; per op None or "ERRNAME: message (op)".

        The requests ask for no ack: the kernel handles the messages of one
        send in the sender's own call, in order, and answers each one that
        fails whatever its flags (netlink_rcv_skb), so by the time send()
        returns every failure of that chunk is queued on the socket and an op
        without one succeeded: one read per failure, not one per op."""
        results: list[str | None] = [None] * len(ops)
        # Each queued answer is an skb whose truesize (~1 KB) counts against
        # the receive buffer: a chunk's answers, were every op to fail, stay
        # within half of it.
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
            except OSError as e:
                # Whether the kernel did any of them is not known (settle keeps
                # the claims; the next pass reads).
                for idx in pending.values():
                    results[idx] = unknown_result(error_text(e.errno or errno.EIO, O.describe(ops[idx])))
                continue
            self._take_failures(pending, results, ops)
        return results

    def _take_failures(self, pending: dict[int, int], results: list, ops: Sequence[O.Op]) -> None:
        """Map the failures queued for this chunk to their ops, without
        waiting. Answers lost to a full receive buffer (ENOBUFS) leave the
        outcome of every op not answered unknown, never a success: the kernel
        may have refused it, or done it (a service it created stays ours)."""
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    self._take_answers(self._recv(), pending, results, ops)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as e:
                    code = e.errno or errno.EIO
                    for idx in pending.values():
                        results[idx] = unknown_result(error_text(code, f"no answer: {O.describe(ops[idx])}"))
                    if code != errno.ENOBUFS:
                        return
                    # ENOBUFS is reported once: what is still queued is read on.
        finally:
            self.sock.settimeout(ACK_TIMEOUT)

    @staticmethod
    def _take_answers(messages, pending: dict[int, int], results: list, ops: Sequence[O.Op]) -> None:
        for typ, _, seq, s, _, buf in messages:
            if typ != NLMSG_ERROR:
                continue
            idx = pending.pop(seq, None)
            if idx is None:
                continue
            code = -I32.unpack_from(buf, s)[0]
            results[idx] = error_text(code, O.describe(ops[idx])) if code else None

    # -- dumps ---------------------------------------------------------------
    def _request(self, cmd: int, body: bytes, flags: int) -> int:
        seq = self._next_seq()
        self._send(genl_message(self.family, cmd, body, flags, seq))
        return seq

    def info(self) -> tuple[int, int]:
        """(IPVS version code, connection table size) as ipvsadm prints them."""
        for s, e, buf in self.request(self.family, CMD_GET_INFO, b"", 0, IPVS_GENL_VERSION, "IPVS info"):
            return decode_info(buf, s, e)
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

    # Services between two calls of a dump's ``pause``: a waiting reconcile
    # starts within a few milliseconds of dumps, and pausing costs next to nothing.
    PAUSE_EVERY = 64

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
                        span = first_attr_span(buf, s + 4, e, CMD_ATTR_DEST)
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
    """``svc`` with these dests, its fields shared (dataclasses.replace would
    run __init__ and copy each one, for every service of every dump)."""
    full = object.__new__(Service)
    full.__dict__.update(svc.__dict__)
    full.__dict__["dests"] = tuple(d for d, _ in ds)
    return full

