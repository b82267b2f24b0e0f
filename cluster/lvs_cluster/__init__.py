"""A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager)
for kube-lvs's tests, built from Go modules by ``cluster/build.sh``.

    from lvs_cluster import ControlPlane
    with ControlPlane() as cp:
        cp.kubectl("get", "namespaces")

pytest: ``pytest_plugins = ["lvs_cluster.pytest_plugin"]`` gives the
session-scoped ``control_plane`` fixture. People: ``python -m lvs_cluster up``.
"""

from .binaries import BinariesMissing, bin_dir, pinned_versions, require_binaries
from .control_plane import VM_HOST_ADDRESS, ControlPlane, ControlPlaneError, KubectlError

__all__ = [
    "BinariesMissing",
    "ControlPlane",
    "ControlPlaneError",
    "KubectlError",
    "VM_HOST_ADDRESS",
    "bin_dir",
    "pinned_versions",
    "require_binaries",
]
