"""kind end to end: a kind cluster, the image loaded, deploy/ and the NAT example
applied, `kubectl get realservers` checked.

Opt-in: kind's node image is pulled from a registry and pytest-kind downloads
kind and kubectl, so this needs Docker with a network. Run it where you have
both:  pip install pytest-kind && KUBE_LVS_KIND=1 make test-kind
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.kind,
    pytest.mark.skipif(os.environ.get("KUBE_LVS_KIND") != "1",
                       reason="kind tests need Docker with a network to pull kind's node image "
                              "(none here); opt in with KUBE_LVS_KIND=1 make test-kind"),
]


@pytest.fixture(scope="module")
def kind_cluster():
    pytest_kind = pytest.importorskip("pytest_kind", reason="pip install pytest-kind")
    if not shutil.which("docker"):
        pytest.skip("docker is not installed")
    subprocess.run(["bash", str(ROOT / "deploy/image/build.sh")], check=True)
    cluster = pytest_kind.KindCluster("kube-lvs")
    cluster.create()
    try:
        cluster.load_docker_image("kube-lvs:dev")
        yield cluster
    finally:
        cluster.delete()


def test_deploy_and_nat_example(kind_cluster):
    k = kind_cluster.kubectl
    k("apply", "--server-side", "-k", str(ROOT / "deploy"))
    k("wait", "--for=condition=Established", "crd/realservers.lvs.kube-lvs.io", "--timeout=60s")
    k("label", "node", "--all", "lvs.kube-lvs.io/role=director", "lvs.kube-lvs.io/director=true")
    k("rollout", "status", "-n", "kube-lvs-system", "deployment/kube-lvs-operator", "--timeout=180s")
    k("rollout", "status", "-n", "kube-lvs-system", "daemonset/kube-lvs-agent", "--timeout=180s")
    k("apply", "-k", str(ROOT / "examples/seed-nat"))
    out = k("get", "realservers.lvs.kube-lvs.io", "-n", "web")
    assert "10.0.0.51" in out and "10.0.0.52" in out
    nodestates = k("get", "nodestates.lvs.kube-lvs.io", "-n", "kube-lvs-system", "-o", "name")
    assert "nodestate" in nodestates
