"""Metrics exposition from a kernel table (the table is built in memory here;
the kernel tier and e2e scrape the real thing)."""
import threading

import pytest
from prometheus_client import generate_latest

from lvs_agent import main as agent_main
from lvs_agent import metrics as M
from lvs_agent.health import HealthChecker
from lvs_agent.verdicts import DestHealth
from lvs_agent.metrics import registry_for
from lvs_agent.ipvs_codec import DestRuntime, IPVSTable, Stats
from lvs_model.nodespec import Dest, Service


class FakeEngine:
    """Like the real engine: ``table()`` reads under the lock reconciles hold."""

    def __init__(self, table):
        self._t = table
        self._lock = threading.Lock()
        self.netns = None

    def table(self, with_stats=False):
        with self._lock:
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
    agent.checker._checked[svc.key] = 1  # mark as checked
    agent.checker.verdicts[(svc.key, svc.dests[0].key)] = DestHealth("Unhealthy")
    text = generate_latest(registry_for(agent, lambda: table)).decode()
    assert "kube_lvs_reconciles_total 3.0" in text
    assert 'kube_lvs_service_connections_total{service="tcp:192.168.0.30:80"} 9.0' in text
    assert 'kube_lvs_dest_active_connections{dest="10.0.0.51:80",service="tcp:192.168.0.30:80"} 4.0' in text
    assert 'kube_lvs_dest_health{dest="10.0.0.51:80",service="tcp:192.168.0.30:80",state="Unhealthy"} 1.0' in text
    assert 'kube_lvs_service_bytes_total{direction="in",service="tcp:192.168.0.30:80"} 5000.0' in text
    assert "10.96.0.1" not in text  # foreign services are not ours to report


def web_objects(n_services: int, n_dests: int) -> dict:
    return {"d1-a-web": {"metadata": {"name": "d1-a-web"}, "spec": {"services": [
        {"address": "192.168.0.30", "port": 1000 + i, "healthCheck": {"type": "tcp"},
         "dests": [{"address": f"10.0.{j // 250}.{j % 250 + 1}"} for j in range(n_dests)]}
        for i in range(n_services)]}}}


def test_scrape_completes_while_a_reconcile_holds_the_engine_lock():
    """The old scrape read through ``engine.table()``, which takes the engine's
    lock: a scrape waited for a reconcile (and every reconcile for a scrape of
    a 10k-service table). Now it reads on a socket of its own, lock-free."""
    table = IPVSTable()
    engine = FakeEngine(table)
    agent = FakeAgent(engine, web_objects(2, 2))
    done = threading.Event()
    with engine._lock:  # a reconcile in progress in another thread
        t = threading.Thread(target=lambda: (generate_latest(registry_for(agent, lambda: table)), done.set()),
                             daemon=True)
        t.start()
        t.join(10)
        assert done.is_set(), "the scrape waited for the engine's lock"


def test_default_reader_uses_a_socket_of_its_own_not_the_engine(monkeypatch):
    """``kernel_table`` reads through observe.read_ipvs without the engine's
    connection (conn) and without its lock, in the engine's namespace, and
    pauses like the other background reads."""
    calls = []

    def fake_read(netns, **kw):
        calls.append((netns, kw))
        return IPVSTable()
    monkeypatch.setattr(M, "read_ipvs", fake_read)
    engine = FakeEngine(IPVSTable())
    engine.netns = "director"
    agent = FakeAgent(engine, web_objects(1, 1))
    agent._yield_to_pass = lambda: None
    with engine._lock:
        text = generate_latest(registry_for(agent)).decode()
    assert "kube_lvs_dest_health" in text
    assert calls == [("director", {"with_stats": True, "pause": agent._yield_to_pass})]


class CountingChecker:
    """A checker keeping one entry per checked dest, counting every entry any
    of its lookups visits (the cost model of HealthChecker's task table)."""

    def __init__(self, keys):
        self.keys, self.verdicts, self.visits = list(keys), {}, 0

    def checked(self, skey):
        for k in self.keys:
            self.visits += 1
            if k[0] == skey:
                return True
        return False

    def checked_services(self):
        self.visits += len(self.keys)
        return {k[0] for k in self.keys}


def test_health_lookup_is_linear_in_dests(monkeypatch):
    """With 40 services x 50 dests, a per-dest scan of the checks (the old
    ``checker.checked(k)`` in the loop) visits ~2 million entries per scrape;
    a scrape must visit each check a bounded number of times."""
    from lvs_agent.nodestate import merge
    agent = FakeAgent(FakeEngine(IPVSTable()), web_objects(40, 50))
    spec = merge(agent.objects, agent.node).spec
    keys = [(s.key, d.key) for s in spec.services for d in s.dests]
    assert len(keys) == 2000
    agent.checker = CountingChecker(keys)
    monkeypatch.setattr(M, "read_ipvs", lambda *a, **kw: IPVSTable(), raising=False)
    text = generate_latest(registry_for(agent)).decode()
    assert text.count('state="Unknown"} 1.0') == 2000  # checked, no verdict yet
    assert agent.checker.visits <= 2 * len(keys)


def test_metrics_listen_on_loopback_by_default(monkeypatch, capsys):
    """The endpoint has no authentication and the agent is on the host
    network: 0.0.0.0 by default published every node's IPVS table."""
    served = []
    monkeypatch.setattr(M, "start_http_server", lambda port, addr, registry: served.append((port, addr)))
    M.serve(FakeAgent(FakeEngine(IPVSTable()), {}), 9477)
    assert served == [(9477, "127.0.0.1")]
    monkeypatch.delenv("KUBE_LVS_METRICS_ADDRESS", raising=False)
    assert "(default 127.0.0.1" in _agent_help(capsys)
    monkeypatch.setenv("KUBE_LVS_METRICS_ADDRESS", "10.1.2.3")
    assert "(default 10.1.2.3" in _agent_help(capsys)


def _agent_help(capsys) -> str:
    with pytest.raises(SystemExit):
        agent_main.main(["--help"])
    return " ".join(capsys.readouterr().out.split())
