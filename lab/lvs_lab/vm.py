"""Boot the lab VM (a Debian kernel with IPVS under qemu/TCG) and run one command in it.

The host root is shared read-only over 9p; the guest chroots into it, cd's to the
caller's working directory and runs the command with the host's own virtualenv. A
second, writable 9p share (the *job directory*) carries the guest script in and the
exit code, the kernel console log and any result files out. The command's output
travels over a virtio console (``hvc0``) that qemu connects to its stdout, so the
host sees exactly the command's output, live; kernel messages go to
``<job>/console.log``.

Function API::

    rc = run_in_vm(["pytest", "tests/kernel"], forwards=(6443,), timeout=900)

    vm = LabVM(cmd, forwards=(port,), output=open("vm.log", "wb")).start()
    ...                       # e.g. drive an API server on host loopback
    vm.wait_for_file("started", timeout=120)
    rc = vm.wait(timeout=600) # or vm.kill()
    vm.cleanup()

Network safety: without forwards the VM has no network card at all (``-nic none``);
with forwards it gets a user-mode NIC with ``restrict=on`` (no route out of the VM)
whose only reachable peers are the ``guestfwd`` ports: guest ``10.0.2.100:PORT`` ->
host ``127.0.0.1:PORT``. By default each forward is ``guestfwd=...-cmd:`` running
:mod:`lvs_lab.relay` per guest connection: qemu's ``-tcp:127.0.0.1:PORT`` form
(``forward_mode="tcp"``) connects once when qemu starts (failing if nothing listens
yet) and carries only the guest's first connection.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Sequence

GUEST_IP = "10.0.2.15"
GUEST_PREFIX = 24
FORWARD_IP = "10.0.2.100"
RELAY = str(Path(__file__).resolve().with_name("relay.py"))
# Where the writable job share is mounted inside the guest (also $KUBE_LVS_LAB_RESULTS).
GUEST_RESULTS = "/run/lab"

# Exit codes of the runner itself (the command's own code is passed through otherwise).
RC_TIMEOUT = 124
RC_NO_RESULT = 125

# Modules loaded in the guest before the command runs. The kernel autoloads most of
# them too (the guest installs a request_module() helper that reaches the unpacked
# tree), but loading up front makes failures visible and avoids ENOENT surprises.
# Names absent from the kernel's modules.dep are skipped (listed in <job>/modules.skipped).
BASE_MODULES = (
    "ip_vs",
    "nf_conntrack",
    "ipip",
    "ip6_tunnel",
    "sit",
    "fou",
    "fou6",
    "gre",
    "ip_gre",
    "ip6_gre",
    "veth",
    "dummy",
    "bridge",
    "sctp",
)
# ip_vs_* modules that are not schedulers and that IPVS work does not need.
SKIP_IPVS_MODULES = {"ip_vs_ftp", "ip_vs_pe_sip"}

# Host environment variables passed to the guest command (plus every KUBE_LVS_*).
PASS_ENV = ("PYTHONPATH", "PYTEST_ADDOPTS", "HYPOTHESIS_PROFILE", "TZ")

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class LabError(RuntimeError):
    """The lab is not usable (not set up, bad arguments, qemu failed to start)."""


# --------------------------------------------------------------------------- kernel


def cache_root() -> Path:
    base = os.environ.get("KUBE_LVS_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "kube-lvs"
    )
    return Path(base) / "lab"


@dataclass(frozen=True)
class LabKernel:
    version: str
    dir: Path

    @property
    def tree(self) -> Path:
        return self.dir / "tree"

    @property
    def vmlinuz(self) -> Path:
        return self.tree / "boot" / f"vmlinuz-{self.version}"

    @property
    def boot_image(self) -> Path:
        """The uncompressed ELF (PVH boot, ~4 s faster under TCG) if setup made one."""
        elf = self.dir / "vmlinux"
        return elf if elf.exists() else self.vmlinuz

    @property
    def initramfs(self) -> Path:
        return self.dir / "initramfs.cpio.gz"

    @property
    def modules_dir(self) -> Path:
        return self.tree / "lib" / "modules" / self.version

    def available_modules(self) -> set[str]:
        """Module names (underscored) present in the tree's modules.dep."""
        names = set()
        with open(self.modules_dir / "modules.dep") as f:
            for line in f:
                path = line.split(":", 1)[0]
                base = os.path.basename(path)
                for ext in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
                    if base.endswith(ext):
                        base = base[: -len(ext)]
                        break
                names.add(base.replace("-", "_"))
        return names

    def lab_modules(self, extra: Iterable[str] = ()) -> tuple[list[str], list[str]]:
        """(modules to load, wanted modules the kernel does not have)."""
        have = self.available_modules()
        wanted = list(BASE_MODULES)
        wanted += sorted(
            m for m in have if m.startswith("ip_vs_") and m not in SKIP_IPVS_MODULES
        )
        wanted += [m.replace("-", "_") for m in extra]
        load, missing = [], []
        for m in dict.fromkeys(wanted):
            (load if m in have else missing).append(m)
        return load, missing


def find_kernel(version: str | None = None) -> LabKernel:
    root = cache_root()
    version = version or os.environ.get("KUBE_LVS_KERNEL")
    if not version:
        try:
            version = (root / "current").read_text().strip()
        except FileNotFoundError:
            raise LabError(
                f"lab kernel not found under {root}: run `bash lab/setup.sh` first"
            ) from None
    k = LabKernel(version, root / version)
    for p in (k.vmlinuz, k.initramfs, k.modules_dir / "modules.dep"):
        if not p.exists():
            raise LabError(f"lab kernel incomplete ({p} missing): run `bash lab/setup.sh`")
    return k


def qemu_binary() -> str:
    q = shutil.which("qemu-system-x86_64")
    if not q:
        raise LabError("qemu-system-x86_64 not found: run `bash lab/setup.sh`")
    return q


# --------------------------------------------------------------------------- helpers


def _project_root(start: Path) -> Path:
    for d in (start, *start.parents):
        if (d / "pyproject.toml").exists() or (d / ".git").exists():
            return d
    return start


def _venv_bin(cwd: Path) -> str | None:
    """The virtualenv bin directory to put first on the guest's PATH."""
    if os.environ.get("VIRTUAL_ENV"):
        return os.path.join(os.environ["VIRTUAL_ENV"], "bin")
    if sys.prefix != sys.base_prefix:
        return os.path.join(sys.prefix, "bin")
    cand = _project_root(cwd) / ".venv" / "bin"
    return str(cand) if cand.is_dir() else None


# Host directories the guest hides under tmpfs mounts; paths below them are bound back.
_SHADOWED = ("/tmp", "/run", "/var/run")


def _rebind_root(path: str) -> str | None:
    """For a host path hidden in the guest by a tmpfs, the directory to bind back."""
    p = os.path.realpath(path)
    for top in _SHADOWED:
        if p == top:
            raise LabError(
                f"{path}: cannot expose {top} itself to the guest (it is a tmpfs there); "
                "use a subdirectory"
            )
        if p.startswith(top + "/"):
            rest = p[len(top) + 1 :].split("/", 1)[0]
            return f"{top}/{rest}"
    return None


def _isatty(out) -> bool:
    try:
        return bool(out is not None and hasattr(out, "isatty") and out.isatty())
    except (OSError, ValueError):
        return False


def _virtfs_path(path: str) -> str:
    return path.replace(",", ",,")


def _q(s: str | os.PathLike) -> str:
    return shlex.quote(str(s))


# --------------------------------------------------------------------------- the VM


class LabVM:
    """One VM run of one command; a Popen-like handle.

    ``output`` receives the guest command's stdout+stderr as it runs: a binary file
    object (default ``"stdout"``: the host's sys.stdout at construction time), a
    callable taking bytes, or None to drop it.
    ``results_dir``: keep the job directory there (created if needed) instead of a
    temporary one that ``cleanup()`` removes.
    """

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        cwd: str | os.PathLike | None = None,
        forwards: Iterable[int] = (),
        timeout: float | None = None,
        mem: int = 2048,
        smp: int = 2,
        env: dict[str, str] | None = None,
        output: BinaryIO | Callable[[bytes], object] | str | None = "stdout",
        results_dir: str | os.PathLike | None = None,
        extra_modules: Iterable[str] = (),
        binds: Iterable[str] = (),
        kernel: LabKernel | None = None,
        verbose: bool = False,
        cmdline: Iterable[str] = (),
        writable_repo: bool = True,
        forward_mode: str = "cmd",
    ):
        if not cmd:
            raise LabError("no command given")
        self.cmd = [str(c) for c in cmd]
        self.cwd = Path(os.path.realpath(cwd or os.getcwd()))
        self.forwards = [int(p) for p in forwards]
        for p in self.forwards:
            if not 0 < p < 65536:
                raise LabError(f"bad forward port {p}")
        self.timeout = timeout
        self.mem = mem
        self.smp = smp
        self.env = dict(env or {})
        if output == "stdout":  # resolved now: sys.stdout may have been replaced since import
            output = getattr(sys.stdout, "buffer", None) or (
                lambda data: (sys.stdout.write(data.decode(errors="replace")), sys.stdout.flush()))
        self.output = output
        self.extra_modules = list(extra_modules)
        self.binds = list(binds)
        self.kernel = kernel or find_kernel()
        self.verbose = verbose
        self.cmdline = list(cmdline)
        if forward_mode not in ("cmd", "tcp"):
            raise LabError(f"forward_mode must be 'cmd' or 'tcp', not {forward_mode!r}")
        self.forward_mode = forward_mode
        # The project directory (containing the cwd) is shared read-write, so the
        # command can write into the repo as it would on the host (junit XML under
        # build/, caches); the rest of the host root stays read-only.
        root = _project_root(self.cwd)
        self.repo: Path | None = (
            root if writable_repo and root != Path("/") and (
                (root / "pyproject.toml").exists() or (root / ".git").exists()) else None
        )
        self._keep = results_dir is not None
        if results_dir is not None:
            self.results_dir = Path(results_dir).resolve()
            self.results_dir.mkdir(parents=True, exist_ok=True)
            for stale in ("rc", "console.log", "guest.sh", "job.sh", "started"):
                (self.results_dir / stale).unlink(missing_ok=True)
        else:
            self.results_dir = Path(tempfile.mkdtemp(prefix="lvs-lab-"))
        os.chmod(self.results_dir, 0o755)
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.timed_out = False
        self._pump: threading.Thread | None = None
        self._deadline: float | None = None
        self.started_at: float | None = None
        self.boot_seconds: float | None = None

    # ---- guest scripts ----------------------------------------------------------

    def _guest_env(self) -> dict[str, str]:
        path = SYSTEM_PATH
        vb = _venv_bin(self.cwd)
        if vb:
            path = f"{vb}:{path}"
        env = {
            "PATH": path,
            "HOME": "/tmp/home",
            "LANG": "C.UTF-8",
            "TERM": os.environ.get("TERM", "dumb") or "dumb",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "KUBE_LVS_LAB": "1",
            "KUBE_LVS_LAB_RESULTS": GUEST_RESULTS,
            "KUBE_LVS_LAB_KERNEL": self.kernel.version,
            "KUBE_LVS_LAB_TREE": str(self.kernel.tree),
        }
        if vb:
            env["VIRTUAL_ENV"] = os.path.dirname(vb)
        # Pass through the few host settings that shape a test run.
        for k, v in os.environ.items():
            if k in PASS_ENV or (k.startswith("KUBE_LVS_") and k not in env):
                env[k] = v
        if self.forwards:
            env["KUBE_LVS_LAB_HOST"] = FORWARD_IP
            env["KUBE_LVS_LAB_FORWARDS"] = ",".join(map(str, self.forwards))
        try:
            cols = os.get_terminal_size(sys.stdout.fileno()).columns
        except OSError:
            cols = int(os.environ.get("COLUMNS", "0") or 0) or 120
        env["COLUMNS"] = str(cols)
        # The guest's stdout is a tty (hvc0) whatever the host's is: decide colour here.
        if _isatty(self.output):
            env["PY_COLORS"] = "1"
        else:
            env["PY_COLORS"] = "0"
            env["NO_COLOR"] = "1"
        env.update(self.env)
        return env

    def _rebinds(self) -> list[str]:
        """Host paths the guest's tmpfs mounts would hide, to bind back (dirs or files)."""
        cands = [str(self.cwd), str(self.kernel.tree), *self.binds]
        for p in os.environ.get("PYTHONPATH", "").split(":"):
            if p and os.path.isabs(p) and os.path.exists(p):
                cands.append(p)
        vb = _venv_bin(self.cwd)
        if vb:
            cands.append(vb)
        out: list[str] = []
        for c in cands:
            r = _rebind_root(c)
            if r and r not in out:
                out.append(r)
        # Absolute paths among the command's words (the program, a script, a file):
        # a file right under /tmp is bound on its own, otherwise its top directory.
        for w in self.cmd:
            if not (os.path.isabs(w) and os.path.exists(w)):
                continue
            real = os.path.realpath(w)
            if os.path.isfile(real) and os.path.dirname(real) in _SHADOWED:
                r = real
            else:
                try:
                    r = _rebind_root(real if os.path.isdir(real) else os.path.dirname(real))
                except LabError:
                    continue
            if r and r not in out:
                out.append(r)
        return out

    def _write_scripts(self) -> None:
        load, missing = self.kernel.lab_modules(self.extra_modules)
        (self.results_dir / "modules.skipped").write_text("".join(m + "\n" for m in missing))
        env = self._guest_env()
        job = [
            "# generated by lvs_lab.vm: runs inside the chroot",
            f"cd {_q(self.cwd)} || exit 125",
            "echo started > " + _q(GUEST_RESULTS + "/started"),
            "exec env -i "
            + " ".join(_q(f"{k}={v}") for k, v in env.items())
            + " "
            + " ".join(_q(c) for c in self.cmd),
        ]
        (self.results_dir / "job.sh").write_text("\n".join(job) + "\n")

        tree = _q(self.kernel.tree)
        R = "/newroot"
        g = [
            "# generated by lvs_lab.vm: runs in the initramfs (busybox sh)",
            "log() { read -r up _ < /proc/uptime; echo \"lab-guest [$up]: $*\" > /dev/console; }",
            "log 'guest script start'",
            f"R={R}",
            "mount -o bind /host $R || { log 'bind host root failed'; exit 1; }",
            "mount -t proc proc $R/proc",
            "mount -t sysfs sysfs $R/sys",
            "mount -t devtmpfs devtmpfs $R/dev",
            "mkdir -p $R/dev/pts $R/dev/shm",
            "mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts",
            "mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm",
            "[ -e $R/dev/fd ] || ln -s /proc/self/fd $R/dev/fd",
            "[ -e $R/dev/stdin ] || ln -s /proc/self/fd/0 $R/dev/stdin",
            "[ -e $R/dev/stdout ] || ln -s /proc/self/fd/1 $R/dev/stdout",
            "[ -e $R/dev/stderr ] || ln -s /proc/self/fd/2 $R/dev/stderr",
            "mount -t tmpfs -o mode=1777 tmpfs $R/tmp",
            "mount -t tmpfs -o mode=755 tmpfs $R/run",
            "mkdir -p $R/tmp/home $R/run/lock $R/run/netns " + _q(R + GUEST_RESULTS),
            "mount -o bind /results " + _q(R + GUEST_RESULTS),
        ]
        for b in self._rebinds():
            if os.path.isdir(b):
                mk = f"mkdir -p {_q(R + b)}"
            else:  # a single file: bind it onto an empty file in the tmpfs
                mk = f"mkdir -p {_q(R + os.path.dirname(b))} && : > {_q(R + b)}"
            g.append(f"{mk} && mount -o bind {_q('/host' + b)} {_q(R + b)}"
                     f" || log 'rebind {b} failed'")
        if self.repo is not None:
            rp = _q(R + str(self.repo))
            g.append(
                f"mkdir -p {rp} 2>/dev/null; mount -t 9p -o trans=virtio,version=9p2000.L,"
                f"msize=512000,cache=loose repo {rp} || log 'mounting the repo share failed'"
            )
        g += [
            "hostname lvs-lab",
            # request_module() runs /proc/sys/kernel/modprobe in the initramfs root:
            # point it at the host's kmod, in the chroot, with the unpacked module tree.
            "printf '#!/bin/sh\\nexec /bin/chroot /newroot /sbin/modprobe -d %s \"$@\"\\n' "
            + _q(tree) + " > /bin/lab-modprobe",
            "chmod 755 /bin/lab-modprobe",
            "echo /bin/lab-modprobe > /proc/sys/kernel/modprobe",
            f"if ! chroot $R /sbin/modprobe -d {tree} -a {' '.join(load)} 2>/dev/console; then",
            f"  for m in {' '.join(load)}; do",
            f"    chroot $R /sbin/modprobe -d {tree} $m 2>/dev/console || "
            "{ log \"modprobe $m failed\"; echo $m >> /results/modules.failed; }",
            "  done",
            "fi",
            "chroot $R ip link set lo up",
            "log 'modules loaded'",
        ]
        if self.forwards:
            g += [
                "chroot $R ip link set eth0 up",
                f"chroot $R ip addr add {GUEST_IP}/{GUEST_PREFIX} dev eth0",
            ]
        g += [
            # hvc resets termios on its last close: keep it open (fd 3) while the job runs,
            # in raw mode so "\n" is not turned into "\r\n".
            "exec 3<>/dev/hvc0",
            "stty raw -echo <&3 || log 'stty on hvc0 failed'",
            "log 'running job'",
            "chroot $R /bin/sh " + _q(GUEST_RESULTS + "/job.sh")
            + " </dev/null >&3 2>&1 3>&-",
            "echo $? > /results/rc.tmp && mv /results/rc.tmp /results/rc",
            "log \"job exited $(cat /results/rc)\"",
            "sync",
        ]
        if self.repo is not None:
            g.append(f"umount {_q(R + str(self.repo))} 2>/dev/null || sync")
        (self.results_dir / "guest.sh").write_text("\n".join(g) + "\n")

    # ---- qemu ---------------------------------------------------------------------

    def qemu_argv(self) -> list[str]:
        k = self.kernel
        append = " ".join(
            [
                "console=ttyS0",
                "loglevel=4",
                "panic=-1",
                "mitigations=off",
                "nokaslr",
                "tsc=reliable",
                "random.trust_cpu=on",
                *self.cmdline,
            ]
        )
        argv = [
            qemu_binary(),
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-accel", "tcg,thread=multi",
            "-cpu", "max",
            "-smp", str(self.smp),
            "-m", str(self.mem),
            "-display", "none",
            "-vga", "none",
            "-monitor", "none",
            "-kernel", str(k.boot_image),
            "-initrd", str(k.initramfs),
            "-append", append,
            "-serial", "file:" + str(self.results_dir / "console.log"),
            "-device", "virtio-serial-pci",
            "-chardev", "stdio,id=out,signal=off",
            "-device", "virtconsole,chardev=out",
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-virtfs",
            f"local,path={_virtfs_path(str(self.results_dir))},mount_tag=results,"
            "security_model=none,multidevs=remap",
            "-device", "virtio-rng-pci",
        ]
        if self.repo is not None:
            argv += ["-virtfs",
                     f"local,path={_virtfs_path(str(self.repo))},mount_tag=repo,"
                     "security_model=none,multidevs=remap"]
        if self.forwards:
            # restrict=on is mandatory: the guest must not reach anything beyond the
            # forwarded host-loopback ports.
            nic = "user,model=virtio-net-pci,restrict=on"
            for p in self.forwards:
                if self.forward_mode == "tcp":
                    # qemu's own chardev: ONE connection, made when qemu starts.
                    nic += f",guestfwd=tcp:{FORWARD_IP}:{p}-tcp:127.0.0.1:{p}"
                else:
                    # one relay process per guest connection (see relay.py)
                    cmd = " ".join(shlex.quote(a) for a in (sys.executable, RELAY, "127.0.0.1", str(p)))
                    nic += f",guestfwd=tcp:{FORWARD_IP}:{p}-cmd:{cmd.replace(',', ',,')}"
            argv += ["-nic", nic]
        else:
            argv += ["-nic", "none"]
        return argv

    def start(self) -> "LabVM":
        if self.proc is not None:
            raise LabError("already started")
        self._write_scripts()
        argv = self.qemu_argv()
        if self.verbose:
            print("lvs_lab: " + " ".join(_q(a) for a in argv), file=sys.stderr)
        self.started_at = time.monotonic()
        if self.timeout is not None:
            self._deadline = self.started_at + self.timeout
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=open(self.results_dir / "qemu.stderr", "wb"),
            start_new_session=True,
        )
        self._pump = threading.Thread(target=self._pump_output, daemon=True)
        self._pump.start()
        return self

    def _emit(self, data: bytes) -> None:
        out = self.output
        if out is None:
            return
        try:
            if callable(out) and not hasattr(out, "write"):
                out(data)
            else:
                out.write(data)
                out.flush()
        except (BrokenPipeError, ValueError):
            pass

    def _pump_output(self) -> None:
        assert self.proc and self.proc.stdout
        fd = self.proc.stdout.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            if self.boot_seconds is None and self.started_at is not None:
                self.boot_seconds = time.monotonic() - self.started_at
            self._emit(data)

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if self._deadline is not None and time.monotonic() > self._deadline:
                self._on_timeout()
                return self.returncode
            return None
        self._finish()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the VM to power off; returns the guest command's exit code.

        ``timeout`` bounds this call only (raises subprocess.TimeoutExpired, the VM keeps
        running); the run's own ``timeout`` kills the VM and returns RC_TIMEOUT.
        """
        if self.proc is None:
            raise LabError("not started")
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            now = time.monotonic()
            if end is not None and now >= end:
                raise subprocess.TimeoutExpired(self.cmd, timeout)
            limits = [0.2]
            if end is not None:
                limits.append(end - now)
            try:
                self.proc.wait(timeout=max(0.01, min(limits)))
            except subprocess.TimeoutExpired:
                pass
        return self.returncode  # type: ignore[return-value]

    def _on_timeout(self) -> None:
        self.timed_out = True
        self.kill()
        sys.stderr.write(
            f"\nlvs_lab: timeout after {self.timeout:.0f}s: VM killed\n"
        )
        self._dump_console_tail()
        self.returncode = RC_TIMEOUT

    def kill(self) -> None:
        """Stop the VM now (SIGTERM, then SIGKILL)."""
        p = self.proc
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        if self.returncode is None:
            self.returncode = RC_TIMEOUT if self.timed_out else -signal.SIGKILL
        self._join_pump()

    terminate = kill

    def _join_pump(self) -> None:
        if self._pump is not None:
            self._pump.join(timeout=5)

    def _finish(self) -> None:
        self._join_pump()
        rc_file = self.results_dir / "rc"
        try:
            self.returncode = int(rc_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            sys.stderr.write(
                f"\nlvs_lab: the guest reported no exit code (qemu exited "
                f"{self.proc.returncode if self.proc else '?'})\n"
            )
            for name in ("init-error", "qemu.stderr"):
                f = self.results_dir / name
                if f.exists() and f.stat().st_size:
                    sys.stderr.write(f"--- {name}\n{f.read_text(errors='replace')}\n")
            self._dump_console_tail()
            self.returncode = RC_NO_RESULT

    def _dump_console_tail(self, lines: int = 60) -> None:
        f = self.results_dir / "console.log"
        if f.exists():
            tail = f.read_text(errors="replace").splitlines()[-lines:]
            sys.stderr.write("--- console.log (tail)\n" + "\n".join(tail) + "\n")

    def wait_for_file(self, name: str, timeout: float) -> Path:
        """Wait until the guest creates ``$KUBE_LVS_LAB_RESULTS/<name>`` (e.g. a ready flag)."""
        path = self.results_dir / name
        end = time.monotonic() + timeout
        while not path.exists():
            if self.poll() is not None:
                raise LabError(f"VM exited (rc {self.returncode}) before {name} appeared")
            if time.monotonic() > end:
                raise subprocess.TimeoutExpired(self.cmd, timeout)
            time.sleep(0.1)
        return path

    def cleanup(self) -> None:
        self.kill()
        if not self._keep:
            shutil.rmtree(self.results_dir, ignore_errors=True)

    def __enter__(self) -> "LabVM":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.cleanup()


def run_in_vm(
    cmd: Sequence[str],
    *,
    forwards: Iterable[int] = (),
    timeout: float | None = 1500,
    **kw,
) -> int:
    """Boot the VM, run ``cmd`` (in the caller's cwd) and return its exit code."""
    vm = LabVM(cmd, forwards=forwards, timeout=timeout, **kw)
    try:
        vm.start()
        return vm.wait()
    finally:
        vm.cleanup()
