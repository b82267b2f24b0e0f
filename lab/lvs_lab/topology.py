"""Network topologies made of network namespaces, for kernel tests inside the lab VM.

Each *host* is a network namespace (``lab-<name>``) with ``lo`` up (IPVS refuses a
dest with EINVAL in a namespace whose ``lo`` is down). Each L2 *segment* is a bridge
in one shared switch namespace (``lab-sw``); a host joins a segment through a veth
pair (host side named as asked, e.g. ``eth0``). Nothing leaves the VM: the VM itself
has no network card unless the runner was given ``--forward``, and the namespaces
are not connected to it.

Commands are batched (``ip -batch``: one process per namespace per build step) and
sysctls are written in-process (:mod:`lvs_lab.netns`), because every process spawn
costs 0.1-0.5 s under TCG.

Usage::

    with seed_nat() as t:                       # or the pytest fixtures in tests/kernel
        t.ipvsadm("-A", "-t", f"{t.vip}:80", "-s", "rr")
        for rip in t.rips:
            t.ipvsadm("-a", "-t", f"{t.vip}:80", "-r", f"{rip}:80", "-m")
        print(t.tcp_names(4))                    # ['rs1', 'rs2', 'rs1', 'rs2']

Address plans (fixed by the issue / the seed notes):

=============  ======================================================================
seed_nat       client 192.168.0.1 -- director 192.168.0.30 (VIP) / 10.0.0.30 (DIP) --
               rs1 10.0.0.51, rs2 10.0.0.52 (default gw 10.0.0.30); ip_forward=1
tun_one_subnet client .1, director .2, VIP .3, rs1 .10, rs2 .11 on 192.168.1.0/24
tun_cross      client 192.168.1.1, director 192.168.1.2, VIP 192.168.1.3 on
               192.168.1.0/24; router 192.168.1.254 / 172.16.0.1; rs1 172.16.0.10,
               rs2 172.16.0.11 on 172.16.0.0/24 (gw 172.16.0.1)
dr             client .1, director .2, VIP .100, rs1 .10, rs2 .11 on 192.168.2.0/24
nat6           client fd00:0::1 -- director fd00:0::30 (VIP) / fd00:1::30 --
               rs1 fd00:1::51, rs2 fd00:1::52 (gw fd00:1::30); forwarding=1
lan6           client fd00:2::1, director fd00:2::2, rs1 ::10, rs2 ::11 on fd00:2::/64;
               VIP fd00:2::100 routed to the director (IPv6 DR and TUN)
udp_nat        seed_nat (the same plan); the fixtures serve UDP echo on port 80 too
=============  ======================================================================
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from dataclasses import dataclass, field
from typing import Sequence

from . import servers as _servers
from .netns import NETNS_RUN_DIR, call_in_netns, read_file_in_netns, write_sysctls

PREFIX = "lab-"
SWITCH = PREFIX + "sw"


class TopologyError(RuntimeError):
    pass


def _run(argv: Sequence[str], *, input: str | None = None, check: bool = True,
         timeout: float = 60) -> subprocess.CompletedProcess:
    p = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise TopologyError(
            f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}"
            + (f"\n--- input:\n{input}" if input else "")
        )
    return p


def ip_batch(lines: Sequence[str], ns: str | None = None, *, check: bool = True) -> None:
    """Run ``ip`` commands (without the leading ``ip``) in one process."""
    if not lines:
        return
    argv = ["ip"] + (["-n", ns] if ns else []) + ["-batch", "-"]
    _run(argv, input="\n".join(lines) + "\n", check=check)


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def delete_lab_namespaces(prefix: str = PREFIX) -> list[str]:
    """Delete every namespace named ``<prefix>*`` (leftovers of an aborted test)."""
    stale = [n for n in list_netns() if n.startswith(prefix)]
    if stale:
        ip_batch([f"netns del {n}" for n in stale], check=False)
    return stale


def _device_key(key: str, renames: dict[str, str]) -> str:
    """``net.ipv4.conf.eth0.rp_filter`` -> ``net.ipv4.conf.<tmp>.rp_filter`` while
    eth0 still carries its temporary creation name (see :meth:`Lab.connect`)."""
    parts = key.split(".")
    if len(parts) > 4 and parts[0] == "net" and parts[2] in ("conf", "neigh") \
            and parts[3] in renames:
        parts[3] = renames[parts[3]]
    return ".".join(parts)


def _is_v6(addr: str) -> bool:
    return ipaddress.ip_interface(addr).version == 6


class Lab:
    """A set of namespaces, segments and servers, torn down by :meth:`close`.

    Namespaces are named ``<prefix><host>`` (default ``lab-``); creating a Lab deletes
    leftovers with the same prefix, so two Labs alive at once need prefixes that are
    not prefixes of each other (``lab-``, ``lbb-``; every builder takes ``prefix=``).

    Build with :meth:`host`, :meth:`segment`, :meth:`connect`, :meth:`ip`, :meth:`sysctl`,
    then :meth:`apply`. After ``apply()`` the same methods queue again; call ``apply()``
    once more to execute them. Order within one ``apply()``: namespaces, links,
    sysctls, then the queued ``ip`` lines of each namespace in order.
    """

    def __init__(self, prefix: str = PREFIX):
        self.prefix = prefix
        self.switch = prefix + "sw"
        self.hosts: dict[str, str] = {}  # short name -> netns name
        self.segments: list[str] = []
        self._new_ns: list[str] = []
        self._root_lines: list[str] = []
        self._ns_lines: dict[str, list[str]] = {}
        self._sysctls: dict[str, dict[str, object]] = {}
        self._renames: dict[str, dict[str, str]] = {}  # ns -> {final ifname: temporary}
        self._port_no = 0
        self._closed = False
        self.hub = _servers.ServerHub()
        self.procs: list[subprocess.Popen] = []
        delete_lab_namespaces(prefix)

    # ---- building -----------------------------------------------------------------

    def ns(self, host: str) -> str:
        """Namespace name of a host (accepts a short name or the namespace name)."""
        if host in self.hosts:
            return self.hosts[host]
        if host in self.hosts.values():
            return host
        raise KeyError(host)

    def _add_ns(self, ns: str) -> None:
        self._new_ns.append(ns)
        self._ns_lines.setdefault(ns, []).insert(0, "link set lo up")

    def host(self, name: str) -> str:
        ns = self.prefix + name
        if name in self.hosts:
            return ns
        self.hosts[name] = ns
        self._add_ns(ns)
        # IPv6 duplicate address detection would keep new addresses "tentative" for a
        # second or more; the segments are private, so turn it off.
        self.sysctl(name, {"net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0})
        return ns

    def segment(self, name: str) -> str:
        """An L2 segment: a bridge ``br-<name>`` in the switch namespace."""
        br = f"br-{name}"[:15]
        if name in self.segments:
            return br
        if not self.segments:
            self._add_ns(self.switch)
            self.sysctl(self.switch, {"net.ipv6.conf.all.disable_ipv6": 1,
                                      "net.ipv6.conf.default.disable_ipv6": 1})
        self.segments.append(name)
        self._ns_lines[self.switch] += [
            f"link add {br} type bridge stp_state 0 mcast_snooping 0",
            f"link set {br} up",
        ]
        return br

    def connect(self, host: str, segment: str, ifname: str = "eth0",
                addrs: Sequence[str] = ()) -> None:
        """Plug ``host`` into ``segment`` with interface ``ifname`` holding ``addrs``."""
        ns = self.ns(host)
        br = self.segment(segment)
        self._port_no += 1
        port = f"p{self._port_no}-{ifname}"[:15]
        # Created under a temporary name and renamed inside the namespace: the
        # kernel checks the name in the creating (root) namespace too, where the
        # VM's own NIC is eth0 when the runner was given --forward.
        tmp = f"{self.prefix}h{self._port_no}"[:15]
        self._root_lines.append(
            f"link add {tmp} netns {ns} type veth peer name {port} netns {self.switch}"
        )
        self._ns_lines[self.switch] += [f"link set {port} master {br}", f"link set {port} up"]
        lines = self._ns_lines.setdefault(ns, [])
        lines.append(f"link set {tmp} name {ifname}")
        # Per-device sysctls of this apply() run before the rename: write them to tmp.
        self._renames.setdefault(ns, {})[ifname] = tmp
        for a in addrs:
            lines.append(f"addr add {a} dev {ifname}" + (" nodad" if _is_v6(a) else ""))
        lines.append(f"link set {ifname} up")

    def ip(self, host: str, *lines: str) -> None:
        """Queue ``ip`` command lines (e.g. ``"route add default via 10.0.0.30"``)."""
        ns = host if host == self.switch else self.ns(host)
        self._ns_lines.setdefault(ns, []).extend(lines)

    def sysctl(self, host: str, values: dict[str, object]) -> None:
        ns = host if host == self.switch else self.ns(host)
        self._sysctls.setdefault(ns, {}).update(values)

    def apply(self) -> "Lab":
        new, self._new_ns = self._new_ns, []
        root, self._root_lines = self._root_lines, []
        sysctls, self._sysctls = self._sysctls, {}
        ns_lines, self._ns_lines = self._ns_lines, {}
        renames, self._renames = self._renames, {}
        ip_batch([f"netns add {n}" for n in new] + root)
        # sysctls for all/default first, then per-device ones (devices exist by now)
        for ns, values in sysctls.items():
            early = {k: v for k, v in values.items() if ".all." in k or ".default." in k}
            if early:
                write_sysctls(ns, early)
        for ns, values in sysctls.items():
            late = {_device_key(k, renames.get(ns, {})): v for k, v in values.items()
                    if not (".all." in k or ".default." in k)}
            if late:
                write_sysctls(ns, late)
        for ns, lines in ns_lines.items():
            ip_batch(lines, ns)
        return self

    # ---- running things ----------------------------------------------------------------

    def run(self, host: str, *argv: str, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run a command in a host's namespace (``ip netns exec``); returns the result."""
        return _run(["ip", "netns", "exec", self.ns(host), *argv], check=check,
                    timeout=timeout, input=input)

    def popen(self, host: str, *argv: str, **kw) -> subprocess.Popen:
        """Start a long-lived process in a host's namespace; killed by :meth:`close`."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(host), *argv], **kw)
        self.procs.append(p)
        return p

    def call(self, host: str, fn, *args, **kw):
        """Run a Python callable in a host's namespace (in a thread; see lvs_lab.netns)."""
        return call_in_netns(self.ns(host), fn, *args, **kw)

    def serve(self, host: str, name: str | None = None, port: int = 80, **kw) -> _servers.Server:
        """Serve ``name`` (default: the host's short name) over HTTP/TCP and UDP on ``port``."""
        short = next((k for k, v in self.hosts.items() if v == self.ns(host)), host)
        return self.hub.serve(self.ns(host), name or short, port, **kw)

    def ipvs_table(self, host: str) -> str:
        return read_file_in_netns(self.ns(host), "/proc/net/ip_vs")

    # ---- teardown -------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.hub.close()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        names = [n for n in list(self.hosts.values()) + [self.switch] if n in list_netns()]
        ip_batch([f"netns del {n}" for n in names], check=False)
        left = [n for n in names if n in list_netns()]
        if left:
            raise TopologyError(f"namespaces left behind: {left}")

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------ topologies


@dataclass
class Topology:
    """A built topology: namespace names and addresses, plus conveniences for tests."""

    kind: str
    lab: Lab
    client: str  # namespace names
    director: str
    real_servers: list[str]
    client_ip: str
    vip: str
    rips: list[str]
    dip: str | None = None  # director's address towards the real servers
    router: str | None = None
    names: list[str] = field(default_factory=list)  # real servers' short names (rs1, rs2)
    family: int = 4
    port: int = 80

    @property
    def vip_host(self) -> str:
        """The VIP as written in an ipvsadm service address (brackets for IPv6)."""
        return f"[{self.vip}]" if self.family == 6 else self.vip

    def service(self, port: int | None = None) -> str:
        return f"{self.vip_host}:{port or self.port}"

    def rip_port(self, i: int, port: int | None = None) -> str:
        rip = self.rips[i]
        return f"[{rip}]:{port or self.port}" if self.family == 6 else f"{rip}:{port or self.port}"

    def ipvsadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``ipvsadm ARGS`` in the director's namespace."""
        return self.lab.run(self.director, "ipvsadm", *args, check=check)

    def ipvsadm_restore(self, rules: Sequence[str]) -> subprocess.CompletedProcess:
        """Apply ipvsadm rules (``-A ...`` / ``-a ...`` lines) in one process (``ipvsadm -R``)."""
        return self.lab.run(self.director, "ipvsadm", "-R", input="\n".join(rules) + "\n")

    def ipvs_table(self) -> str:
        return self.lab.ipvs_table(self.director)

    def tcp_names(self, count: int, port: int | None = None, **kw) -> list[str | None]:
        return _servers.tcp_names(self.client, self.vip, port or self.port, count, **kw)

    def udp_names(self, count: int, port: int | None = None, **kw) -> list[str | None]:
        return _servers.udp_names(self.client, self.vip, port or self.port, count, **kw)

    def tcp_replies(self, count: int, port: int | None = None, **kw):
        return _servers.tcp_replies(self.client, self.vip, port or self.port, count, **kw)

    def udp_replies(self, count: int, port: int | None = None, **kw):
        return _servers.udp_replies(self.client, self.vip, port or self.port, count, **kw)

    def wait_tcp(self, port: int | None = None, deadline: float = 10.0):
        return _servers.wait_tcp(self.client, self.vip, port or self.port, deadline=deadline)

    def wait_udp(self, port: int | None = None, deadline: float = 10.0):
        return _servers.wait_udp(self.client, self.vip, port or self.port, deadline=deadline)

    def serve_all(self, port: int | None = None, **kw) -> list[_servers.Server]:
        """Start a name server on every real server (names rs1, rs2, ...)."""
        return [self.lab.serve(ns, name, port or self.port, **kw)
                for ns, name in zip(self.real_servers, self.names)]

    def close(self) -> None:
        self.lab.close()

    def __enter__(self) -> "Topology":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _build(fn):
    """Build inside a fresh Lab; tear it down if building fails."""

    def wrapper(*args, lab: Lab | None = None, prefix: str = PREFIX, **kw) -> Topology:
        own = lab is None
        lab = lab or Lab(prefix)
        try:
            return fn(lab, *args, **kw)
        except BaseException:
            if own:
                lab.close()
            raise

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@_build
def seed_nat(lab: Lab, *, real_servers: int = 2, serve: bool = False) -> Topology:
    """The seed's NAT example: client -- director (ip_forward) -- rs1/rs2 (gw = DIP)."""
    vip, dip = "192.168.0.30", "10.0.0.30"
    client = lab.host("client")
    director = lab.host("director")
    lab.connect("client", "out", "eth0", ["192.168.0.1/24"])
    lab.connect("director", "out", "eth0", [f"{vip}/24"])
    lab.connect("director", "in", "eth1", [f"{dip}/24"])
    lab.sysctl("director", {"net.ipv4.ip_forward": 1})
    rss, rips, names = [], [], []
    for i in range(real_servers):
        name, rip = f"rs{i + 1}", f"10.0.0.{51 + i}"
        rss.append(lab.host(name))
        lab.connect(name, "in", "eth0", [f"{rip}/24"])
        lab.ip(name, f"route add default via {dip}")
        rips.append(rip)
        names.append(name)
    lab.apply()
    t = Topology("nat", lab, client, director, rss, "192.168.0.1", vip, rips, dip=dip, names=names)
    if serve:
        t.serve_all()
    return t


@_build
def nat6(lab: Lab, *, real_servers: int = 2, serve: bool = False) -> Topology:
    """seed_nat with IPv6: fd00:0::/64 outside, fd00:1::/64 inside; director forwards."""
    vip, dip = "fd00::30", "fd00:1::30"
    client = lab.host("client")
    director = lab.host("director")
    lab.connect("client", "out", "eth0", ["fd00::1/64"])
    lab.connect("director", "out", "eth0", [f"{vip}/64"])
    lab.connect("director", "in", "eth1", [f"{dip}/64"])
    lab.sysctl("director", {"net.ipv6.conf.all.forwarding": 1})
    rss, rips, names = [], [], []
    for i in range(real_servers):
        name, rip = f"rs{i + 1}", f"fd00:1::{51 + i}"
        rss.append(lab.host(name))
        lab.connect(name, "in", "eth0", [f"{rip}/64"])
        lab.ip(name, f"route add default via {dip}")
        rips.append(rip)
        names.append(name)
    lab.apply()
    t = Topology("nat6", lab, client, director, rss, "fd00::1", vip, rips, dip=dip, names=names,
                 family=6)
    if serve:
        t.serve_all()
    return t


GUE_PORT = 6080


def tun_backend_prepare(lab: Lab, host: str, vip: str, phys: str = "eth0",
                        encap: str | Sequence[str] = "ipip", gue_port: int = GUE_PORT) -> None:
    """What the seed does by hand on a TUN real server (and the engine will automate):
    ``tunl0`` up with the VIP /32, arp_ignore=1 / arp_announce=2, rp_filter=0 on all,
    tunl0 and the physical device. Queued: call ``lab.apply()``.

    ``encap`` (one or several of ``ipip``, ``gue``, ``gre``) selects what the real
    server can decapsulate: ``gue`` adds a FOU/GUE receive port (``ip fou add port
    6080 gue``; the inner IPIP packet then lands on tunl0), ``gre`` brings up the
    fallback ``gre0`` with the VIP too (IPVS's GRE tunnels carry no key).
    """
    encaps = {encap} if isinstance(encap, str) else set(encap)
    unknown = encaps - {"ipip", "gue", "gre"}
    if unknown:
        raise ValueError(f"unknown encapsulation {sorted(unknown)}")
    sysctls = {
        "net.ipv4.conf.all.arp_ignore": 1,
        "net.ipv4.conf.all.arp_announce": 2,
        "net.ipv4.conf.all.rp_filter": 0,
        "net.ipv4.conf.default.rp_filter": 0,
        "net.ipv4.conf.tunl0.arp_ignore": 1,
        "net.ipv4.conf.tunl0.arp_announce": 2,
        "net.ipv4.conf.tunl0.rp_filter": 0,
        f"net.ipv4.conf.{phys}.rp_filter": 0,
    }
    lines = ["link set tunl0 up", f"addr add {vip}/32 dev tunl0"]
    if "gue" in encaps:
        lines.append(f"fou add port {gue_port} gue")
    if "gre" in encaps:
        sysctls["net.ipv4.conf.gre0.rp_filter"] = 0
        lines += ["link set gre0 up", f"addr add {vip}/32 dev gre0"]
    lab.sysctl(host, sysctls)
    lab.ip(host, *lines)


def dr_backend_prepare(lab: Lab, host: str, vip: str, phys: str = "eth0") -> None:
    """DR real server by hand: arp_ignore=1 / arp_announce=2 on the segment's device
    (scoped, not ``all``), then the VIP /32 on ``lo``. Queued: call ``lab.apply()``."""
    lab.sysctl(host, {f"net.ipv4.conf.{phys}.arp_ignore": 1,
                      f"net.ipv4.conf.{phys}.arp_announce": 2})
    lab.ip(host, f"addr add {vip}/32 dev lo")


@_build
def tun_one_subnet(lab: Lab, *, backend_prepare: bool = False, vip_on_director: bool = True,
                   real_servers: int = 2, serve: bool = False,
                   encap: str | Sequence[str] = "ipip") -> Topology:
    """The seed's TUN example: everyone on 192.168.1.0/24, VIP 192.168.1.3.

    ``vip_on_director``: put the VIP /32 on the director's eth0 (so it answers ARP).
    ``backend_prepare``: configure tunl0/VIP/ARP/rp_filter on the real servers by hand
    (``encap``: which tunnel types they accept, see :func:`tun_backend_prepare`).
    """
    vip = "192.168.1.3"
    client = lab.host("client")
    director = lab.host("director")
    lab.connect("client", "lan", "eth0", ["192.168.1.1/24"])
    lab.connect("director", "lan", "eth0",
                ["192.168.1.2/24"] + ([f"{vip}/32"] if vip_on_director else []))
    rss, rips, names = [], [], []
    for i in range(real_servers):
        name, rip = f"rs{i + 1}", f"192.168.1.{10 + i}"
        rss.append(lab.host(name))
        if backend_prepare:
            tun_backend_prepare(lab, name, vip, encap=encap)
        lab.connect(name, "lan", "eth0", [f"{rip}/24"])
        rips.append(rip)
        names.append(name)
    lab.apply()
    t = Topology("tun", lab, client, director, rss, "192.168.1.1", vip, rips,
                 dip="192.168.1.2", names=names)
    if serve:
        t.serve_all()
    return t


@_build
def tun_cross_subnet(lab: Lab, *, backend_prepare: bool = False, vip_on_director: bool = True,
                     real_servers: int = 2, serve: bool = False,
                     encap: str | Sequence[str] = "ipip") -> Topology:
    """TUN across subnets (the part the seed left unwritten).

    client 192.168.1.1 and director 192.168.1.2 (VIP 192.168.1.3) on 192.168.1.0/24;
    a router (192.168.1.254 / 172.16.0.1, ip_forward=1) joins 172.16.0.0/24 where
    rs1 172.16.0.10 and rs2 172.16.0.11 live (default gw 172.16.0.1). The director
    reaches the real servers through the router; replies (source VIP) go from the
    real servers through the router straight to the client, so the router must not
    drop them by reverse-path filtering (rp_filter=0 there: the VIP's subnet is on
    the other side).
    """
    vip = "192.168.1.3"
    client = lab.host("client")
    director = lab.host("director")
    router = lab.host("router")
    lab.connect("client", "lan", "eth0", ["192.168.1.1/24"])
    lab.ip("client", "route add 172.16.0.0/24 via 192.168.1.254")
    lab.connect("director", "lan", "eth0",
                ["192.168.1.2/24"] + ([f"{vip}/32"] if vip_on_director else []))
    lab.ip("director", "route add 172.16.0.0/24 via 192.168.1.254")
    lab.connect("router", "lan", "eth0", ["192.168.1.254/24"])
    lab.connect("router", "far", "eth1", ["172.16.0.1/24"])
    lab.sysctl("router", {"net.ipv4.ip_forward": 1,
                          "net.ipv4.conf.all.rp_filter": 0,
                          "net.ipv4.conf.default.rp_filter": 0,
                          "net.ipv4.conf.eth0.rp_filter": 0,
                          "net.ipv4.conf.eth1.rp_filter": 0})
    rss, rips, names = [], [], []
    for i in range(real_servers):
        name, rip = f"rs{i + 1}", f"172.16.0.{10 + i}"
        rss.append(lab.host(name))
        if backend_prepare:
            tun_backend_prepare(lab, name, vip, encap=encap)
        lab.connect(name, "far", "eth0", [f"{rip}/24"])
        lab.ip(name, "route add default via 172.16.0.1")
        rips.append(rip)
        names.append(name)
    lab.apply()
    t = Topology("tun-cross", lab, client, director, rss, "192.168.1.1", vip, rips,
                 dip="192.168.1.2", router=router, names=names)
    if serve:
        t.serve_all()
    return t


@_build
def dr(lab: Lab, *, backend_prepare: bool = False, vip_on_director: bool = True,
       real_servers: int = 2, serve: bool = False) -> Topology:
    """Direct routing on one L2 segment, 192.168.2.0/24: client .1, director .2,
    VIP .100, rs1 .10, rs2 .11. ``backend_prepare``: VIP on lo + ARP sysctls by hand."""
    vip = "192.168.2.100"
    client = lab.host("client")
    director = lab.host("director")
    lab.connect("client", "lan", "eth0", ["192.168.2.1/24"])
    lab.connect("director", "lan", "eth0",
                ["192.168.2.2/24"] + ([f"{vip}/32"] if vip_on_director else []))
    rss, rips, names = [], [], []
    for i in range(real_servers):
        name, rip = f"rs{i + 1}", f"192.168.2.{10 + i}"
        rss.append(lab.host(name))
        lab.connect(name, "lan", "eth0", [f"{rip}/24"])
        if backend_prepare:
            dr_backend_prepare(lab, name, vip)
        rips.append(rip)
        names.append(name)
    lab.apply()
    t = Topology("dr", lab, client, director, rss, "192.168.2.1", vip, rips,
                 dip="192.168.2.2", names=names)
    if serve:
        t.serve_all()
    return t


@_build
def lan6(lab: Lab, *, real_servers: int = 2, serve: bool = False) -> Topology:
    """IPv6 on one L2 segment, fd00:2::/64, for DR and TUN (ip6ip6): client ::1,
    director ::2, rs1 ::10, rs2 ::11; the VIP ::100 is routed to the director
    (``route add VIP via ::2`` on the client, as an upstream router or BGP
    would), which holds it where the test puts it (the engine: its dummy
    device). Not on the director's eth0: the director's tunnels would then
    leave with the VIP as their outer source, and a real server's ip6_tunnel
    drops a packet whose outer source is one of its own addresses (the VIP,
    which it holds too). The real servers' side is left to the test."""
    vip = "fd00:2::100"
    client = lab.host("client")
    director = lab.host("director")
    lab.connect("client", "lan", "eth0", ["fd00:2::1/64"])
    lab.ip("client", f"route add {vip}/128 via fd00:2::2")
    lab.connect("director", "lan", "eth0", ["fd00:2::2/64"])
    rss, rips, names = [], [], []
    for i in range(real_servers):
        name, rip = f"rs{i + 1}", f"fd00:2::{10 + i}"
        rss.append(lab.host(name))
        lab.connect(name, "lan", "eth0", [f"{rip}/64"])
        rips.append(rip)
        names.append(name)
    lab.apply()
    t = Topology("lan6", lab, client, director, rss, "fd00:2::1", vip, rips, dip="fd00:2::2",
                 names=names, family=6)
    if serve:
        t.serve_all()
    return t


def udp_nat(*, lab: Lab | None = None, prefix: str = PREFIX, real_servers: int = 2,
            serve: bool = False) -> Topology:
    """seed_nat, for a UDP service: the servers answer UDP on the same port as TCP."""
    t = seed_nat(lab=lab, prefix=prefix, real_servers=real_servers, serve=serve)
    t.kind = "udp-nat"
    return t


TOPOLOGIES = {
    "seed_nat": seed_nat,
    "nat6": nat6,
    "tun_one_subnet": tun_one_subnet,
    "tun_cross_subnet": tun_cross_subnet,
    "dr": dr,
    "udp_nat": udp_nat,
    "lan6": lan6,
}
