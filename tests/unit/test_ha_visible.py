"""Director HA made visible: ``lvsctl list --daemon`` prints the sync daemons
as ``ipvsadm -L --daemon`` does; the agent's metrics carry takeovers, owned
VIPs and the sync daemons it runs.

Each fails before the change: lvsctl had no --daemon, the metrics no
director families.
"""
from __future__ import annotations

from prometheus_client import generate_latest

from lvs_agent import ipvs_config
from lvs_agent import lvsctl as L
from lvs_agent.ha_agent import HaController
from lvs_agent.ipvs_sync import SyncDaemon
from lvs_agent.metrics import registry_for
from lvs_agent.ipvs_codec import IPVSTable

from test_metrics import FakeAgent, FakeEngine


def test_lvsctl_list_daemon_prints_ipvsadms_lines(monkeypatch, capsys):
    running = [SyncDaemon("master", "eth0", 5, 1472, "224.0.0.81", 8848, 1),
               SyncDaemon("backup", "eth0", 5, 1472, "224.0.0.81", 8848, 1)]
    monkeypatch.setattr(L, "_require_root", lambda: None)
    monkeypatch.setattr(ipvs_config, "with_connection", lambda netns, conn, fn: running)
    assert L.main(["list", "--daemon"]) == 0
    assert capsys.readouterr().out == (
        "master sync daemon (mcast=eth0, syncid=5, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n"
        "backup sync daemon (mcast=eth0, syncid=5, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n")


def test_metrics_carry_takeovers_owned_vips_and_sync_daemons():
    agent = FakeAgent(FakeEngine(IPVSTable()), {})
    agent.ha = HaController(None, lambda d, v: None)
    agent.ha.takeovers, agent.ha.held = 3, frozenset({"10.0.0.1", "10.0.0.2"})
    agent.ha.daemons = [SyncDaemon("master", "eth0", 5)]
    text = generate_latest(registry_for(agent, lambda: IPVSTable())).decode()
    assert "kube_lvs_director_takeovers_total 3.0" in text
    assert "kube_lvs_director_owned_vips 2.0" in text
    assert 'kube_lvs_sync_daemon{device="eth0",state="master",syncid="5"} 1.0' in text


def test_no_director_metrics_without_ha():
    text = generate_latest(registry_for(FakeAgent(FakeEngine(IPVSTable()), {}), lambda: IPVSTable())).decode()
    assert "director_takeovers" not in text
