"""The chart generator's pure core (deploy/helm/generate.py): what it makes
of kustomize's objects, without kubectl or helm (the cluster tier renders the
real chart with both). Failed before: there was no chart and no generator."""
import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("helm_generate", ROOT / "deploy" / "helm" / "generate.py")
gen = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = gen  # its dataclasses look their module up
spec.loader.exec_module(gen)


def container(**extra):
    return {"name": "agent", "image": "kube-lvs:dev", "imagePullPolicy": "IfNotPresent",
            "command": ["lvs-agent", "--metrics-port", "9477"], "env": [{"name": "A", "value": "1"}],
            "ports": [{"name": "metrics", "containerPort": 9477}], "resources": {"limits": {"memory": "1Mi"}},
            "securityContext": {"privileged": False}, **extra}


def daemonset(**extra):
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "kube-lvs-agent", "namespace": "ns"},
            "spec": {"template": {"spec": {"affinity": {"x": 1}, "containers": [container(**extra)],
                                           "tolerations": [{"operator": "Exists"}]}}}}


def rendered(agent=None):
    operator = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "op", "namespace": "ns"},
                "spec": {"replicas": 2, "template": {"spec": {"containers": [
                    {"name": "op", "image": "kube-lvs:dev", "imagePullPolicy": "IfNotPresent", "resources": {}}]}}}}
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "a.b"}}
    agent = agent or daemonset()
    priv = daemonset(securityContext={"privileged": True})
    mon = daemonset(env=[{"name": "A", "value": "1"}, {"name": "KUBE_LVS_METRICS_ADDRESS", "valueFrom": {
        "fieldRef": {"fieldPath": "status.hostIP"}}}])
    pm = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
          "metadata": {"name": "kube-lvs-agent", "namespace": "ns", "labels": {"app": "a"}},
          "spec": {"selector": {"matchLabels": {"app": "a"}},
                   "podMetricsEndpoints": [{"port": "metrics", "interval": "30s"}]}}
    return {"base": [crd, operator, agent], "privileged": [crd, operator, priv], "monitoring": [operator, mon, pm]}


def test_files_and_values_defaults_come_from_the_base():
    files = gen.chart_files(rendered())
    assert sorted(files) == ["templates/daemonset-kube-lvs-agent.yaml",
                             "templates/deployment-op.yaml", "templates/podmonitor.yaml",
                             "templates/servicemonitor.yaml", "values.yaml"]
    values = yaml.safe_load(files["values.yaml"])
    assert values["image"] == {"repository": "kube-lvs", "tag": "dev", "pullPolicy": "IfNotPresent"}
    assert values["agent"]["affinity"] == {"x": 1} and values["agent"]["privileged"] is False
    assert values["metrics"]["port"] == 9477 and values["metrics"]["interval"] == "30s"
    assert values["operator"]["replicas"] == 2


def test_the_agent_template_references_every_knob():
    t = gen.chart_files(rendered())["templates/daemonset-kube-lvs-agent.yaml"]
    for ref in (".Values.agent.affinity", ".Values.agent.nodeSelector", ".Values.agent.tolerations",
                ".Values.agent.resources", ".Values.agent.privileged", ".Values.metrics.port | quote",
                '.Values.metrics.address "hostIP"', ".Values.image.repository", ".Values.image.pullPolicy"):
        assert ref in t, ref
    assert "@@" not in t and "9477" not in t
    # Both securityContexts are there, each from its own rendering.
    assert "privileged: true" in t and "privileged: false" in t


def test_a_base_without_the_metrics_flag_is_refused():
    with pytest.raises(ValueError, match="--metrics-port"):
        gen.chart_files(rendered(daemonset(command=["lvs-agent"])))


def test_marks_replace_each_sentinel_at_its_indentation():
    m = gen.Marks()
    text = gen.dump({"a": {"b": m.inline("x"), "c": m.block(".y")}, "l": [m.raw(lambda ind, head: f"{ind}# {head}")]})
    assert m.apply(text) == "a:\n  b: {{ x }}\n  c:\n    {{- toYaml .y | nindent 4 }}\nl:\n# - \n"


def test_the_charts_crds_link_to_the_repositorys():
    """crds/ holds links to the generated CRD files deploy/ installs, so a
    CRD change reaches the chart as it is."""
    links = gen.crd_links(gen.crd_files())
    assert sorted(links) == sorted(f"crds/{f.name}" for f in (ROOT / "crds").glob("*.yaml")
                                   if f.name != "kustomization.yaml")
    for path, target in links.items():
        link = gen.CHART / path
        assert link.is_symlink() and str(link.readlink()) == target, path
        assert link.resolve() == (ROOT / "crds" / link.name).resolve() and link.is_file()
