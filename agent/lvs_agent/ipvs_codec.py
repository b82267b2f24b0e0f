"""IPVS generic-netlink messages, encoded and decoded: pure, no sockets, no caches.

The one place that knows the IPVS attribute layout (include/uapi/linux/ip_vs.h,
net/netfilter/ipvs/ip_vs_ctl.c: ip_vs_genl_parse_service/_dest, _fill_service/_dest):

- a service key is AF + FWMARK, or AF + PROTOCOL + ADDR + PORT;
- add/set carry SCHED_NAME, FLAGS {flags, mask}, TIMEOUT and NETMASK too
  (the kernel says EINVAL without all four);
- a full dest carries ADDR, PORT, FWD_METHOD, WEIGHT, U_THRESH, L_THRESH
  (+ ADDR_FAMILY and the TUN_* attributes, the tunnel port big-endian).

The decoding is exact: a service the engine programmed from a spec comes back
equal to the spec's (the HASHED flag masked out, the kernel's netmask turned
back into the model's text, the tunnel port back to host order), so the
planner's plain equality finds "nothing to do". The transport (genl.GenlSocket)
and the caches of a connection live in netlink_batch; observe reads through it.
"""
from __future__ import annotations

import operator
import socket
import struct
from dataclasses import dataclass, field
from typing import Callable, Iterable

from lvs_model import kernel as K
from lvs_model.addresses import canonical
from lvs_model.nodespec import Dest, DestKey, Service, ServiceKey

from . import ops as O
from .genl import NLA, NLH_GENL, NLM_F_ACK, NLM_F_REQUEST, U16, U32, U64, nest, nla, pad, parse_attrs

IPVS_GENL_NAME = b"IPVS"
IPVS_GENL_VERSION = 1
CMD_NEW_SERVICE, CMD_SET_SERVICE, CMD_DEL_SERVICE, CMD_GET_SERVICE = 1, 2, 3, 4
CMD_NEW_DEST, CMD_SET_DEST, CMD_DEL_DEST, CMD_GET_DEST = 5, 6, 7, 8
CMD_GET_INFO = 15
CMD_ATTR_SERVICE, CMD_ATTR_DEST = 1, 2
SVC_AF, SVC_PROTOCOL, SVC_ADDR, SVC_PORT, SVC_FWMARK = 1, 2, 3, 4, 5
SVC_SCHED_NAME, SVC_FLAGS, SVC_TIMEOUT, SVC_NETMASK = 6, 7, 8, 9
SVC_STATS, SVC_PE_NAME, SVC_STATS64 = 10, 11, 12
DEST_ADDR, DEST_PORT, DEST_FWD_METHOD, DEST_WEIGHT, DEST_U_THRESH, DEST_L_THRESH = 1, 2, 3, 4, 5, 6
DEST_ACTIVE_CONNS, DEST_INACT_CONNS, DEST_PERSIST_CONNS = 7, 8, 9
DEST_STATS, DEST_ADDR_FAMILY, DEST_STATS64 = 10, 11, 12
DEST_TUN_TYPE, DEST_TUN_PORT, DEST_TUN_FLAGS = 13, 14, 15
INFO_VERSION, INFO_CONN_TAB_SIZE = 1, 2

# --------------------------------------------------------------------------
# The decoded table
# --------------------------------------------------------------------------

STAT_FIELDS = ("conns", "inpkts", "outpkts", "inbytes", "outbytes",
               "cps", "inpps", "outpps", "inbps", "outbps")


@dataclass(frozen=True)
class Stats:
    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0
    cps: int = 0
    inpps: int = 0
    outpps: int = 0
    inbps: int = 0
    outbps: int = 0


@dataclass(frozen=True)
class DestRuntime:
    """What the kernel counts for a dest; not part of the desired state."""

    active: int = 0
    inactive: int = 0
    persistent: int = 0
    stats: Stats = Stats()


@dataclass
class IPVSTable:
    """The kernel's IPVS table: model objects plus everything ipvsadm prints
    that the model does not carry (counters, a foreign service's persistence
    engine). ``services`` keeps the kernel's dump order (ipvsadm sorts from it)."""

    services: dict[ServiceKey, Service] = field(default_factory=dict)
    service_stats: dict[ServiceKey, Stats] = field(default_factory=dict)
    dest_runtime: dict[tuple[ServiceKey, DestKey], DestRuntime] = field(default_factory=dict)
    pe_names: dict[ServiceKey, str] = field(default_factory=dict)
    version: int = 0x010201
    conn_tab_size: int = 4096

    @property
    def version_text(self) -> str:
        v = self.version
        return f"{(v >> 16) & 0xFF}.{(v >> 8) & 0xFF}.{v & 0xFF}"


# --------------------------------------------------------------------------
# Field conversions (model <-> kernel values)
# --------------------------------------------------------------------------

def ip_text(text: str) -> str:
    """The model's spelling of an address as inet_ntop wrote it. IPv4 text
    already is (dotted decimal without leading zeros, on every libc); IPv6
    text is checked (inet_ntop writes ::ffff:1.2.3.4 where ipaddress may not)."""
    return text if ":" not in text else canonical(text)


def ipv6_netmask_encode(plen: int) -> str:
    """The kernel keeps an IPv6 persistence netmask as a prefix length in a
    __be32 read in host order; pyroute2 types the attribute as an IPv4
    address, so this is the dotted text whose bytes carry that integer."""
    return socket.inet_ntoa(struct.pack("=I", plen))


def ipv6_netmask_decode(value: str | int) -> int:
    if isinstance(value, int):
        return value
    return struct.unpack("=I", socket.inet_aton(value))[0]


def sched_flag_names(scheduler: str, flags: int) -> tuple[str, ...]:
    """Scheduler flag bits -> model names (sh-port, ...). Bits a scheduler
    has no name for come back as ipvsadm spells them: flag-1/2/3."""
    out = []
    for i, bit in enumerate((K.SVC_F_SCHED1, K.SVC_F_SCHED2, K.SVC_F_SCHED3), 1):
        if not flags & bit:
            continue
        name = next((n for n, (scheds, b) in K.SCHED_FLAGS.items()
                     if b == bit and scheduler in scheds), f"flag-{i}")
        out.append(name)
    return tuple(out)


def sched_flag_bits(names: Iterable[str]) -> int:
    bits = 0
    for n in names:
        if n in K.SCHED_FLAGS:
            bits |= K.SCHED_FLAGS[n][1]
        elif n.startswith("flag-"):
            bits |= K.SVC_F_SCHED1 << (int(n[5:]) - 1)
    return bits


def svc_flags(svc: Service) -> int:
    """Service.flags, tolerant of flag-N names read from a foreign service."""
    bits = 0
    if svc.persistence_timeout:
        bits |= K.SVC_F_PERSISTENT
    if svc.one_packet:
        bits |= K.SVC_F_ONEPACKET
    return bits | sched_flag_bits(svc.scheduler_flags)


def decode_service(family_code: int, protocol_code: int, address: str | None, port: int,
                   fwmark: int, sched: str, flags: int, timeout: int,
                   netmask: str | int | None) -> Service:
    """Kernel service attributes -> Service (no dests)."""
    family = K.FAMILY_BY_CODE.get(family_code, str(family_code))
    persistent = bool(flags & K.SVC_F_PERSISTENT)
    if family == "ipv6":
        plen = ipv6_netmask_decode(netmask) if netmask is not None else 128
        mask = "" if plen == 128 else str(plen)
    else:
        text = netmask if isinstance(netmask, str) else (
            socket.inet_ntoa(struct.pack("!I", netmask)) if netmask is not None else "255.255.255.255")
        mask = "" if text == "255.255.255.255" else text
    if fwmark:
        protocol, address, port = "", "", 0
    else:
        protocol = K.PROTOCOL_BY_CODE.get(protocol_code, str(protocol_code))
        address = ip_text(address) if address else ""
    return Service(
        family=family, protocol=protocol, address=address, port=port, fwmark=fwmark,
        scheduler=sched, scheduler_flags=sched_flag_names(sched, flags),
        # The kernel keeps the timeout of a non-persistent service (0 when
        # ipvsadm or we made it); the model only knows it with persistence.
        persistence_timeout=timeout if persistent else 0,
        persistence_netmask=mask, one_packet=bool(flags & K.SVC_F_ONEPACKET))


def decode_dest(address: str, port: int, fwd: int, weight: int, u_thresh: int, l_thresh: int,
                tun_type: int, tun_port_be: int, tun_flags: int) -> Dest:
    """Kernel dest attributes -> Dest; ``tun_port_be`` is the big-endian
    attribute read in host order (as pyroute2 reads it)."""
    # LOCALNODE: the kernel forces it when the dest address is local to this
    # node; not a method a spec can ask for (the engine maps it back).
    method = "local" if fwd & 0x7 == K.FWD_LOCALNODE else K.METHOD_BY_CODE.get(fwd & 0x7, "nat")
    return Dest(
        address=ip_text(address), port=port, weight=weight, method=method,
        tunnel_type=K.TUNNEL_TYPE_BY_CODE.get(tun_type, "ipip"),
        tunnel_port=socket.ntohs(tun_port_be),
        tunnel_csum=K.TUNNEL_CSUM_BY_CODE.get(tun_flags & 0x3, "none"),
        upper_threshold=u_thresh, lower_threshold=l_thresh)


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------

# A full dest, one pack: nest header, ADDR, PORT(be), FWD, WEIGHT, U, L,
# ADDR_FAMILY, TUN_TYPE, TUN_PORT(be), TUN_FLAGS.
_DEST_TAIL = "HHH2x HHI HHI HHI HHI HHH2x HHB3x HHH2x HHH2x"
DEST_FULL = {
    4: struct.Struct("=HH HH4s " + _DEST_TAIL),
    16: struct.Struct("=HH HH16s " + _DEST_TAIL),
}
# A dest key (delete): nest header, ADDR, PORT(be), ADDR_FAMILY.
DEST_KEY = {
    4: struct.Struct("=HH HH4s HHH2x HHH2x"),
    16: struct.Struct("=HH HH16s HHH2x HHH2x"),
}


def _addr_bytes(address: str) -> tuple[int, bytes]:
    if ":" in address:
        return socket.AF_INET6, socket.inet_pton(socket.AF_INET6, address)
    return socket.AF_INET, socket.inet_pton(socket.AF_INET, address)


def service_key_attrs(key: ServiceKey) -> bytes:
    """The attributes that name a service (inside IPVS_CMD_ATTR_SERVICE)."""
    af = K.FAMILIES[key.family]
    if key.fwmark:
        return nla(SVC_AF, U16.pack(af)) + nla(SVC_FWMARK, U32.pack(key.fwmark))
    _, raw = _addr_bytes(key.address)
    return (nla(SVC_AF, U16.pack(af)) + nla(SVC_PROTOCOL, U16.pack(K.PROTOCOLS[key.protocol]))
            + nla(SVC_ADDR, raw) + nla(SVC_PORT, struct.pack("!H", key.port)))


def service_key_nest(key: ServiceKey) -> bytes:
    """IPVS_CMD_ATTR_SERVICE holding just the key."""
    return nest(CMD_ATTR_SERVICE, service_key_attrs(key))


def service_netmask_bytes(svc: Service) -> bytes:
    mask = svc.netmask
    if svc.family == "ipv6":
        return U32.pack(int(mask))  # prefix length, read by the kernel in host order
    return socket.inet_aton(mask)


def service_full_attrs(svc: Service) -> bytes:
    return (service_key_attrs(svc.key)
            + nla(SVC_SCHED_NAME, svc.scheduler.encode() + b"\0")
            + nla(SVC_FLAGS, struct.pack("=II", svc_flags(svc), 0xFFFFFFFF))
            + nla(SVC_TIMEOUT, U32.pack(svc.persistence_timeout))
            + nla(SVC_NETMASK, service_netmask_bytes(svc)))


def dest_full(d: Dest) -> bytes:
    """IPVS_CMD_ATTR_DEST with every field of ``d``."""
    af, raw = _addr_bytes(d.address)
    st = DEST_FULL[len(raw)]
    return st.pack(
        st.size, CMD_ATTR_DEST,
        4 + len(raw), DEST_ADDR, raw,
        6, DEST_PORT, socket.htons(d.port),
        8, DEST_FWD_METHOD, K.METHODS[d.method],
        8, DEST_WEIGHT, d.weight,
        8, DEST_U_THRESH, d.upper_threshold,
        8, DEST_L_THRESH, d.lower_threshold,
        6, DEST_ADDR_FAMILY, af,
        5, DEST_TUN_TYPE, K.TUNNEL_TYPES[d.tunnel_type],
        6, DEST_TUN_PORT, socket.htons(d.tunnel_port),
        6, DEST_TUN_FLAGS, K.TUNNEL_CSUM[d.tunnel_csum])


def dest_key(dk: DestKey) -> bytes:
    """IPVS_CMD_ATTR_DEST naming a dest (for delete)."""
    af, raw = _addr_bytes(dk.address)
    st = DEST_KEY[len(raw)]
    return st.pack(st.size, CMD_ATTR_DEST, 4 + len(raw), DEST_ADDR, raw,
                   6, DEST_PORT, socket.htons(dk.port), 6, DEST_ADDR_FAMILY, af)


def op_command(op: O.Op, key: Callable[[ServiceKey], bytes] = service_key_nest) -> tuple[int, bytes]:
    """(IPVS command, attributes) of one change; ``key`` makes the service
    key nest (a connection passes a cached one)."""
    match op:
        case O.AddDest(s, d) | O.SetDest(s, d):
            return (CMD_NEW_DEST if isinstance(op, O.AddDest) else CMD_SET_DEST), key(s.key) + dest_full(d)
        case O.DelDest(k, dk):
            return CMD_DEL_DEST, key(k) + dest_key(dk)
        case O.AddService(s) | O.SetService(s):
            return ((CMD_NEW_SERVICE if isinstance(op, O.AddService) else CMD_SET_SERVICE),
                    nest(CMD_ATTR_SERVICE, service_full_attrs(s)))
        case O.DelService(k):
            return CMD_DEL_SERVICE, key(k)
    raise TypeError(op)


def genl_message(family: int, cmd: int, body: bytes, flags: int, seq: int, port: int = 0) -> bytes:
    """nlmsghdr + genlmsghdr (IPVS version) + ``body``."""
    return NLH_GENL.pack(20 + len(body), family, flags, seq, port, cmd, IPVS_GENL_VERSION, 0) + body


def op_message(op: O.Op, family: int, seq: int,
               key: Callable[[ServiceKey], bytes] = service_key_nest,
               flags: int = NLM_F_REQUEST | NLM_F_ACK) -> bytes:
    """The request that makes one change (``flags``: with NLM_F_ACK unless
    the sender reads failures only)."""
    cmd, body = op_command(op, key)
    return genl_message(family, cmd, body, flags, seq)


# --------------------------------------------------------------------------
# Decoding (from a buffer and attribute spans, as genl.parse_attrs gives them)
# --------------------------------------------------------------------------

def uint(buf, span, default: int = 0) -> int:
    """An unsigned attribute of any width (u8..u64)."""
    if span is None:
        return default
    s, e = span
    n = e - s
    if n >= 8:
        return U64.unpack_from(buf, s)[0]
    if n >= 4:
        return U32.unpack_from(buf, s)[0]
    if n >= 2:
        return U16.unpack_from(buf, s)[0]
    if n >= 1:
        return buf[s]
    return default


def _be16(buf, span, default: int = 0) -> int:
    if span is None:
        return default
    return struct.unpack_from("!H", buf, span[0])[0]


def _str(buf, span) -> str:
    if span is None:
        return ""
    return bytes(buf[span[0]:span[1]]).split(b"\0", 1)[0].decode(errors="replace")


def _addr(buf, span, af: int) -> str:
    s, e = span
    if af == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, bytes(buf[s:s + 16]))
    return socket.inet_ntop(socket.AF_INET, bytes(buf[s:s + 4]))


_STAT_TYPES = range(1, 11)


def decode_stats(buf, span) -> Stats:
    """An IPVS_*_ATTR_STATS(64) nest."""
    if span is None:
        return Stats()
    a = parse_attrs(buf, span[0], span[1])
    return Stats(*(uint(buf, a.get(t)) for t in _STAT_TYPES))


def service_stats_span(a: dict):
    return a.get(SVC_STATS64) or a.get(SVC_STATS)


def decode_service_attrs(buf, a: dict, with_stats: bool) -> tuple[Service, Stats | None, str, bytes]:
    """The attributes of one IPVS_CMD_ATTR_SERVICE -> (service without dests,
    stats or None, persistence engine name, the key attributes as the kernel
    sent them: re-sent as they are to dump this service's dests)."""
    af = uint(buf, a.get(SVC_AF), socket.AF_INET)
    fwmark = uint(buf, a.get(SVC_FWMARK))
    addr = _addr(buf, a[SVC_ADDR], af) if SVC_ADDR in a and not fwmark else None
    flags_span = a.get(SVC_FLAGS)
    flags = U32.unpack_from(buf, flags_span[0])[0] if flags_span else 0
    nm_span = a.get(SVC_NETMASK)
    if nm_span is None:
        netmask = None
    elif af == socket.AF_INET6:
        netmask = U32.unpack_from(buf, nm_span[0])[0]
    else:
        netmask = socket.inet_ntoa(bytes(buf[nm_span[0]:nm_span[0] + 4]))
    svc = decode_service(af, uint(buf, a.get(SVC_PROTOCOL)), addr, _be16(buf, a.get(SVC_PORT)),
                         fwmark, _str(buf, a.get(SVC_SCHED_NAME)), flags,
                         uint(buf, a.get(SVC_TIMEOUT)), netmask)
    key_parts = [bytes(buf[sp[0] - 4:sp[0] - 4 + pad(sp[1] - sp[0] + 4)])
                 for t in (SVC_AF, SVC_PROTOCOL, SVC_ADDR, SVC_PORT, SVC_FWMARK)
                 if (sp := a.get(t)) is not None]
    stats = decode_stats(buf, service_stats_span(a)) if with_stats else None
    return svc, stats, _str(buf, a.get(SVC_PE_NAME)), b"".join(key_parts)


def decode_dest_attrs(buf, s: int, e: int, svc_af: int, with_stats: bool) -> tuple[Dest, DestRuntime]:
    """One IPVS_CMD_ATTR_DEST payload, attribute by attribute (any order, any
    kernel version)."""
    a = parse_attrs(buf, s, e)
    af = uint(buf, a.get(DEST_ADDR_FAMILY), svc_af)
    d = decode_dest(_addr(buf, a[DEST_ADDR], af), _be16(buf, a.get(DEST_PORT)),
                    uint(buf, a.get(DEST_FWD_METHOD)), uint(buf, a.get(DEST_WEIGHT)),
                    uint(buf, a.get(DEST_U_THRESH)), uint(buf, a.get(DEST_L_THRESH)),
                    uint(buf, a.get(DEST_TUN_TYPE)),
                    socket.ntohs(_be16(buf, a.get(DEST_TUN_PORT))),
                    uint(buf, a.get(DEST_TUN_FLAGS)))
    rt = DestRuntime(uint(buf, a.get(DEST_ACTIVE_CONNS)), uint(buf, a.get(DEST_INACT_CONNS)),
                     uint(buf, a.get(DEST_PERSIST_CONNS)),
                     decode_stats(buf, a.get(DEST_STATS64) or a.get(DEST_STATS)) if with_stats else Stats())
    return d, rt


# A dest as ip_vs_genl_fill_dest writes it (unchanged since the tunnel
# attributes came in 5.3): ADDR (always 16 bytes), PORT, FWD_METHOD, WEIGHT,
# TUN_TYPE, TUN_PORT, TUN_FLAGS, U_THRESH, L_THRESH, ACTIVE_CONNS,
# INACT_CONNS, PERSIST_CONNS, ADDR_FAMILY, then the stats nests. One unpack
# reads it; the attribute headers are checked, and any other layout takes
# decode_dest_attrs.
DEST_DUMPED = struct.Struct("=HH16s HHH2x HHI HHI HHB3x HHH2x HHH2x HHI HHI HHI HHI HHI HHH2x")
_DUMPED_HDRS = operator.itemgetter(0, 1, 3, 4, 6, 7, 9, 10, 12, 13, 15, 16, 18, 19, 21, 22, 24, 25,
                                   27, 28, 30, 31, 33, 34, 36, 37)
_DUMPED_HDRS_WANT = (20, DEST_ADDR, 6, DEST_PORT, 8, DEST_FWD_METHOD, 8, DEST_WEIGHT, 5, DEST_TUN_TYPE,
                     6, DEST_TUN_PORT, 6, DEST_TUN_FLAGS, 8, DEST_U_THRESH, 8, DEST_L_THRESH,
                     8, DEST_ACTIVE_CONNS, 8, DEST_INACT_CONNS, 8, DEST_PERSIST_CONNS, 6, DEST_ADDR_FAMILY)
# (addr16, port_be, fwd, weight, tun_type, tun_port_be, tun_flags, u, l, af)
_DUMPED_KEY = operator.itemgetter(2, 5, 8, 11, 14, 17, 20, 23, 26, 38)
_DUMPED_RT = operator.itemgetter(29, 32, 35)


def dumped_dest_fields(buf, s: int, e: int) -> tuple[tuple, tuple[int, int, int]] | None:
    """A dest in the kernel's usual layout, one unpack: (its configuration
    fields, a hashable key for them; (active, inactive, persistent)); None
    when the layout differs."""
    if e - s < DEST_DUMPED.size:
        return None
    vals = DEST_DUMPED.unpack_from(buf, s)
    if _DUMPED_HDRS(vals) != _DUMPED_HDRS_WANT:
        return None
    return _DUMPED_KEY(vals), _DUMPED_RT(vals)


def decode_dumped_dest(fields: tuple) -> Dest:
    """The Dest of dumped_dest_fields' configuration fields."""
    addr16, port_be, fwd, weight, tun_type, tun_port_be, tun_flags, u, l, af = fields
    raw = addr16 if af == socket.AF_INET6 else addr16[:4]
    return decode_dest(socket.inet_ntop(af, raw), socket.ntohs(port_be), fwd, weight, u, l,
                       tun_type, tun_port_be, tun_flags)


def dumped_dest_stats(buf, s: int, e: int) -> Stats:
    """The counters after a dest in the usual layout."""
    a = parse_attrs(buf, s + DEST_DUMPED.size, e)
    return decode_stats(buf, a.get(DEST_STATS64) or a.get(DEST_STATS))


def first_attr_span(buf, s: int, e: int, typ: int) -> tuple[int, int] | None:
    """The span of attribute ``typ`` in s..e (the first one checked without a walk)."""
    ln, t = NLA.unpack_from(buf, s)
    if t & 0x3FFF == typ:
        return s + 4, s + ln
    return parse_attrs(buf, s, e).get(typ)


def decode_info(buf, s: int, e: int) -> tuple[int, int]:
    """IPVS_CMD_GET_INFO's answer -> (version code, connection table size)."""
    a = parse_attrs(buf, s, e)
    return uint(buf, a.get(INFO_VERSION), 0x010201), uint(buf, a.get(INFO_CONN_TAB_SIZE), 4096)


# --------------------------------------------------------------------------
# Whole messages (what a test or a recorder holds)
# --------------------------------------------------------------------------

def reply_service(msg: bytes, with_stats: bool = False) -> tuple[Service, Stats | None, str, bytes]:
    """One whole IPVS service message (nlmsghdr included) -> decode_service_attrs."""
    span = parse_attrs(msg, 20, len(msg)).get(CMD_ATTR_SERVICE)
    if span is None:
        raise ValueError("not an IPVS service message")
    return decode_service_attrs(msg, parse_attrs(msg, *span), with_stats)


def reply_dest(msg: bytes, svc_af: int, with_stats: bool = False) -> tuple[Dest, DestRuntime]:
    """One whole IPVS dest message (nlmsghdr included) -> (Dest, DestRuntime)."""
    span = parse_attrs(msg, 20, len(msg)).get(CMD_ATTR_DEST)
    if span is None:
        raise ValueError("not an IPVS dest message")
    return decode_dest_attrs(msg, span[0], span[1], svc_af, with_stats)
