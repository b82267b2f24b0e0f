"""FOU/GUE receive ports for GUE real servers (``ip fou add port N gue``).

IPVS's GUE tunnel (``tunnel: {type: gue, port: N}``) sends each packet as
UDP to port N of the real server, a GUE header, then the original packet as
IPIP (ip6ip6 for IPv6). The real server's kernel decapsulates it only if a
FOU socket of type GUE listens on N (the ``fou`` module, generic netlink
family "fou"); without one the datagram meets a closed UDP port and is
dropped. So a backend VIP with ``tunnelType: gue`` and a ``tunnelPort``
makes the agent open that port, beside bringing tunl0 (ip6tnl0) up with the
VIP, where the inner packet lands.

pyroute2 0.9.7 has no "fou" family: the three messages (FOU_CMD_ADD, DEL,
GET as a dump) are built here, a genl header and u8/be16 attributes
(include/uapi/linux/fou.h).

Ownership: a port the agent opened is recorded in ``Ownership.links`` under a
key no device can have (``fou:ipv4:6080:gue``: ':' is not allowed in an
interface name), and the observer lists the kernel's FOU ports in
``Observed.links`` under the same keys. The record file keeps its format,
and the planner's rule for links -- remove only what the record lists and the
kernel still holds -- carries over as it is. A port somebody else opened is
never recorded, so never closed.
"""
from __future__ import annotations

import errno
import socket
import struct

from lvs_model.nodespec import NodeSpec

from . import ops as O
from .genl import NLM_F_ACK, NLM_F_DUMP, GenlSocket, nla, parse_attrs
from .state import LinkState, Observed, Ownership

KEY_PREFIX = "fou:"
FOU_GENL_NAME = b"fou"
FOU_GENL_VERSION = 1
FOU_CMD_ADD, FOU_CMD_DEL, FOU_CMD_GET = 1, 2, 3
FOU_ATTR_PORT, FOU_ATTR_AF, FOU_ATTR_IPPROTO, FOU_ATTR_TYPE = 1, 2, 3, 4
TYPES = {1: "direct", 2: "gue"}  # FOU_ENCAP_DIRECT, FOU_ENCAP_GUE
TYPE_CODES = {v: k for k, v in TYPES.items()}
FAMILIES = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}
FAMILY_NAMES = {v: k for k, v in FAMILIES.items()}


# --------------------------------------------------------------------------
# Keys and the plan (pure)
# --------------------------------------------------------------------------

def key(family: str, port: int, kind: str = "gue") -> str:
    return f"{KEY_PREFIX}{family}:{port}:{kind}"


def is_key(name: str) -> bool:
    return name.startswith(KEY_PREFIX)


def parse_key(name: str) -> tuple[str, int, str]:
    """``fou:ipv4:6080:gue`` -> ("ipv4", 6080, "gue")."""
    _, family, port, kind = name.split(":")
    return family, int(port), kind


def wanted(spec: NodeSpec) -> set[str]:
    """The GUE ports this node's backend VIPs need (the outer packet's family
    is the VIP's: IPVS tunnels within one family)."""
    return {key("ipv6" if ":" in v.address else "ipv4", v.tunnel_port)
            for v in spec.backend_vips
            if v.method == "tun" and v.tunnel_type == "gue" and v.tunnel_port}


def plan(desired: NodeSpec, observed: Observed, owned: Ownership) -> tuple[list[O.Op], list[O.Op]]:
    """(ports to open, ports of ours to close). A wanted port the kernel already
    has (ours, or opened by hand) is left as it is; one held with another type
    (a direct FOU port) makes the add fail with EEXIST, reported, not taken."""
    want = wanted(desired)
    adds = [O.AddFouPort(*parse_key(k)[:2]) for k in sorted(want - observed.links.keys())]
    dels = [O.DelFouPort(*parse_key(k)[:2]) for k in sorted(owned.links)
            if is_key(k) and k not in want and k in observed.links]
    return adds, dels


# --------------------------------------------------------------------------
# The kernel (generic netlink family "fou")
# --------------------------------------------------------------------------

class FouConnection(GenlSocket):
    """One generic netlink socket in ``netns`` speaking "fou"."""

    def _request(self, family: int, cmd: int, body: bytes, flags: int):
        return self.request(family, cmd, body, flags, FOU_GENL_VERSION, what=f"fou command {cmd}")

    def family(self, load: bool) -> int | None:
        """The family's id; None without the fou module. ``load``: ask by
        name, which loads the module if need be."""
        return self.family_id(FOU_GENL_NAME, load)

    def ports(self) -> dict[str, LinkState]:
        """Every FOU port of this namespace, by key (none without the module)."""
        fam = self.family(load=False)
        if fam is None:
            return {}
        out: dict[str, LinkState] = {}
        for s, e, buf in self._request(fam, FOU_CMD_GET, b"", NLM_F_DUMP):
            a = parse_attrs(buf, s, e)
            if FOU_ATTR_PORT not in a or FOU_ATTR_AF not in a:
                continue
            port = struct.unpack_from("!H", buf, a[FOU_ATTR_PORT][0])[0]
            af = buf[a[FOU_ATTR_AF][0]]
            kind = TYPES.get(buf[a[FOU_ATTR_TYPE][0]], "unknown") if FOU_ATTR_TYPE in a else "unknown"
            if af in FAMILY_NAMES:
                out[key(FAMILY_NAMES[af], port, kind)] = LinkState("fou", True)
        return out

    def _port_message(self, family: str, port: int, kind: str = "gue") -> bytes:
        return (nla(FOU_ATTR_PORT, struct.pack("!H", port)) + nla(FOU_ATTR_AF, bytes([FAMILIES[family]]))
                + nla(FOU_ATTR_TYPE, bytes([TYPE_CODES[kind]])))

    def add(self, family: str, port: int) -> None:
        fam = self.family(load=True)
        if fam is None:
            raise OSError(errno.EOPNOTSUPP, "no generic netlink family fou (is the fou module there?)")
        for _ in self._request(fam, FOU_CMD_ADD, self._port_message(family, port), NLM_F_ACK):
            pass

    def delete(self, family: str, port: int) -> None:
        fam = self.family(load=False)
        if fam is None:
            return  # no module, no port
        # The kernel finds the port by port and family (the type is not compared).
        body = nla(FOU_ATTR_PORT, struct.pack("!H", port)) + nla(FOU_ATTR_AF, bytes([FAMILIES[family]]))
        for _ in self._request(fam, FOU_CMD_DEL, body, NLM_F_ACK):
            pass


def read_ports(netns: str | None = None) -> dict[str, LinkState]:
    """The kernel's FOU ports as ``Observed.links`` entries; none when they
    cannot be read (no permission: the planner then sees none of ours either)."""
    try:
        with FouConnection(netns) as c:
            return c.ports()
    except OSError:
        return {}


def apply_op(op: O.Op, netns: str | None = None) -> None:
    with FouConnection(netns) as c:
        match op:
            case O.AddFouPort(family, port):
                c.add(family, port)
            case O.DelFouPort(family, port):
                c.delete(family, port)
            case _:
                raise TypeError(op)
