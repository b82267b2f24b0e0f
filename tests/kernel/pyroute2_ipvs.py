"""IPVS through pyroute2, one call per op: the kernel tests' independent
oracle for the agent's batched netlink client (netlink_batch). The agent
reads and writes IPVS only through that client; this module reads the kernel
back with pyroute2's own decoder, and writes the same ops with pyroute2's own
encoder, so a mistake in netlink_batch or ipvs_codec shows as a difference.
"""
from __future__ import annotations

import socket
from dataclasses import replace
from typing import Sequence

from lvs_agent import ops as O
from lvs_agent.apply import err_code, exc_text, ipvs_phases, normalize
from lvs_agent.ipvs_codec import (DestRuntime, IPVSTable, STAT_FIELDS, Stats, decode_dest, decode_service,
                                  ipv6_netmask_encode, svc_flags)
from lvs_agent.netns import netlink_socket
from lvs_model import kernel as K
from lvs_model.nodespec import Dest, DestKey, Service, ServiceKey

NETLINK_GENERIC = 16


def open_ipvs(netns: str | None = None):
    from pyroute2 import IPVS
    if not netns:
        return IPVS()
    return IPVS(fileno=netlink_socket(netns, NETLINK_GENERIC).detach())


def _stats_from(attrs: dict) -> Stats:
    raw = attrs.get("IPVS_SVC_ATTR_STATS64") or attrs.get("IPVS_DEST_ATTR_STATS64") \
        or attrs.get("IPVS_SVC_ATTR_STATS") or attrs.get("IPVS_DEST_ATTR_STATS")
    if not raw:
        return Stats()
    vals = dict(raw.get("attrs", []))
    return Stats(*(int(vals.get("IPVS_STATS_ATTR_" + f.upper(), 0)) for f in STAT_FIELDS))


def _service_from_pyroute2(msg) -> tuple[Service, dict]:
    a = dict(msg.get("IPVS_CMD_ATTR_SERVICE")["attrs"])
    flags = a.get("IPVS_SVC_ATTR_FLAGS") or {"flags": 0}
    svc = decode_service(a.get("IPVS_SVC_ATTR_AF", 2), a.get("IPVS_SVC_ATTR_PROTOCOL", 0),
                         a.get("IPVS_SVC_ATTR_ADDR"), a.get("IPVS_SVC_ATTR_PORT", 0),
                         a.get("IPVS_SVC_ATTR_FWMARK", 0), a.get("IPVS_SVC_ATTR_SCHED_NAME", ""),
                         flags["flags"], a.get("IPVS_SVC_ATTR_TIMEOUT", 0),
                         a.get("IPVS_SVC_ATTR_NETMASK"))
    return svc, a


def _dest_from_pyroute2(msg) -> tuple[Dest, dict]:
    a = dict(msg.get("IPVS_CMD_ATTR_DEST")["attrs"])
    d = decode_dest(a["IPVS_DEST_ATTR_ADDR"], a.get("IPVS_DEST_ATTR_PORT", 0),
                    a.get("IPVS_DEST_ATTR_FWD_METHOD", 0), a.get("IPVS_DEST_ATTR_WEIGHT", 0),
                    a.get("IPVS_DEST_ATTR_U_THRESH", 0), a.get("IPVS_DEST_ATTR_L_THRESH", 0),
                    a.get("IPVS_DEST_ATTR_TUN_TYPE", 0), a.get("IPVS_DEST_ATTR_TUN_PORT", 0),
                    a.get("IPVS_DEST_ATTR_TUN_FLAGS", 0))
    return d, a


def pyroute2_service(svc: Service):
    """The pyroute2 IPVSService for a model service: every field the kernel
    needs for add/set, netmask always explicit (fwmark and IPv6 get EINVAL
    without one)."""
    from pyroute2 import IPVSService
    fam = K.FAMILIES[svc.family]
    kw: dict = {"af": fam}
    if svc.fwmark:
        kw["fwmark"] = svc.fwmark
    else:
        kw.update(protocol=K.PROTOCOLS[svc.protocol], addr=svc.address, port=svc.port)
    mask = svc.netmask
    kw["netmask"] = ipv6_netmask_encode(int(mask)) if svc.family == "ipv6" else mask
    kw["sched_name"] = svc.scheduler
    kw["flags"] = {"flags": svc_flags(svc), "mask": 0xFFFFFFFF}
    kw["timeout"] = svc.persistence_timeout
    return IPVSService(**kw)


def pyroute2_service_key(key: ServiceKey):
    from pyroute2 import IPVSService
    fam = K.FAMILIES[key.family]
    if key.fwmark:
        return IPVSService(af=fam, fwmark=key.fwmark)
    return IPVSService(af=fam, protocol=K.PROTOCOLS[key.protocol], addr=key.address, port=key.port)


def pyroute2_dest(d: Dest):
    from pyroute2 import IPVSDest
    return IPVSDest(addr=d.address, port=d.port, fwd_method=K.METHODS[d.method], weight=d.weight,
                    u_thresh=d.upper_threshold, l_thresh=d.lower_threshold,
                    tun_type=K.TUNNEL_TYPES[d.tunnel_type], tun_port=socket.htons(d.tunnel_port),
                    tun_flags=K.TUNNEL_CSUM[d.tunnel_csum])


def pyroute2_dest_key(dk: DestKey):
    from pyroute2 import IPVSDest
    return IPVSDest(addr=dk.address, port=dk.port)


def read_ipvs_pyroute2(ipvs, with_stats: bool = False) -> IPVSTable:
    """Dump the table through pyroute2 (the reference decoder)."""
    from pyroute2 import IPVSService
    table = IPVSTable()
    for msg in ipvs.service("dump"):
        svc, attrs = _service_from_pyroute2(msg)
        key = svc.key
        if attrs.get("IPVS_SVC_ATTR_PE_NAME"):
            table.pe_names[key] = attrs["IPVS_SVC_ATTR_PE_NAME"]
        if with_stats:
            table.service_stats[key] = _stats_from(attrs)
        sel = IPVSService.from_message(msg)
        dests = []
        for dmsg in ipvs.dest("dump", service=sel):
            d, da = _dest_from_pyroute2(dmsg)
            dests.append(d)
            table.dest_runtime[(key, d.key)] = DestRuntime(
                da.get("IPVS_DEST_ATTR_ACTIVE_CONNS", 0), da.get("IPVS_DEST_ATTR_INACT_CONNS", 0),
                da.get("IPVS_DEST_ATTR_PERSIST_CONNS", 0),
                _stats_from(da) if with_stats else Stats())
        table.services[key] = replace(svc, dests=tuple(dests))
    return table


def _ipvs_one(ipvs, op: O.Op) -> None:
    match op:
        case O.AddService(s):
            ipvs.service("add", service=pyroute2_service(s))
        case O.SetService(s):
            # "set", never "update": pyroute2's "update" sends DEL (it deletes).
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


def apply_ipvs_pyroute2(ipvs, ops: Sequence[O.Op]) -> list[str | None]:
    """The Applier's contract for IPVS ops (apply.py), one pyroute2 call each."""
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


def oracle_read(netns: str | None, with_stats: bool = False) -> IPVSTable:
    """The table in ``netns`` as pyroute2 reads it."""
    ipvs = open_ipvs(netns)
    try:
        return read_ipvs_pyroute2(ipvs, with_stats)
    finally:
        ipvs.close()


def oracle_apply(netns: str | None, ops: Sequence[O.Op]) -> list[str | None]:
    """``ops`` (IPVS only) written in ``netns`` through pyroute2: one result each."""
    ipvs = open_ipvs(netns)
    try:
        return apply_ipvs_pyroute2(ipvs, ops)
    finally:
        ipvs.close()
