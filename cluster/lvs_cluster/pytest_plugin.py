"""pytest fixtures for tests that need the real control plane.

Use it from a test folder's conftest.py with a star import (``pytest_plugins``
is only allowed in the rootdir conftest; the star import works anywhere):

    from lvs_cluster.pytest_plugin import *  # noqa: F401,F403

or from the top-level ``tests/conftest.py``:

    pytest_plugins = ["lvs_cluster.pytest_plugin"]

Fixtures:
    control_plane   session-scoped ControlPlane (one per pytest session, shared
                    by every folder that imports this plugin); FAILS the tests
                    that use it when the binaries are not built
    kube_namespace  a fresh namespace per test, deleted (without waiting) after it

Tests that use ``control_plane`` get the ``cluster`` marker automatically. When
any test failed, the control plane's work directory (component logs, certs,
kubeconfigs; not the etcd data) is kept and its path printed at the end of the
run; ``KUBE_LVS_KEEP_CLUSTER=1`` keeps all of it, always.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid

import pytest

from .binaries import BinariesMissing, require_binaries
from .control_plane import ControlPlane, ControlPlaneError

__all__ = [
    "control_plane",
    "kube_namespace",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_terminal_summary",
]

# One control plane per session, even when several conftests import these
# fixtures (each import defines its own fixture; they all share this state).
_state: dict = {"cp": None, "error": None, "kept": False, "reported": False}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cluster: needs the real etcd + kube-apiserver control plane (make test-cluster)"
    )


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "control_plane" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


def _stop(session) -> None:
    cp = _state["cp"]
    if cp is None:
        return
    keep_all = bool(os.environ.get("KUBE_LVS_KEEP_CLUSTER"))
    keep = bool(session.testsfailed) or keep_all
    cp.stop(keep=keep)
    if keep and not keep_all:
        # Logs, certificates and kubeconfigs stay; etcd's 64 MB of data do not.
        shutil.rmtree(cp.workdir / "etcd", ignore_errors=True)
    _state["kept"] = keep


def _shared_control_plane(request) -> ControlPlane:
    if _state["error"]:
        pytest.fail(_state["error"], pytrace=False)
    if _state["cp"] is not None:
        return _state["cp"]
    try:
        require_binaries()
    except BinariesMissing as e:
        _state["error"] = str(e)
    if _state["error"]:
        pytest.fail(_state["error"], pytrace=False)
    cp = ControlPlane()
    _state["cp"] = cp
    session = request.session
    request.config.add_cleanup(lambda: _stop(session))
    try:
        cp.start()
    except ControlPlaneError as e:
        _state["error"] = f"the test control plane did not start: {e}"
    if _state["error"]:
        pytest.fail(_state["error"], pytrace=False)
    return cp


@pytest.fixture(scope="session")
def control_plane(request) -> ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on 127.0.0.1 for this session."""
    return _shared_control_plane(request)


@pytest.fixture
def kube_namespace(control_plane, request) -> str:
    """A fresh namespace named after the test; deleted afterwards without waiting."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:5]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found",
                          check=False)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    cp = _state["cp"]
    if cp is None or _state["reported"]:
        return
    failed = bool(terminalreporter.stats.get("failed") or terminalreporter.stats.get("error"))
    if failed or _state["kept"] or os.environ.get("KUBE_LVS_KEEP_CLUSTER"):
        _state["reported"] = True
        terminalreporter.write_sep("-", "kube-lvs test control plane")
        terminalreporter.write_line(f"component logs: {cp.log_dir}")
        terminalreporter.write_line(f"admin kubeconfig: {cp.admin_kubeconfig}")
