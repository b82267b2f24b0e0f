"""Apply planned operations to the kernel.

``apply(ops)`` returns ``[(op, None | "ERRNAME: message")]`` in the order of
``ops``; an error text starts with the errno name (EEXIST, ENOENT, ...) because
``plan.settle`` reads it. Rules:

- one failing op never stops the others;
- a failed AddService skips the AddDests of that service (reported as
  ``ECANCELED``): after EEXIST the service is somebody else's, and adding our
  dests to it would touch a foreign object;
- removing what is already gone is success (DelService ESRCH/ENOENT, DelDest
  ENOENT, DelAddress EADDRNOTAVAIL, DelLink ENODEV);
- the kernel's fallback tunnel devices (tunl0, ip6tnl0, gre0) appear when
  their module loads and cannot be deleted: "adding" one loads the module,
  "deleting" one brings it down.

IPVS ops go through ``netlink_batch`` (many messages per ``send``, acks read in
bulk) when it is available, else one pyroute2 call each. Both paths give the
same results; the kernel tests prove it.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
from typing import Iterable, Sequence

from lvs_model.nodespec import ServiceKey

from . import ops as O
from .observe import (in_netns, open_iproute, open_ipvs, pyroute2_dest, pyroute2_dest_key,
                      pyroute2_service, pyroute2_service_key, write_sysctl)
from .plan import FALLBACK_TUNNELS

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

def _ipvs_one(ipvs, op: O.Op) -> None:
    match op:
        case O.AddService(s):
            ipvs.service("add", service=pyroute2_service(s))
        case O.SetService(s):
            # "set", never "update": pyroute2's "update" sends DEL (DESIGN.md §5).
            ipvs.service("set", service=pyroute2_service(s))
        case O.DelService(k):
            ipvs.service("del", service=pyroute2_service_key(k))
        case O.AddDest(s, d):
            ipvs.dest("add", service=pyroute2_service_key(s.key), dest=pyroute2_dest(d))
        case O.SetDest(s, d):
            ipvs.dest("set", service=pyroute2_service_key(s.key), dest=pyroute2_dest(d))
        case O.DelDest(k, dk):
            ipvs.dest("del", service=pyroute2_service_key(k), dest=pyroute2_dest_key(dk))
        case _:
            raise TypeError(op)


def _ipvs_what(op: O.Op) -> str:
    return O.describe(op)


def ipvs_phases(ops: Sequence[O.Op]) -> tuple[list[int], list[int]]:
    """Split IPVS op indices into (service adds, everything else in order).

    Adds go first so that their results are known before any of their dests
    is sent; nothing else in a plan depends on a service being added (a plan
    never both adds and deletes one key), so the reordering is safe.
    """
    adds = [i for i, op in enumerate(ops) if isinstance(op, O.AddService)]
    rest = [i for i, op in enumerate(ops) if not isinstance(op, O.AddService)]
    return adds, rest


def apply_ipvs_pyroute2(ipvs, ops: Sequence[O.Op]) -> list[str | None]:
    out: list[str | None] = [None] * len(ops)
    failed: dict[ServiceKey, str] = {}
    adds, rest = ipvs_phases(ops)
    for i in adds + rest:
        op = ops[i]
        if isinstance(op, O.AddDest) and op.key in failed:
            out[i] = f"ECANCELED: not attempted: adding service {op.key} failed ({failed[op.key]})"
            continue
        try:
            _ipvs_one(ipvs, op)
        except Exception as e:  # noqa: BLE001 - every failure becomes a per-op result
            out[i] = exc_text(e, _ipvs_what(op))
            if isinstance(op, O.AddService):
                failed[op.key] = err_code(out[i])
        out[i] = normalize(op, out[i])
    return out


def apply_ipvs_batch(conn, ops: Sequence[O.Op]) -> list[str | None]:
    """The same contract as apply_ipvs_pyroute2, through netlink_batch."""
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


def _apply_link_addr(ipr, op: O.Op) -> None:
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
        case O.AddAddress(dev, addr, plen):
            kw = {"flags": IFA_F_NODAD} if ":" in addr else {}
            ipr.addr("add", index=_ifindex(ipr, dev), address=addr, prefixlen=plen, **kw)
        case O.DelAddress(dev, addr, plen):
            idx = ipr.link_lookup(ifname=dev)
            if not idx:
                return
            ipr.addr("del", index=idx[0], address=addr, prefixlen=plen)
        case _:
            raise TypeError(op)


def _apply_sysctl(op: O.SetSysctl, netns: str | None) -> None:
    write_sysctl(op.name, op.value, netns)


# --------------------------------------------------------------------------
# Everything
# --------------------------------------------------------------------------

class Applier:
    """Applies op lists in one network namespace.

    ``ipvs_conn`` is a netlink_batch.IPVSConnection (or None for pyroute2
    only); pyroute2 sockets are opened per ``apply`` call and closed after,
    so an Applier may be used from any thread.
    """

    def __init__(self, netns: str | None = None, ipvs_conn=None, use_batch: bool = True):
        self.netns = netns
        self._conn = ipvs_conn
        self.use_batch = use_batch
        self.last_path = ""  # "batch" | "pyroute2" | "" (for tests and benchmarks)

    def batch_conn(self):
        """The netlink_batch connection (opened on first use), or None."""
        return self._batch_conn()

    def _batch_conn(self):
        if not self.use_batch:
            return None
        if self._conn is None:
            try:
                from .netlink_batch import IPVSConnection
                self._conn = IPVSConnection(self.netns)
            except Exception:  # noqa: BLE001 - no fast path here: per-op pyroute2 calls
                log.debug("netlink_batch unavailable", exc_info=True)
                self.use_batch = False
                return None
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

        def run_other(indices: list[int]) -> None:
            nonlocal ipr
            for i in indices:
                op = ops[i]
                try:
                    if isinstance(op, O.SetSysctl):
                        _apply_sysctl(op, self.netns)
                    elif isinstance(op, (O.AddLink, O.SetLinkUp, O.DelLink, O.AddAddress, O.DelAddress)):
                        if ipr is None:
                            ipr = open_iproute(self.netns)
                        _apply_link_addr(ipr, op)
                    else:
                        results[i] = f"EOPNOTSUPP: this engine cannot apply {type(op).__name__}"
                        continue
                except Exception as e:  # noqa: BLE001
                    results[i] = normalize(op, exc_text(e, O.describe(op)))

        try:
            run_other(before)
            if ipvs_idx:
                sub = [ops[i] for i in ipvs_idx]
                errs = None
                conn = self._batch_conn()
                if conn is not None:
                    try:
                        errs = apply_ipvs_batch(conn, sub)
                    except Exception as e:  # noqa: BLE001
                        # Socket-level trouble after (maybe) sending: replaying
                        # through pyroute2 could double-apply, so report every
                        # op of this run; the next reconcile observes and repairs.
                        log.exception("batched IPVS apply failed")
                        self.close()
                        errs = [exc_text(e, "batched IPVS send")] * len(sub)
                    self.last_path = "batch"
                if errs is None:
                    ipvs = open_ipvs(self.netns)
                    try:
                        errs = apply_ipvs_pyroute2(ipvs, sub)
                        self.last_path = "pyroute2"
                    finally:
                        ipvs.close()
                for i, e in zip(ipvs_idx, errs):
                    results[i] = e
            run_other(after)
        finally:
            if ipr is not None:
                ipr.close()
        return list(zip(ops, results))


def apply(ops: Iterable[O.Op], netns: str | None = None, *, use_batch: bool = True) -> list[Result]:
    """One-shot apply (opens and closes its sockets)."""
    a = Applier(netns, use_batch=use_batch)
    try:
        return a.apply(ops)
    finally:
        a.close()
