"""`lvsctl import FILE`: an `ipvsadm --save -n` file in, kube-lvs YAML out.

    ipvsadm -Sn > rules.txt
    lvsctl import rules.txt --namespace web --director-selector lvs.kube-lvs.io/director=true > lvs.yaml
    kubectl apply -f lvs.yaml        # the VIPPool needs a cluster admin

Prints one VIPPool covering exactly the imported VIPs (and marks) for the
namespace, then a VirtualService per `-A` line and a RealServer per `-a` line.
A service on 0.0.0.0 or :: (the seed notes' first example) never matches a
packet -- IPVS matches the virtual address exactly -- so it is refused unless
``--vip ADDRESS`` names the real VIP to use instead; the output then says so
in a comment. Also: ``python -m lvs_operator.importer``.
"""
from __future__ import annotations

import argparse
import ipaddress
import re
import shlex
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import yaml

from lvs_model import channel as C
from lvs_model import kernel as K
from lvs_model.nodespec import Service

SWITCH_PROTOCOL = {"-t": "tcp", "--tcp-service": "tcp", "-u": "udp", "--udp-service": "udp",
                   "--sctp-service": "sctp"}
SWITCH_METHOD = {"-m": "nat", "--masquerading": "nat", "-g": "dr", "--gatewaying": "dr",
                 "-i": "tun", "--ipip": "tun"}
TUN_CSUM = {"--tun-nocsum": "none", "--tun-csum": "csum", "--tun-remcsum": "remcsum"}


class ImportError_(ValueError):
    pass


@dataclass
class SvcRule:
    line: int
    protocol: str = ""
    address: str = ""
    port: int = 0
    fwmark: int = 0
    family: str = "ipv4"
    scheduler: str = "wlc"
    flags: list[str] = field(default_factory=list)
    timeout: int = 0
    netmask: str = ""
    one_packet: bool = False
    original_address: str = ""
    dests: list[dict] = field(default_factory=list)

    @property
    def key(self) -> tuple:
        return ("fwm", self.fwmark, self.family) if self.fwmark else (self.protocol, self.address, self.port)


def _split_hostport(text: str, lineno: int) -> tuple[str, int]:
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:]+)(?::(\d+))?", text)
    if not m:
        raise ImportError_(f"line {lineno}: {text!r} is not ADDRESS:PORT (use ipvsadm -Sn: numeric output)")
    host = m.group(1) or m.group(3)
    port = m.group(2) or m.group(4) or "0"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ImportError_(f"line {lineno}: {host!r} is not an IP address (use ipvsadm -Sn: numeric output)")
    return str(ip), int(port)


def _service_ref(args: list[str], i: int, lineno: int) -> tuple[dict, int]:
    """Parse `-t A:P` / `-u ...` / `--sctp-service ...` / `-f MARK` at args[i]."""
    sw = args[i]
    if sw in SWITCH_PROTOCOL:
        addr, port = _split_hostport(args[i + 1], lineno)
        return {"protocol": SWITCH_PROTOCOL[sw], "address": addr, "port": port}, i + 2
    if sw in ("-f", "--fwmark-service"):
        return {"fwmark": int(args[i + 1])}, i + 2
    raise ImportError_(f"line {lineno}: expected -t/-u/--sctp-service/-f after the command, got {sw!r}")


def parse_save(text: str) -> tuple[list[SvcRule], list[str]]:
    """Rules of an `ipvsadm -Sn` file, and warnings."""
    services: dict[tuple, SvcRule] = {}
    warnings: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        args = shlex.split(line)
        if args[0] in ("ipvsadm",):
            args = args[1:]
        cmd = args[0]
        if cmd not in ("-A", "--add-service", "-a", "--add-server"):
            warnings.append(f"line {lineno}: {cmd!r} ignored (only -A and -a lines are imported)")
            continue
        ref, i = _service_ref(args, 1, lineno)
        v6 = False
        if cmd in ("-A", "--add-service"):
            s = SvcRule(lineno, **ref)
            while i < len(args):
                a = args[i]
                if a in ("-s", "--scheduler"):
                    s.scheduler = args[i + 1]; i += 2
                elif a in ("-p", "--persistent"):
                    if i + 1 < len(args) and args[i + 1].isdigit():
                        s.timeout = int(args[i + 1]); i += 2
                    else:
                        s.timeout = 300; i += 1
                elif a in ("-M", "--netmask"):
                    s.netmask = args[i + 1]; i += 2
                elif a in ("-b", "--sched-flags"):
                    s.flags = [f for f in args[i + 1].split(",") if f]; i += 2
                elif a in ("-o", "--ops", "ops"):
                    s.one_packet = True; i += 1
                elif a == "-6" or a == "--ipv6":
                    v6 = True; i += 1
                elif a in ("pe", "--pe"):
                    warnings.append(f"line {lineno}: persistence engine {args[i + 1]!r} is not supported; dropped")
                    i += 2
                else:
                    raise ImportError_(f"line {lineno}: unknown service option {a!r}")
            if s.scheduler not in K.SCHEDULERS:
                raise ImportError_(f"line {lineno}: scheduler {s.scheduler!r} is not one of {', '.join(K.SCHEDULERS)}")
            if s.fwmark:
                s.family = "ipv6" if v6 else "ipv4"
            else:
                s.family = "ipv6" if ":" in s.address else "ipv4"
            if s.key in services:
                raise ImportError_(f"line {lineno}: service declared twice (first on line {services[s.key].line})")
            services[s.key] = s
        else:
            key_probe = SvcRule(lineno, **ref)
            d: dict[str, Any] = {}
            method = "dr"  # ipvsadm's default forwarding method is gatewaying
            while i < len(args):
                a = args[i]
                if a in ("-r", "--real-server"):
                    addr, port = _split_hostport(args[i + 1], lineno)
                    d["address"], d["port"] = addr, port if port else None
                    i += 2
                elif a in SWITCH_METHOD:
                    method = SWITCH_METHOD[a]; i += 1
                elif a in ("-w", "--weight"):
                    d["weight"] = int(args[i + 1]); i += 2
                elif a in ("-x", "--u-threshold"):
                    d["upperThreshold"] = int(args[i + 1]); i += 2
                elif a in ("-y", "--l-threshold"):
                    d["lowerThreshold"] = int(args[i + 1]); i += 2
                elif a in ("--tun-type", "-T"):
                    d.setdefault("tunnel", {})["type"] = args[i + 1]; i += 2
                elif a == "--tun-port":
                    d.setdefault("tunnel", {})["port"] = int(args[i + 1]); i += 2
                elif a in TUN_CSUM:
                    d.setdefault("tunnel", {})["checksum"] = TUN_CSUM[a]; i += 1
                elif a == "-6":
                    v6 = True; i += 1
                else:
                    raise ImportError_(f"line {lineno}: unknown real-server option {a!r}")
            if "address" not in d:
                raise ImportError_(f"line {lineno}: -a without -r ADDRESS")
            if key_probe.fwmark:
                key_probe.family = "ipv6" if (v6 or ":" in d["address"]) else "ipv4"
            svc = services.get(key_probe.key)
            if svc is None:
                raise ImportError_(f"line {lineno}: real server for a service no -A line declared")
            if d.get("port") is None:
                d["port"] = svc.port
            d["method"] = method
            if d.get("tunnel", {}).get("type") == "ipip" and len(d["tunnel"]) == 1:
                del d["tunnel"]
            d["_line"] = lineno
            svc.dests.append(d)
    return list(services.values()), warnings


def _dns(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:200].strip("-") or "x"


def vs_name(s: SvcRule) -> str:
    if s.fwmark:
        return f"fwm-{s.fwmark}" + ("-v6" if s.family == "ipv6" else "")
    return _dns(f"{s.protocol}-{s.address}-{s.port}")


def to_objects(services: list[SvcRule], namespace: str, director_selector: dict, vip: str | None,
               pool_name: str | None) -> tuple[list[dict], list[str]]:
    """(objects, comments). Raises ImportError_ for what cannot be imported."""
    comments: list[str] = []
    objs: list[dict] = []
    pool_addrs: list[str] = []
    pool_marks: list[dict] = []
    vs_objs, rs_objs = [], []
    for s in services:
        if not s.fwmark and ipaddress.ip_address(s.address).is_unspecified:
            if not vip:
                raise ImportError_(
                    f"line {s.line}: {s.address}:{s.port} never matches a packet (IPVS matches the virtual address "
                    "exactly); re-run with --vip ADDRESS to use the real VIP, or use a firewall-mark service")
            new = str(ipaddress.ip_address(vip))
            if (":" in new) != (":" in s.address):
                raise ImportError_(f"--vip {vip} is not the family of {s.address}")
            comments.append(f"WARNING: line {s.line}: {s.address}:{s.port} never matches a packet (IPVS matches the "
                            f"virtual address exactly); imported with VIP {new} from --vip instead.")
            s.original_address, s.address = s.address, new
        name = vs_name(s)
        methods = Counter(d["method"] for d in s.dests)
        method = methods.most_common(1)[0][0] if methods else "nat"
        tunnels = Counter(yaml.safe_dump(d.get("tunnel"), sort_keys=True) for d in s.dests if d["method"] == "tun")
        spec: dict[str, Any] = {}
        if s.fwmark:
            spec["fwmark"] = s.fwmark
            if s.family == "ipv6":
                spec["family"] = "ipv6"
            pool_marks.append({"first": s.fwmark, "last": s.fwmark})
        else:
            spec.update(address=s.address, port=s.port, protocol=s.protocol)
            pool_addrs.append(f"{s.address}/{128 if ':' in s.address else 32}")
        spec["scheduler"] = s.scheduler
        if s.flags:
            spec["schedulerFlags"] = s.flags
        if s.timeout:
            spec["persistence"] = {"timeout": s.timeout, **({"netmask": s.netmask} if s.netmask else {})}
        if s.one_packet:
            spec["onePacket"] = True
        spec["method"] = method
        default_tunnel = None
        if method == "tun" and tunnels:
            default_tunnel = yaml.safe_load(tunnels.most_common(1)[0][0])
            if default_tunnel:
                spec["tunnel"] = default_tunnel
        spec["directorSelector"] = director_selector
        vs_obj = {"apiVersion": C.API_VERSION, "kind": C.VIRTUALSERVICE_KIND,
                  "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        if s.original_address:
            vs_obj["metadata"]["annotations"] = {
                f"{C.GROUP}/imported-address": s.original_address}
        vs_objs.append(vs_obj)
        for d in s.dests:
            rspec: dict[str, Any] = {"virtualService": name, "address": d["address"], "port": d["port"],
                                     "weight": d.get("weight", 1)}
            if d["method"] != method:
                rspec["method"] = d["method"]
            if d["method"] == "tun":
                mine = d.get("tunnel") or {"type": "ipip"}
                if mine != (default_tunnel or {"type": "ipip"}):
                    rspec["tunnel"] = mine  # explicit, even ipip: it must not inherit the service's
            for k in ("upperThreshold", "lowerThreshold"):
                if d.get(k):
                    rspec[k] = d[k]
            rs_objs.append({"apiVersion": C.API_VERSION, "kind": C.REALSERVER_KIND,
                            "metadata": {"name": _dns(f"{name}-{d['address']}-{d['port']}"), "namespace": namespace},
                            "spec": rspec})
    if pool_addrs or pool_marks:
        pspec: dict[str, Any] = {}
        if pool_addrs:
            pspec["addresses"] = sorted(set(pool_addrs), key=pool_addrs.index)
        if pool_marks:
            pspec["fwmarks"] = pool_marks
        pspec["namespaces"] = [namespace]
        objs.append({"apiVersion": C.API_VERSION, "kind": C.VIPPOOL_KIND,
                     "metadata": {"name": pool_name or _dns(f"imported-{namespace}")}, "spec": pspec})
    return objs + vs_objs + rs_objs, comments


def render(objs: list[dict], comments: Iterable[str], source: str) -> str:
    head = [f"# Imported by `lvsctl import` from {source}.",
            "# The VIPPool (cluster-scoped) must be applied by a cluster administrator."]
    head += [f"# {c}" for c in comments]
    return "\n".join(head) + "\n" + yaml.safe_dump_all(objs, sort_keys=False, explicit_start=True)


# --------------------------------------------------------------------------
# The way back (for round trips and for humans comparing)
# --------------------------------------------------------------------------

def _hp(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def save_lines(svc: Service) -> list[str]:
    """``ipvsadm -Sn`` lines for one service of the engine model."""
    if svc.fwmark:
        ref = f"-f {svc.fwmark}" + (" -6" if svc.family == "ipv6" else "")
    else:
        ref = f"{K.PROTOCOL_SWITCH[svc.protocol]} {_hp(svc.address, svc.port)}"
    line = f"-A {ref} -s {svc.scheduler}"
    if svc.persistence_timeout:
        line += f" -p {svc.persistence_timeout}"
        if svc.persistence_netmask and svc.persistence_netmask not in ("255.255.255.255", "128"):
            line += f" -M {svc.persistence_netmask}"
    if svc.one_packet:  # ipvsadm 1.31 prints -o before -b
        line += " -o"
    if svc.scheduler_flags:
        line += " -b " + ",".join(svc.scheduler_flags)
    out = [line]
    for d in svc.dests:
        dl = f"-a {ref} -r {_hp(d.address, d.port)} {K.METHOD_SWITCH[d.method]} -w {d.weight}"
        if d.upper_threshold:
            dl += f" -x {d.upper_threshold}"
        if d.lower_threshold:
            dl += f" -y {d.lower_threshold}"
        if d.method == "tun":  # as ipvsadm 1.31 saves a tunnel dest
            dl += f" --tun-type {d.tunnel_type}"
            if d.tunnel_type == "gue":
                dl += f" --tun-port {d.tunnel_port}"
            if d.tunnel_type != "ipip":
                dl += {"none": " --tun-nocsum", "csum": " --tun-csum", "remcsum": " --tun-remcsum"}[d.tunnel_csum]
        out.append(dl)
    return out


def _selector(text: str) -> dict:
    if text in ("", "{}", "all"):
        return {}
    labels = {}
    for part in text.split(","):
        k, sep, v = part.partition("=")
        if not sep or not k:
            raise argparse.ArgumentTypeError(f"{part!r}: use KEY=VALUE[,KEY=VALUE]")
        labels[k.strip()] = v.strip()
    return {"matchLabels": labels}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lvsctl import", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("file", help="an `ipvsadm -Sn` (--save --numeric) file, - for stdin")
    ap.add_argument("-n", "--namespace", default="default", help="namespace of the VirtualServices/RealServers")
    ap.add_argument("--director-selector", type=_selector, default=_selector("lvs.kube-lvs.io/director=true"),
                    metavar="KEY=VALUE[,...]", help="labels of the director Nodes ('all' for every node)")
    ap.add_argument("--vip", help="real VIP for services saved on 0.0.0.0 / :: (which never match)")
    ap.add_argument("--pool-name", help="name of the VIPPool (default imported-NAMESPACE)")
    args = ap.parse_args(argv)
    try:
        text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
    except OSError as e:
        print(f"lvsctl import: {e}", file=sys.stderr)
        return 1
    try:
        services, warnings = parse_save(text)
        objs, comments = to_objects(services, args.namespace, args.director_selector, args.vip, args.pool_name)
    except ImportError_ as e:
        print(f"lvsctl import: {args.file}: {e}", file=sys.stderr)
        return 2
    for w in warnings + comments:
        print(f"lvsctl import: {w}", file=sys.stderr)
    sys.stdout.write(render(objs, warnings + comments, args.file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
