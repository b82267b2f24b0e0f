"""Who answers ARP for an address, as a host on the segment sees it: one ARP
request, every reply's sender MAC. The failover tests use it to show that
exactly one director answers for a VIP (two answers are an address
conflict)."""
from __future__ import annotations

import socket
import struct
import time

from lvs_agent.announce import BROADCAST, ETH_P_ARP, hw_address

from .netns import call_in_netns


def arp_answers(ns: str, source: str, ip: str, dev: str = "eth0", wait: float = 1.0) -> set[str]:
    """The sender MACs of every ARP reply for ``ip`` to one request sent from
    ``source`` (an address of ``dev``) in ``ns``, collected for ``wait`` s."""
    def probe() -> set[str]:
        mac = hw_address(dev)
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        try:
            s.bind((dev, ETH_P_ARP))
            s.settimeout(0.1)
            s.send(BROADCAST + mac + struct.pack("!H", ETH_P_ARP)
                   + struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, socket.inet_aton(source),
                                 b"\0" * 6, socket.inet_aton(ip)))
            out, end = set(), time.monotonic() + wait
            while time.monotonic() < end:
                try:
                    data = s.recv(128)
                except socket.timeout:
                    continue
                op, sha, spa = struct.unpack_from("!H6s4s", data, 20)
                if op == 2 and spa == socket.inet_aton(ip):
                    out.add(sha.hex(":"))
            return out
        finally:
            s.close()
    return call_in_netns(ns, probe)
