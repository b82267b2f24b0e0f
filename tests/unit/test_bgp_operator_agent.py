"""Active-active in the agent: the loop runs the BGP speaker after each pass
on the merged spec of the operator's NodeStates, writes each VIP's decision
into the status of the NodeStates that carry it, and exports the sessions
as metrics.

Each fails before the change: the agent had no speaker (``Agent.bgp``), no
``status.bgp`` and no BGP metrics.
"""
from __future__ import annotations

import asyncio

from prometheus_client import generate_latest

from lvs_agent.main import Agent, bgp_status
from lvs_agent.metrics import registry_for
from lvs_agent.ipvs_codec import IPVSTable
from lvs_model.nodespec import parse_node_spec

from test_agent_incremental import FakeApi, FakeEngine, settled
from test_bgp_bird import FakeBird, speaker
from test_bgp_operator import bgp_of, compiled, web
from test_metrics import FakeAgent, FakeEngine as MetricsEngine


def director_objects(r, node_name: str) -> dict[str, dict]:
    return {n: {**b, "metadata": {**b["metadata"], "generation": 1}} for n, b in r.nodestates.items()
            if b["spec"]["node"] == node_name}


def agent_with_speaker(tmp_path, objects):
    fake = FakeBird()
    a = Agent("d1", "kube-lvs-system", FakeEngine(), FakeApi(), tmp_path / "cache.json", resync=30.0)
    a.objects = objects
    a.bgp = speaker(tmp_path, fake)
    a._touch()
    return a, fake


def test_the_loop_announces_the_operators_vips_and_reports_them_per_nodestate(tmp_path):
    r = compiled([web(scheduler="mh"), web(name="api", address="192.168.0.31", scheduler="mh")])
    objs = director_objects(r, "d1")
    a, fake = agent_with_speaker(tmp_path, objs)

    async def go():
        await settled(a, full=True)
    asyncio.run(go())
    conf = (tmp_path / "state" / "bird.conf").read_text()
    assert "192.168.0.30/32" in conf and "192.168.0.31/32" in conf
    assert fake.calls[0].startswith("bird -f")
    web_status = objs["d1-team-a-web"]["status"]["bgp"]
    assert [(v["address"], v["announced"], v["reason"]) for v in web_status["vips"]] == [
        ("192.168.0.30", True, "Announced")]  # its own VIP only, not api's
    assert [p["address"] for p in web_status["peers"]] == ["10.0.0.254"]


def test_a_drained_nodestate_withdraws_and_says_drained(tmp_path):
    before = compiled()
    from test_bgp_operator import as_current, without_d2_label
    r = compiled(nodes=without_d2_label(), nodestates=as_current(before))
    objs = {n: {**b, "spec": {**b["spec"], "node": "d1"}, "metadata": {**b["metadata"], "generation": 1}}
            for n, b in r.nodestates.items() if b["spec"]["node"] == "d2"}
    a, fake = agent_with_speaker(tmp_path, objs)

    async def go():
        await settled(a, full=True)
    asyncio.run(go())
    assert "192.168.0.30/32" not in (tmp_path / "state" / "bird.conf").read_text()
    (v,) = objs["d2-team-a-web"]["status"]["bgp"]["vips"]
    assert (v["announced"], v["reason"]) == (False, "Drained")


def test_bgp_status_marks_an_undecided_vip_pending():
    (part,) = bgp_of(compiled())["d1"]
    spec = parse_node_spec(compiled().nodestates["d1-team-a-web"]["spec"])[0]
    assert part.vips == ("192.168.0.30",)
    out = bgp_status(spec, {})
    assert out == {"vips": [{"address": "192.168.0.30", "announced": False, "reason": "Pending",
                             "message": "the BGP speaker has not decided yet"}], "peers": []}


def test_metrics_carry_the_sessions_and_the_announcements(tmp_path):
    fake = FakeBird()
    s = speaker(tmp_path, fake)
    spec = parse_node_spec(compiled().nodestates["d1-team-a-web"]["spec"])[0]
    s.after_pass(spec, None)
    agent = FakeAgent(MetricsEngine(IPVSTable()), {})
    agent.bgp = s
    text = generate_latest(registry_for(agent, lambda: IPVSTable())).decode()
    assert 'kube_lvs_bgp_vip_announced{reason="Announced",vip="192.168.0.30"} 1.0' in text
    assert 'kube_lvs_bgp_session_up{peer="10.0.0.254"' in text


def test_a_director_without_bgp_never_starts_bird(tmp_path):
    """A plain VirtualService's NodeStates: the speaker stays idle (no bird, no status.bgp)."""
    r = compiled([web(labels=None)])
    objs = director_objects(r, "d1")
    a, fake = agent_with_speaker(tmp_path, objs)

    async def go():
        await settled(a, full=True)
    asyncio.run(go())
    assert fake.calls == [] and "bgp" not in objs["d1-team-a-web"]["status"]
