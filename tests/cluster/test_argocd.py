"""Argo CD's health checks installed the two ways README gives, into an
argocd-cm that exists first (as Argo CD's install makes it), on a real API
server: they land under Argo CD's per-kind keys and every key the user had
stays. Both failed before: deploy/argocd had no patch file, and its
kustomization merged into an argocd-cm it did not have (`kubectl kustomize
deploy/argocd` errored).
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "deploy" / "argocd"
NAMESPACE = "argocd"  # the patch names Argo CD's default namespace, as its install does
KINDS = ("VirtualService", "RealServer")
# Keys an Argo CD install already has: they must survive.
EXISTING = {
    "url": "https://argocd.example",
    "resource.customizations.health.cert-manager.io_Certificate": "hs = {}\nhs.status = \"Healthy\"\nreturn hs\n",
}
ARGOCD_CM = {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "argocd-cm", "namespace": NAMESPACE,
                          "labels": {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"}},
             "data": EXISTING}


def generator():
    """deploy/argocd/generate.py: what each kind's health check is."""
    spec = importlib.util.spec_from_file_location("argocd_generate", ARGOCD / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


@pytest.fixture
def argocd_cm(control_plane, tmp_path):
    """A fresh argocd-cm with the user's own keys, as Argo CD's install leaves it."""
    control_plane.kubectl("create", "namespace", NAMESPACE, check=False)
    control_plane.kubectl("delete", "configmap", "argocd-cm", "-n", NAMESPACE, "--ignore-not-found")
    path = tmp_path / "argocd-cm.json"
    path.write_text(json.dumps(ARGOCD_CM))
    control_plane.kubectl("create", "-f", str(path))
    return path


def data(control_plane) -> dict[str, str]:
    return json.loads(control_plane.kubectl("get", "configmap", "argocd-cm", "-n", NAMESPACE,
                                            "-o", "json").stdout)["data"]


def assert_installed(control_plane):
    got = data(control_plane)
    gen = generator()
    for kind in KINDS:
        key = f"resource.customizations.health.lvs.kube-lvs.io_{kind}"
        assert got.get(key) == gen.script(kind), key
    for key, value in EXISTING.items():
        assert got.get(key) == value, f"{key} was lost"


def test_patch_of_the_running_argocd_cm(control_plane, argocd_cm):
    """README's command, run as written from the repository root."""
    control_plane.kubectl("-n", NAMESPACE, "patch", "configmap", "argocd-cm", "--type", "merge",
                          "--patch-file", str(ARGOCD / "argocd-cm-patch.yaml"))
    assert_installed(control_plane)


def test_component_of_a_kustomized_argocd_install(control_plane, argocd_cm, tmp_path):
    """An Argo CD installed with kustomize adds deploy/argocd to `components:`."""
    app = tmp_path / "argocd-install"
    app.mkdir()
    (app / "argocd-cm.json").write_text(argocd_cm.read_text())
    (app / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"namespace: {NAMESPACE}\nresources:\n- argocd-cm.json\n"
        f"components:\n- {os.path.relpath(ARGOCD, app)}\n")
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(app))
    assert_installed(control_plane)
