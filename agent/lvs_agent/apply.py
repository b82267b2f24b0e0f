"""Apply planned operations to the kernel.

``apply(ops)`` returns ``[(op, None | "ERRNAME: message")]`` in the order of
``ops``; an error text starts with the errno name (EEXIST, ENOENT, ...) because
``plan.settle`` reads it: a name the kernel answered with is a refusal, while an
op sent without an answer (a lost ack, ENOBUFS) is ``state.unknown_result``,
whose claim settle keeps. Rules:

- one failing op never stops the others;
- a failed AddService skips the AddDests of that service (reported as
  ``ECANCELED``): after EEXIST the service is somebody else's, and adding our
  dests to it would touch a foreign object;
- removing what is already gone is success (DelService ESRCH/ENOENT, DelDest
  ENOENT, DelAddress EADDRNOTAVAIL, DelLink ENODEV);
- the kernel's fallback tunnel devices (tunl0, ip6tnl0, gre0, ip6gre0) appear when
  their module loads and cannot be deleted: "adding" one loads the module,
  "deleting" one brings it down.

IPVS ops go only through ``netlink_batch`` (many messages per ``send``, acks
read in bulk); the kernel tests check its results against pyroute2's reading
of the kernel (tests/kernel/pyroute2_ipvs.py).
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import struct
from typing import Iterable, Sequence

from lvs_model.nodespec import ServiceKey

from . import ops as O
from .fou import apply_op as apply_fou
from .gre_csum import apply_op as apply_gre_csum
from .ipvs_config import set_timeouts, with_connection
from .netns import netlink_socket
from .nft import run_nft
from .rtnl import RtnlReader, open_iproute
from .sysctl import write_sysctl
from .plan import FALLBACK_TUNNELS
from .state import unknown_result
from .tools import missing_message

log = logging.getLogger(__name__)

Result = tuple[O.Op, "str | None"]

IFA_F_NODAD = 0x02


def errtext(code: int, what: str = "") -> str:
    name = errno.errorcode.get(code, f"E{code}")
    msg = os.strerror(code)
    return f"{name}: {msg}" + (f" ({what})" if what else "")


def exc_text(e: BaseException, what: str = "") -> str:
    code = getattr(e, "code", None)
    if not isinstance(code, int) or code <= 0:
        code = getattr(e, "errno", None)
    if isinstance(code, int) and code > 0:
        return errtext(code, what)
    return f"EIO: {type(e).__name__}: {e}" + (f" ({what})" if what else "")


def err_code(text: str | None) -> str:
    return (text or "").split(":", 1)[0]


# Errors that mean "already as wanted" for a removal.
_GONE = {
    O.DelService: ("ESRCH", "ENOENT"),
    O.DelDest: ("ENOENT", "ESRCH"),
    O.DelAddress: ("EADDRNOTAVAIL", "ENODEV"),
    O.DelLink: ("ENODEV",),
    O.DelRule: ("ENOENT",),
    O.DelRoute: ("ESRCH", "ENOENT"),
    O.DelNftTable: ("ENOENT",),
}


def normalize(op: O.Op, err: str | None) -> str | None:
    if err and err_code(err) in _GONE.get(type(op), ()):
        return None
    # Restoring a per-device sysctl of a device that is gone: nothing left to restore.
    if err and isinstance(op, O.SetSysctl) and op.restore and err_code(err) == "ENOENT":
        return None
    return err


# --------------------------------------------------------------------------
# IPVS
# --------------------------------------------------------------------------

def ipvs_phases(ops: Sequence[O.Op]) -> tuple[list[int], list[int]]:
    """Split IPVS op indices into (service adds, everything else in order).

    Adds go first so that their results are known before any of their dests
    is sent; nothing else in a plan depends on a service being added (a plan
    never both adds and deletes one key), so the reordering is safe.
    """
    adds = [i for i, op in enumerate(ops) if isinstance(op, O.AddService)]
    rest = [i for i, op in enumerate(ops) if not isinstance(op, O.AddService)]
    return adds, rest


def apply_ipvs_batch(conn, ops: Sequence[O.Op]) -> list[str | None]:
    """One result per op (None: done), through netlink_batch: service adds
    first (ipvs_phases), and a dest whose service failed to add is not sent
    (ECANCELED naming the add's error)."""
    out: list[str | None] = [None] * len(ops)
    adds, rest = ipvs_phases(ops)
    failed: dict[ServiceKey, str] = {}
    if adds:
        for i, err in zip(adds, conn.execute([ops[i] for i in adds])):
            out[i] = err
            if err:
                failed[ops[i].key] = err_code(err)
    send = []
    for i in rest:
        op = ops[i]
        if isinstance(op, O.AddDest) and op.key in failed:
            out[i] = f"ECANCELED: not attempted: adding service {op.key} failed ({failed[op.key]})"
        else:
            send.append(i)
    if send:
        for i, err in zip(send, conn.execute([ops[i] for i in send])):
            out[i] = err
    return [normalize(op, e) for op, e in zip(ops, out)]


# --------------------------------------------------------------------------
# Links, addresses, sysctls
# --------------------------------------------------------------------------

def _ifindex(ipr, name: str) -> int:
    idx = ipr.link_lookup(ifname=name)
    if not idx:
        raise OSError(errno.ENODEV, f"no device {name}")
    return idx[0]


def _apply_link(ipr, op: O.Op) -> None:
    match op:
        case O.AddLink(name, kind):
            try:
                ipr.link("add", ifname=name, kind=kind)
            except Exception as e:  # noqa: BLE001
                # Asking for a fallback tunnel loads its module, which creates
                # the device itself: the add then says EEXIST, and that is fine.
                if not (name in FALLBACK_TUNNELS and getattr(e, "code", None) == errno.EEXIST
                        and ipr.link_lookup(ifname=name)):
                    raise
        case O.SetLinkUp(name, up):
            ipr.link("set", index=_ifindex(ipr, name), state="up" if up else "down")
        case O.DelLink(name):
            idx = ipr.link_lookup(ifname=name)
            if not idx:
                return
            if name in FALLBACK_TUNNELS:
                # The kernel ignores deleting a fallback tunnel: bring it down instead.
                ipr.link("set", index=idx[0], state="down")
            else:
                ipr.link("del", index=idx[0])
        case _:
            raise TypeError(op)


def _apply_sysctl(op: O.SetSysctl, netns: str | None) -> None:
    write_sysctl(op.name, op.value, netns)


# --------------------------------------------------------------------------
# Policy rules and routes (raw rtnetlink: a handful of fixed-layout messages)
# --------------------------------------------------------------------------

RTPROT_KUBE_LVS = 76  # protocol tag of our rules and routes (unused in iproute2's rt_protos)
_PROTO_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132}
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWRULE, RTM_DELRULE = 24, 25, 32, 33
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400


def _nla(typ: int, data: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(data), typ) + data + b"\0" * (-len(data) % 4)


def rule_message(r) -> bytes:
    """fib_rule_hdr + attributes for ``from SRC [ipproto] [sport] lookup TABLE``."""
    fam = socket.AF_INET6 if r.family == "ipv6" else socket.AF_INET
    src = ipaddress.ip_address(r.src).packed
    body = struct.pack("=BBBBBBBBI", fam, 0, len(src) * 8, 0, r.table if r.table < 256 else 0,
                       0, 0, 1, 0)  # FR_ACT_TO_TBL
    body += _nla(2, src) + _nla(6, struct.pack("=I", r.priority)) + _nla(15, struct.pack("=I", r.table))
    body += _nla(21, bytes([RTPROT_KUBE_LVS]))
    if r.protocol:
        body += _nla(22, bytes([_PROTO_NUMBERS[r.protocol]]))
    if r.sport:
        body += _nla(23, struct.pack("=HH", r.sport, r.sport))
    return body


def route_message(r) -> bytes:
    """rtmsg + attributes for ``default via GATEWAY metric METRIC table TABLE``."""
    fam = socket.AF_INET6 if r.family == "ipv6" else socket.AF_INET
    body = struct.pack("=BBBBBBBBI", fam, 0, 0, 0, r.table if r.table < 256 else 0,
                       RTPROT_KUBE_LVS, 0, 1, 0)  # RT_SCOPE_UNIVERSE, RTN_UNICAST
    body += _nla(15, struct.pack("=I", r.table)) + _nla(5, ipaddress.ip_address(r.gateway).packed)
    body += _nla(6, struct.pack("=I", r.metric))
    return body


def address_message(index: int, addr: str, plen: int) -> bytes:
    """ifaddrmsg + IFA_LOCAL/IFA_ADDRESS for ``ip addr add|del ADDR/PLEN dev``."""
    ip = ipaddress.ip_address(addr)
    fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    body = struct.pack("=BBBBI", fam, plen, IFA_F_NODAD if ip.version == 6 else 0, 0, index)
    return body + _nla(2, ip.packed) + _nla(1, ip.packed)


class RtnlWriter:
    """One rtnetlink request at a time, each acked (error -> OSError).

    Addresses go this way too: one fixed-layout message per address, the
    device index read once, where pyroute2 looks each device up and decodes
    every answer (a node may carry thousands of VIPs)."""

    def __init__(self, netns: str | None = None):
        self.netns = netns
        self.sock = netlink_socket(netns, 0)
        self.sock.bind((0, 0))
        self.sock.settimeout(30)
        self.seq = 0
        self._ifindex: dict[str, int] | None = None  # read at the first address op (after link ops)

    def ifindex(self, name: str) -> int | None:
        if self._ifindex is None or name not in self._ifindex:
            with RtnlReader(self.netns) as r:
                self._ifindex = {n: i for i, n in r.links()[1].items()}
        return self._ifindex.get(name)

    def close(self) -> None:
        self.sock.close()

    def request(self, msg_type: int, flags: int, body: bytes) -> None:
        self.seq += 1
        self.sock.send(struct.pack("=IHHII", 16 + len(body), msg_type, flags | NLM_F_REQUEST | NLM_F_ACK,
                                   self.seq, 0) + body)
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + 16 <= len(data):
                ln, typ, _, seq, _ = struct.unpack_from("=IHHII", data, off)
                if ln < 16:
                    break
                if seq == self.seq and typ == 2:  # NLMSG_ERROR (0 = ack)
                    code = -struct.unpack_from("=i", data, off + 16)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return
                off += (ln + 3) & ~3

    def apply(self, op: O.Op) -> None:
        match op:
            case O.AddRule(r):
                self.request(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, rule_message(r))
            case O.DelRule(r):
                self.request(RTM_DELRULE, 0, rule_message(r))
            case O.AddRoute(r):
                self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, route_message(r))
            case O.DelRoute(r):
                self.request(RTM_DELROUTE, 0, route_message(r))
            case O.AddAddress(dev, addr, plen):
                index = self.ifindex(dev)
                if index is None:
                    raise OSError(errno.ENODEV, f"no device {dev}")
                self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, address_message(index, addr, plen))
            case O.DelAddress(dev, addr, plen):
                index = self.ifindex(dev)
                if index is not None:
                    self.request(RTM_DELADDR, 0, address_message(index, addr, plen))
            case _:
                raise TypeError(op)


# --------------------------------------------------------------------------
# nftables: our own table only, through ``nft -f -``
# --------------------------------------------------------------------------

def _apply_nft(op: O.Op, netns: str | None) -> None:
    match op:
        case O.ReplaceNftTable(f, n, body, _):
            # One transaction: make sure the table exists, delete it (with
            # everything in it), define it anew. Atomic: all or nothing.
            script = f"table {f} {n}\ndelete table {f} {n}\n{body}"
        case O.DelNftTable(f, n):
            script = f"delete table {f} {n}\n"
        case _:
            raise TypeError(op)
    try:
        p = run_nft(["-f", "-"], netns, input=script)
    except FileNotFoundError:
        raise OSError(errno.EOPNOTSUPP, missing_message("nft")) from None
    if p.returncode != 0:
        err = " ".join(p.stderr.split())[:400]
        code = errno.ENOENT if "No such file or directory" in err else errno.EINVAL
        raise OSError(code, f"nft: {err}")


# --------------------------------------------------------------------------
# Everything
# --------------------------------------------------------------------------

class Applier:
    """Applies op lists in one network namespace.

    ``ipvs_conn`` is a netlink_batch.IPVSConnection (opened on first use when
    None): IPVS is read and written only through it, so a socket that cannot
    open fails the pass (and the next one retries) rather than switching
    implementation. pyroute2 sockets (links) are opened per ``apply`` call and
    closed after, so an Applier may be used from any thread.
    """

    def __init__(self, netns: str | None = None, ipvs_conn=None):
        self.netns = netns
        self._conn = ipvs_conn

    def batch_conn(self):
        """The netlink_batch connection, opened on first use (its error raised)."""
        if self._conn is None:
            from .netlink_batch import IPVSConnection
            self._conn = IPVSConnection(self.netns)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def apply(self, ops: Iterable[O.Op]) -> list[Result]:
        ops = list(ops)
        results: list[str | None] = [None] * len(ops)
        ipvs_idx = [i for i, op in enumerate(ops) if isinstance(op, O.IPVS_OPS)]
        other_idx = [i for i, op in enumerate(ops) if not isinstance(op, O.IPVS_OPS)]
        # Order: links, sysctls and addresses before IPVS (the planner puts
        # them first), removals after. Split the non-IPVS ops around the IPVS block.
        first_ipvs = ipvs_idx[0] if ipvs_idx else len(ops)
        before = [i for i in other_idx if i < first_ipvs]
        after = [i for i in other_idx if i > first_ipvs]

        ipr = None
        rtnl = None

        def run_other(indices: list[int]) -> None:
            nonlocal ipr, rtnl
            for i in indices:
                op = ops[i]
                try:
                    if isinstance(op, O.SetSysctl):
                        _apply_sysctl(op, self.netns)
                    elif isinstance(op, O.SetIPVSTimeouts):
                        with_connection(self.netns, self.batch_conn(), set_timeouts, dict(op.timeouts))
                    elif isinstance(op, (*O.ROUTING_OPS, O.AddAddress, O.DelAddress)):
                        if rtnl is None:
                            rtnl = RtnlWriter(self.netns)
                        rtnl.apply(op)
                    elif isinstance(op, O.NFT_OPS):
                        _apply_nft(op, self.netns)
                    elif isinstance(op, O.FOU_OPS):
                        apply_fou(op, self.netns)
                    elif isinstance(op, O.GRE_CSUM_OPS):
                        apply_gre_csum(op, self.netns)
                    elif isinstance(op, (O.AddLink, O.SetLinkUp, O.DelLink)):
                        if ipr is None:
                            ipr = open_iproute(self.netns)
                        _apply_link(ipr, op)
                    else:
                        results[i] = f"EOPNOTSUPP: this engine cannot apply {type(op).__name__}"
                        continue
                except Exception as e:  # noqa: BLE001
                    results[i] = normalize(op, exc_text(e, O.describe(op)))

        try:
            run_other(before)
            if ipvs_idx:
                sub = [ops[i] for i in ipvs_idx]
                try:
                    conn = self.batch_conn()
                except Exception as e:  # noqa: BLE001 - nothing sent: every op failed, the next pass retries
                    log.exception("IPVS netlink socket not opened")
                    errs = [normalize(op, exc_text(e, "opening the IPVS netlink socket")) for op in sub]
                else:
                    try:
                        errs = apply_ipvs_batch(conn, sub)
                    except Exception as e:  # noqa: BLE001
                        # Socket-level trouble after (maybe) sending: every op of
                        # this run has an unknown outcome (settle keeps the
                        # claims); the next reconcile observes and repairs.
                        log.exception("batched IPVS apply failed")
                        self.close()
                        errs = [unknown_result(exc_text(e, "batched IPVS send"))] * len(sub)
                for i, e in zip(ipvs_idx, errs):
                    results[i] = e
            run_other(after)
        finally:
            if ipr is not None:
                ipr.close()
            if rtnl is not None:
                rtnl.close()
        return list(zip(ops, results))


def apply(ops: Iterable[O.Op], netns: str | None = None) -> list[Result]:
    """One-shot apply (opens and closes its sockets)."""
    a = Applier(netns)
    try:
        return a.apply(ops)
    finally:
        a.close()
