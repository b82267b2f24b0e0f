"""Director groups in the operator (lvs_operator.ha_groups and the
compiler): a VirtualService labelled failover: active-standby gives each of
its directors a directorGroups entry (members, VIP, sync id); its status
names the director whose agent holds the VIP, with a Takeover event when it
changes; without the label the NodeStates and the status are as before.

Each fails before the change: the compiler wrote no directorGroups and no
activeDirector.
"""
from __future__ import annotations

import pytest

from lvs_model.nodespec import DirectorGroup, parse_node_spec
from lvs_operator.compiler import compile_cluster
from lvs_operator.ha_groups import default_sync_id, group_name

from test_compiler import NODES, POOLS, check_specs_parse, obj, rs, vs

HA = {"lvs.kube-lvs.io/failover": "active-standby"}


def web(labels=None, status=None):
    o = vs("web", address="192.168.0.30", port=80, method="dr")
    if labels:
        o["metadata"]["labels"] = labels
    if status is not None:
        o["status"] = status
    return o


def compiled(labels=None, nodestates=(), status=None):
    r = compile_cluster([web(labels, status)], [rs("r1", "web", "10.0.0.51")], POOLS, NODES, nodestates=nodestates)
    check_specs_parse(r)
    return r


def groups_of(r) -> dict[str, tuple]:
    return {b["spec"]["node"]: parse_node_spec(b["spec"])[0].director_groups for b in r.nodestates.values()
            if b["spec"].get("directorAddresses")}


def test_labelled_virtualservice_gives_every_director_the_same_group():
    got = groups_of(compiled(HA))
    g = DirectorGroup(group_name(["d1", "d2"]), ("d1", "d2"), ("192.168.0.30",), default_sync_id(["d1", "d2"]))
    assert got == {"d1": (g,), "d2": (g,)}
    assert 1 <= g.sync_id <= 255


def test_labels_set_sync_id_device_preference_and_fail_back():
    labels = {**HA, "lvs.kube-lvs.io/sync-id": "9", "lvs.kube-lvs.io/sync-device": "eth1",
              "lvs.kube-lvs.io/preferred-director": "d2", "lvs.kube-lvs.io/fail-back": "true"}
    (g,) = groups_of(compiled(labels))["d1"]
    assert (g.sync_id, g.device, g.preferred, g.fail_back) == (9, "eth1", "d2", True)


def test_without_the_label_nothing_changes():
    r = compiled()
    assert all(not b["spec"].get("directorGroups") for b in r.nodestates.values())
    assert "activeDirector" not in r.vs_status[("team-a", "web")]


def with_held(r, holder: str) -> list[dict]:
    out = []
    for name, body in r.nodestates.items():
        node = body["spec"]["node"]
        if not body["spec"].get("directorAddresses"):
            continue
        o = {**body, "metadata": {**body["metadata"], "generation": 1},
             "status": {"observedGeneration": 1, "activeDirectors": [
                 {"address": "192.168.0.30", "director": holder, "held": node == holder}]}}
        out.append(o)
    return out


def test_status_names_the_holder_and_a_change_is_a_takeover_event():
    first = compiled(HA)
    r = compiled(HA, with_held(first, "d2"), status={"activeDirector": "d1"})
    assert r.vs_status[("team-a", "web")]["activeDirector"] == "d2"
    (ev,) = [e for e in r.events if e.reason == "Takeover"]
    assert ev.type == "Normal" and "held by d2 (was d1)" in ev.message
    same = compiled(HA, with_held(first, "d2"), status={"activeDirector": "d2"})
    assert not [e for e in same.events if e.reason == "Takeover"]


def with_claims(r, claims: dict[str, str | None]) -> list[dict]:
    """Every director's NodeState, those in ``claims`` saying they hold the
    VIP since the given time (None: an older agent that does not say)."""
    out = []
    for o in with_held(r, ""):
        node = o["spec"]["node"]
        row = {"address": "192.168.0.30", "director": node if node in claims else "", "held": node in claims}
        if claims.get(node):
            row["since"] = claims[node]
        out.append({**o, "status": {**o["status"], "activeDirectors": [row]}})
    return out


@pytest.mark.parametrize("claims, shown", [
    # d1 died holding the VIP (its last report stays), d2 took it over later
    ({"d1": "2026-12-04T10:00:00.000000Z", "d2": "2026-12-04T10:05:09.250000Z"}, "d2"),
    ({"d1": "2026-12-04T10:07:00.000000Z", "d2": "2026-12-04T10:05:09.250000Z"}, "d1"),
    # an agent that does not say when: both shown, as before
    ({"d1": None, "d2": "2026-12-04T10:05:09.250000Z"}, "d1,d2"),
    ({"d1": "2026-12-04T10:05:09.250000Z", "d2": "2026-12-04T10:05:09.250000Z"}, "d1,d2"),
    ({"d2": "2026-12-04T10:05:09.250000Z"}, "d2"),
    ({}, ""),
])
def test_the_latest_claim_is_the_holder(claims, shown):
    """Before: a dead holder's stale report kept it in activeDirector beside
    the director that took the VIP over ("d1,d2") for as long as it was down."""
    first = compiled(HA)
    r = compiled(HA, with_claims(first, claims), status={"activeDirector": shown})
    assert r.vs_status[("team-a", "web")]["activeDirector"] == shown


def test_crds_keep_the_new_fields():
    """A structural schema prunes what it does not declare: without these the
    API server would drop directorGroups and the statuses silently."""
    from lvs_operator.crdgen import nodestate_spec, nodestate_status, virtualservice_status
    assert "directorGroups" in nodestate_spec()["properties"]
    assert "activeDirectors" in nodestate_status()["properties"]
    assert "activeDirector" in virtualservice_status()["properties"]
