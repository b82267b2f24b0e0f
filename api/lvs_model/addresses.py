"""IP address text without an ``ipaddress`` object per address.

Node specs and IPVS dumps carry one address per real server, almost always
already in canonical form. The libc's inet_pton/inet_ntop pair tells in well
under a microsecond whether a text is canonical (it round-trips unchanged);
only other texts go through ``ipaddress``, so every result and every error
stays ``ipaddress``'s.
"""
from __future__ import annotations

import ipaddress
import struct
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton

_V6_WORDS = struct.Struct("!4I")
_V6_HALVES = struct.Struct("!QQ")


def ipv4_value(text: str) -> int | None:
    """The address's integer when ``text`` is an IPv4 address in canonical
    dotted-quad form (the form ``ipaddress`` prints), else None."""
    try:
        packed = inet_pton(AF_INET, text)
    except (OSError, ValueError, TypeError):
        return None
    return int.from_bytes(packed, "big") if inet_ntop(AF_INET, packed) == text else None


def is_host_ipv4(text: str) -> bool:
    """True when ``text`` is a canonical IPv4 address of one routable host:
    not unspecified, loopback, link-local, multicast or broadcast."""
    n = ipv4_value(text)
    return (n is not None and n != 0 and n != 0xFFFFFFFF  # unspecified, broadcast
            and n >> 24 != 127 and n >> 16 != 0xA9FE and n >> 28 != 0xE)  # 127/8, 169.254/16, 224/4


def is_host(text: str) -> bool:
    """True when ``text`` is an address of one routable host in canonical
    form, either family (IPv6: not unspecified, loopback, IPv4-mapped,
    link-local or multicast); False says "ask ipaddress", not "refused"."""
    if type(text) is not str:
        return False
    if ":" not in text:
        return is_host_ipv4(text)
    if not _NTOP6_OK or "." in text:
        return False
    try:
        packed = inet_pton(AF_INET6, text)
    except (OSError, ValueError):
        return False
    if inet_ntop(AF_INET6, packed) != text:
        return False
    hi, lo = _V6_HALVES.unpack(packed)
    return not ((hi == 0 and (lo <= 1 or lo >> 32 == 0xFFFF))  # ::, ::1, ::ffff:0:0/96
                or hi >> 54 == 0x3FA or hi >> 56 == 0xFF)  # fe80::/10, ff00::/8


def _ntop6_is_ipaddress() -> bool:
    """Whether this libc spells IPv6 as ``ipaddress`` does (RFC 5952: the
    first longest run of two or more zero groups compressed, lowercase) for
    addresses without an embedded IPv4 part, checked on the cases where
    spellings are known to differ."""
    probes = ("0:0:1:0:0:1:0:0", "1:0:0:2:0:0:0:3", "1:0:2:0:3:0:4:0", "0:0:0:0:1:0:0:0",
              "fd00:0:0:0:0:0:0:0", "0:0:0:0:0:0:0:1", "ABCD:0:0:0:0:0:0:EF01", "1:2:3:4:5:6:7:0")
    for p in probes:
        text = inet_ntop(AF_INET6, inet_pton(AF_INET6, p))
        if "." not in text and text != str(ipaddress.IPv6Address(p)):
            return False
    return True


_NTOP6_OK = _ntop6_is_ipaddress()


def canonical(text: str) -> str:
    """``str(ipaddress.ip_address(text))``, its ValueError included, without
    building the object when ``text`` is already canonical."""
    if ":" not in text:
        if ipv4_value(text) is not None:
            return text
    elif _NTOP6_OK and "." not in text:
        try:
            if inet_ntop(AF_INET6, inet_pton(AF_INET6, text)) == text:
                return text
        except (OSError, ValueError):
            pass
    return str(ipaddress.ip_address(text))


def sort_key(address: str) -> tuple[int, int]:
    """(4 or 6, the address as an integer), as ``ipaddress`` orders
    addresses: the C parser for the common forms, ``ipaddress`` for the rest
    (a scope id, ...), which also raises its ValueError."""
    for family, version in ((AF_INET, 4), (AF_INET6, 6)):
        try:
            return (version, int.from_bytes(inet_pton(family, address), "big"))
        except (OSError, ValueError):
            pass
    ip = ipaddress.ip_address(address)
    return (ip.version, int(ip))


def words(address: str) -> tuple[int, ...]:
    """The address as 32-bit words in network order, as libipvs compares
    them: one word for IPv4, four for IPv6; "" is 0.0.0.0."""
    if not address:
        return (0,)
    n = ipv4_value(address)
    if n is not None:
        return (n,)
    if ":" in address:
        try:
            return _V6_WORDS.unpack(inet_pton(AF_INET6, address))
        except (OSError, ValueError):
            pass
    ip = ipaddress.ip_address(address)
    n = int(ip)
    if ip.version == 4:
        return (n,)
    return tuple((n >> s) & 0xFFFFFFFF for s in (96, 64, 32, 0))
