"""lvsctl: look at and program a node's IPVS table by hand.

    lvsctl list [-n] [--stats|--rate|--thresholds|--persistent-conn|--tun-info] [--exact]
    lvsctl list --timeout         (the IPVS connection timeouts, as ipvsadm -L --timeout)
    lvsctl list --daemon          (the connection sync daemons, as ipvsadm -L --daemon)
    lvsctl save [-n]
    lvsctl apply NODE_SPEC.yaml [--state FILE] [--dry-run] [--uplink DEV]
    lvsctl import FILE            (ipvsadm --save output -> kube-lvs YAML; operator package)

``apply`` is a full reconcile against its ownership record: it deletes every
service the record lists and the YAML does not. So it keeps a record of its
own (``lvsctl.json`` in the state directory, never the agent's
``ownership.json``), and it refuses a ``--state`` that a running agent (or
another lvsctl) holds (state.RecordLock).

Every command takes ``--netns NS``. ``list`` prints exactly what Debian's
ipvsadm 1.31 prints for ``ipvsadm -L`` with the same options (same columns,
same widths, same order: ipvsadm sorts with glibc's merge sort and a
comparator that wraps around in 32-bit arithmetic, which this module
reproduces); ``save`` prints what ``ipvsadm -S`` prints. The formatting
functions are pure and take an ``IPVSTable``.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import Callable, Sequence

from lvs_model import kernel as K
from lvs_model.addresses import words
from lvs_model.nodespec import TIMEOUT_NAMES, Dest, Service

from .ipvs_codec import DestRuntime, IPVSTable, Stats, svc_flags

ROOT_MESSAGE = "lvsctl must run as root (it programs the kernel's IPVS table)"

# --------------------------------------------------------------------------
# ipvsadm's order
# --------------------------------------------------------------------------


def _i32(x: int) -> int:
    """C: an unsigned difference stored in an int."""
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x & 0x80000000 else x


def _cmp_addr(af6: bool, a: str, b: str) -> int:
    wa, wb = words(a), words(b)
    if af6:
        wa, wb = (wa + (0, 0, 0, 0))[:4], (wb + (0, 0, 0, 0))[:4]
        r = 0
        i = 0
        while not r and i < 4:
            r = _i32(wa[i] - wb[i])
            i += 1
        return r
    return _i32(wa[0] - wb[0])


def cmp_services(s1: Service, s2: Service) -> int:
    """libipvs ipvs_cmp_services, 32-bit wrap-around included."""
    r = _i32(s1.fwmark - s2.fwmark)
    if r:
        return r
    r = K.FAMILIES[s1.family] - K.FAMILIES[s2.family]
    if r:
        return r
    r = _proto_code(s1) - _proto_code(s2)
    if r:
        return r
    r = _cmp_addr(s1.family == "ipv6", s1.address, s2.address)
    if r:
        return r
    return s1.port - s2.port


def cmp_dests(d1: Dest, d2: Dest) -> int:
    """libipvs ipvs_cmp_dests."""
    r = _cmp_addr(":" in d1.address, d1.address, d2.address)
    if r:
        return r
    return d1.port - d2.port


def _proto_code(s: Service) -> int:
    # libipvs leaves a fwmark service's protocol at 0 (no attribute in the dump).
    return K.PROTOCOLS.get(s.protocol, 0) if not s.fwmark else 0


def glibc_msort(items: Sequence, cmp: Callable) -> list:
    """glibc 2.36 qsort (msort_with_tmp): top-down merge sort, n1 = n/2,
    taking from the left run while cmp(left, right) <= 0. With a comparator
    that is not a total order (ipvsadm's wraps), only this exact algorithm
    gives ipvsadm's order."""
    items = list(items)
    n = len(items)
    if n <= 1:
        return items
    n1 = n // 2
    a = glibc_msort(items[:n1], cmp)
    b = glibc_msort(items[n1:], cmp)
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        if cmp(a[i], b[j]) <= 0:
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    out.extend(a[i:])
    out.extend(b[j:])
    return out


# --------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------

PROTO_NAME = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP"}
PROTO_SWITCH = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}
FWD_NAME = {"nat": "Masq", "local": "Local", "tun": "Tunnel", "dr": "Route"}
FWD_SWITCH = {"nat": "-m", "tun": "-i", "dr": "-g", "local": "-g"}
TUN_NAMES = {"ipip": "ipip", "gue": "gue", "gre": "gre"}
TUN_FLAGS = {"none": "-c", "csum": "+c", "remcsum": "r+c"}
TUN_FLAG_OPTS = {"none": "--tun-nocsum", "csum": "--tun-csum", "remcsum": "--tun-remcsum"}


def _lookup_host(address: str) -> str:
    try:
        return socket.gethostbyaddr(address)[0]
    except OSError:
        return address


def _lookup_port(port: int, protocol: str) -> str:
    try:
        return socket.getservbyport(port, "tcp" if protocol == "tcp" else "udp")
    except OSError:
        return str(port)


class Namer:
    """addrport_to_anyname: numeric, or resolved like ipvsadm without -n."""

    def __init__(self, numeric: bool = True, host: Callable[[str], str] = _lookup_host,
                 port: Callable[[int, str], str] = _lookup_port):
        self.numeric = numeric
        self.host, self.port = host, port

    def __call__(self, address: str, port: int, protocol: str) -> str:
        v6 = ":" in address
        if self.numeric:
            host, p = address, str(port)
        else:
            host, p = self.host(address), self.port(port, protocol)
        return f"[{host}]:{p}" if v6 else f"{host}:{p}"


# --------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------

def largenum(i: int, exact: bool = False) -> str:
    if exact:
        s = str(i)
        return s.rjust(9 if len(s) <= 8 else len(s) + 1)
    if i < 100_000_000:
        return f"{i:9d}"
    if i < 1_000_000_000:
        return f"{i // 1000:8d}K"
    if i < 100_000_000_000:
        return f"{i // 1_000_000:8d}M"
    if i < 100_000_000_000_000:
        return f"{i // 1_000_000_000:8d}G"
    return f"{i // 1_000_000_000_000:8d}T"


def sched_flags_text(s: Service) -> str:
    return ",".join(s.scheduler_flags)


def _netmask_suffix(s: Service, word: str) -> str:
    mask = s.persistence_netmask
    if not mask:
        return ""
    return f" {word} {mask}"


MODES = ("default", "stats", "rate", "thresholds", "persistent-conn", "tun-info")


def title(mode: str) -> str:
    head = "Prot LocalAddress:Port"
    if mode == "stats":
        return f"{head:<33s} {'Conns':>8s} {'InPkts':>8s} {'OutPkts':>8s} {'InBytes':>8s} {'OutBytes':>8s}\n" \
               "  -> RemoteAddress:Port\n"
    if mode == "rate":
        return f"{head:<33s} {'CPS':>8s} {'InPPS':>8s} {'OutPPS':>8s} {'InBPS':>8s} {'OutBPS':>8s}\n" \
               "  -> RemoteAddress:Port\n"
    if mode == "thresholds":
        return f"{head:<33s} {'Uthreshold':<10s} {'Lthreshold':<10s} {'ActiveConn':<10s} {'InActConn':<10s}\n" \
               "  -> RemoteAddress:Port\n"
    if mode == "persistent-conn":
        return f"{head:<33s} {'Weight':<9s} {'PersistConn':<11s} {'ActiveConn':<10s} {'InActConn':<10s}\n" \
               "  -> RemoteAddress:Port\n"
    if mode == "tun-info":
        return "Prot LocalAddress:Port Scheduler Flags\n" \
               "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn\n"
    return "Prot LocalAddress:Port Scheduler Flags\n" \
           "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"


def _svc_name(s: Service, namer: Namer, rule: bool) -> str:
    if s.fwmark:
        if rule:
            return f"-f {s.fwmark}" + (" -6" if s.family == "ipv6" else "")
        return f"FWM  {s.fwmark}" + (" IPv6" if s.family == "ipv6" else "")
    vname = namer(s.address, s.port, s.protocol)
    if rule:
        return f"{PROTO_SWITCH.get(s.protocol, '-t')} {vname}"
    name = f"{PROTO_NAME.get(s.protocol, s.protocol.upper()):<4s} {vname}"
    return name if s.family == "ipv6" else name[:33]


def _tun_info(d: Dest) -> str:
    if d.method != "tun":
        return "n/a"
    if d.tunnel_type == "ipip":
        return "ipip"
    if d.tunnel_type == "gue":
        return f"gue:{d.tunnel_port}:{TUN_FLAGS[d.tunnel_csum]}"
    return f"{TUN_NAMES.get(d.tunnel_type, d.tunnel_type)}:{TUN_FLAGS[d.tunnel_csum]}"


def _dest_rule(svc_name: str, dname: str, d: Dest) -> str:
    base = f"-a {svc_name} -r {dname} {FWD_SWITCH.get(d.method, '-g')} -w {d.weight}"
    if d.method != "tun":
        return base
    if d.tunnel_type == "gue":
        return f"{base} --tun-type gue --tun-port {d.tunnel_port} {TUN_FLAG_OPTS[d.tunnel_csum]}"
    if d.tunnel_type == "gre":
        return f"{base} --tun-type gre {TUN_FLAG_OPTS[d.tunnel_csum]}"
    return f"{base} --tun-type {d.tunnel_type}"


def format_service(s: Service, table: IPVSTable, mode: str = "default", rule: bool = False,
                   namer: Namer | None = None, exact: bool = False) -> list[str]:
    """The lines ipvsadm prints for one service and its (sorted) dests."""
    namer = namer or Namer()
    key = s.key
    name = _svc_name(s, namer, rule)
    pe = table.pe_names.get(key, "")
    flags = svc_flags(s)
    sched_bits = flags & (K.SVC_F_SCHED1 | K.SVC_F_SCHED2 | K.SVC_F_SCHED3)
    lines: list[str] = []
    if rule:
        line = f"-A {name} -s {s.scheduler}"
        if flags & K.SVC_F_PERSISTENT:
            line += f" -p {s.persistence_timeout}" + _netmask_suffix(s, "-M")
        if pe:
            line += f" --pe {pe}"
        if flags & K.SVC_F_ONEPACKET:
            line += " -o"
        if sched_bits:
            line += f" -b {sched_flags_text(s)}"
    elif mode in ("stats", "rate"):
        st = table.service_stats.get(key, Stats())
        vals = ((st.conns, st.inpkts, st.outpkts, st.inbytes, st.outbytes) if mode == "stats"
                else (st.cps, st.inpps, st.outpps, st.inbps, st.outbps))
        line = f"{name:<33s}" + "".join(largenum(v, exact) for v in vals)
    else:
        line = f"{name} {s.scheduler}"
        if sched_bits:
            line += f" ({sched_flags_text(s)})"
        if flags & K.SVC_F_PERSISTENT:
            line += f" persistent {s.persistence_timeout}" + _netmask_suffix(s, "mask")
        if pe:
            line += f" pe {pe}"
        if flags & K.SVC_F_ONEPACKET:
            line += " ops"
    lines.append(line)
    for d in glibc_msort(s.dests, cmp_dests):
        dname = namer(d.address, d.port, s.protocol)
        if not rule and s.family != "ipv6":
            dname = dname[:28]
        rt = table.dest_runtime.get((key, d.key), DestRuntime())
        if rule:
            lines.append(_dest_rule(name, dname, d))
        elif mode == "stats":
            st = rt.stats
            lines.append(f"  -> {dname:<28s}" + "".join(
                largenum(v, exact) for v in (st.conns, st.inpkts, st.outpkts, st.inbytes, st.outbytes)))
        elif mode == "rate":
            st = rt.stats
            lines.append(f"  -> {dname:<28s} {st.cps:8d} {st.inpps:8d} {st.outpps:8d}"
                         + largenum(st.inbps, exact) + largenum(st.outbps, exact))
        elif mode == "thresholds":
            lines.append(f"  -> {dname:<28s} {d.upper_threshold:<10d} {d.lower_threshold:<10d} "
                         f"{rt.active:<10d} {rt.inactive:<10d}")
        elif mode == "persistent-conn":
            lines.append(f"  -> {dname:<28s} {d.weight:<9d} {rt.persistent:<11d} "
                         f"{rt.active:<10d} {rt.inactive:<10d}")
        elif mode == "tun-info":
            lines.append(f"  -> {dname:<28s} {FWD_NAME.get(d.method, 'Masq'):<7s} {_tun_info(d):<13s} "
                         f"{d.weight:<6d} {rt.active:<10d} {rt.inactive:<10d}")
        else:
            lines.append(f"  -> {dname:<28s} {FWD_NAME.get(d.method, 'Masq'):<7s} {d.weight:<6d} "
                         f"{rt.active:<10d} {rt.inactive:<10d}")
    return lines


def sorted_services(table: IPVSTable) -> list[Service]:
    return glibc_msort(list(table.services.values()), cmp_services)


def format_list(table: IPVSTable, mode: str = "default", numeric: bool = True,
                exact: bool = False, namer: Namer | None = None) -> str:
    """``ipvsadm -L`` (``-n`` when numeric; mode: --stats, --rate, ...)."""
    if mode not in MODES:
        raise ValueError(f"unknown list mode {mode!r}")
    namer = namer or Namer(numeric)
    out = [f"IP Virtual Server version {table.version_text} (size={table.conn_tab_size})\n",
           title(mode)]
    for s in sorted_services(table):
        out.extend(line + "\n" for line in format_service(s, table, mode, False, namer, exact))
    return "".join(out)


def format_save(table: IPVSTable, numeric: bool = True, namer: Namer | None = None) -> str:
    """``ipvsadm -S`` (``-n`` when numeric). Like ipvsadm, thresholds are not saved."""
    namer = namer or Namer(numeric)
    out: list[str] = []
    for s in sorted_services(table):
        out.extend(line + "\n" for line in format_service(s, table, "default", True, namer))
    return "".join(out)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def _require_root() -> None:
    if os.geteuid() != 0:
        print(f"lvsctl: {ROOT_MESSAGE}", file=sys.stderr)
        raise SystemExit(2)


def _read_table(netns: str | None, with_stats: bool) -> IPVSTable:
    from .observe import read_ipvs
    return read_ipvs(netns, with_stats=with_stats)


def format_timeouts(timeouts: dict[str, int]) -> str:
    """``ipvsadm -L --timeout``'s one line (ipvsadm's list_timeout)."""
    return "Timeout (tcp tcpfin udp): {} {} {}\n".format(*(timeouts.get(n, 0) for n in TIMEOUT_NAMES))


def cmd_list(args) -> int:
    _require_root()
    if args.timeout:
        from .ipvs_config import get_timeouts, with_connection
        sys.stdout.write(format_timeouts(with_connection(args.netns, None, get_timeouts)))
        return 0
    if args.daemon:
        from .ipvs_config import with_connection
        from .ipvs_sync import format_daemon, list_daemons
        sys.stdout.write("".join(format_daemon(d) + "\n" for d in with_connection(args.netns, None, list_daemons)))
        return 0
    mode = next((m for m in MODES if getattr(args, m.replace("-", "_"), False)), "default")
    table = _read_table(args.netns, mode in ("stats", "rate"))
    sys.stdout.write(format_list(table, mode, numeric=args.numeric, exact=args.exact))
    return 0


def cmd_save(args) -> int:
    _require_root()
    sys.stdout.write(format_save(_read_table(args.netns, False), numeric=args.numeric))
    return 0


def load_spec_document(path: str):
    from .yaml_load import load
    with (sys.stdin if path == "-" else open(path)) as f:
        doc = load(f.read())
    # Accept a bare node spec, or an object carrying one under "spec" (a NodeState).
    if isinstance(doc, dict) and "spec" in doc and ("kind" in doc or "apiVersion" in doc):
        doc = doc["spec"]
    return doc if doc is not None else {}


def default_state_path(netns: str | None = None) -> Path:
    """lvsctl's own ownership record: never the agent's (state.AGENT_RECORD),
    whose services a full reconcile with it would delete."""
    from .engine import DEFAULT_STATE_DIR
    from .state import LVSCTL_RECORD
    name = LVSCTL_RECORD if not netns else f"lvsctl.{os.path.basename(netns)}.json"
    return Path(os.environ.get("KUBE_LVS_STATE_DIR", DEFAULT_STATE_DIR)) / name


def held_message(why, netns: str | None) -> str:
    """Why apply refuses a record somebody runs with, and what to do instead."""
    from .state import lock_path
    return (f"lvsctl: refusing to apply with {why.record}: it is the ownership record of a running "
            f"{why.holder} (it holds {lock_path(why.record)}). Applying with it would make that "
            f"program's IPVS services lvsctl's and delete every one the YAML does not list. Leave out "
            f"--state to use lvsctl's own record ({default_state_path(netns)}), or stop the holder first.")


def _note_old_default(netns: str | None, state: Path) -> None:
    """Before lvsctl had a record of its own, its default was the engine's
    (ownership.json): say so once, when that file exists and lvsctl's does not."""
    from .engine import default_state_path as engine_default
    old = engine_default(netns)
    if not state.exists() and old.exists():
        print(f"note: lvsctl keeps its own record, {state}; the services {old} lists (the agent's, or "
              f"an earlier lvsctl's) are not lvsctl's. If an earlier lvsctl made them and no agent runs "
              f"here, pass --state {old}.", file=sys.stderr)


def cmd_apply(args) -> int:
    from lvs_model.nodespec import parse_node_spec
    try:
        doc = load_spec_document(args.spec)
    except OSError as e:
        print(f"lvsctl: cannot read {args.spec}: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - yaml.YAMLError and friends
        print(f"lvsctl: cannot parse {args.spec}: {e}", file=sys.stderr)
        return 2
    from .state import RecordHeld, hold_record
    spec, field_errors = parse_node_spec(doc)
    for fe in field_errors:
        print(f"invalid     {fe}")
    state = Path(args.state) if args.state else default_state_path(args.netns)
    if not args.state:
        _note_old_default(args.netns, state)
    try:
        lock = hold_record(state, f"lvsctl apply (pid {os.getpid()})")
    except RecordHeld as why:
        print(held_message(why, args.netns), file=sys.stderr)
        return 2
    with lock:
        _require_root()
        return _apply(args, spec, state, failed=bool(field_errors))


def plan_lines(p) -> list[str]:
    """A dry run's lines: the operations a reconcile would issue, then the problems."""
    from . import ops as O
    lines = [f"would       {O.describe(op)}\n" for op in p.ops]
    lines += [f"problem     {k}: {why}\n" for k, why in p.problems.items()]
    if not p.ops:
        lines.append("nothing to do\n")
    return lines


def report_lines(report) -> list[str]:
    """A reconcile's lines: per service, then the errors and a summary."""
    lines = [f"programmed  {k}\n" for k in report.programmed]
    lines += [f"problem     {k}: {why}\n" for k, why in report.problems.items()]
    lines += [f"failed      {k}: {why}\n" for k, why in report.service_errors.items()]
    lines += [f"error       {why}\n" for why in report.errors]
    lines.append(f"{len(report.results)} operations, {len(report.failed)} failed, uplink {report.uplink or '-'}, "
                 f"{report.duration:.2f}s\n")
    return lines


def _write(lines: list[str]) -> None:
    # One write: a line per service on an unbuffered or terminal stdout would
    # be a system call per line.
    sys.stdout.write("".join(lines))
    sys.stdout.flush()


def _apply(args, spec, state: Path, failed: bool) -> int:
    """Plan (--dry-run) or reconcile, with the record's lock held."""
    from .engine import Engine
    engine = Engine(state, netns=args.netns, uplink=args.uplink or "")
    try:
        if args.dry_run:
            p, _, _, uplink = engine.plan(spec)
            _write(plan_lines(p))
            return 1 if (failed or p.problems) else 0
        report = engine.reconcile(spec)
    finally:
        engine.close()
    _write(report_lines(report))
    return 1 if (failed or not report.ok) else 0


def cmd_import(args, rest: list[str]) -> int:
    try:
        from lvs_operator.importer import main as importer_main
    except ImportError:
        print("lvsctl: import needs the operator package (lvs_operator.importer), which is not installed",
              file=sys.stderr)
        return 2
    return importer_main(rest) or 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lvsctl", description="Inspect and program the kernel's IPVS table.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--netns", default=None, help="operate in this network namespace")

    ls = sub.add_parser("list", help="the live table, as ipvsadm -L prints it")
    common(ls)
    ls.add_argument("-n", "--numeric", action="store_true", help="numeric addresses and ports")
    g = ls.add_mutually_exclusive_group()
    g.add_argument("--stats", action="store_true", help="packet and byte counters")
    g.add_argument("--rate", action="store_true", help="rates (per second)")
    g.add_argument("--thresholds", action="store_true", help="upper/lower connection thresholds")
    g.add_argument("--persistent-conn", action="store_true", help="persistent connection counts")
    g.add_argument("--tun-info", action="store_true", help="tunnel type, port and checksum")
    g.add_argument("--timeout", action="store_true", help="the IPVS connection timeouts (tcp tcpfin udp)")
    g.add_argument("--daemon", action="store_true", help="the connection sync daemons (ipvsadm -L --daemon)")
    ls.add_argument("--exact", action="store_true", help="exact numbers (no K/M/G)")
    ls.set_defaults(func=cmd_list)

    sv = sub.add_parser("save", help="the live table as ipvsadm --save prints it")
    common(sv)
    sv.add_argument("-n", "--numeric", action="store_true")
    sv.set_defaults(func=cmd_save)

    ap = sub.add_parser("apply", help="make the kernel match a node spec (YAML)")
    common(ap)
    ap.add_argument("spec", help="node spec YAML file ('-' for stdin)")
    ap.add_argument("--state", default=None,
                    help="ownership record (default: lvsctl.json in $KUBE_LVS_STATE_DIR or /var/lib/kube-lvs; "
                         "a record a running agent holds is refused)")
    ap.add_argument("--uplink", default="", help="device carrying LVS traffic (default: the spec's, "
                                                  "else the default route's)")
    ap.add_argument("--dry-run", action="store_true", help="print the operations, change nothing")
    ap.set_defaults(func=cmd_apply)

    im = sub.add_parser("import", help="convert ipvsadm --save output to kube-lvs YAML", add_help=False)
    im.set_defaults(func=None)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "import":
        return cmd_import(None, argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PermissionError as e:
        print(f"lvsctl: {ROOT_MESSAGE} ({e})", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except OSError as e:  # no IPVS in this kernel, no such namespace, ...
        print(f"lvsctl: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
