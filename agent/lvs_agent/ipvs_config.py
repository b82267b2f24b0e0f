"""IPVS connection timeouts over generic netlink (``ipvsadm --set`` / ``-L --timeout``).

pyroute2 0.9.7 declares IPVS_CMD_ATTR_TIMEOUT_* but decodes them as "hex"
and has no call for IPVS_CMD_GET_CONFIG / SET_CONFIG, so these two messages
are built here and sent on the engine's own generic-netlink connection
(netlink_batch.IPVSConnection, a genl.GenlSocket): a genl header and up to three u32
attributes. The timeouts are per network namespace, like the IPVS table.

SET_CONFIG starts from the kernel's current values and replaces only the
attributes the message carries (ip_vs_genl_set_config), so a name left out
keeps its value; 0 is never sent (the kernel reads it as "unchanged" too).
"""
from __future__ import annotations

from typing import Mapping

from lvs_model.nodespec import TIMEOUT_NAMES

from .genl import NLM_F_ACK, U32, nla, parse_attrs
from .netlink_batch import IPVSConnection

IPVS_CMD_SET_CONFIG = 12
IPVS_CMD_GET_CONFIG = 13
# IPVS_CMD_ATTR_TIMEOUT_TCP, _TCP_FIN, _UDP (linux/ip_vs.h)
ATTRS = dict(zip(TIMEOUT_NAMES, (4, 5, 6)))


def _request(conn: IPVSConnection, cmd: int, body: bytes = b"") -> dict[int, int]:
    """Send one request, read to its ack; the u32 attributes of the reply."""
    out: dict[int, int] = {}
    what = f"IPVS {'set' if cmd == IPVS_CMD_SET_CONFIG else 'get'} config"
    for s, e, buf in conn.request(conn.family, cmd, body, NLM_F_ACK, what=what):
        for t, (a, b) in parse_attrs(buf, s, e).items():
            if b - a >= 4:
                out[t] = U32.unpack_from(buf, a)[0]
    return out


def get_timeouts(conn: IPVSConnection) -> dict[str, int]:
    """name (tcp, tcpfin, udp) -> seconds, as ``ipvsadm -L --timeout`` shows them."""
    got = _request(conn, IPVS_CMD_GET_CONFIG)
    return {name: got[attr] for name, attr in ATTRS.items() if attr in got}


def set_timeouts(conn: IPVSConnection, timeouts: Mapping[str, int]) -> None:
    """Set the named timeouts (seconds > 0); the others keep their values."""
    body = b"".join(nla(ATTRS[n], U32.pack(int(v))) for n, v in sorted(timeouts.items()) if int(v) > 0)
    if body:
        _request(conn, IPVS_CMD_SET_CONFIG, body)


def with_connection(netns: str | None, conn: IPVSConnection | None, fn, *args):
    """``fn(conn, *args)`` on ``conn``, or on a connection of its own in ``netns``."""
    if conn is not None:
        return fn(conn, *args)
    own = IPVSConnection(netns)
    try:
        return fn(own, *args)
    finally:
        own.close()
