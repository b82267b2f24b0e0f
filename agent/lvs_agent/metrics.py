"""Prometheus metrics of the agent: IPVS counters per service and dest, health,
and the agent's own reconcile counts and durations.

Counters are read from the kernel at scrape time (a collector, not a cache),
so a scrape always shows the kernel's numbers, and only for the services this
agent programs: foreign IPVS services are not ours to report.

The endpoint has no authentication, and the agent runs on the host network:
it listens on 127.0.0.1 unless told otherwise (``--metrics-address``, env
KUBE_LVS_METRICS_ADDRESS). To scrape it from elsewhere, give the node's
InternalIP and protect the port (a NetworkPolicy, or a kube-rbac-proxy
sidecar in front of the loopback listener).

A scrape reads the kernel on a netlink socket of its own, never through the
engine (whose lock a reconcile holds), and it is linear in the number of
dests: the scrape must never hold back programming the kernel.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .verdicts import dest_health
from .ipvs_codec import IPVSTable
from .observe import read_ipvs

PREFIX = "kube_lvs"
DEFAULT_ADDRESS = "127.0.0.1"  # no authentication: exposing it is the user's deliberate choice
ADDRESS_ENV = "KUBE_LVS_METRICS_ADDRESS"

TableReader = Callable[[], IPVSTable]


def kernel_table(agent: Any) -> IPVSTable:
    """The whole IPVS table with counters, on a netlink socket of its own and
    without the engine's lock (``engine.table()`` takes it: a dump grows with
    the table, and a reconcile would wait for the scrape).
    Like the status thread's connection counts, the read pauses between
    slices while the agent programs a change."""
    return read_ipvs(getattr(agent.engine, "netns", None), with_stats=True,
                     pause=getattr(agent, "_yield_to_pass", None))


class AgentCollector(Collector):
    def __init__(self, agent: Any, read_table: TableReader | None = None):
        """``read_table``: where the kernel table comes from (default: kernel_table)."""
        self.agent = agent
        self.read_table = read_table or (lambda: kernel_table(agent))

    def collect(self) -> Iterable:
        a = self.agent
        yield CounterMetricFamily(f"{PREFIX}_reconciles", "Reconciles run by the agent", value=a.reconciles)
        yield CounterMetricFamily(f"{PREFIX}_reconcile_errors", "Reconciles that raised", value=a.reconcile_errors)
        yield GaugeMetricFamily(f"{PREFIX}_reconcile_last_duration_seconds", "Duration of the last reconcile",
                                value=a.last_duration)
        yield GaugeMetricFamily(f"{PREFIX}_nodestates", "NodeState objects this agent holds",
                                value=len(a.objects))
        yield GaugeMetricFamily(f"{PREFIX}_sweep_round_seconds",
                                "How long the last round of the drift sweep took (every service re-checked once)",
                                value=getattr(a, "sweep_round_seconds", 0.0))
        pauses = getattr(a, "gc", None)
        if pauses is not None:
            yield CounterMetricFamily(f"{PREFIX}_gc_slow_collections",
                                      "Garbage collections that held the interpreter 0.1 s or longer",
                                      value=pauses.slow)
            yield GaugeMetricFamily(f"{PREFIX}_gc_longest_pause_seconds",
                                    "The longest garbage collection so far", value=pauses.longest)
        status = getattr(a, "status", None)
        if status is not None:
            yield GaugeMetricFamily(f"{PREFIX}_status_writes_pending", "NodeState statuses waiting to be written",
                                    value=status.pending)
        if getattr(a, "ha", None) is not None:
            from .ha_agent import metrics as ha_metrics
            yield from ha_metrics(a.ha, PREFIX)
        if getattr(a, "bgp", None) is not None:
            from .bgp_speaker import metrics as bgp_metrics
            yield from bgp_metrics(a.bgp, PREFIX)
        yield from self._ipvs()

    def _ipvs(self) -> Iterable:
        from .nodestate import merge
        # The loop's last merge: a merge from scratch would parse every
        # object on every scrape.
        last = getattr(self.agent, "_merged", None)
        spec = last.spec if last is not None else merge(self.agent.objects, self.agent.node).spec
        try:
            table = self.read_table()
        except Exception:  # noqa: BLE001 - a scrape must never kill the agent
            return
        s_lbl = ["service"]
        d_lbl = ["service", "dest"]
        fam = {
            "svc_conns": CounterMetricFamily(f"{PREFIX}_service_connections", "Connections scheduled", labels=s_lbl),
            "svc_pkts": CounterMetricFamily(f"{PREFIX}_service_packets", "Packets", labels=s_lbl + ["direction"]),
            "svc_bytes": CounterMetricFamily(f"{PREFIX}_service_bytes", "Bytes", labels=s_lbl + ["direction"]),
            "svc_cps": GaugeMetricFamily(f"{PREFIX}_service_connections_per_second", "Kernel-estimated rate", labels=s_lbl),
            "svc_pps": GaugeMetricFamily(f"{PREFIX}_service_packets_per_second", "Kernel-estimated rate", labels=s_lbl + ["direction"]),
            "svc_bps": GaugeMetricFamily(f"{PREFIX}_service_bytes_per_second", "Kernel-estimated rate", labels=s_lbl + ["direction"]),
            "active": GaugeMetricFamily(f"{PREFIX}_dest_active_connections", "Active connections", labels=d_lbl),
            "inactive": GaugeMetricFamily(f"{PREFIX}_dest_inactive_connections", "Inactive connections", labels=d_lbl),
            "d_conns": CounterMetricFamily(f"{PREFIX}_dest_connections", "Connections scheduled", labels=d_lbl),
            "d_pkts": CounterMetricFamily(f"{PREFIX}_dest_packets", "Packets", labels=d_lbl + ["direction"]),
            "d_bytes": CounterMetricFamily(f"{PREFIX}_dest_bytes", "Bytes", labels=d_lbl + ["direction"]),
            "weight": GaugeMetricFamily(f"{PREFIX}_dest_weight", "Weight in the kernel", labels=d_lbl),
            "health": GaugeMetricFamily(f"{PREFIX}_dest_health", "1 for the dest's current health state",
                                        labels=d_lbl + ["state"]),
        }
        # One pass over the checker per scrape, then a dict or set lookup per
        # dest (a per-dest ``checker.checked`` scanned every check: O(dests²)).
        checker = self.agent.checker
        verdicts, checked = checker.verdicts, checker.checked_services()
        for svc in spec.services:
            k, name = svc.key, str(svc.key)
            st = table.service_stats.get(k)
            if st is not None:
                fam["svc_conns"].add_metric([name], st.conns)
                for dirn, pk, by, pps, bps in (("in", st.inpkts, st.inbytes, st.inpps, st.inbps),
                                                ("out", st.outpkts, st.outbytes, st.outpps, st.outbps)):
                    fam["svc_pkts"].add_metric([name, dirn], pk)
                    fam["svc_bytes"].add_metric([name, dirn], by)
                    fam["svc_pps"].add_metric([name, dirn], pps)
                    fam["svc_bps"].add_metric([name, dirn], bps)
                fam["svc_cps"].add_metric([name], st.cps)
            live = table.services.get(k)
            weights = {d.key: d.weight for d in live.dests} if live else {}
            for d in svc.dests:
                lbl = [name, str(d.key)]
                rt = table.dest_runtime.get((k, d.key))
                if rt is not None:
                    fam["active"].add_metric(lbl, rt.active)
                    fam["inactive"].add_metric(lbl, rt.inactive)
                    fam["d_conns"].add_metric(lbl, rt.stats.conns)
                    for dirn, pk, by in (("in", rt.stats.inpkts, rt.stats.inbytes),
                                         ("out", rt.stats.outpkts, rt.stats.outbytes)):
                        fam["d_pkts"].add_metric(lbl + [dirn], pk)
                        fam["d_bytes"].add_metric(lbl + [dirn], by)
                if d.key in weights:
                    fam["weight"].add_metric(lbl, weights[d.key])
                state = dest_health(d, verdicts.get((k, d.key)), k in checked)
                for s in ("Healthy", "Unhealthy", "Draining", "Unknown"):
                    fam["health"].add_metric(lbl + [s], 1.0 if s == state else 0.0)
        yield from fam.values()


def registry_for(agent: Any, read_table: TableReader | None = None) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(AgentCollector(agent, read_table))
    return reg


def serve(agent: Any, port: int, address: str = DEFAULT_ADDRESS) -> None:
    """Serve /metrics on ``address:port`` (module doc: why loopback by default)."""
    start_http_server(port, addr=address, registry=registry_for(agent))
