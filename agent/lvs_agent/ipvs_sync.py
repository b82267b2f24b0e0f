"""The kernel's IPVS connection sync daemon over generic netlink
(``ipvsadm --start-daemon / --stop-daemon / -L --daemon``).

A director running the master daemon multicasts its connection entries
(224.0.0.81:8848 by default) on one device; a director running the backup
daemon with the same sync id adds them to its own connection table, so when
a VIP moves to it the held connections find their entry (and their real
server) there. The daemons are per network namespace, like the IPVS table;
a namespace can run one master and one backup at once (each director of a
group runs both, so whichever holds a VIP sends and the others receive).

What the sync carries: each connection's addresses, ports, protocol, state,
flags, timeout and its real server (the backup creates the entry even when
its own table lacks that dest); persistence templates too. What it does not:
the connection tracking entries (unless ``conntrack`` sync is configured
separately), the IPVS services themselves (every director must program them:
hot standby), and entries newer than the last sync message (the master sends
a TCP connection when its state changes and after ``sync_threshold``
packets, so a connection opened a moment before a failover may be missing).

pyroute2 0.9.7 declares IPVS_CMD_ATTR_DAEMON but neither encodes nor decodes
its nested attributes, so the three messages are built here (the nested
layout of include/uapi/linux/ip_vs.h, ip_vs_genl_new_daemon and
ip_vs_genl_fill_daemon in net/netfilter/ipvs/ip_vs_ctl.c):

====================  ====  ========================================
attribute             type  payload
====================  ====  ========================================
STATE                 1     u32: 1 master, 2 backup
MCAST_IFN             2     NUL-terminated name (< 16 bytes)
SYNC_ID               3     u32 (0-255 on the wire)
SYNC_MAXLEN           4     u16 (0: the device's MTU decides)
MCAST_GROUP           5     IPv4 address, network order
MCAST_GROUP6          6     IPv6 address
MCAST_PORT            7     u16, host order (unlike the group)
MCAST_TTL             8     u8
====================  ====  ========================================

NEW_DAEMON needs STATE, MCAST_IFN and SYNC_ID; DEL_DAEMON only STATE;
GET_DAEMON is a dump, one message per running daemon. The port is in host
order (the kernel stores it as given, ipvsadm sends it so): sent big-endian,
8848 reads back as 36898.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Iterable, Iterator

from .genl import NLA_F_NESTED, NLM_F_ACK, NLM_F_DUMP, U16, U32, nla, parse_attrs
from .netlink_batch import IPVSConnection

IPVS_CMD_NEW_DAEMON, IPVS_CMD_DEL_DAEMON, IPVS_CMD_GET_DAEMON = 9, 10, 11
IPVS_CMD_ATTR_DAEMON = 3
(DAEMON_STATE, DAEMON_MCAST_IFN, DAEMON_SYNC_ID, DAEMON_SYNC_MAXLEN, DAEMON_MCAST_GROUP,
 DAEMON_MCAST_GROUP6, DAEMON_MCAST_PORT, DAEMON_MCAST_TTL) = range(1, 9)
STATES = {"master": 1, "backup": 2}
STATE_NAMES = {v: k for k, v in STATES.items()}
IFNAME_MAX = 15


@dataclass(frozen=True)
class SyncDaemon:
    """One sync daemon. Zero / empty fields are the kernel's defaults (not
    sent): group 224.0.0.81, port 8848, ttl 1, maxlen from the MTU."""
    state: str  # "master" | "backup"
    ifname: str
    sync_id: int
    maxlen: int = 0
    group: str = ""
    port: int = 0
    ttl: int = 0

    def __post_init__(self):
        if self.state not in STATES:
            raise ValueError(f"sync daemon state must be master or backup, not {self.state!r}")
        if not self.ifname or len(self.ifname.encode()) > IFNAME_MAX:
            raise ValueError(f"sync daemon interface name must be 1-{IFNAME_MAX} bytes: {self.ifname!r}")
        if not 0 <= self.sync_id <= 255:
            raise ValueError(f"sync id must be 0-255 (one byte on the wire): {self.sync_id}")


# --------------------------------------------------------------------------
# Messages (pure)
# --------------------------------------------------------------------------

def encode(d: SyncDaemon) -> bytes:
    """The nested IPVS_CMD_ATTR_DAEMON of a NEW_DAEMON request."""
    body = (nla(DAEMON_STATE, U32.pack(STATES[d.state])) + nla(DAEMON_MCAST_IFN, d.ifname.encode() + b"\0")
            + nla(DAEMON_SYNC_ID, U32.pack(d.sync_id)))
    if d.maxlen:
        body += nla(DAEMON_SYNC_MAXLEN, U16.pack(d.maxlen))
    if d.group:
        ip = ipaddress.ip_address(d.group)
        body += nla(DAEMON_MCAST_GROUP if ip.version == 4 else DAEMON_MCAST_GROUP6, ip.packed)
    if d.port:
        body += nla(DAEMON_MCAST_PORT, U16.pack(d.port))
    if d.ttl:
        body += nla(DAEMON_MCAST_TTL, bytes([d.ttl]))
    return nla(IPVS_CMD_ATTR_DAEMON | NLA_F_NESTED, body)


def encode_stop(state: str) -> bytes:
    """The nested attribute of a DEL_DAEMON request: the state alone."""
    return nla(IPVS_CMD_ATTR_DAEMON | NLA_F_NESTED, nla(DAEMON_STATE, U32.pack(STATES[state])))


def decode(buf, start: int, end: int) -> SyncDaemon | None:
    """One GET_DAEMON answer's attributes (after the genl header); None when
    it carries no daemon."""
    top = parse_attrs(buf, start, end)
    if IPVS_CMD_ATTR_DAEMON not in top:
        return None
    a = parse_attrs(buf, *top[IPVS_CMD_ATTR_DAEMON])

    def raw(t: int) -> bytes:
        s, e = a.get(t, (0, 0))
        return bytes(buf[s:e])

    def num(t: int, fmt: struct.Struct) -> int:
        b = raw(t)
        return fmt.unpack_from(b)[0] if len(b) >= fmt.size else 0

    group = ""
    if len(raw(DAEMON_MCAST_GROUP6)) == 16:
        group = str(ipaddress.IPv6Address(raw(DAEMON_MCAST_GROUP6)))
    elif len(raw(DAEMON_MCAST_GROUP)) == 4:
        group = str(ipaddress.IPv4Address(raw(DAEMON_MCAST_GROUP)))
    ttl = raw(DAEMON_MCAST_TTL)
    return SyncDaemon(STATE_NAMES.get(num(DAEMON_STATE, U32), "master"),
                      raw(DAEMON_MCAST_IFN).split(b"\0")[0].decode(), num(DAEMON_SYNC_ID, U32),
                      num(DAEMON_SYNC_MAXLEN, U16), group, num(DAEMON_MCAST_PORT, U16), ttl[0] if ttl else 0)


def format_daemon(d: SyncDaemon) -> str:
    """The line ``ipvsadm -L --daemon`` prints for it."""
    return (f"{d.state} sync daemon (mcast={d.ifname}, syncid={d.sync_id}, maxlen={d.maxlen}, "
            f"group={d.group}, port={d.port}, ttl={d.ttl})")


# --------------------------------------------------------------------------
# The kernel
# --------------------------------------------------------------------------

def _request(conn: IPVSConnection, cmd: int, body: bytes, flags: int) -> Iterator[tuple[int, int, object]]:
    """Send one request; yield (attributes start, end, buffer) of each answer
    until the ack or the dump's end. An error ack raises NetlinkError."""
    return conn.request(conn.family, cmd, body, flags, what=f"IPVS sync daemon, command {cmd}")


def list_daemons(conn: IPVSConnection) -> list[SyncDaemon]:
    """The sync daemons running in the connection's namespace."""
    out = []
    for s, e, buf in _request(conn, IPVS_CMD_GET_DAEMON, b"", NLM_F_DUMP):
        d = decode(buf, s, e)
        if d is not None:
            out.append(d)
    return out


def start(conn: IPVSConnection, d: SyncDaemon) -> None:
    """Start one daemon (EEXIST when one of that state already runs)."""
    for _ in _request(conn, IPVS_CMD_NEW_DAEMON, encode(d), NLM_F_ACK):
        pass


def stop(conn: IPVSConnection, state: str) -> None:
    """Stop the daemon of that state (ESRCH when none runs)."""
    for _ in _request(conn, IPVS_CMD_DEL_DAEMON, encode_stop(state), NLM_F_ACK):
        pass


def plan(want: Iterable[SyncDaemon], running: Iterable[SyncDaemon],
         ours: Iterable[str] = ("master", "backup")) -> tuple[list[str], list[SyncDaemon]]:
    """(states to stop, daemons to start) to get from ``running`` to ``want``.

    A daemon runs in the kernel with the settings it started with: a change
    (device, sync id, group) is a stop and a start. Only states in ``ours``
    (those the agent started) are ever stopped: a daemon somebody started by
    hand in a state the agent does not want is left alone."""
    want_by = {d.state: d for d in want}
    have_by = {d.state: d for d in running}
    stops = sorted(s for s, d in have_by.items() if s in set(ours) and
                   (s not in want_by or not same(want_by[s], d)))
    starts = [d for s, d in sorted(want_by.items()) if s not in have_by or s in stops]
    return stops, starts


def same(want: SyncDaemon, have: SyncDaemon) -> bool:
    """Does the running daemon ``have`` match ``want``? Fields left at 0 in
    ``want`` take whatever default the kernel filled in."""
    return all(getattr(want, f) in (getattr(have, f), 0, "") if f not in ("state", "ifname", "sync_id")
               else getattr(want, f) == getattr(have, f)
               for f in ("state", "ifname", "sync_id", "maxlen", "group", "port", "ttl"))


__all__ = ["SyncDaemon", "decode", "encode", "encode_stop", "format_daemon", "list_daemons", "plan", "same",
           "start", "stop"]
