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

``image_command`` runs the agent from the image instead (lvs_e2e.image_root:
the built image's root filesystem, exported): after the same mounts, made at
the manifest's own paths inside the image's tree (/proc, /sys and /dev bound
in, /proc/sys read-only, the node's /proc/sys/net and the state directory at
their mountPaths, the kubeconfig in a tmpfs at /run/kube-lvs as a projected
volume would be), ``chroot`` into the tree, the image's environment (its
Config.Env: PATH, ...) and nothing else, then ``setpriv`` and ``lvs-agent``
as the image's PATH finds them.
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
HOST_STATE = "/var/lib/kube-lvs"  # the agent's state hostPath (its default --state-dir)
IMAGE_FILES = "/run/kube-lvs"  # where an image-run agent finds its kubeconfig and CA

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
    state_mount: str = HOST_STATE  # where the state hostPath is mounted

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

    def image_mount_points(self) -> list[str]:
        """The directories the image's tree must have for `image_command`."""
        return ["/proc", "/sys", "/dev", "/run", self.sysctl_mount, self.state_mount]

    def image_command(self, netns: str, root: str, env: tuple[str, ...] | list[str], state_dir: str,
                      files: dict[str, str], agent: list[str]) -> list[str]:
        """The guest command that starts ``agent`` (its argv inside the image,
        without --sysctl-root and --state-dir) chrooted into ``root`` with the
        image's ``env``; ``state_dir`` (the guest's) is mounted at the
        manifest's state mountPath, each of ``files`` (name -> guest path) is
        copied to IMAGE_FILES/name."""
        script = image_setup_script(root, self.sysctl_mount, state_dir, self.state_mount, files,
                                    self.read_only_root)
        return ["ip", "netns", "exec", netns, "sh", "-c", script, "sh", "chroot", root, "/usr/bin/env", "-i",
                *env, *self.setpriv(), *agent, "--sysctl-root", self.sysctl_root, "--state-dir", self.state_mount]


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
        lines.append(_read_only_rest(f"/proc|/proc/*|/dev|/dev/*|{net}|{state}"))
    lines.append('exec "$@"')
    return "\n".join(lines)


def _read_only_rest(keep: str) -> str:
    """Shell: remount read-only every writable mount but those the ``case``
    patterns ``keep`` match (readOnlyRootFilesystem)."""
    return ("awk '{print $5, $6}' /proc/self/mountinfo | while read -r mp opts; do"
            f" case \"$mp\" in {keep}) continue;; esac;"
            " case \",$opts,\" in *,rw,*) mount -o remount,bind,ro \"$mp\";; esac; done")


def image_setup_script(root: str, sysctl_mount: str, state_dir: str, state_mount: str,
                       files: dict[str, str], read_only_root: bool) -> str:
    """`setup_script` for an agent chrooted into the image's tree ``root``:
    the same mounts at the manifest's paths inside it. The tree is read-only
    (the guest's view of the host), so its mount points must exist already
    (AgentSandbox.image_mount_points)."""
    q = shlex.quote
    net, state, run = q(root + sysctl_mount), q(root + state_mount), q(root + IMAGE_FILES)
    r = q(root)
    lines = [
        "set -e",
        f"mkdir -p {q(state_dir)}",
        f"mount --rbind /proc {r}/proc",
        f"mount --bind {r}/proc/sys {r}/proc/sys",  # the runtime's read-only /proc/sys
        f"mount -o remount,bind,ro {r}/proc/sys",
        f"mount --rbind /sys {r}/sys",
        f"mount --rbind /dev {r}/dev",
        f"mount --bind {HOST_SYSCTL_NET} {net}",  # hostPath /proc/sys/net, read-write
        f"mount --bind {q(state_dir)} {state}",  # hostPath /var/lib/kube-lvs
        f"mount -t tmpfs -o mode=0755 tmpfs {r}/run",
        f"mkdir -m 0700 {run}",
        *(f"cp {q(src)} {run}/{q(name)}" for name, src in sorted(files.items())),
    ]
    if read_only_root:
        keep = "|".join(f"{r}{p}" for p in ("/proc", "/proc/*", "/dev", "/dev/*")) + f"|{net}|{state}"
        lines.append(_read_only_rest(keep))
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


def _state_mount(doc: dict, container: dict) -> str:
    """The mountPath of the hostPath volume of the agent's state directory."""
    volumes = {v["name"]: v for v in doc["spec"]["template"]["spec"].get("volumes", [])}
    for m in container.get("volumeMounts", []):
        if volumes.get(m["name"], {}).get("hostPath", {}).get("path") == HOST_STATE:
            return m["mountPath"]
    raise ManifestError(f"no hostPath volume of {HOST_STATE} mounted in the agent container")


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
                        sysctl_mount=mount, sysctl_root=root, state_mount=_state_mount(doc, container))


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
