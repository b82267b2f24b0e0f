"""A real etcd + kube-apiserver + kube-controller-manager on loopback, for tests.

    with ControlPlane() as cp:
        cp.kubectl("apply", "-f", "crds/")
        kubeconfig = cp.kubeconfig_for_serviceaccount("kube-lvs", "operator")

Every component listens on ``bind_address`` (127.0.0.1 unless told otherwise;
all-interfaces addresses are refused). Certificates, the service-account
signing keys and all kubeconfigs are generated fresh into ``workdir``; the
components' logs go to ``workdir/logs``. The API server's serving certificate
is valid for 127.0.0.1, ::1, localhost, the in-cluster names and 10.0.2.100
(where a lab VM with a qemu guestfwd reaches a host port).
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable, Sequence

import yaml

from . import binaries
from .certs import CertificateAuthority, service_account_keys

VM_HOST_ADDRESS = "10.0.2.100"
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "kube-lvs-admin"


class ControlPlaneError(RuntimeError):
    pass


class KubectlError(subprocess.CalledProcessError):
    def __str__(self) -> str:  # the stderr is what one wants to read
        return (
            f"kubectl {' '.join(self.cmd[1:])!s} exited {self.returncode}:\n"
            f"{(self.stderr or '').strip()}\n{(self.stdout or '').strip()}".rstrip()
        )


def _free_ports(host: str, count: int) -> list[int]:
    """Ports the kernel hands out now; all held open together so they differ."""
    socks = []
    try:
        for _ in range(count):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def die_with_parent() -> None:  # runs in the child between fork and exec
    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class ControlPlane:
    """etcd, kube-apiserver and kube-controller-manager as child processes."""

    def __init__(
        self,
        workdir: str | os.PathLike | None = None,
        *,
        bind_address: str = "127.0.0.1",
        port: int = 0,
        extra_san_ips: Sequence[str] = (VM_HOST_ADDRESS,),
        controllers: str = "*",
        apiserver_args: Sequence[str] = (),
        controller_manager_args: Sequence[str] = (),
        bin_dir: str | os.PathLike | None = None,
        die_with_parent: bool = True,
        verbosity: int = 2,
    ) -> None:
        if bind_address in ("0.0.0.0", "::", ""):
            raise ValueError(
                f"bind_address={bind_address!r} would listen on every interface; "
                "the test control plane listens on loopback only (e.g. 127.0.0.1)"
            )
        self.bind_address = bind_address
        self.requested_port = port
        self.extra_san_ips = tuple(extra_san_ips)
        self.controllers = controllers
        self.apiserver_args = list(apiserver_args)
        self.controller_manager_args = list(controller_manager_args)
        self.bin_dir = Path(bin_dir) if bin_dir else binaries.bin_dir()
        self.die_with_parent = die_with_parent
        self.verbosity = verbosity
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kube-lvs-cp-"))
        self.log_dir = self.workdir / "logs"
        self.pki = self.workdir / "pki"
        self.kubeconfig_dir = self.workdir / "kubeconfigs"
        self.admin_kubeconfig = self.kubeconfig_dir / "admin.kubeconfig"
        self._procs: list[tuple[str, subprocess.Popen]] = []
        self._logs: list = []
        self.port = 0
        self.etcd_port = 0
        self.kcm_port = 0
        self._started = False

    # ------------------------------------------------------------------ props
    @property
    def url(self) -> str:
        """The API server's URL from the host."""
        return f"https://{_url_host(self.bind_address)}:{self.port}"

    @property
    def vm_url(self) -> str:
        """The API server's URL from a lab VM whose guestfwd maps 10.0.2.100:port here."""
        return f"https://{VM_HOST_ADDRESS}:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        """The admin (system:masters) kubeconfig."""
        return self.admin_kubeconfig

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def kubectl_path(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self._procs}

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> "ControlPlane":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop(keep=exc_type is not None)

    def start(self, timeout: float = 180.0) -> "ControlPlane":
        if self._started:
            return self
        missing = [b for b in binaries.BINARIES if not os.access(self.bin_dir / b, os.X_OK)]
        if missing:
            raise binaries.BinariesMissing(
                f"{', '.join(missing)} missing in {self.bin_dir}; run: bash cluster/build.sh"
            )
        for d in (self.log_dir, self.pki, self.kubeconfig_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._started = True
        deadline = time.monotonic() + timeout
        for attempt in range(3):
            try:
                self._prepare()
                self._start_etcd(deadline)
                self._start_apiserver(deadline)
                self._start_controller_manager(deadline)
                self._write_info()
                return self
            except ControlPlaneError as e:
                self.stop(keep=True)
                # A free port picked here may be taken by someone else before
                # the component binds it: pick new ports and try again.
                if "address already in use" in str(e) and attempt < 2 \
                        and not self.requested_port:
                    shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
                    self._started = True
                    continue
                raise ControlPlaneError(f"{e}\n(logs kept in {self.log_dir})") from None
            except BaseException:
                self.stop(keep=True)
                raise
        raise AssertionError("unreachable")

    def stop(self, keep: bool = False, grace: float = 10.0) -> None:
        """SIGTERM every component (newest first), SIGKILL what is left after ``grace``.

        With ``keep`` the work directory (logs, certificates, etcd data) stays;
        otherwise a work directory this object created is removed.
        """
        for name, p in reversed(self._procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self._procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()
        self._started = False
        if not keep and self._own_workdir and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    def stop_apiserver(self, grace: float = 10.0) -> None:
        """Stop kube-apiserver alone (etcd and the controller manager go on), as
        in an API server outage; :meth:`start_apiserver` brings it back on the
        same port with the same flags."""
        for i, (name, p) in enumerate(self._procs):
            if name == "kube-apiserver":
                p.terminate()
                try:
                    p.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
                del self._procs[i]
                return

    def start_apiserver(self, timeout: float = 120.0) -> None:
        self._start_apiserver(time.monotonic() + timeout)

    def running(self) -> bool:
        return bool(self._procs) and all(p.poll() is None for _, p in self._procs)

    # ----------------------------------------------------------------- startup
    def _prepare(self) -> None:
        host = self.bind_address
        ports = _free_ports(host, 4)
        self.port = self.requested_port or ports[0]
        self.etcd_port, self.etcd_peer_port, self.kcm_port = ports[1:]

        ca = CertificateAuthority()
        self._ca_pem = ca.pair.cert_pem
        ca.pair.write(self.pki, "ca")
        ips = ["127.0.0.1", "::1", SERVICE_IP, *self.extra_san_ips]
        if host not in ips:
            ips.append(host)
        ca.issue(
            "kube-apiserver", server=True, ips=tuple(ips),
            dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local"),
        ).write(self.pki, "apiserver")
        self._admin = ca.issue(ADMIN_USER, organizations=("system:masters",), client=True)
        self._admin.write(self.pki, "admin")
        kcm = ca.issue("system:kube-controller-manager", client=True)
        sa_key, sa_pub = service_account_keys()
        (self.pki / "sa.key").write_bytes(sa_key)
        (self.pki / "sa.key").chmod(0o600)
        (self.pki / "sa.pub").write_bytes(sa_pub)

        self._write_kubeconfig(
            self.admin_kubeconfig, ADMIN_USER,
            {"client-certificate-data": _b64(self._admin.cert_pem),
             "client-key-data": _b64(self._admin.key_pem)},
        )
        self.kcm_kubeconfig = self.kubeconfig_dir / "controller-manager.kubeconfig"
        self._write_kubeconfig(
            self.kcm_kubeconfig, "system:kube-controller-manager",
            {"client-certificate-data": _b64(kcm.cert_pem),
             "client-key-data": _b64(kcm.key_pem)},
        )

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        self._logs.append(log)
        log.write(f"# {' '.join(args)}\n".encode())
        log.flush()
        p = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=self.workdir, start_new_session=True,
            preexec_fn=die_with_parent if self.die_with_parent else None,
        )
        self._procs.append((name, p))
        return p

    def _check_alive(self) -> None:
        for name, p in self._procs:
            if p.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with {p.returncode} during start-up; last log lines:\n"
                    + self.log_tail(name)
                )

    def log_tail(self, name: str, lines: int = 15) -> str:
        """The last lines of a component's log, its error lines (klog E/F) first."""
        path = self.log_dir / f"{name}.log"
        try:
            text = path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        errors = [line for line in text[-500:] if line[:1] in ("E", "F")][-5:]
        tail = [line for line in text[-lines:] if line not in errors]
        return "\n".join(errors + (["..."] if errors else []) + tail)

    def _wait(self, what: str, check, deadline: float) -> None:
        last = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if check():
                    return
            except Exception as e:  # noqa: BLE001 - reported on timeout
                last = e
            time.sleep(0.25)
        raise ControlPlaneError(f"timed out waiting for {what} (last error: {last})")

    def _start_etcd(self, deadline: float) -> None:
        h = _url_host(self.bind_address)
        client = f"http://{h}:{self.etcd_port}"
        peer = f"http://{h}:{self.etcd_peer_port}"
        self._spawn("etcd", [
            str(self.bin_dir / "etcd"),
            "--name=default",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--unsafe-no-fsync=true",  # test data: speed over durability
            "--log-level=warn",
        ])
        self.etcd_url = client

        def healthy() -> bool:
            with urllib.request.urlopen(f"{client}/health", timeout=2) as r:
                return json.load(r).get("health") == "true"

        self._wait("etcd /health", healthy, deadline)

    def _start_apiserver(self, deadline: float) -> None:
        pki = self.pki
        self._spawn("kube-apiserver", [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={self.bind_address}",
            f"--advertise-address={self.bind_address}",
            # The endpoint reconciler refuses loopback advertise addresses; no
            # pod needs the in-cluster `kubernetes` Service's endpoints here.
            "--endpoint-reconciler-type=none",
            f"--secure-port={self.port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
            f"--v={self.verbosity}",
            *self.apiserver_args,
        ])
        ctx = self.ssl_context()

        def ready() -> bool:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=5, context=ctx) as r:
                return r.status == 200

        self._wait("kube-apiserver /readyz", ready, deadline)

    def _start_controller_manager(self, deadline: float) -> None:
        kc = self.kcm_kubeconfig
        self._spawn("kube-controller-manager", [
            str(self.bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kc}",
            f"--bind-address={self.bind_address}",
            f"--secure-port={self.kcm_port}",
            f"--cert-dir={self.workdir / 'kcm-serving'}",
            f"--controllers={self.controllers}",
            f"--service-account-private-key-file={self.pki / 'sa.key'}",
            f"--root-ca-file={self.pki / 'ca.crt'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Each controller runs as its own kube-system ServiceAccount with its
            # system:controller:* role, as in kubeadm clusters; the manager's own
            # identity may only mint those tokens.
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            "--profiling=false",
            f"--v={self.verbosity}",
            *self.controller_manager_args,
        ])
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        kcm_url = f"https://{_url_host(self.bind_address)}:{self.kcm_port}/healthz"

        def healthy() -> bool:
            with urllib.request.urlopen(kcm_url, timeout=5, context=insecure) as r:
                return r.status == 200

        self._wait("kube-controller-manager /healthz", healthy, deadline)

        # The serviceaccount controller creating "default" in "default" proves
        # the controllers run (not just the health endpoint).
        def default_sa() -> bool:
            return self.kubectl("get", "serviceaccount", "default", "-n", "default",
                                "-o", "name", check=False, timeout=10).returncode == 0

        self._wait("the default ServiceAccount (controllers running)", default_sa, deadline)

    def _write_info(self) -> None:
        info = {
            "url": self.url, "vm_url": self.vm_url, "kubeconfig": str(self.admin_kubeconfig),
            "ca_file": str(self.ca_file), "log_dir": str(self.log_dir),
            "bin_dir": str(self.bin_dir), "pids": self.pids,
        }
        (self.workdir / "cluster.json").write_text(json.dumps(info, indent=2) + "\n")

    # ----------------------------------------------------------------- clients
    def ssl_context(self) -> ssl.SSLContext:
        """TLS context trusting the CA and presenting the admin client cert."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def _write_kubeconfig(self, path: Path, user: str, credentials: dict,
                          server: str | None = None) -> Path:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kube-lvs-test", "cluster": {
                "server": server or self.url,
                "certificate-authority-data": _b64(self._ca_pem)}}],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": user, "context": {"cluster": "kube-lvs-test", "user": user}}],
            "current-context": user,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
        tmp.chmod(0o600)
        tmp.replace(path)
        return path

    def admin_kubeconfig_for(self, server: str, path: str | os.PathLike | None = None) -> Path:
        """An admin kubeconfig pointing at ``server`` (e.g. ``self.vm_url``)."""
        path = Path(path) if path else self.kubeconfig_dir / f"admin-{_slug(server)}.kubeconfig"
        return self._write_kubeconfig(
            path, ADMIN_USER,
            {"client-certificate-data": _b64(self._admin.cert_pem),
             "client-key-data": _b64(self._admin.key_pem)},
            server=server,
        )

    def kubectl(
        self,
        *args: str,
        kubeconfig: str | os.PathLike | None = None,
        input: str | bytes | None = None,
        check: bool = True,
        timeout: float | None = 120,
    ) -> subprocess.CompletedProcess:
        """Run the built kubectl (admin unless ``kubeconfig`` is given); text in and out."""
        cmd = [str(self.kubectl_path), f"--kubeconfig={kubeconfig or self.admin_kubeconfig}",
               *map(str, args)]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env["KUBECACHEDIR"] = str(self.workdir / "kubectl-cache")
        if isinstance(input, bytes):
            input = input.decode()
        r = subprocess.run(cmd, input=input, capture_output=True, text=True,
                           timeout=timeout, env=env)
        if check and r.returncode != 0:
            raise KubectlError(r.returncode, cmd, r.stdout, r.stderr)
        return r

    def kubectl_json(self, *args: str, **kw) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json", **kw).stdout)

    def apply(self, manifest: str | dict | Iterable[dict], **kw) -> str:
        """``kubectl apply -f -`` of YAML text, one object or a list of objects."""
        if isinstance(manifest, dict):
            manifest = yaml.safe_dump(manifest)
        elif not isinstance(manifest, str):
            manifest = yaml.safe_dump_all(list(manifest))
        return self.kubectl("apply", "-f", "-", input=manifest, **kw).stdout

    def token(self, namespace: str, name: str, duration: str = "24h",
              audiences: Sequence[str] = ()) -> str:
        """A bound token for a ServiceAccount via the TokenRequest API."""
        args = ["create", "token", name, "-n", namespace, f"--duration={duration}"]
        args += [f"--audience={a}" for a in audiences]
        return self.kubectl(*args).stdout.strip()

    def kubeconfig_for_serviceaccount(
        self,
        namespace: str,
        name: str,
        *,
        duration: str = "24h",
        server: str | None = None,
        create: bool = False,
        path: str | os.PathLike | None = None,
    ) -> Path:
        """A kubeconfig that authenticates as system:serviceaccount:<namespace>:<name>.

        The token comes from the TokenRequest API, so the ServiceAccount must
        exist (``create=True`` creates it, and its namespace, if missing).
        ``server`` defaults to :attr:`url`; pass :attr:`vm_url` for the lab VM.
        """
        if create:
            if self.kubectl("get", "namespace", namespace, check=False).returncode != 0:
                self.kubectl("create", "namespace", namespace)
            if self.kubectl("get", "serviceaccount", name, "-n", namespace,
                            check=False).returncode != 0:
                self.kubectl("create", "serviceaccount", name, "-n", namespace)
        token = self.token(namespace, name, duration)
        user = f"system:serviceaccount:{namespace}:{name}"
        if path is None:
            suffix = f"-{_slug(server)}" if server else ""
            path = self.kubeconfig_dir / f"sa-{namespace}-{name}{suffix}.kubeconfig"
        return self._write_kubeconfig(Path(path), user, {"token": token}, server=server)

    def api_client(self, kubeconfig: str | os.PathLike | None = None):
        """A kubernetes.client.ApiClient for the admin (or the given kubeconfig)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(kubeconfig or self.admin_kubeconfig))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.split("://")[-1]).strip("-")
