"""Kernel tier: real IPVS and real traffic between network namespaces, in the lab VM.

Every test under tests/kernel is marked ``kernel``. Outside the lab VM (the runner
sets KUBE_LVS_LAB=1; the kernel must have /proc/net/ip_vs) they are skipped:
run them with ``make test-kernel``, i.e.::

    bash lab/setup.sh
    .venv/bin/python -m lvs_lab run --timeout 1500 -- .venv/bin/python -m pytest tests/kernel -q -rs

Fixtures (function scope, torn down after each test: namespaces deleted, servers
stopped, processes killed): ``lab`` (an empty :class:`lvs_lab.topology.Lab`) and one
per topology of :mod:`lvs_lab.topology`, each with name servers (HTTP/TCP + UDP echo)
already answering on port 80 of every real server:

    seed_nat, nat6, udp_nat, tun_one_subnet, tun_one_subnet_prepared,
    tun_cross_subnet, tun_cross_subnet_prepared, dr, dr_prepared

``make_topology(kind, **options)`` builds one with custom options (see its doc).
``*_prepared`` variants configure the real servers by hand (tunl0 + VIP, ARP and
rp_filter sysctls; VIP on lo for DR), the way the seed notes do, for tests that do not
exercise the engine's own backend setup.

``ipvs_root_guard`` (autouse) fails a test that leaves IPVS services behind in the
VM's root namespace (and removes them so later tests start clean).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SKIP_REASON = "kernel tier runs inside the lab VM: make test-kernel"
_HERE = Path(__file__).resolve().parent


def in_lab_vm() -> bool:
    return os.environ.get("KUBE_LVS_LAB") == "1" and os.path.exists("/proc/net/ip_vs")


def _is_here(item) -> bool:
    try:
        Path(str(item.path)).resolve().relative_to(_HERE)
        return True
    except ValueError:
        return False


def pytest_collection_modifyitems(config, items):
    inside = in_lab_vm()
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if not _is_here(item):
            continue
        item.add_marker(pytest.mark.kernel)
        if not inside:
            item.add_marker(skip)


# ------------------------------------------------------------------------------ guards


def _root_services() -> set[str]:
    """'PROTO ADDR:PORT' of every IPVS service in the root namespace (hex, as the kernel prints)."""
    try:
        text = Path("/proc/net/ip_vs").read_text()
    except FileNotFoundError:
        return set()
    out = set()
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in ("TCP", "UDP", "SCTP", "FWM"):
            out.add(f"{parts[0]} {parts[1]}")
    return out


def _delete_root_service(svc: str) -> None:
    proto, addr = svc.split(" ", 1)
    flag = {"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service", "FWM": "-f"}[proto]
    if proto == "FWM":
        target = str(int(addr, 16))
    else:
        host, _, port = addr.rpartition(":")
        if len(host) == 8:
            host = ".".join(str(int(host[i:i + 2], 16)) for i in range(0, 8, 2))
        else:  # IPv6 as printed by the kernel: [xxxx:...]
            host = host.strip("[]")
            host = f"[{host}]"
        target = f"{host}:{int(port, 16)}"
    subprocess.run(["ipvsadm", "-D", flag, target], capture_output=True, timeout=30)


@pytest.fixture(autouse=True)
def ipvs_root_guard(request):
    if not in_lab_vm() or not _is_here(request.node):
        yield
        return
    before = _root_services()
    yield
    added = _root_services() - before
    for svc in added:
        _delete_root_service(svc)
    if added:
        pytest.fail(f"test left IPVS services in the root namespace: {sorted(added)}")


# ------------------------------------------------------------------------------ topologies


@pytest.fixture
def lab():
    from lvs_lab.topology import Lab

    with Lab() as lab:
        yield lab


@pytest.fixture
def make_topology():
    """Build any topology with custom options, torn down after the test::

        t = make_topology("tun_cross_subnet", backend_prepare=True, encap=("ipip", "gue"))
        t = make_topology("seed_nat", real_servers=3, serve=False)

    ``serve`` defaults to True (name servers on port 80 of every real server). Two
    topologies alive at once need distinct ``prefix=`` values (e.g. ``"lbb-"``), or the
    second deletes the first's ``lab-`` namespaces.
    """
    from lvs_lab import topology

    built = []

    def make(kind, **kw):
        kw.setdefault("serve", True)
        builder = topology.TOPOLOGIES[kind] if isinstance(kind, str) else kind
        t = builder(**kw)
        built.append(t)
        return t

    yield make
    for t in reversed(built):
        t.close()


def _topology(builder, **kw):
    t = builder(serve=True, **kw)
    try:
        yield t
    finally:
        t.close()


@pytest.fixture
def seed_nat():
    from lvs_lab import topology

    yield from _topology(topology.seed_nat)


@pytest.fixture
def nat6():
    from lvs_lab import topology

    yield from _topology(topology.nat6)


@pytest.fixture
def udp_nat():
    from lvs_lab import topology

    yield from _topology(topology.udp_nat)


@pytest.fixture
def tun_one_subnet():
    from lvs_lab import topology

    yield from _topology(topology.tun_one_subnet)


@pytest.fixture
def tun_one_subnet_prepared():
    from lvs_lab import topology

    yield from _topology(topology.tun_one_subnet, backend_prepare=True)


@pytest.fixture
def tun_cross_subnet():
    from lvs_lab import topology

    yield from _topology(topology.tun_cross_subnet)


@pytest.fixture
def tun_cross_subnet_prepared():
    from lvs_lab import topology

    yield from _topology(topology.tun_cross_subnet, backend_prepare=True)


@pytest.fixture
def dr():
    from lvs_lab import topology

    yield from _topology(topology.dr)


@pytest.fixture
def dr_prepared():
    from lvs_lab import topology

    yield from _topology(topology.dr, backend_prepare=True)


@pytest.fixture
def engines(tmp_path):
    """engines(netns, name) -> an Engine programming that namespace, each with
    its own ownership record; all closed after the test."""
    from lvs_agent.engine import Engine
    made: list = []

    def make(ns: str, name: str):
        e = Engine(tmp_path / f"{name}.json", netns=ns)
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()
