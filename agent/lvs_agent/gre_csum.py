"""GRE real servers that receive checksummed GRE (``tunnel: {type: gre, checksum: csum}``).

IPVS's GRE tunnel with ``csum`` sets the C bit and a checksum in every GRE
header. The receiving kernel (ip_tunnel_rcv) drops a packet whose checksum
flag differs from the device's ``icsum``: the fallback device gre0, which
decapsulates IPVS's keyless GRE, expects none, so every packet counts as a
CRC error and the service is dead. A backend VIP with ``tunnelType: gre`` and
``tunnelChecksum: csum`` therefore makes the agent set ``icsum`` on gre0
(``ip tunnel change gre0 mode gre icsum``; netlink's changelink refuses the
fallback device, the SIOCCHGTUNNEL ioctl takes it), and clear it again when
no longer wanted, if it set it. The device then drops GRE without a checksum:
one node cannot serve both kinds (IPv4; ip6gre0 is left as it is).

Ownership and observation ride on the links map as fou.py's ports do:
``gre-csum:gre0`` is in ``Observed.links`` while gre0 expects checksums and
in ``Ownership.links`` while the agent is the one that set it.
"""
from __future__ import annotations

import ctypes
import fcntl
import socket
import struct

from lvs_model.nodespec import NodeSpec

from . import ops as O
from .netns import in_netns
from .state import LinkState, Observed, Ownership

KEY_PREFIX = "gre-csum:"
DEVICE = "gre0"
SIOCGETTUNNEL, SIOCCHGTUNNEL = 0x89F0, 0x89F3  # SIOCDEVPRIVATE + 0, + 3
# struct ip_tunnel_parm: name[16], int link, __be16 i_flags, o_flags, __be32 i_key, o_key, struct iphdr
PARM = struct.Struct("=16si2s2s4s4s20s")
GRE_CSUM = 0x8000  # in i_flags, network order


def key(device: str) -> str:
    return KEY_PREFIX + device


def is_key(name: str) -> bool:
    return name.startswith(KEY_PREFIX)


def wanted(spec: NodeSpec) -> set[str]:
    return {key(DEVICE) for v in spec.backend_vips
            if v.method == "tun" and v.tunnel_type == "gre" and v.tunnel_csum == "csum" and ":" not in v.address}


def plan(desired: NodeSpec, observed: Observed, owned: Ownership) -> tuple[list[O.Op], list[O.Op]]:
    """(devices to make expect checksums, devices of ours to put back)."""
    want = wanted(desired)
    on = [O.AddGreCsum(k[len(KEY_PREFIX):]) for k in sorted(want - observed.links.keys())]
    off = [O.DelGreCsum(k[len(KEY_PREFIX):]) for k in sorted(owned.links)
           if is_key(k) and k not in want and k in observed.links]
    return on, off


def _ioctl(sock: socket.socket, cmd: int, device: str, parm: bytes) -> bytes:
    buf = ctypes.create_string_buffer(parm, PARM.size)
    ifreq = struct.pack("16sP16x", device.encode(), ctypes.addressof(buf))
    fcntl.ioctl(sock.fileno(), cmd, ifreq)
    return buf.raw


def _parm(sock: socket.socket, device: str) -> list:
    empty = PARM.pack(device.encode(), 0, b"\0\0", b"\0\0", b"\0" * 4, b"\0" * 4, b"\0" * 20)
    return list(PARM.unpack(_ioctl(sock, SIOCGETTUNNEL, device, empty)))


def _flags(parm: list) -> int:
    return struct.unpack("!H", parm[2])[0]


def read_csum(links: dict[str, LinkState], netns: str | None = None) -> dict[str, LinkState]:
    """``{gre-csum:gre0: ...}`` when gre0 exists and expects checksums; the
    ioctl is made only where gre0 exists (most nodes have no GRE at all)."""
    if DEVICE not in links:
        return {}
    try:
        with in_netns(netns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            on = _flags(_parm(sock, DEVICE)) & GRE_CSUM
    except OSError:
        return {}
    return {key(DEVICE): LinkState("gre", True)} if on else {}


def apply_op(op: O.Op, netns: str | None = None) -> None:
    match op:
        case O.AddGreCsum(dev) | O.DelGreCsum(dev):
            with in_netns(netns):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with sock:
                parm = _parm(sock, dev)
                flags = _flags(parm)
                flags = flags | GRE_CSUM if isinstance(op, O.AddGreCsum) else flags & ~GRE_CSUM
                parm[0] = dev.encode()
                parm[2] = struct.pack("!H", flags)
                _ioctl(sock, SIOCCHGTUNNEL, dev, PARM.pack(*parm))
        case _:
            raise TypeError(op)
