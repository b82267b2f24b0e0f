"""The CRDs: committed files equal the generator's output, and their shape is right."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lvs_model import kernel as K
from lvs_operator import crdgen

ROOT = Path(__file__).resolve().parents[2]
CRDS = crdgen.all_crds()

# Short names that core Kubernetes or Istio already use (kubectl would be ambiguous).
TAKEN = {"rs", "vs", "svc", "ns", "no", "po", "deploy", "ds", "sts", "ep", "cm", "sa", "pv", "pvc", "ing",
         "netpol", "pdb", "hpa", "cj", "crd", "csr", "ev", "limits", "quota", "rc", "sc", "pc", "dr", "gw",
         "se", "pa", "ra", "ap", "wle", "sidecar", "ef", "vsvc", "vip", "pool"}


def test_committed_crds_equal_the_generated_ones():
    assert crdgen.main(["--check", "--out", str(ROOT / "crds")]) == 0, \
        "crds/ is out of date: run `python -m lvs_operator.crdgen`"
    for name, crd in CRDS.items():
        assert yaml.safe_load((ROOT / "crds" / name).read_text()) == crd


def test_names_category_short_names_scope():
    kinds = {c["spec"]["names"]["kind"]: c["spec"] for c in CRDS.values()}
    assert set(kinds) == {"VirtualService", "RealServer", "VIPPool", "NodeState", "IPVSSettings", "BGPPeer"}
    assert kinds["VIPPool"]["scope"] == kinds["IPVSSettings"]["scope"] == kinds["BGPPeer"]["scope"] == "Cluster"
    assert {k: s["names"]["shortNames"] for k, s in kinds.items()} == {
        "VirtualService": ["lvsvc"], "RealServer": ["lvsrs"], "VIPPool": ["vippool"], "NodeState": ["lvsnode"],
        "IPVSSettings": ["lvsset"], "BGPPeer": ["lvspeer"]}
    for spec in kinds.values():
        assert spec["group"] == "lvs.kube-lvs.io"
        assert spec["names"]["categories"] == ["kube-lvs"]
        assert not set(spec["names"]["shortNames"]) & TAKEN
        (ver,) = spec["versions"]
        assert ver["name"] == "v1alpha1" and ver["subresources"] == {"status": {}}


def test_printer_columns():
    def cols(kind):
        spec = next(c["spec"] for c in CRDS.values() if c["spec"]["names"]["kind"] == kind)
        return [c["name"] for c in spec["versions"][0]["additionalPrinterColumns"] if not c.get("priority")]
    assert cols("VirtualService") == ["VIP", "Port", "Protocol", "Scheduler", "Method", "Directors",
                                      "RealServers", "Age"]
    assert cols("RealServer") == ["VirtualService", "Address", "Port", "Weight", "Method", "Health", "Active",
                                  "Inactive", "Age"]


def _walk(schema, path="$"):
    yield path, schema
    for k, sub in (schema.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{k}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("file", sorted(CRDS))
def test_structural_schema(file):
    schema = CRDS[file]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, s in _walk(schema):
        assert "type" in s, f"{file} {path}: structural schemas need a type everywhere"
        if s["type"] == "object" and path != "$.metadata":
            assert "properties" in s or "additionalProperties" in s, f"{file} {path}"
        for rule in s.get("x-kubernetes-validations", []):
            assert rule["message"], (file, path)


def test_enums_follow_the_engine_vocabulary():
    spec = CRDS["virtualservices.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    p = spec["properties"]
    assert p["scheduler"]["enum"] == list(K.SCHEDULERS)
    assert p["protocol"]["enum"] == list(K.PROTOCOLS)
    assert p["method"]["enum"] == list(K.METHODS)
    assert p["schedulerFlags"]["items"]["enum"] == list(K.SCHED_FLAGS)
    assert p["tunnel"]["properties"]["type"]["enum"] == list(K.TUNNEL_TYPES)
    rs = CRDS["realservers.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    w = rs["properties"]["weight"]
    assert (w["minimum"], w["maximum"]) == (0, K.MAX_WEIGHT)


def test_every_cel_rule_names_its_field():
    for file, crd in CRDS.items():
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, s in _walk(schema):
            for rule in s.get("x-kubernetes-validations", []):
                msg = rule["message"]
                assert "spec." in msg or "tunnel." in msg or "healthCheck." in msg or "values" in msg, \
                    (file, path, msg)


def test_netmask_regex_lists_every_contiguous_mask():
    import re
    rx = re.compile(crdgen._netmask_regex())
    assert rx.match("255.255.255.0") and rx.match("255.255.128.0") and rx.match("0.0.0.0")
    assert not rx.match("255.0.255.0") and not rx.match("255.255.255.1")


def _kustomize_dirs(d: Path, seen=None):
    seen = set() if seen is None else seen
    d = d.resolve()
    if d in seen or not (d / "kustomization.yaml").exists():
        return seen
    seen.add(d)
    for r in yaml.safe_load((d / "kustomization.yaml").read_text()).get("resources") or []:
        if (d / r).is_dir():
            _kustomize_dirs(d / r, seen)
    return seen


def test_deploy_includes_the_generated_crds():
    assert (ROOT / "crds").resolve() in _kustomize_dirs(ROOT / "deploy")
    ck = yaml.safe_load((ROOT / "crds" / "kustomization.yaml").read_text())
    assert sorted(ck["resources"]) == sorted(CRDS)
