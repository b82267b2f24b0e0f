"""Takeover announcements: gratuitous ARP (IPv4) and unsolicited neighbour
advertisements (IPv6).

When a VIP moves to another director, the client, router and real servers on
the segment still map it to the old director's MAC address until their
neighbour entry ages out (tens of seconds), so the new holder tells them at
once. Linux updates an existing neighbour entry from a gratuitous ARP request
(sender IP == target IP, RFC 5227's announcement; ``arp_is_garp`` lets it
override the entry's lock time) and from an NA with the Override flag; neither
creates an entry a host did not have, which is what is wanted.

Frames are built here (pure) and sent on an AF_PACKET socket (ARP) or a raw
ICMPv6 socket (NA) in the director's namespace. Both socket kinds need
CAP_NET_RAW besides the CAP_NET_ADMIN the agent already has.
"""
from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

from .netns import in_netns

BROADCAST = b"\xff" * 6
ETH_P_ARP = 0x0806
ARPOP_REQUEST = 1
SIOCGIFHWADDR = 0x8927
ICMP6_NA = 136
NA_OVERRIDE = 0x20000000  # the O flag in the NA's 32-bit flags word
ALL_NODES = "ff02::1"


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def garp_frame(mac: bytes, vip: str) -> bytes:
    """An Ethernet broadcast ARP request for ``vip`` from ``vip`` (``arping -U``)."""
    ip = socket.inet_aton(vip)
    eth = BROADCAST + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, ARPOP_REQUEST, mac, ip, b"\0" * 6, ip)
    return eth + arp


def na_message(mac: bytes, vip: str) -> bytes:
    """An unsolicited neighbour advertisement for ``vip`` (Override set,
    Solicited clear) with the target link-layer address option. The checksum
    is left 0: the kernel fills it in for raw ICMPv6 sockets."""
    target = ipaddress.IPv6Address(vip).packed
    return struct.pack("!BBHI16sBB6s", ICMP6_NA, 0, 0, NA_OVERRIDE, target, 2, 1, mac)


def hw_address(ifname: str, netns: str | None = None) -> bytes:
    """The device's MAC address (SIOCGIFHWADDR; no capability needed)."""
    with in_netns(netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        got = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("256s", ifname.encode()[:15]))
    finally:
        s.close()
    return got[18:24]


SIOCGIFFLAGS = 0x8913
IFF_RUNNING = 0x40  # up, and the driver has a carrier (operstate up)


def link_running(ifname: str, netns: str | None = None) -> bool:
    """Whether the device is up with a carrier (SIOCGIFFLAGS; no capability
    needed). A device that does not exist is not running."""
    with in_netns(netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        got = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, struct.pack("256s", ifname.encode()[:15]))
    except OSError:
        return False
    finally:
        s.close()
    return bool(struct.unpack_from("H", got, 16)[0] & IFF_RUNNING)


def send_garp(ifname: str, vip: str, netns: str | None = None, count: int = 1) -> None:
    mac = hw_address(ifname, netns)
    with in_netns(netns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    try:
        s.bind((ifname, ETH_P_ARP))
        for _ in range(count):
            s.send(garp_frame(mac, vip))
    finally:
        s.close()


def send_na(ifname: str, vip: str, netns: str | None = None, count: int = 1) -> None:
    mac = hw_address(ifname, netns)
    with in_netns(netns):
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        index = socket.if_nametoindex(ifname) if netns is None else _index(ifname, netns)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        for _ in range(count):
            s.sendto(na_message(mac, vip), (ALL_NODES, 0, 0, index))
    finally:
        s.close()


def _index(ifname: str, netns: str) -> int:
    with in_netns(netns):
        return socket.if_nametoindex(ifname)


def announce(ifname: str, vip: str, netns: str | None = None, count: int = 1) -> None:
    """Tell the segment that ``vip`` is here now (ARP or NA by its family)."""
    if ":" in vip:
        send_na(ifname, vip, netns, count)
    else:
        send_garp(ifname, vip, netns, count)


def announced_vip(frame: bytes, mine: bytes) -> str | None:
    """The VIP a gratuitous ARP frame announces, when another host sent it
    (sender IP == target IP, sender MAC not ``mine``); else None."""
    if len(frame) < 42 or frame[12:14] != struct.pack("!H", ETH_P_ARP):
        return None
    htype, ptype, hlen, plen, _op, sha, spa, _tha, tpa = struct.unpack_from("!HHBBH6s4s6s4s", frame, 14)
    if (htype, ptype, hlen, plen) != (1, 0x0800, 6, 4) or spa != tpa or sha == mine:
        return None
    return socket.inet_ntoa(spa)


class ArpWatcher:
    """Gratuitous ARP from other hosts, seen on one device: how a director
    cut off from the API server learns that another director has taken its
    VIP over (the new holder announces it), and stops answering for it.

    ``poll()`` reads what arrived since the last call without blocking."""

    def __init__(self, ifname: str, netns: str | None = None):
        self.ifname = ifname
        self.mine = hw_address(ifname, netns)
        with in_netns(netns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        self.sock.bind((ifname, ETH_P_ARP))
        self.sock.setblocking(False)

    def poll(self) -> set[str]:
        out = set()
        while True:
            try:
                frame = self.sock.recv(128)
            except BlockingIOError:
                return out
            vip = announced_vip(frame, self.mine)
            if vip is not None:
                out.add(vip)

    def close(self) -> None:
        self.sock.close()
