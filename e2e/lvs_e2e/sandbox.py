"""Run the lab's agents the way deploy/base/agent.yaml runs the DaemonSet's.

The manifest is the single source: its capability set, user, privilege
escalation, read-only root and the mount of the host's /proc/sys/net are read
from it here, so the end-to-end tests cannot drift from what users install.
In the lab VM an agent then starts as

    ip netns exec NODE sh -c SETUP sh setpriv ... -- lvs-agent ...

- ``ip netns exec NODE``: the agent lives in its node's network namespace, as
  ``hostNetwork`` puts the DaemonSet's in the host's (so it needs no setns and
  no CAP_SYS_ADMIN); it also gives it a mount namespace of its own;
- SETUP (as full root, before the drop): the node's /proc/sys/net bound
  read-write at ``<prefix>/host/proc/sys/net`` (the hostPath volume), the state
  directory bound onto itself (the other hostPath), /proc/sys made read-only
  (what the container runtime does), then every other writable mount made
  read-only (``readOnlyRootFilesystem``);
- ``setpriv``: uid and gid from the manifest, no supplementary groups, the
  bounding set cut to the manifest's capabilities (root's exec then gets
  exactly those, effective and permitted), none inheritable, no_new_privs
  when ``allowPrivilegeEscalation: false``.

The guest's root is the host's, read-only, so the manifest's mount path is
placed under a per-agent prefix in the guest's tmpfs and ``--sysctl-root``
follows it.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "base" / "agent.yaml"
SYSCTL_ROOT_ENV = "KUBE_LVS_SYSCTL_ROOT"
HOST_SYSCTL_NET = "/proc/sys/net"

# capability(7) numbers, as in linux/capability.h.
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)


class ManifestError(ValueError):
    """The DaemonSet is not in the shape the lab reproduces."""


@dataclass(frozen=True)
class AgentSandbox:
    """What the DaemonSet's agent container is allowed, as the lab applies it."""

    capabilities: tuple[str, ...]  # e.g. ("NET_ADMIN",), upper case, no CAP_ prefix
    uid: int
    gid: int
    no_new_privs: bool
    read_only_root: bool
    sysctl_mount: str  # where the host's /proc/sys/net is mounted, e.g. /host/proc/sys/net
    sysctl_root: str  # the agent's --sysctl-root, e.g. /host/proc/sys

    @property
    def cap_mask(self) -> int:
        """The CapEff / CapPrm / CapBnd bits of /proc/PID/status for this set."""
        return cap_mask(self.capabilities)

    def setpriv(self) -> list[str]:
        """util-linux setpriv arguments that drop a root shell to this set."""
        caps = ",".join(["-all", *(f"+{c.lower()}" for c in self.capabilities)])
        argv = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                "--inh-caps=-all", f"--bounding-set={caps}"]
        return argv + (["--no-new-privs"] if self.no_new_privs else []) + ["--"]

    def command(self, netns: str, prefix: str, state_dir: str, agent: list[str]) -> list[str]:
        """The guest command that starts ``agent`` (its argv, without
        --sysctl-root) in ``netns`` as the DaemonSet would; the sysctl mount
        lives under ``prefix``."""
        root = prefix + self.sysctl_root
        script = setup_script(prefix + self.sysctl_mount, state_dir, self.read_only_root)
        return ["ip", "netns", "exec", netns, "sh", "-c", script, "sh",
                *self.setpriv(), *agent, "--sysctl-root", root]


def cap_mask(names: tuple[str, ...] | list[str]) -> int:
    mask = 0
    for name in names:
        mask |= 1 << CAPABILITIES.index(name.upper().removeprefix("CAP_"))
    return mask


def setup_script(sysctl_mount: str, state_dir: str, read_only_root: bool) -> str:
    """The mounts, made as full root in the agent's own mount namespace; it
    ends by exec'ing its arguments (setpriv, then the agent: one pid)."""
    net, state = shlex.quote(sysctl_mount), shlex.quote(state_dir)
    lines = [
        "set -e",
        f"mkdir -p {net} {state}",
        f"mount --bind {HOST_SYSCTL_NET} {net}",  # hostPath /proc/sys/net, read-write
        f"mount --bind {state} {state}",  # hostPath /var/lib/kube-lvs
        "mount --bind /proc/sys /proc/sys",  # the runtime's read-only /proc/sys
        "mount -o remount,bind,ro /proc/sys",
    ]
    if read_only_root:
        lines.append(
            "awk '{print $5, $6}' /proc/self/mountinfo | while read -r mp opts; do"
            f" case \"$mp\" in /proc|/proc/*|/dev|/dev/*|{net}|{state}) continue;; esac;"
            " case \",$opts,\" in *,rw,*) mount -o remount,bind,ro \"$mp\";; esac; done")
    lines.append('exec "$@"')
    return "\n".join(lines)


def _agent_container(doc: dict) -> dict:
    containers = doc["spec"]["template"]["spec"]["containers"]
    for c in containers:
        if c.get("name") == "agent":
            return c
    raise ManifestError("no container named agent in the DaemonSet")


def _sysctl_mount(doc: dict, container: dict) -> str:
    """The mountPath of the hostPath volume of the host's /proc/sys/net."""
    volumes = {v["name"]: v for v in doc["spec"]["template"]["spec"].get("volumes", [])}
    for m in container.get("volumeMounts", []):
        host = volumes.get(m["name"], {}).get("hostPath", {}).get("path")
        if host == HOST_SYSCTL_NET:
            if m.get("readOnly"):
                raise ManifestError(f"{HOST_SYSCTL_NET} must be mounted read-write")
            return m["mountPath"]
    raise ManifestError(f"no hostPath volume of {HOST_SYSCTL_NET} mounted in the agent container")


def _sysctl_root(container: dict) -> str:
    for e in container.get("env", []):
        if e.get("name") == SYSCTL_ROOT_ENV:
            return e["value"]
    raise ManifestError(f"the agent container sets no {SYSCTL_ROOT_ENV}")


def from_manifest(path: Path = MANIFEST) -> AgentSandbox:
    """The agent container of the DaemonSet in ``path``; ManifestError when it
    is privileged, keeps capabilities it does not drop, or its sysctl root and
    mount disagree."""
    doc = next(d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "DaemonSet")
    container = _agent_container(doc)
    sc = container.get("securityContext", {})
    if sc.get("privileged"):
        raise ManifestError("the agent container is privileged")
    caps = sc.get("capabilities", {})
    if [c.upper() for c in caps.get("drop", [])] != ["ALL"]:
        raise ManifestError("the agent container must drop ALL capabilities and add back what it needs")
    added = tuple(c.upper().removeprefix("CAP_") for c in caps.get("add", []))
    unknown = [c for c in added if c not in CAPABILITIES]
    if unknown:
        raise ManifestError(f"unknown capabilities {unknown}")
    mount, root = _sysctl_mount(doc, container), _sysctl_root(container)
    if mount != root.rstrip("/") + "/net":
        raise ManifestError(f"{SYSCTL_ROOT_ENV}={root} does not hold the mount {mount}")
    return AgentSandbox(capabilities=added, uid=int(sc.get("runAsUser", 0)), gid=int(sc.get("runAsGroup", 0)),
                        no_new_privs=sc.get("allowPrivilegeEscalation") is False,
                        read_only_root=bool(sc.get("readOnlyRootFilesystem")),
                        sysctl_mount=mount, sysctl_root=root)


def status_caps(status_text: str) -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb and NoNewPrivs of /proc/PID/status."""
    out: dict[str, int] = {}
    for line in status_text.splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            out[key] = int(value.strip(), 16)
        elif key == "NoNewPrivs":
            out[key] = int(value.strip())
    return out


def writable_mounts(mountinfo: str) -> list[str]:
    """Mount points of /proc/PID/mountinfo whose per-mount options say rw."""
    out = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 5 and "rw" in fields[5].split(","):
            out.append(fields[4])
    return out
