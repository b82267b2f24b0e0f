"""Read the kernel into the model: IPVS table, links, addresses, sysctls.

Everything takes ``netns``: ``None`` is the caller's own network namespace, a
plain name is ``/run/netns/NAME`` (as made by ``ip netns add``), an absolute
path is used as is (``/proc/PID/ns/net``). Sockets are created inside the
namespace by switching the calling thread there with setns(2) and straight
back (no fork: the lab VM runs Python 15-20x slower, and forking a process
per socket, as pyroute2's ``netns=`` does, costs real time there). A socket
keeps the namespace it was created in, so after that the thread is back home.
Sysctls are read and written the same way: ``/proc/sys/net`` resolves against
the namespace of the task that opens the file.

The decoding is exact: an IPVS service the engine programmed from a spec
comes back equal to the spec's (the HASHED flag masked out, the kernel's
netmask turned back into the model's text, the tunnel port back to host
order), so the planner's plain equality finds "nothing to do".
"""
from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import re
import socket
import struct
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator

from lvs_model import kernel as K
from lvs_model.nodespec import Dest, DestKey, Service, ServiceKey
from lvs_model.sysctls import SYSCTL_NAME_RE, sysctl_error

from .ipvs_timeouts import KEY_PREFIX as TIMEOUT_KEY_PREFIX
from .state import LinkState, NftTable, Observed, RouteKey, RuleKey
from .tools import program

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = None
_ns_lock = threading.RLock()


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


def netns_path(netns: str) -> str:
    return netns if netns.startswith("/") else os.path.join(NETNS_RUN_DIR, netns)


@contextmanager
def in_netns(netns: str | None) -> Iterator[None]:
    """Run the body with the calling thread inside ``netns`` (None: stay)."""
    if not netns:
        yield
        return
    with _ns_lock:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                target = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT, f"no network namespace {netns!r}",
                                        netns_path(netns)) from None
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(home)


def netlink_socket(netns: str | None, proto: int) -> socket.socket:
    """A netlink socket living in ``netns`` (SOCK_DGRAM: pyroute2's asyncio
    transport insists on a datagram socket)."""
    with in_netns(netns):
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, proto)


def open_ipvs(netns: str | None = None):
    from pyroute2 import IPVS
    if not netns:
        return IPVS()
    return IPVS(fileno=netlink_socket(netns, 16).detach())  # NETLINK_GENERIC


def open_iproute(netns: str | None = None):
    from pyroute2 import IPRoute
    if not netns:
        return IPRoute()
    return IPRoute(fileno=netlink_socket(netns, 0).detach())  # NETLINK_ROUTE


# --------------------------------------------------------------------------
# IPVS decoding
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


_canon: dict[str, str] = {}


def canon_ip(text: str) -> str:
    """Canonical text of an address (cached: 100k dests per reconcile)."""
    c = _canon.get(text)
    if c is None:
        if len(_canon) > 500_000:
            _canon.clear()
        c = _canon[text] = str(ipaddress.ip_address(text))
    return c


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
        address = canon_ip(address) if address else ""
    return Service(
        family=family, protocol=protocol, address=address, port=port, fwmark=fwmark,
        scheduler=sched, scheduler_flags=sched_flag_names(sched, flags),
        # The kernel keeps the timeout of a non-persistent service (0 when
        # ipvsadm or we made it); the model only knows it with persistence.
        persistence_timeout=timeout if persistent else 0,
        persistence_netmask=mask, one_packet=bool(flags & K.SVC_F_ONEPACKET))


def decode_dest(address: str, port: int, fwd: int, weight: int, u_thresh: int, l_thresh: int,
                tun_type: int, tun_port_be: int, tun_flags: int) -> Dest:
    # LOCALNODE: the kernel forces it when the dest address is local to this
    # node; not a method a spec can ask for (the engine maps it back).
    method = "local" if fwd & 0x7 == K.FWD_LOCALNODE else K.METHOD_BY_CODE.get(fwd & 0x7, "nat")
    return Dest(
        address=canon_ip(address), port=port, weight=weight, method=method,
        tunnel_type=K.TUNNEL_TYPE_BY_CODE.get(tun_type, "ipip"),
        # pyroute2 reads the big-endian attribute as host order.
        tunnel_port=socket.ntohs(tun_port_be),
        tunnel_csum=K.TUNNEL_CSUM_BY_CODE.get(tun_flags & 0x3, "none"),
        upper_threshold=u_thresh, lower_threshold=l_thresh)


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


def svc_flags(svc: Service) -> int:
    """Service.flags, tolerant of flag-N names read from a foreign service."""
    bits = 0
    if svc.persistence_timeout:
        bits |= K.SVC_F_PERSISTENT
    if svc.one_packet:
        bits |= K.SVC_F_ONEPACKET
    return bits | sched_flag_bits(svc.scheduler_flags)


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


def read_ipvs(netns: str | None = None, *, with_stats: bool = False, ipvs=None,
              fast: bool = True, conn=None, runtime: bool = True,
              pause: Callable[[], object] | None = None) -> IPVSTable:
    """The IPVS table. Uses the raw generic-netlink reader of netlink_batch
    when it loads (a pyroute2 decode of 100k dests takes minutes in the VM),
    else pyroute2. ``pause``: see IPVSConnection.dump_dests (fast path only)."""
    if conn is not None:
        return conn.dump(with_stats=with_stats, runtime=runtime, pause=pause)
    if fast:
        try:
            from . import netlink_batch
        except ImportError:  # pragma: no cover - fast path optional
            netlink_batch = None
        if netlink_batch is not None and hasattr(netlink_batch, "IPVSConnection"):
            conn = netlink_batch.IPVSConnection(netns)
            try:
                return conn.dump(with_stats=with_stats, runtime=runtime, pause=pause)
            finally:
                conn.close()
    own = ipvs is None
    ipvs = ipvs or open_ipvs(netns)
    try:
        return read_ipvs_pyroute2(ipvs, with_stats)
    finally:
        if own:
            ipvs.close()


def read_ipvs_services(netns: str | None, keys: Iterable[ServiceKey], *, conn=None) -> dict[ServiceKey, Service]:
    """Only the services ``keys`` (those present), with their dests: through
    ``conn`` (a netlink_batch connection) one get and one dest dump each;
    without it, the whole table read and cut down (the pyroute2 path)."""
    if conn is not None:
        return conn.read_services(keys)
    keys = set(keys)
    return {k: s for k, s in read_ipvs(netns, fast=False, runtime=False).services.items() if k in keys}


# --------------------------------------------------------------------------
# Links, addresses, routes
# --------------------------------------------------------------------------

IFF_UP = 0x1


def read_links_addresses(ipr) -> tuple[dict[str, LinkState], set[tuple[str, str]], dict[int, str]]:
    """Through pyroute2 (the reference reader)."""
    links: dict[str, LinkState] = {}
    names: dict[int, str] = {}
    for msg in ipr.get_links():
        name = msg.get("IFLA_IFNAME")
        info = msg.get("IFLA_LINKINFO")
        kind = (info.get("IFLA_INFO_KIND") if info else None) or ""
        links[name] = LinkState(kind, bool(msg["flags"] & IFF_UP))
        names[msg["index"]] = name
    addrs: set[tuple[str, str]] = set()
    for msg in ipr.get_addr():
        a = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
        dev = names.get(msg["index"])
        if a and dev:
            addrs.add((dev, canon_ip(a)))
    return links, addrs, names


def _pick_uplink(links: dict[str, LinkState], names: dict[int, str], default_oifs: list[int]) -> str:
    for oif in default_oifs:
        if oif in names:
            return names[oif]
    # No default route (a flat L2 lab, a backend on one subnet): the first
    # device that is up and is not loopback, a tunnel or a dummy -- tunl0 is up
    # on a TUN backend and must not get the uplink's ARP settings.
    for name, st in links.items():
        if name != "lo" and st.up and st.kind not in _NOT_UPLINK:
            return name
    return ""


_NOT_UPLINK = {"ipip", "ip6tnl", "gre", "ip6gre", "sit", "dummy", "gretap", "ip6gretap", "vti", "vti6"}


def default_uplink(ipr) -> str:
    """The device of the default route (IPv4, then IPv6), else the first
    non-loopback device that is up, else "" (through pyroute2)."""
    links, _, names = read_links_addresses(ipr)
    oifs = []
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            routes = ipr.get_default_routes(family=family)
        except Exception:  # pragma: no cover
            routes = []
        for r in routes:
            oif = r.get("RTA_OIF")
            if oif is None:
                mp = r.get("RTA_MULTIPATH") or []
                oif = mp[0]["oif"] if mp else None
            if oif is not None:
                oifs.append(oif)
    return _pick_uplink(links, names, oifs)


class RtnlReader:
    """Links, addresses and default routes straight from rtnetlink dumps.

    The reconcile loop reads these on every pass; pyroute2's decoder costs
    ~0.1 s per dump in the lab VM (and 5 s to import), this ~1 ms.
    """

    RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE = 18, 22, 26
    NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
    NLMSG_ERROR, NLMSG_DONE = 2, 3
    HDR = struct.Struct("=IHHII")
    NLA = struct.Struct("=HH")

    def __init__(self, netns: str | None = None):
        self.sock = netlink_socket(netns, 0)
        self.sock.bind((0, 0))
        self.sock.settimeout(30)
        self.seq = 0
        self.buf = bytearray(65536)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RtnlReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _dump(self, msg_type: int, body: bytes):
        self.seq += 1
        seq = self.seq
        self.sock.sendto(self.HDR.pack(16 + len(body), msg_type, self.NLM_F_REQUEST | self.NLM_F_DUMP,
                                       seq, 0) + body, (0, 0))
        while True:
            n = self.sock.recv_into(self.buf)
            off = 0
            while off + 16 <= n:
                ln, typ, _, rseq, _ = self.HDR.unpack_from(self.buf, off)
                if ln < 16:
                    break
                if rseq == seq:
                    if typ == self.NLMSG_DONE:
                        return
                    if typ == self.NLMSG_ERROR:
                        code = -struct.unpack_from("=i", self.buf, off + 16)[0]
                        if code:
                            raise OSError(code, os.strerror(code))
                    else:
                        yield bytes(self.buf[off + 16:off + ln])
                off += (ln + 3) & ~3

    @classmethod
    def _attrs(cls, data: bytes, off: int) -> dict[int, bytes]:
        out = {}
        while off + 4 <= len(data):
            ln, typ = cls.NLA.unpack_from(data, off)
            if ln < 4:
                break
            out[typ & 0x3FFF] = data[off + 4:off + ln]
            off += (ln + 3) & ~3
        return out

    def links(self) -> tuple[dict[str, LinkState], dict[int, str]]:
        links: dict[str, LinkState] = {}
        names: dict[int, str] = {}
        for m in self._dump(self.RTM_GETLINK, struct.pack("=BxHiII", 0, 0, 0, 0, 0)):
            _, _, index, flags, _ = struct.unpack_from("=BxHiII", m, 0)
            a = self._attrs(m, 16)
            name = a.get(3, b"").split(b"\0", 1)[0].decode()  # IFLA_IFNAME
            kind = ""
            if 18 in a:  # IFLA_LINKINFO
                kind = self._attrs(a[18], 0).get(1, b"").split(b"\0", 1)[0].decode()  # IFLA_INFO_KIND
            links[name] = LinkState(kind, bool(flags & IFF_UP))
            names[index] = name
        return links, names

    def addresses(self, names: dict[int, str]) -> set[tuple[str, str]]:
        out: set[tuple[str, str]] = set()
        for m in self._dump(self.RTM_GETADDR, struct.pack("=BBBBI", 0, 0, 0, 0, 0)):
            family, _, _, _, index = struct.unpack_from("=BBBBI", m, 0)
            a = self._attrs(m, 8)
            raw = a.get(2) or a.get(1)  # IFA_LOCAL, IFA_ADDRESS
            dev = names.get(index)
            if raw and dev and family in (socket.AF_INET, socket.AF_INET6):
                out.add((dev, canon_ip(socket.inet_ntop(family, raw))))
        return out

    def default_oifs(self) -> list[int]:
        found: list[tuple[int, int, int]] = []  # (family order, metric, oif)
        for fi, family in enumerate((socket.AF_INET, socket.AF_INET6)):
            for m in self._dump(self.RTM_GETROUTE, struct.pack("=BBBBBBBBI", family, 0, 0, 0, 0, 0, 0, 0, 0)):
                fam, dst_len, _, _, table, _, _, rtype, _ = struct.unpack_from("=BBBBBBBBI", m, 0)
                if fam != family or dst_len != 0 or rtype != 1:  # RTN_UNICAST
                    continue
                a = self._attrs(m, 12)
                if 15 in a:  # RTA_TABLE
                    table = struct.unpack("=I", a[15])[0]
                if table != 254:  # RT_TABLE_MAIN
                    continue
                metric = struct.unpack("=I", a[6])[0] if 6 in a else 0  # RTA_PRIORITY
                if 4 in a:  # RTA_OIF
                    found.append((fi, metric, struct.unpack("=i", a[4])[0]))
                elif 9 in a and len(a[9]) >= 8:  # RTA_MULTIPATH: first nexthop
                    found.append((fi, metric, struct.unpack_from("=HBBi", a[9], 0)[3]))
        return [oif for _, _, oif in sorted(found)]

    RTM_GETRULE = 34
    _PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp"}
    # fib rule attributes that select packets beyond what a RuleKey says.
    _OTHER_SELECTORS = {1, 3, 10, 11, 12, 16, 17, 19, 20, 24}  # dst, iif, fwmark, flow, tun_id,
    # fwmask, oif, l3mdev, uid range, dport range

    def rules(self) -> set[RuleKey]:
        """Every "from SRC [ipproto] [sport] lookup TABLE" rule (IPv4 and IPv6)
        that selects nothing else; other rules cannot equal one of ours."""
        out: set[RuleKey] = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            for m in self._dump(self.RTM_GETRULE, struct.pack("=BBBBBBBBI", family, 0, 0, 0, 0, 0, 0, 0, 0)):
                fam, dst_len, src_len, tos, table, _, _, action, flags = struct.unpack_from("=BBBBBBBBI", m, 0)
                if fam != family or action != 1 or dst_len or tos or flags & 0x2:  # FR_ACT_TO_TBL, not FIB_RULE_INVERT
                    continue
                a = self._attrs(m, 12)
                if self._OTHER_SELECTORS & a.keys() or 2 not in a:  # FRA_SRC
                    continue
                if src_len != (32 if family == socket.AF_INET else 128):
                    continue
                if 15 in a:  # FRA_TABLE
                    table = struct.unpack("=I", a[15])[0]
                prio = struct.unpack("=I", a[6])[0] if 6 in a else 0
                proto_num = a[22][0] if 22 in a else 0  # FRA_IP_PROTO
                if proto_num and proto_num not in self._PROTO_NAMES:
                    continue
                sport = 0
                if 23 in a:  # FRA_SPORT_RANGE
                    start, end = struct.unpack("=HH", a[23][:4])
                    if start != end:
                        continue
                    sport = start
                out.add(RuleKey("ipv4" if family == socket.AF_INET else "ipv6", prio,
                                canon_ip(socket.inet_ntop(family, a[2])),
                                self._PROTO_NAMES.get(proto_num, ""), sport, table))
        return out

    def table_default_routes(self, lo: int, hi: int) -> set[RouteKey]:
        """Default routes with a gateway in the routing tables lo..hi-1."""
        out: set[RouteKey] = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            for m in self._dump(self.RTM_GETROUTE, struct.pack("=BBBBBBBBI", family, 0, 0, 0, 0, 0, 0, 0, 0)):
                fam, dst_len, _, _, table, _, _, rtype, _ = struct.unpack_from("=BBBBBBBBI", m, 0)
                if fam != family or dst_len != 0 or rtype != 1:
                    continue
                a = self._attrs(m, 12)
                if 15 in a:
                    table = struct.unpack("=I", a[15])[0]
                if not lo <= table < hi or 5 not in a:  # RTA_GATEWAY
                    continue
                metric = struct.unpack("=I", a[6])[0] if 6 in a else 0
                out.add(RouteKey("ipv4" if family == socket.AF_INET else "ipv6", table,
                                 canon_ip(socket.inet_ntop(family, a[5])), metric))
        return out

    def read(self, uplink: bool = False) -> tuple[dict[str, LinkState], set[tuple[str, str]], str]:
        links, names = self.links()
        addrs = self.addresses(names)
        up = _pick_uplink(links, names, self.default_oifs()) if uplink else ""
        return links, addrs, up


# --------------------------------------------------------------------------
# nftables (through the nft binary: only our own table is ever read)
# --------------------------------------------------------------------------

NFT = program("nft")  # KUBE_LVS_NFT may name another binary (tools.py)


def run_nft(args: list[str], netns: str | None = None, input: str | None = None):
    """Run nft inside ``netns`` (the child inherits the calling thread's namespace)."""
    import subprocess
    with in_netns(netns):
        return subprocess.run([NFT, *args], input=input, capture_output=True, text=True, timeout=60)


def read_nft_table(family: str, name: str, netns: str | None = None) -> NftTable | None:
    """One nftables table's chains and rule comments, or None if there is no
    such table. Raises OSError when nft itself fails for another reason."""
    import json
    p = run_nft(["-j", "list", "table", family, name], netns)
    if p.returncode != 0:
        if "No such file or directory" in p.stderr:
            return None
        raise OSError(errno.EIO, f"nft list table {family} {name}: {p.stderr.strip()}")
    chains, rules = [], []
    for item in json.loads(p.stdout).get("nftables", []):
        if "chain" in item:
            c = item["chain"]
            chains.append((c["name"], c.get("type", ""), c.get("hook", ""), int(c.get("prio", 0))))
        elif "rule" in item:
            r = item["rule"]
            rules.append((r["chain"], r.get("comment", "")))
    return NftTable(tuple(chains), tuple(rules))


# --------------------------------------------------------------------------
# Sysctls
# --------------------------------------------------------------------------

# Where the sysctl tree is mounted. /proc/sys in the agent's own mount
# namespace, unless it runs unprivileged: the container runtime mounts /proc/sys
# read-only there, so the DaemonSet mounts the host's /proc/sys/net read-write
# outside /proc (runc refuses mounts inside it) and points this at it.
DEFAULT_SYSCTL_ROOT = "/proc/sys"
_sysctl_root = os.environ.get("KUBE_LVS_SYSCTL_ROOT") or DEFAULT_SYSCTL_ROOT
_sysctl_name = re.compile(SYSCTL_NAME_RE)


def set_sysctl_root(root: str) -> None:
    """Read and write sysctls under ``root`` (``--sysctl-root``) from now on."""
    global _sysctl_root
    _sysctl_root = root.rstrip("/") or "/"


def sysctl_root() -> str:
    return _sysctl_root


class SysctlRefused(PermissionError):
    """A sysctl kube-lvs does not manage, or a value out of its range. The API
    server refuses such a NodeState first; the agent refuses it again, because
    a path it opens as root is a way onto every LVS node."""

    def __init__(self, reason: str):
        super().__init__(errno.EPERM, reason)


def sysctl_path(name: str) -> str:
    """net.ipv4.conf.eth0.100.rp_filter -> <root>/net/ipv4/conf/eth0.100/rp_filter:
    the device part of conf/neigh names may itself hold dots (VLANs). Only the
    allowlisted names have a path: any other raises SysctlRefused."""
    if not isinstance(name, str) or not _sysctl_name.match(name):
        raise SysctlRefused(f"{name!r} is not a setting kube-lvs manages")
    parts = name.split(".")
    if len(parts) >= 5 and parts[0] == "net" and parts[1] in ("ipv4", "ipv6") \
            and parts[2] in ("conf", "neigh"):
        parts = parts[:3] + [".".join(parts[3:-1]), parts[-1]]
    return os.path.join(_sysctl_root, *parts)


def _read_one(name: str) -> str | None:
    """One sysctl's value, white space folded; None when it cannot be read
    (no such device, not permitted, or not a name kube-lvs may touch)."""
    try:
        with open(sysctl_path(name)) as f:
            return " ".join(f.read().split())
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None


def read_sysctls(names: Iterable[str], netns: str | None = None) -> dict[str, str | None]:
    with in_netns(netns):
        return {n: _read_one(n) for n in names}


def write_sysctl(name: str, value: str, netns: str | None = None) -> None:
    """Write one allowlisted sysctl; SysctlRefused (EPERM) for anything
    ``lvs_model.sysctls.sysctl_error`` rejects, before any file is opened."""
    reason = sysctl_error(name, value)
    if reason is not None:
        raise SysctlRefused(reason)
    path = sysctl_path(name)
    with in_netns(netns):
        with open(path, "w") as f:
            f.write(value)


# --------------------------------------------------------------------------
# Everything
# --------------------------------------------------------------------------

def observe(netns: str | None = None, sysctls: Iterable[str] = (), *, ipvs=None, ipr=None,
            with_stats: bool = False, fast: bool = True, need_net: bool = True,
            conn=None, runtime: bool = True, need_routing: tuple[int, int] | None = None,
            nft_tables: Iterable[tuple[str, str]] = (), ipvs_table: bool = True) -> tuple[Observed, IPVSTable]:
    """The kernel as it is now: (Observed for the planner, the full IPVS table).

    ``need_net=False`` skips links and addresses (the planner only looks at
    them when the spec or the ownership record names some). ``need_routing``
    (lo, hi): also read policy rules and the default routes of tables lo..hi-1;
    ``nft_tables``: the (family, name) nftables tables to read.
    ``ipvs_table=False``: everything but IPVS (the caller reads the services it needs)."""
    table = (read_ipvs(netns, with_stats=with_stats, ipvs=ipvs, fast=fast, conn=conn, runtime=runtime)
             if ipvs_table else IPVSTable())
    links: dict[str, LinkState] = {}
    addrs: set[tuple[str, str]] = set()
    if need_net:
        if fast and ipr is None:
            with RtnlReader(netns) as r:
                links, addrs, _ = r.read()
        else:
            own_ipr = ipr is None
            ipr = ipr or open_iproute(netns)
            try:
                links, addrs, _ = read_links_addresses(ipr)
            finally:
                if own_ipr:
                    ipr.close()
        from .fou import read_ports  # FOU/GUE receive ports, keyed beside the links (fou.py)
        from .gre_csum import read_csum  # GRE devices that expect checksums (gre_csum.py)
        links.update(read_ports(netns))
        links.update(read_csum(links, netns))
    names = set(sysctls)
    timeouts = {n for n in names if n.startswith(TIMEOUT_KEY_PREFIX)}
    obs = Observed(services=dict(table.services), addresses=addrs, links=links,
                   sysctls=read_sysctls(sorted(names - timeouts), netns))
    if timeouts:
        obs.sysctls.update(read_timeout_keys(timeouts, netns, conn))
    if need_routing is not None:
        with RtnlReader(netns) as r:
            obs.rules = r.rules()
            obs.routes = r.table_default_routes(*need_routing)
    for fam, name in nft_tables:
        t = read_nft_table(fam, name, netns)
        if t is not None:
            obs.nft_tables[(fam, name)] = t
    return obs, table


def read_timeout_keys(keys: Iterable[str], netns: str | None = None, conn=None) -> dict[str, str | None]:
    """The IPVS timeouts ``keys`` name (Observed.sysctls carries them:
    ipvs_timeouts.py says why), as text like a sysctl's; None each when
    IPVS cannot be read (no ip_vs in this kernel, no permission)."""
    from .ipvs_config import get_timeouts, with_connection
    try:
        got = with_connection(netns, conn, get_timeouts)
    except OSError:
        got = {}
    return {k: (str(got[k[len(TIMEOUT_KEY_PREFIX):]]) if k[len(TIMEOUT_KEY_PREFIX):] in got else None)
            for k in keys}


def resolve_default_uplink(netns: str | None = None, fast: bool = True) -> str:
    if fast:
        with RtnlReader(netns) as r:
            return r.read(uplink=True)[2]
    ipr = open_iproute(netns)
    try:
        return default_uplink(ipr)
    finally:
        ipr.close()
