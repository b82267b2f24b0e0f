"""kube-lvs lab: a real IPVS kernel in a qemu VM, and network topologies inside it.

Host side: :mod:`lvs_lab.vm` (boot the VM, run a command, get its exit code).
Guest side (used by tests/kernel): :mod:`lvs_lab.topology`, :mod:`lvs_lab.servers`.
"""

import os

__all__ = ["in_lab_vm"]


def in_lab_vm() -> bool:
    """True when running inside the lab VM with an IPVS-capable kernel."""
    return os.environ.get("KUBE_LVS_LAB") == "1" and os.path.exists("/proc/net/ip_vs")
