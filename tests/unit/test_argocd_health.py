"""Argo CD's custom health checks (deploy/argocd/*.lua), run in a real Lua
runtime (lupa), against the reasons the operator's compiler really writes.

The reasons come from ``lvs_operator.compiler`` (VS_READY_FIX and friends), and
a scan of compiler.py checks that every reason it writes is in those tuples:
a reason added to the compiler and not to the tuples fails here, and one added
to the tuples and not to the Lua scripts fails the parametrized cases. The
scripts before this change failed them: NoRealServers, Failed,
NoHealthyRealServers and DirectorsNotAllowed were Progressing, a RealServer
whose VirtualService was not found was Progressing, and the tests used
reasons the operator never emits (VIPInUse, PoolDenied, Programming).
"""
import importlib.util
import inspect
import re
from pathlib import Path

import pytest

from lvs_operator import compiler
from lvs_operator.compiler import (RS_BACKEND_FIX, RS_READY_FIX, RS_READY_WAIT, VS_READY_FIX,
                                   VS_READY_WAIT)

lupa = pytest.importorskip("lupa", reason="lupa is a test dependency: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "deploy" / "argocd"


def _generator():
    spec = importlib.util.spec_from_file_location("argocd_generate", HERE / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


GEN = _generator()


def health(kind: str, obj: dict) -> tuple[str, str]:
    """(status, message) of the Argo CD health check of ``kind`` for ``obj``,
    the way Argo CD runs it: the script with ``obj`` bound, returning a table."""
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)

    def to_lua(v):
        if isinstance(v, dict):
            return lua.table_from({k: to_lua(x) for k, x in v.items()})
        if isinstance(v, list):
            return lua.table_from([to_lua(x) for x in v])
        return v

    fn = lua.eval("function(obj) " + GEN.script(kind) + " end")
    hs = fn(to_lua(obj))
    return hs["status"], hs["message"]


def obj(*conditions, gen=2, observed=2, **status) -> dict:
    o = {"metadata": {"name": "web", "generation": gen}}
    if conditions or status:
        o["status"] = {"observedGeneration": observed, "conditions": list(conditions), **status}
    return o


def c(type_, status, reason="", message="why"):
    return {"type": type_, "status": status, "reason": reason, "message": message}


def vs_health(o):
    return health("VirtualService", o)


def rs_health(o):
    return health("RealServer", o)


# The compiler's code that decides VirtualService and RealServer statuses (the
# pools' and IPVSSettings' have no Argo CD health check).
VS_RS_CODE = (compiler.compile_cluster, compiler._real_server_denial, compiler._vs_status,
              compiler._backend_condition, compiler._rs_status)


def emitted_reasons() -> set[str]:
    """Reasons VS_RS_CODE writes as literals, in the forms it uses: a
    condition(..., False, "X", ...) call, ``reason = "X"`` (also in a tuple
    assignment), and the ("X", message) / (False, "X", message) denials."""
    src = "\n".join(inspect.getsource(f) for f in VS_RS_CODE)
    pats = [r'condition\("(?:Ready|Programmed|Accepted)", False, "([A-Za-z]+)"',
            r'\.reason(?:, \w+\.message)? = "([A-Za-z]+)"',
            r'return \("([A-Z][A-Za-z]+)",', r'return \(False, "([A-Z][A-Za-z]+)"']
    return {m for p in pats for m in re.findall(p, src)}


def test_every_reason_the_compiler_writes_is_classified():
    """Fails when compiler.py writes a reason none of the tuples names."""
    found = emitted_reasons()
    assert {"NoRealServers", "Failed", "Pending", "AddressNotAllowed", "NoNodeName"} <= found  # the scan works
    known = set(VS_READY_FIX + VS_READY_WAIT + RS_READY_FIX + RS_READY_WAIT + RS_BACKEND_FIX)
    assert found - known == set()


@pytest.mark.parametrize("reason", VS_READY_FIX)
def test_virtualservice_reason_to_fix_is_degraded(reason):
    status, message = vs_health(obj(c("Accepted", "True", "Accepted"), c("Ready", "False", reason, "the fix")))
    assert status == "Degraded" and reason in message and "the fix" in message


@pytest.mark.parametrize("reason", VS_READY_WAIT)
def test_virtualservice_reason_to_wait_is_progressing(reason):
    assert vs_health(obj(c("Ready", "False", reason)))[0] == "Progressing"


@pytest.mark.parametrize("reason", RS_READY_FIX)
def test_realserver_reason_to_fix_is_degraded(reason):
    status, message = rs_health(obj(c("Ready", "False", reason, "the fix")))
    assert status == "Degraded" and reason in message


@pytest.mark.parametrize("reason", RS_BACKEND_FIX)
def test_realserver_backend_not_configured_is_degraded(reason):
    o = obj(c("Ready", "True", "Healthy"), c("BackendConfigured", "False", reason, "set spec.nodeName"))
    assert rs_health(o) == ("Degraded", f"{reason}: set spec.nodeName")


def test_realserver_waiting_reasons():
    assert rs_health(obj(c("Ready", "False", "NotChecked")))[0] == "Progressing"
    assert rs_health(obj(c("Ready", "False", "Draining", "weight 0")))[0] == "Suspended"
    assert set(RS_READY_WAIT) == {"NotChecked", "Draining"}  # each one has its case above


@pytest.mark.parametrize("kind", ["VirtualService", "RealServer"])
def test_without_status_or_at_an_unseen_generation_is_progressing(kind):
    assert health(kind, obj())[0] == "Progressing"
    stale = obj(c("Ready", "False", "Invalid"), gen=3, observed=2)
    assert health(kind, stale)[0] == "Progressing"


def test_virtualservice_ready_and_conflict():
    assert vs_health(obj(c("Ready", "True", "Ready", "2/2 directors ready")))[0] == "Healthy"
    lost = obj(c("Conflict", "True", "Conflict", "team-b/web is older"), c("Ready", "False", "Conflict"))
    assert vs_health(lost) == ("Degraded", "team-b/web is older")
    won = obj(c("Conflict", "False", "Winner"), c("Ready", "True", "Ready", "ok"))
    assert vs_health(won)[0] == "Healthy"


def test_realserver_ready():
    assert rs_health(obj(c("Ready", "True", "Healthy", "healthy on 2 director(s)"),
                         c("BackendConfigured", "True", "Configured")))[0] == "Healthy"


def test_the_patch_carries_the_scripts_as_they_are():
    """argocd-cm-patch.yaml is generated from the .lua files; a stale one fails."""
    import yaml
    assert (HERE / "argocd-cm-patch.yaml").read_text() == GEN.current()
    data = yaml.safe_load((HERE / "argocd-cm-patch.yaml").read_text())["data"]
    assert data == {f"resource.customizations.health.lvs.kube-lvs.io_{k}": GEN.script(k) for k in GEN.SCRIPTS}
