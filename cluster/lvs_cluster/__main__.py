"""``python -m lvs_cluster up|down|env|bin-dir`` — the control plane for people.

``up`` starts etcd, kube-apiserver and kube-controller-manager on 127.0.0.1 and
stays in the foreground; Ctrl-C (or ``python -m lvs_cluster down`` from another
shell) stops it. The state lives in a fixed directory (``--dir``, default
``$TMPDIR/kube-lvs-cluster-<uid>``) so the KUBECONFIG path is the same every time.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from . import binaries
from .control_plane import ControlPlane, ControlPlaneError


def default_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"kube-lvs-cluster-{os.getuid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(d: Path) -> int | None:
    try:
        pid = int((d / "up.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def _env_lines(cp_info: dict) -> list[str]:
    return [
        f"export KUBECONFIG={shlex.quote(cp_info['kubeconfig'])}",
        f"export PATH={shlex.quote(cp_info['bin_dir'])}:$PATH",
    ]


def cmd_up(args) -> int:
    d = Path(args.dir)
    pid = _read_pid(d)
    if pid:
        print(f"a control plane is already running (pid {pid}) in {d}; "
              f"stop it with: python -m lvs_cluster down", file=sys.stderr)
        return 1
    try:
        binaries.require_binaries()
    except binaries.BinariesMissing as e:
        print(e, file=sys.stderr)
        return 2
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    (d / "up.pid").write_text(f"{os.getpid()}\n")
    cp = ControlPlane(d, bind_address=args.bind_address, port=args.port)
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    k8s, etcd = binaries.pinned_versions()
    t0 = time.monotonic()
    print(f"starting etcd {etcd}, kube-apiserver/kube-controller-manager {k8s} in {d} ...",
          flush=True)
    try:
        cp.start()
    except (ControlPlaneError, KeyboardInterrupt) as e:
        print(f"start failed: {e}", file=sys.stderr)
        cp.stop(keep=True)
        (d / "up.pid").unlink(missing_ok=True)
        return 1
    info = json.loads((d / "cluster.json").read_text())
    print(f"\ncontrol plane up in {time.monotonic() - t0:.1f}s: {cp.url}")
    print("use it from another shell:\n")
    for line in _env_lines(info):
        print(f"    {line}")
    print("    kubectl get namespaces\n")
    print(f"(or: eval \"$(python -m lvs_cluster env --dir {shlex.quote(str(d))})\")")
    print(f"from a lab VM (guestfwd 10.0.2.100:{cp.port} -> 127.0.0.1:{cp.port}): {cp.vm_url}")
    print(f"logs: {cp.log_dir}")
    print("stop: Ctrl-C here, or `python -m lvs_cluster down` from another shell\n", flush=True)
    try:
        while cp.running():
            time.sleep(1)
        print("a component exited; see the logs in", cp.log_dir, file=sys.stderr)
        for name in cp.pids:
            print(f"--- {name}\n{cp.log_tail(name, 10)}", file=sys.stderr)
        rc = 1
    except KeyboardInterrupt:
        rc = 0
    print("stopping ...", flush=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cp.stop(keep=True)
    (d / "up.pid").unlink(missing_ok=True)
    print(f"stopped (state and logs left in {d})")
    return rc


def cmd_down(args) -> int:
    d = Path(args.dir)
    pid = _read_pid(d)
    if not pid:
        print(f"no control plane running from {d}")
        return 0
    os.kill(pid, signal.SIGTERM)
    for _ in range(300):
        if not _pid_alive(pid):
            print("stopped")
            return 0
        time.sleep(0.1)
    print(f"pid {pid} did not stop within 30s", file=sys.stderr)
    return 1


def cmd_env(args) -> int:
    d = Path(args.dir)
    if not _read_pid(d):
        print(f"no control plane running from {d}; start one with: "
              "python -m lvs_cluster up", file=sys.stderr)
        return 1
    for line in _env_lines(json.loads((d / "cluster.json").read_text())):
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lvs_cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the control plane in the foreground")
    up.add_argument("--bind-address", default="127.0.0.1",
                    help="loopback address to listen on (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=0,
                    help="API server port (default: a free one)")
    for s in (up, sub.add_parser("down", help="stop a running `up`"),
              sub.add_parser("env", help="print export lines for a running `up`")):
        s.add_argument("--dir", default=str(default_dir()), help="state directory")
    sub.add_parser("bin-dir", help="print where cluster/build.sh puts the binaries")
    args = p.parse_args(argv)
    if args.command == "bin-dir":
        print(binaries.bin_dir())
        return 0
    return {"up": cmd_up, "down": cmd_down, "env": cmd_env}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
