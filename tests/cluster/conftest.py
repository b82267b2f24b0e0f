"""Control-plane tier: real etcd + kube-apiserver + kube-controller-manager.

Needs the binaries from `bash cluster/build.sh`; without them every test here
fails (never skips) with that instruction.
"""

from pathlib import Path

import pytest

from lvs_cluster.pytest_plugin import *  # noqa: F401,F403  (control_plane, kube_namespace, hooks)
from lvs_cluster.pytest_plugin import pytest_collection_modifyitems as _mark_users

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):  # noqa: F811
    _mark_users(config, items)
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.cluster)
