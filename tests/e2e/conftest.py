"""End-to-end tier: API server and operator on the host, agents and traffic in
the lab VM. Needs the control-plane binaries (bash cluster/build.sh) and the
lab kernel (bash lab/setup.sh); `make e2e` provides both. The agents run from
the built image's root filesystem (deploy/image/build.sh, cached by its
inputs); KUBE_LVS_E2E_AGENT=venv runs them from this checkout's virtualenv."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from lvs_cluster import binaries
from lvs_lab.vm import LabError, find_kernel

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    sys_ = item.funcargs.get("system") or item.funcargs.get("nat")
    if rep.failed and sys_ is not None and call.when in ("setup", "call"):
        rep.sections.append(("kube-lvs diagnostics", sys_.diagnose()))


@pytest.fixture(scope="session")
def system(tmp_path_factory):
    missing = binaries.missing_binaries()
    if missing:
        pytest.fail(f"control-plane binaries missing ({', '.join(missing)}): run bash cluster/build.sh")
    try:
        find_kernel()
    except LabError as e:
        pytest.fail(f"lab kernel missing ({e}): run bash lab/setup.sh")
    from lvs_e2e.system import AGENT_FROM_ENV, System
    s = System(log=lambda m: print(f"[e2e] {m}", flush=True))
    try:
        if os.environ.get(AGENT_FROM_ENV, "image") != "venv":
            s.use_image()
        s.start_control_plane()
        s.start_operator()
        for node, director in (("nat-director", True), ("tun-director", False), ("rs1", False), ("rs2", False)):
            s.add_node(node, director)
        s.boot()
        yield s
    finally:
        s.close()
