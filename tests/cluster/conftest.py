"""Control-plane tier: real etcd + kube-apiserver + kube-controller-manager.

Needs the binaries from `bash cluster/build.sh`; without them every test here
fails (never skips) with that instruction.
"""

from pathlib import Path

import pytest

from lvs_cluster.pytest_plugin import *  # noqa: F401,F403  (control_plane, kube_namespace, hooks)
from lvs_cluster.pytest_plugin import pytest_collection_modifyitems as _mark_users

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@pytest.fixture
def nodestate_api(control_plane):
    """A CustomObjectsApi (admin) with the NodeState CRD established."""
    from lvs_model.channel import GROUP, NODESTATE_PLURAL
    control_plane.kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "nodestates.yaml"))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                          f"crd/{NODESTATE_PLURAL}.{GROUP}")
    from kubernetes import client
    return client.CustomObjectsApi(control_plane.api_client())


@pytest.fixture(scope="module")
def kube_lvs(control_plane):
    """The control plane with deploy/ installed (kubectl apply -k, as README
    says) and every CRD established."""
    from lvs_model import channel as C
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(ROOT / "deploy"))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                          *[f"crd/{p}.{C.GROUP}" for p in (C.VIRTUALSERVICE_PLURAL, C.REALSERVER_PLURAL,
                                                            C.VIPPOOL_PLURAL, C.NODESTATE_PLURAL)])
    return control_plane


def pytest_collection_modifyitems(config, items):  # noqa: F811
    _mark_users(config, items)
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.cluster)
