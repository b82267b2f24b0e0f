"""The Helm chart (deploy/helm/kube-lvs) against deploy/ and a real API server.

helm is the one cluster/build.sh builds from Go modules. Each test failed
before the chart existed; the comparisons fail as soon as the chart and
deploy/ render different objects (an edit of deploy/base without
`python deploy/helm/generate.py`, a value that stops reaching its field).
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "kube-lvs"

# (helm --set values, the kustomize root that must render the same objects)
VARIANTS = {
    "default": ([], "deploy"),
    "privileged": (["agent.privileged=true"], "deploy/overlays/privileged"),
    "monitoring": (["metrics.address=hostIP", "metrics.podMonitor.enabled=true"], "deploy/overlays/monitoring"),
}


def generator():
    spec = importlib.util.spec_from_file_location("helm_generate", ROOT / "deploy" / "helm" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def helm() -> str:
    path = subprocess.run(["bash", str(ROOT / "cluster" / "build.sh"), "--print-helm"], check=True,
                          capture_output=True, text=True).stdout.strip()
    if not Path(path).is_file():
        pytest.fail(f"helm is not built ({path}): run bash cluster/build.sh", pytrace=False)
    return path


def run(*cmd: str) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, f"{' '.join(cmd)}:\n{p.stdout}\n{p.stderr}"
    return p.stdout


def objects(text: str) -> dict[tuple, dict]:
    """(kind, namespace, name) -> object, for every document of a rendering."""
    out = {}
    for d in yaml.safe_load_all(text):
        if d:
            key = (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])
            assert key not in out, f"rendered twice: {key}"
            out[key] = d
    return out


def template(helm: str, *sets: str, show: str = "") -> dict[tuple, dict]:
    args = [helm, "template", "kube-lvs", str(CHART), "--include-crds"]
    for s in sets:
        args += ["--set", s]
    if show:
        args += ["--show-only", show]
    return objects(run(*args))


def test_chart_is_generated_from_deploy(control_plane):
    """The chart's templates, CRDs and values are what generate.py makes of
    deploy/ now: deploy/ stays the one source of truth."""
    gen = generator()
    files = gen.chart_files(gen.render_sources(str(control_plane.kubectl_path)))
    links = gen.crd_links(gen.crd_files())
    assert gen.stale(files, links) == [], "the chart is stale: run python deploy/helm/generate.py"


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint(helm, variant):
    sets = VARIANTS[variant][0]
    run(helm, "lint", "--strict", str(CHART), *[a for s in sets for a in ("--set", s)])


@pytest.mark.parametrize("variant", VARIANTS)
def test_template_renders_the_objects_kustomize_does(helm, control_plane, variant):
    """Default values = deploy/, agent.privileged = the privileged overlay,
    metrics on the node's address with a PodMonitor = the monitoring overlay:
    object by object, every field. CRDs: the same spec (Helm installs the
    CRD files as they are, without the labels and Argo CD sync wave the
    kustomize base adds)."""
    sets, root = VARIANTS[variant]
    chart = template(helm, *sets)
    kust = objects(control_plane.kubectl("kustomize", str(ROOT / root)).stdout)
    assert sorted(chart) == sorted(kust)
    for key, obj in kust.items():
        if key[0] == "CustomResourceDefinition":
            assert chart[key]["spec"] == obj["spec"], key
        else:
            assert chart[key] == obj, key


def agent_of(rendered: dict) -> dict:
    return rendered[("DaemonSet", "kube-lvs-system", "kube-lvs-agent")]["spec"]["template"]["spec"]


def test_values_reach_their_fields(helm):
    """The knobs users turn change exactly the fields they name."""
    r = template(helm, "image.repository=registry.example/kube-lvs", "image.tag=1.2.3", "image.pullPolicy=Always",
                 "agent.nodeSelector.lvs-pool=edge", "agent.resources.limits.memory=1Gi", "metrics.port=9600",
                 "metrics.address=10.0.0.7", "operator.replicas=3", "agent.tolerations=null")
    pod = agent_of(r)
    c = pod["containers"][0]
    assert c["image"] == "registry.example/kube-lvs:1.2.3" and c["imagePullPolicy"] == "Always"
    assert pod["nodeSelector"] == {"lvs-pool": "edge"}
    assert "tolerations" not in pod or not pod["tolerations"]
    assert c["resources"]["limits"]["memory"] == "1Gi"
    assert c["command"] == ["lvs-agent", "--metrics-port", "9600"] and c["ports"][0]["containerPort"] == 9600
    assert {"name": "KUBE_LVS_METRICS_ADDRESS", "value": "10.0.0.7"} in c["env"]
    op = r[("Deployment", "kube-lvs-system", "kube-lvs-operator")]["spec"]
    assert op["replicas"] == 3 and op["template"]["spec"]["containers"][0]["image"] == "registry.example/kube-lvs:1.2.3"


def test_a_monitor_on_loopback_metrics_is_refused(helm):
    """A PodMonitor of metrics that listen on 127.0.0.1 would scrape nothing:
    the chart says so instead of rendering it."""
    p = subprocess.run([helm, "template", "kube-lvs", str(CHART), "--set", "metrics.podMonitor.enabled=true"],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "metrics.address is loopback" in p.stderr


# A minimal copy of Prometheus Operator's PodMonitor and ServiceMonitor CRDs:
# the fields kube-lvs uses, with their upstream names and types. Applied with
# the API server's strict field validation, a misspelt or misplaced field fails.
_RELABEL = {"type": "object", "properties": {
    "sourceLabels": {"type": "array", "items": {"type": "string"}}, "targetLabel": {"type": "string"},
    "action": {"type": "string"}, "regex": {"type": "string"}, "replacement": {"type": "string"},
    "separator": {"type": "string"}}}
_ENDPOINT = {"type": "object", "properties": {
    "port": {"type": "string"}, "path": {"type": "string"}, "scheme": {"type": "string"},
    "interval": {"type": "string", "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
    "relabelings": {"type": "array", "items": _RELABEL}}}
_SELECTOR = {"type": "object", "properties": {
    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
    "matchExpressions": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}


def monitoring_crd(kind: str, endpoints: str) -> dict:
    plural = kind.lower() + "s"
    spec = {"type": "object", "required": ["selector", endpoints], "properties": {
        "selector": _SELECTOR, "jobLabel": {"type": "string"},
        "namespaceSelector": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        endpoints: {"type": "array", "minItems": 1, "items": _ENDPOINT}}}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.monitoring.coreos.com"},
            "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                     "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": kind + "List"},
                     "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                         "type": "object", "properties": {"spec": spec}}}}]}}


def test_monitors_pass_the_monitoring_schema(helm, control_plane, tmp_path):
    """The PodMonitor (overlay and chart) and the ServiceMonitor with its
    Service are accepted by an API server that knows the monitoring kinds."""
    crds = tmp_path / "crds.json"
    crds.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        monitoring_crd("PodMonitor", "podMetricsEndpoints"), monitoring_crd("ServiceMonitor", "endpoints")]}))
    control_plane.kubectl("apply", "--server-side", "-f", str(crds))
    for plural in ("podmonitors", "servicemonitors"):
        control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                              f"crd/{plural}.monitoring.coreos.com")
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f",
                          str(ROOT / "deploy" / "base" / "namespace.yaml"))
    chart = run(helm, "template", "kube-lvs", str(CHART), "--set", "metrics.address=hostIP",
                "--set", "metrics.podMonitor.enabled=true", "--set", "metrics.serviceMonitor.enabled=true",
                "--set", "metrics.serviceMonitor.labels.release=prometheus",
                "--show-only", "templates/podmonitor.yaml", "--show-only", "templates/servicemonitor.yaml")
    rendered = tmp_path / "monitors.yaml"
    rendered.write_text(chart)
    assert sorted(k[0] for k in objects(chart)) == ["PodMonitor", "Service", "ServiceMonitor"]
    for target in (["-f", str(rendered)], ["-f", str(ROOT / "deploy" / "overlays" / "monitoring" / "podmonitor.yaml")]):
        control_plane.kubectl("apply", "--dry-run=server", "--validate=strict", *target)
    bad = tmp_path / "bad.yaml"
    bad.write_text(chart.replace("podMetricsEndpoints", "podMetricEndpoints"))
    p = control_plane.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", str(bad), check=False)
    assert p.returncode != 0  # the schema check can fail


def test_helm_install_into_the_control_plane(helm, control_plane):
    """helm install, then upgrade with a value, against the real API server.
    --take-ownership: deploy/'s own test may have applied the same objects
    with kubectl, and a user moving from kustomize to Helm does the same."""
    kc = ["--kubeconfig", str(control_plane.kubeconfig)]
    run(helm, "install", "kube-lvs", str(CHART), "--namespace", "default", "--take-ownership",
        "--force-conflicts", *kc)
    status = json.loads(run(helm, "status", "kube-lvs", "--namespace", "default", "-o", "json", *kc))
    assert status["info"]["status"] == "deployed"
    for kind, ns, name in template(helm):
        args = ["get", kind, name, "-o", "json"] + (["-n", ns] if ns else [])
        obj = json.loads(control_plane.kubectl(*args).stdout)
        if kind != "CustomResourceDefinition":  # crds/ are installed, never owned
            assert obj["metadata"]["annotations"]["meta.helm.sh/release-name"] == "kube-lvs"
    try:
        run(helm, "upgrade", "kube-lvs", str(CHART), "--namespace", "default", "--set", "image.tag=next",
            "--force-conflicts", *kc)
        ds = json.loads(control_plane.kubectl("get", "daemonset", "kube-lvs-agent", "-n", "kube-lvs-system",
                                              "-o", "json").stdout)
        assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == "kube-lvs:next"
    finally:  # leave the objects as deploy/ has them for the tests after this one
        run(helm, "upgrade", "kube-lvs", str(CHART), "--namespace", "default", "--force-conflicts", *kc)
