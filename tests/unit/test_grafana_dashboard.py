"""deploy/grafana/kube-lvs.json and README's PromQL examples use only metrics
the agent exports, under the names Prometheus sees (a counter gets
``_total``), and the dashboard shows what users ask for. Failed before: there
was neither a dashboard nor a ```promql block."""
import json
import re
from pathlib import Path

from lvs_agent import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "kube-lvs.json").read_text())


def exported() -> set[str]:
    """Metric names as scraped, from the families metrics.py yields."""
    src = Path(metrics.__file__).read_text()
    found = re.findall(r'(Counter|Gauge)MetricFamily\(f"\{PREFIX\}_(\w+)"', src)
    assert len(found) > 15  # the scan works
    return {f"{metrics.PREFIX}_{name}" + ("_total" if kind == "Counter" else "") for kind, name in found}


def exprs() -> list[str]:
    return [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]


def readme_promql() -> list[str]:
    block = re.search(r"```promql\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def names(expr: str) -> set[str]:
    return set(re.findall(r"\bkube_lvs_\w+", expr))


def test_dashboard_and_readme_use_exported_metrics_only():
    have = exported()
    for expr in exprs() + readme_promql():
        assert names(expr) and names(expr) <= have, (expr, names(expr) - have)


def test_dashboard_shows_traffic_health_and_reconciles():
    used = set().union(*map(names, exprs()))
    for metric in ("service_connections_total", "service_packets_total", "service_bytes_total",
                   "dest_connections_total", "dest_bytes_total", "dest_active_connections", "dest_health",
                   "dest_weight", "reconcile_last_duration_seconds", "reconcile_errors_total"):
        assert f"kube_lvs_{metric}" in used, metric
    assert any("changes(kube_lvs_dest_health" in e for e in exprs())  # health flips
    assert any("by (service, dest" in e for e in exprs())  # per real server


def test_dashboard_is_importable():
    """Grafana's import needs a uid, panels with targets, and the Prometheus
    data source as a variable (so it works whatever the user's is named)."""
    assert DASHBOARD["uid"] and DASHBOARD["title"] == "kube-lvs"
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for p in DASHBOARD["panels"]:
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
        assert {"h", "w", "x", "y"} <= set(p["gridPos"])
