"""Links, addresses, default routes and policy rules, read from rtnetlink:
the one reader of them (RtnlReader), plus the pyroute2 IPRoute that apply
changes links and routes through.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct

from .netns import netlink_socket
from .state import LinkState, RouteKey, RuleKey

IFF_UP = 0x1
NETLINK_ROUTE = 0
# How long one dump may take before the read fails (a local kernel answers at once).
DUMP_TIMEOUT = 30
# One recv() returns one dump batch, at most 32 KiB; twice that is headroom.
RECV_SIZE = 65536

_canon: dict[str, str] = {}
CANON_MEMO_MAX = 500_000  # far above any node's address count: only bounds growth


def canon_ip(text: str) -> str:
    """Canonical text of an address, memoised (every pass reads every address again)."""
    c = _canon.get(text)
    if c is None:
        if len(_canon) > CANON_MEMO_MAX:
            _canon.clear()
        c = _canon[text] = str(ipaddress.ip_address(text))
    return c


def open_iproute(netns: str | None = None):
    """pyroute2's IPRoute on a socket made in ``netns`` (for changes)."""
    from pyroute2 import IPRoute
    if not netns:
        return IPRoute()
    return IPRoute(fileno=netlink_socket(netns, NETLINK_ROUTE).detach())


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


class RtnlReader:
    """Links, addresses and default routes straight from rtnetlink dumps.

    The reconcile loop reads these on every pass: a dump is parsed straight
    from the receive buffer, no per-attribute objects (pyroute2's decoder
    builds one per attribute, and its import alone is slow).
    """

    RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE = 18, 22, 26
    NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
    NLMSG_ERROR, NLMSG_DONE = 2, 3
    HDR = struct.Struct("=IHHII")
    NLA = struct.Struct("=HH")

    def __init__(self, netns: str | None = None):
        self.sock = netlink_socket(netns, 0)
        self.sock.bind((0, 0))
        self.sock.settimeout(DUMP_TIMEOUT)
        self.seq = 0
        self.buf = bytearray(RECV_SIZE)

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


def resolve_default_uplink(netns: str | None = None) -> str:
    """The device of the default route (IPv4, then IPv6), else the first
    non-loopback device that is up and no tunnel or dummy, else \"\"."""
    with RtnlReader(netns) as r:
        return r.read(uplink=True)[2]
