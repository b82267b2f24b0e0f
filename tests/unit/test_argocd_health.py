"""Argo CD's custom health checks, run in a real Lua runtime (lupa)."""
from pathlib import Path

import pytest

lupa = pytest.importorskip("lupa", reason="lupa is a test dependency: pip install -e '.[test]'")

HERE = Path(__file__).resolve().parents[2] / "deploy" / "argocd"


def health(script: str, obj: dict) -> tuple[str, str]:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)

    def to_lua(v):
        if isinstance(v, dict):
            return lua.table_from({k: to_lua(x) for k, x in v.items()})
        if isinstance(v, list):
            return lua.table_from([to_lua(x) for x in v])
        return v

    fn = lua.eval("function(obj) " + (HERE / script).read_text() + " end")
    hs = fn(to_lua(obj))
    return hs["status"], hs["message"]


def vs(conditions=None, gen=2, observed=2):
    o = {"metadata": {"name": "web", "generation": gen}}
    if conditions is not None:
        o["status"] = {"observedGeneration": observed, "conditions": conditions}
    return o


def c(type_, status, reason="", message=""):
    return {"type": type_, "status": status, "reason": reason, "message": message}


VS_CASES = [
    (vs(), "Progressing"),
    (vs([c("Ready", "True", "Programmed", "2/2 directors")]), "Healthy"),
    (vs([c("Ready", "True")], gen=3, observed=2), "Progressing"),
    (vs([c("Ready", "False", "Conflict"), c("Conflict", "True", "VIPInUse", "team-b/web owns it")]), "Degraded"),
    (vs([c("Ready", "False", "PoolDenied", "no VIPPool allows 10.0.0.1 in team-a")]), "Degraded"),
    (vs([c("Ready", "False", "Invalid", "spec.port: out of range")]), "Degraded"),
    (vs([c("Ready", "False", "Programming", "1/2 directors")]), "Progressing"),
    (vs([c("Programmed", "True")]), "Progressing"),
]

RS_CASES = [
    ({"metadata": {"name": "a"}}, "Progressing"),
    ({"metadata": {"name": "a"}, "status": {"health": "Healthy"}}, "Healthy"),
    ({"metadata": {"name": "a"}, "status": {"health": "Unhealthy"}}, "Degraded"),
    ({"metadata": {"name": "a"}, "status": {"health": "Draining"}}, "Suspended"),
    ({"metadata": {"name": "a"}, "status": {"health": "Unknown"}}, "Progressing"),
    ({"metadata": {"name": "a"}, "status": {"health": "Healthy", "conditions": [c("Ready", "False", "Invalid", "x")]}}, "Degraded"),
]


@pytest.mark.parametrize("obj,want", VS_CASES)
def test_virtualservice_health(obj, want):
    status, message = health("virtualservice-health.lua", obj)
    assert status == want and message


@pytest.mark.parametrize("obj,want", RS_CASES)
def test_realserver_health(obj, want):
    status, message = health("realserver-health.lua", obj)
    assert status == want and message


def test_kustomization_wires_both_scripts():
    text = (HERE / "kustomization.yaml").read_text()
    assert "health.lvs.kube-lvs.io_VirtualService=virtualservice-health.lua" in text
    assert "health.lvs.kube-lvs.io_RealServer=realserver-health.lua" in text
