"""The whole system in the lab: control plane and operator on the host, agents
and all traffic inside the VM, one network namespace per node.

Used by the end-to-end tests and by `make demo`. The VM reaches the host only
through restricted guestfwds: the API server's port and the command channel's
port (lvs_e2e.remote). Nothing else crosses.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import yaml

from lvs_cluster.control_plane import ControlPlane, die_with_parent
from lvs_lab.vm import LabVM
from lvs_model.channel import DEFAULT_NAMESPACE

from . import image_root
from .remote import Controller
from .sandbox import IMAGE_FILES, AgentSandbox, from_manifest, status_caps

REPO = Path(__file__).resolve().parents[2]
GUEST_RUN = "/tmp/e2e"  # guest tmpfs: agent state, logs, markers
OPERATOR_SA = "kube-lvs-operator"
AGENT_SA = "kube-lvs-agent"
DIRECTOR_LABEL = "lvs.kube-lvs.io/director"
VM_HOST = "10.0.2.100"  # the host, as the guestfwds show it to the VM
# Where the agents run from: "image" (the built image's root filesystem, the
# artifact users install) or "venv" (this checkout's virtualenv: no image
# build, for quick local runs).
AGENT_FROM_ENV = "KUBE_LVS_E2E_AGENT"


_CLIENT = r"""
import socket, sys
vip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with_peer = len(sys.argv) > 4  # "name@the client address the server saw"
names = []
for _ in range(n):
    try:
        with socket.create_connection((vip, port), timeout=2) as s:
            s.settimeout(2)
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        body = data.split(b"\r\n\r\n", 1)[-1].split()
        names.append(("@".join(b.decode() for b in body[:2]) if with_peer else body[0].decode()) if body else "-")
    except OSError:
        names.append("-")
print(" ".join(names))
"""


def wait_until(what: str, check: Callable[[], object], timeout: float, every: float = 0.5):
    """Poll `check` until it returns something truthy; its value is returned."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - keep polling, report the last failure
            last = e
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s (last: {last!r})")


class System:
    def __init__(self, workdir: Path | None = None, log: Callable[[str], None] = print):
        self.workdir = Path(workdir or REPO / "build" / "e2e").resolve()
        self.log = log
        self.cp: ControlPlane | None = None
        self.operator: subprocess.Popen | None = None
        self.vm: LabVM | None = None
        self.ctl: Controller | None = None
        self.python = str(Path(sys.executable))
        self.bin = str(Path(sys.executable).parent)
        self.operator_kubeconfig: Path | None = None
        self.topologies: set[str] = set()
        self.sandbox: AgentSandbox = from_manifest()  # how deploy/ runs the agent
        self.agent_pids: dict[str, int] = {}
        self.image: image_root.ImageRoot | None = None  # agents run from it when set

    def use_image(self) -> image_root.ImageRoot:
        """Run the agents from the built image (lvs_e2e.image_root): built if
        out of date, its root filesystem exported where the VM sees it."""
        self.log("building the image (deploy/image/build.sh) and exporting its root filesystem")
        image_root.build(self.log)
        self.image = image_root.export(self.sandbox.image_mount_points())
        self.log(f"agents run from {self.image.path} ({self.image.image_id[:19]})")
        return self.image

    # -- host side ---------------------------------------------------------------
    def start_control_plane(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A fresh cluster each run: etcd data left by an earlier run would bring
        # back its objects (and its director labels).
        shutil.rmtree(self.workdir / "control-plane", ignore_errors=True)
        self.log("starting etcd, kube-apiserver and kube-controller-manager on 127.0.0.1")
        self.cp = ControlPlane(self.workdir / "control-plane").start()
        self.log(f"installing kube-lvs (kubectl apply -k deploy/) into {self.cp.url}")
        self.kubectl("apply", "--server-side", "-k", str(REPO / "deploy"))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                     "crd/virtualservices.lvs.kube-lvs.io", "crd/realservers.lvs.kube-lvs.io",
                     "crd/vippools.lvs.kube-lvs.io", "crd/nodestates.lvs.kube-lvs.io")
        self.operator_kubeconfig = self.cp.kubeconfig_for_serviceaccount(
            DEFAULT_NAMESPACE, OPERATOR_SA, path=self.workdir / "operator.kubeconfig")

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        assert self.cp is not None
        return self.cp.kubectl(*args, input=input, check=check).stdout

    def start_operator(self) -> None:
        assert self.operator_kubeconfig is not None
        log = open(self.workdir / "operator.log", "ab")
        env = {**os.environ, "KUBECONFIG": str(self.operator_kubeconfig)}
        self.operator = subprocess.Popen(
            [f"{self.bin}/lvs-operator", "--namespace", DEFAULT_NAMESPACE, "--liveness", ""],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=die_with_parent)  # never outlive the test run or the demo
        self.log(f"operator started (pid {self.operator.pid}, log {self.workdir / 'operator.log'})")

    def stop_operator(self) -> None:
        if self.operator and self.operator.poll() is None:
            self.operator.terminate()
            try:
                self.operator.wait(20)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait()
        self.operator = None

    def add_node(self, name: str, director: bool = False, labels: dict[str, str] | None = None) -> None:
        labels = {**({DIRECTOR_LABEL: "true"} if director else {}), **(labels or {})}
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}))

    # -- the VM --------------------------------------------------------------------
    def boot(self, timeout: float = 3000) -> None:
        assert self.cp is not None
        self.ctl = Controller()
        self.log("booting the lab VM (real IPVS kernel under qemu); the guest connects back")
        self.vm = LabVM([self.python, "-m", "lvs_e2e.remote", VM_HOST, str(self.ctl.port)],
                        cwd=REPO, forwards=(self.cp.port, self.ctl.port), timeout=timeout,
                        output=open(self.workdir / "vm.log", "wb"))
        self.vm.start()
        self.ctl.wait_connected(300)
        self.g("mkdir", "-p", GUEST_RUN)

    def g(self, *argv: str, timeout: float = 120) -> str:
        """Run a command in the VM, raising on failure; its stdout."""
        assert self.ctl is not None
        return self.ctl.run(list(argv), timeout=timeout).check().out

    def build_topology(self, kind: str) -> None:
        """`kind` is nat or tun; namespaces are named `<kind>-<host>`."""
        assert self.ctl is not None
        ready = f"{GUEST_RUN}/topology-{kind}.ready"
        self.ctl.spawn(f"topology-{kind}", [self.python, "-m", "lvs_e2e.guest_topology", kind, ready],
                       log=f"{GUEST_RUN}/topology-{kind}.log")
        self.topologies.add(kind)

        def built() -> bool:
            if self.ctl.run(["test", "-e", ready]).rc == 0:
                return True
            if not self.ctl.alive(f"topology-{kind}"):
                raise RuntimeError("topology builder died: " + self.guest_log(f"topology-{kind}.log"))
            return False
        try:
            wait_until(f"topology {kind}", built, 600, 1)
        except Exception as e:
            raise RuntimeError(f"{e}\n{self.guest_log(f'topology-{kind}.log')}") from None

    def start_server(self, kind: str, host: str) -> None:
        """A name server in `<kind>-<host>` as its own process (so a test can stop it)."""
        assert self.ctl is not None
        self.ctl.spawn(f"server-{kind}-{host}",
                       ["ip", "netns", "exec", f"{kind}-{host}", self.python, "-m", "lvs_lab.servers",
                        "--name", host, "--port", "80"], log=f"{GUEST_RUN}/server-{kind}-{host}.log")

    def stop_server(self, kind: str, host: str) -> None:
        assert self.ctl is not None
        self.ctl.signal(f"server-{kind}-{host}")

    def start_agent(self, node: str, netns: str, metrics_port: int = 0, resync: float = 5) -> None:
        """The agent of ``node``, inside ``netns`` and with the DaemonSet's
        privileges (lvs_e2e.sandbox): the capabilities and mounts of
        deploy/base/agent.yaml, a token bound to the node, the API server
        through a relay into the namespace. ``resync``: 5 s (the tests wait
        for drift repair), not the product's 30."""
        assert self.ctl is not None and self.cp is not None
        self._start_api_relay(netns)
        state = f"{GUEST_RUN}/agent-{node}"
        rest = ["--node", node, "--resync", str(resync), "--metrics-port", str(metrics_port),
                "--metrics-address", "127.0.0.1"]
        if self.image is not None:  # the image's lvs-agent, chrooted into its filesystem
            files = {"kubeconfig": str(self._node_kubeconfig(node, ca=f"{IMAGE_FILES}/ca.crt")),
                     "ca.crt": str(self.cp.ca_file)}
            agent = ["lvs-agent", "--kubeconfig", f"{IMAGE_FILES}/kubeconfig", *rest]
            argv = self.sandbox.image_command(netns, str(self.image.path), (*self.image.env, "HOME=/root"),
                                              state, files, agent)
        else:
            agent = [f"{self.bin}/lvs-agent", "--kubeconfig", str(self._node_kubeconfig(node)),
                     "--state-dir", state, *rest]
            argv = self.sandbox.command(netns, f"{state}.root", state, agent)
        self.agent_pids[node] = self.ctl.spawn(f"agent-{node}", argv, log=f"{GUEST_RUN}/agent-{node}.log")

    def agent_mounts(self, node: str) -> tuple[str, str]:
        """(the node's /proc/sys/net, the state directory) as ``node``'s agent
        sees them in its mountinfo."""
        if self.image is not None:  # chrooted: the manifest's own paths
            return self.sandbox.sysctl_mount, self.sandbox.state_mount
        state = f"{GUEST_RUN}/agent-{node}"
        return f"{state}.root{self.sandbox.sysctl_mount}", state

    def agent_executable(self, node: str) -> tuple[str, str]:
        """(/proc/PID/root, /proc/PID/exe) of ``node``'s running agent, as
        the guest's root sees them."""
        assert self.ctl is not None
        pid = self.agent_pids[node]
        return tuple(self.g("readlink", f"/proc/{pid}/{what}").strip() for what in ("root", "exe"))

    def _start_api_relay(self, netns: str) -> None:
        """127.0.0.1:<API port> in ``netns`` leads to the API server (lvs_e2e.api_relay)."""
        assert self.ctl is not None and self.cp is not None
        name = f"api-relay-{netns}"
        if self.ctl.alive(name):
            return
        ready = f"{GUEST_RUN}/{name}.ready"
        self.g("ip", "-n", netns, "link", "set", "lo", "up")
        self.ctl.spawn(name, [self.python, "-m", "lvs_e2e.api_relay", netns, str(self.cp.port),
                              VM_HOST, str(self.cp.port), ready], log=f"{GUEST_RUN}/{name}.log")
        wait_until(f"API relay in {netns}", lambda: self.ctl.run(["test", "-e", ready]).rc == 0, 120, 0.5)

    def _node_kubeconfig(self, node: str, ca: str | None = None) -> Path:
        """A kubeconfig for ``node``'s agent: the agent's ServiceAccount with a
        token bound to the Node, so the API server puts the node's name in the
        request (what a pod-bound token does for the DaemonSet) and the policy
        of deploy/base/agent-scope.yaml admits its NodeStates only. The CA is a
        file: the client would write inline CA data to a temporary file, and
        the agent's root filesystem is read-only. ``ca``: the CA file's path
        as the agent sees it (default: the host's)."""
        assert self.cp is not None
        if self.kubectl("get", "node", node, check=False) == "":
            self.add_node(node)
        token = self.kubectl("create", "token", AGENT_SA, "-n", DEFAULT_NAMESPACE, "--duration=24h",
                             "--bound-object-kind=Node", f"--bound-object-name={node}").strip()
        user = f"system:serviceaccount:{DEFAULT_NAMESPACE}:{AGENT_SA}@{node}"
        path = self.workdir / f"agent-{node}.kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "agent",
            "clusters": [{"name": "lab", "cluster": {"server": f"https://127.0.0.1:{self.cp.port}",
                                                     "certificate-authority": ca or str(self.cp.ca_file)}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "agent", "context": {"cluster": "lab", "user": user}}]}))
        path.chmod(0o600)
        return path

    def agent_privileges(self, node: str) -> tuple[dict[str, int], str, str]:
        """What ``node``'s running agent holds: its /proc status capabilities,
        its mountinfo and its command line (to check it is the agent)."""
        assert self.ctl is not None
        pid = self.agent_pids[node]

        def read(what: str) -> str:
            return self.ctl.run(["cat", f"/proc/{pid}/{what}"]).check().out
        return status_caps(read("status")), read("mountinfo"), read("cmdline").replace("\0", " ")

    def stop_agent(self, node: str, sig: int = 15) -> int | None:
        assert self.ctl is not None
        return self.ctl.signal(f"agent-{node}", sig)

    def guest_log(self, name: str, lines: int = 40) -> str:
        assert self.ctl is not None
        return self.ctl.run(["tail", "-n", str(lines), f"{GUEST_RUN}/{name}"]).out

    def agent_log(self, node: str) -> str:
        return self.guest_log(f"agent-{node}.log")

    # -- traffic -------------------------------------------------------------------
    def requests(self, kind: str, vip: str, count: int, port: int = 80, peers: bool = False) -> list[str]:
        """`count` HTTP requests, one connection each, from `<kind>-client` to the VIP;
        the answering names ("-" for a failed request), with ``peers`` as
        "name@address" (the client address the server saw). One process for all."""
        assert self.ctl is not None
        out = self.ctl.run(["ip", "netns", "exec", f"{kind}-client", self.python, "-c", _CLIENT,
                            vip, str(port), str(count), *(["peer"] if peers else [])],
                           timeout=30 + 3 * count).check().out
        return out.split()

    def distribution(self, kind: str, vip: str, count: int) -> Counter:
        return Counter(self.requests(kind, vip, count))

    def ipvsadm(self, netns: str, *args: str) -> str:
        return self.g("ip", "netns", "exec", netns, "ipvsadm", *args)

    def diagnose(self) -> str:
        """What a failing test wants to see: agents, kernel tables, objects, operator."""
        parts = []

        def add(title: str, fn: Callable[[], str]) -> None:
            try:
                parts.append(f"--- {title}\n{fn()}")
            except Exception as e:  # noqa: BLE001
                parts.append(f"--- {title}: unavailable ({e})")
        if self.ctl is not None:
            add("guest processes", lambda: self.ctl.run(["sh", "-c", f"ls {GUEST_RUN}; ip netns list"]).out)
            for node in sorted(self.agent_pids):
                add(f"agent-{node}.log", lambda node=node: self.guest_log(f"agent-{node}.log", 30))
            for ns in ("nat-director", "tun-director"):
                add(f"ipvsadm -Ln in {ns}", lambda ns=ns: self.ctl.run(["ip", "netns", "exec", ns, "ipvsadm", "-Ln"]).out)
        if self.cp is not None:
            add("nodestates", lambda: self.kubectl("get", "nodestates.lvs.kube-lvs.io", "-A", "-o", "yaml", check=False)[-6000:])
            add("kube-lvs objects", lambda: self.kubectl("get", "kube-lvs", "-A", check=False))
        add("operator log", lambda: (self.workdir / "operator.log").read_text()[-3000:])
        return "\n".join(parts)

    # -- teardown --------------------------------------------------------------------
    def close(self) -> None:
        self.stop_operator()
        if self.ctl is not None:
            for kind in sorted(self.topologies):
                try:
                    self.ctl.signal(f"topology-{kind}", 15, wait=60)
                except Exception:  # noqa: BLE001
                    pass
            self.ctl.close()
        if self.vm is not None:
            try:
                self.vm.wait(120)
            except Exception:  # noqa: BLE001
                self.vm.kill()
            self.vm.cleanup()
        if self.cp is not None:
            self.cp.stop()
