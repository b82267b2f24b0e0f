"""Where cluster/build.sh puts the control-plane binaries.

The versions are read from cluster/go/go.mod (the single source of truth, as
in build.sh); the directory is
``${KUBE_LVS_CACHE:-~/.cache/kube-lvs}/k8s/<k8s>-etcd<etcd>/bin``.
``KUBE_LVS_BIN_DIR`` overrides the whole lookup.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")

CLUSTER_DIR = Path(__file__).resolve().parent.parent  # <repo>/cluster
GO_MOD = CLUSTER_DIR / "go" / "go.mod"
BUILD_SCRIPT = CLUSTER_DIR / "build.sh"


class BinariesMissing(RuntimeError):
    pass


def pinned_versions(go_mod: Path = GO_MOD) -> tuple[str, str]:
    """(kubernetes version, etcd version) pinned in go.mod, e.g. ("v1.37.2", "v3.7.0")."""
    text = go_mod.read_text()

    def find(module: str) -> str:
        m = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.M)
        if not m:
            raise RuntimeError(f"{module} is not required in {go_mod}")
        return m.group(1)

    return find("k8s.io/kubernetes"), find("go.etcd.io/etcd/server/v3")


def bin_dir() -> Path:
    override = os.environ.get("KUBE_LVS_BIN_DIR")
    if override:
        return Path(override)
    k8s, etcd = pinned_versions()
    cache = os.environ.get("KUBE_LVS_CACHE") or os.path.join(Path.home(), ".cache", "kube-lvs")
    return Path(cache) / "k8s" / f"{k8s.lstrip('v')}-etcd{etcd.lstrip('v')}" / "bin"


def binary(name: str) -> Path:
    return bin_dir() / name


def missing_binaries() -> list[str]:
    d = bin_dir()
    return [b for b in BINARIES if not os.access(d / b, os.X_OK)]


def require_binaries() -> Path:
    """The bin directory, or BinariesMissing with the command that builds them."""
    missing = missing_binaries()
    if missing:
        try:
            rel = os.path.relpath(BUILD_SCRIPT)
        except ValueError:
            rel = str(BUILD_SCRIPT)
        raise BinariesMissing(
            f"control-plane binaries not built: {', '.join(missing)} missing in {bin_dir()}.\n"
            f"Build them (cold: several minutes, then cached) with:\n    bash {rel}"
        )
    return bin_dir()
