"""Takeover announcement frames (lvs_agent.announce), field by field: what a
Linux neighbour on the segment needs to treat them as gratuitous ARP
(arp_is_garp: request, sender IP == target IP) or an overriding NA.

Each fails before the change: there was no announce module.
"""
from __future__ import annotations

import struct

from lvs_agent.announce import garp_frame, mac_bytes, na_message

MAC = mac_bytes("02:00:00:aa:bb:cc")


def test_garp_is_a_broadcast_arp_request_with_sender_ip_equal_to_target_ip():
    f = garp_frame(MAC, "192.168.2.100")
    assert len(f) == 14 + 28
    assert f[0:6] == b"\xff" * 6 and f[6:12] == MAC and f[12:14] == b"\x08\x06"
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = struct.unpack("!HHBBH6s4s6s4s", f[14:])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1)
    assert sha == MAC and spa == tpa == bytes([192, 168, 2, 100]) and tha == b"\0" * 6


def test_na_is_unsolicited_with_override_and_the_target_link_layer_address():
    m = na_message(MAC, "fd00:2::100")
    typ, code, csum, flags = struct.unpack("!BBHI", m[:8])
    assert (typ, code, csum) == (136, 0, 0)
    assert flags & 0x20000000 and not flags & 0x40000000 and not flags & 0x80000000  # O, not S, not R
    assert m[8:24] == bytes.fromhex("fd000002000000000000000000000100")
    assert m[24:26] == b"\x02\x01" and m[26:32] == MAC  # option 2, length 1 (8 bytes)


def test_a_gratuitous_arp_from_another_host_names_its_vip():
    from lvs_agent.announce import announced_vip
    other = mac_bytes("02:00:00:00:00:02")
    assert announced_vip(garp_frame(other, "192.168.2.100"), MAC) == "192.168.2.100"
    assert announced_vip(garp_frame(MAC, "192.168.2.100"), MAC) is None  # our own
    request = bytearray(garp_frame(other, "192.168.2.100"))
    request[38:42] = bytes([192, 168, 2, 1])  # an ordinary request: target is another address
    assert announced_vip(bytes(request), MAC) is None
