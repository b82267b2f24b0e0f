"""Sysctls: read and written under the sysctl root, and only the names and
values kube-lvs manages (lvs_model.sysctls), whatever a NodeState says."""
from __future__ import annotations

import errno
import os
import re
from typing import Iterable

from lvs_model.sysctls import SYSCTL_NAME_RE, sysctl_error

from .netns import in_netns

# Where the sysctl tree is mounted. /proc/sys in the agent's own mount
# namespace, unless it runs unprivileged: the container runtime mounts /proc/sys
# read-only there, so the DaemonSet mounts the host's /proc/sys/net read-write
# outside /proc (runc refuses mounts inside it) and points this at it.
DEFAULT_SYSCTL_ROOT = "/proc/sys"
_sysctl_root = os.environ.get("KUBE_LVS_SYSCTL_ROOT") or DEFAULT_SYSCTL_ROOT
_sysctl_name = re.compile(SYSCTL_NAME_RE)


def set_sysctl_root(root: str) -> None:
    """Read and write sysctls under ``root`` (``--sysctl-root``) from now on."""
    global _sysctl_root
    _sysctl_root = root.rstrip("/") or "/"


def sysctl_root() -> str:
    return _sysctl_root


class SysctlRefused(PermissionError):
    """A sysctl kube-lvs does not manage, or a value out of its range. The API
    server refuses such a NodeState first; the agent refuses it again, because
    a path it opens as root is a way onto every LVS node."""

    def __init__(self, reason: str):
        super().__init__(errno.EPERM, reason)


def sysctl_path(name: str) -> str:
    """net.ipv4.conf.eth0.100.rp_filter -> <root>/net/ipv4/conf/eth0.100/rp_filter:
    the device part of conf/neigh names may itself hold dots (VLANs). Only the
    allowlisted names have a path: any other raises SysctlRefused."""
    if not isinstance(name, str) or not _sysctl_name.match(name):
        raise SysctlRefused(f"{name!r} is not a setting kube-lvs manages")
    parts = name.split(".")
    if len(parts) >= 5 and parts[0] == "net" and parts[1] in ("ipv4", "ipv6") \
            and parts[2] in ("conf", "neigh"):
        parts = parts[:3] + [".".join(parts[3:-1]), parts[-1]]
    return os.path.join(_sysctl_root, *parts)


def _read_one(name: str) -> str | None:
    """One sysctl's value, white space folded; None when it cannot be read
    (no such device, not permitted, or not a name kube-lvs may touch)."""
    try:
        with open(sysctl_path(name)) as f:
            return " ".join(f.read().split())
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None


def read_sysctls(names: Iterable[str], netns: str | None = None) -> dict[str, str | None]:
    with in_netns(netns):
        return {n: _read_one(n) for n in names}


def write_sysctl(name: str, value: str, netns: str | None = None) -> None:
    """Write one allowlisted sysctl; SysctlRefused (EPERM) for anything
    ``lvs_model.sysctls.sysctl_error`` rejects, before any file is opened."""
    reason = sysctl_error(name, value)
    if reason is not None:
        raise SysctlRefused(reason)
    path = sysctl_path(name)
    with in_netns(netns):
        with open(path, "w") as f:
            f.write(value)

