"""Metrics exposition from a kernel table (the table is built in memory here;
the kernel tier and e2e scrape the real thing)."""
from prometheus_client import generate_latest

from lvs_agent.health import DestHealth, HealthChecker
from lvs_agent.metrics import registry_for
from lvs_agent.observe import DestRuntime, IPVSTable, Stats
from lvs_model.nodespec import Dest, Service


class FakeEngine:
    def __init__(self, table):
        self._t = table

    def table(self, with_stats=False):
        return self._t


class FakeAgent:
    def __init__(self, engine, objects):
        self.engine, self.objects, self.node = engine, objects, "d1"
        self.reconciles, self.reconcile_errors, self.last_duration = 3, 1, 0.25
        self.checker = HealthChecker()


def test_exposition_has_conventional_names_and_values():
    svc = Service(address="192.168.0.30", port=80, dests=(Dest("10.0.0.51", 80, weight=2),))
    foreign = Service(address="10.96.0.1", port=443)
    table = IPVSTable(services={svc.key: svc, foreign.key: foreign},
                      service_stats={svc.key: Stats(conns=9, inpkts=50, inbytes=5000, cps=2),
                                     foreign.key: Stats(conns=1)},
                      dest_runtime={(svc.key, svc.dests[0].key): DestRuntime(active=4, inactive=5, stats=Stats(conns=9))})
    objs = {"d1-a-web": {"metadata": {"name": "d1-a-web"}, "spec": {"services": [
        {"address": "192.168.0.30", "port": 80, "healthCheck": {"type": "tcp"},
         "dests": [{"address": "10.0.0.51", "weight": 2}]}]}}}
    agent = FakeAgent(FakeEngine(table), objs)
    agent.checker._tasks[(svc.key, svc.dests[0].key)] = (None, None)  # mark as checked
    agent.checker.verdicts[(svc.key, svc.dests[0].key)] = DestHealth("Unhealthy")
    text = generate_latest(registry_for(agent)).decode()
    assert "kube_lvs_reconciles_total 3.0" in text
    assert 'kube_lvs_service_connections_total{service="tcp:192.168.0.30:80"} 9.0' in text
    assert 'kube_lvs_dest_active_connections{dest="10.0.0.51:80",service="tcp:192.168.0.30:80"} 4.0' in text
    assert 'kube_lvs_dest_health{dest="10.0.0.51:80",service="tcp:192.168.0.30:80",state="Unhealthy"} 1.0' in text
    assert 'kube_lvs_service_bytes_total{direction="in",service="tcp:192.168.0.30:80"} 5000.0' in text
    assert "10.96.0.1" not in text  # foreign services are not ours to report
