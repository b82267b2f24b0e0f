"""CLI: ``python -m lvs_lab run [--timeout S] [--mem M] [--forward PORT ...] -- CMD ARGS...``

Exits with the guest command's exit code (124 on timeout, 125 when the guest reported
none, 2 for usage errors).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from .vm import LabError, LabVM, find_kernel


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lvs_lab")
    sub = p.add_subparsers(dest="action", required=True)
    r = sub.add_parser("run", help="boot the lab VM and run CMD in it (in the current directory)")
    r.add_argument("--timeout", type=float, default=1500, help="kill the VM after S seconds (default 1500)")
    r.add_argument("--mem", type=int, default=2048, help="guest memory in MiB (default 2048)")
    r.add_argument("--smp", type=int, default=2, help="guest CPUs (default 2)")
    r.add_argument("--forward", type=int, action="append", default=[], metavar="PORT",
                   help="let the guest reach host 127.0.0.1:PORT at 10.0.2.100:PORT (repeatable)")
    r.add_argument("--forward-mode", choices=("cmd", "tcp"), default="cmd",
                   help="cmd (default): a host relay per guest connection; tcp: qemu's single "
                        "connection made at startup")
    r.add_argument("--env", action="append", default=[], metavar="K=V", help="extra guest environment")
    r.add_argument("--module", action="append", default=[], metavar="NAME", help="extra module to load")
    r.add_argument("--bind", action="append", default=[], metavar="PATH",
                   help="host path under /tmp or /run to make visible in the guest")
    r.add_argument("--results", metavar="DIR", help="keep the job directory (console.log, rc, files the guest wrote to $KUBE_LVS_LAB_RESULTS) in DIR")
    r.add_argument("--readonly-repo", action="store_true",
                   help="do not share the project directory read-write (default: it is writable in the guest)")
    r.add_argument("-v", "--verbose", action="store_true", help="print the qemu command and timings")
    r.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    sub.add_parser("info", help="show the lab kernel in the cache")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.action == "info":
            k = find_kernel()
            load, missing = k.lab_modules()
            print(f"kernel   {k.version}\ncache    {k.dir}\nmodules  {' '.join(load)}\nmissing  {' '.join(missing) or '-'}")
            return 0
        cmd = list(args.cmd)
        if cmd and cmd[0] == "--":
            cmd = cmd[1:]
        if not cmd:
            print("lvs_lab run: no command (usage: python -m lvs_lab run [opts] -- CMD ARGS...)", file=sys.stderr)
            return 2
        env = {}
        for kv in args.env:
            k, sep, v = kv.partition("=")
            if not sep:
                print(f"lvs_lab run: --env needs K=V, got {kv!r}", file=sys.stderr)
                return 2
            env[k] = v
        vm = LabVM(cmd, forwards=args.forward, timeout=args.timeout, mem=args.mem, smp=args.smp,
                   env=env, extra_modules=args.module, binds=args.bind,
                   results_dir=args.results, verbose=args.verbose,
                   writable_repo=not args.readonly_repo, forward_mode=args.forward_mode)
    except LabError as e:
        print(f"lvs_lab: {e}", file=sys.stderr)
        return 2

    def _stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    t0 = time.monotonic()
    try:
        vm.start()
        rc = vm.wait()
    except KeyboardInterrupt:
        print("\nlvs_lab: interrupted: VM killed", file=sys.stderr)
        rc = 130
    except LabError as e:
        print(f"lvs_lab: {e}", file=sys.stderr)
        rc = 2
    finally:
        vm.cleanup()
    if args.verbose:
        boot = f"{vm.boot_seconds:.1f}s to first output, " if vm.boot_seconds else ""
        print(f"lvs_lab: {boot}{time.monotonic() - t0:.1f}s total, exit {rc}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
