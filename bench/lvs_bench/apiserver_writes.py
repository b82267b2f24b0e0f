"""The writes a phase made, by the API server's own count, and the floor they
imply (pure).

A time such as "statuses settled" means little alone: it is as good as its
distance from what the API server itself needs for the writes the system
issued. The count comes from ``apiserver_request_total`` (every request the
server answered, by resource, subresource and verb), so it sees the operator's
and the agent's writes alike without listing any object; the floor is each
kind's count times the seconds one write of that kind takes when a plain
client sends nothing but those writes.
"""
from __future__ import annotations

import copy
import re
from typing import Any, Mapping

GROUP = "lvs.kube-lvs.io"
WRITE_VERBS = ("POST", "PUT", "PATCH", "APPLY")
Key = tuple[str, str, str]  # (resource, subresource or "", verb)

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def request_counts(metrics: str, group: str = GROUP) -> dict[Key, int]:
    """(resource, subresource, verb) -> requests of ``group`` answered 2xx so far."""
    out: dict[Key, int] = {}
    for line in metrics.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_text, _, value = line.rpartition("} ")
        labels = dict(_LABEL.findall(labels_text))
        if labels.get("group") != group or not labels.get("code", "").startswith("2"):
            continue
        key = (labels.get("resource", ""), labels.get("subresource", ""), labels.get("verb", ""))
        out[key] = out.get(key, 0) + int(float(value))
    return out


def writes_between(before: Mapping[Key, int], after: Mapping[Key, int],
                   resources: tuple[str, ...]) -> dict[Key, int]:
    """The writes (creates, updates, patches; of the objects or their status) of
    ``resources`` answered between two counts; kinds with none left out."""
    out = {}
    for key, n in after.items():
        resource, _, verb = key
        d = n - before.get(key, 0)
        if resource in resources and verb in WRITE_VERBS and d > 0:
            out[key] = d
    return dict(sorted(out.items()))


def label(key: Key) -> str:
    """'virtualservices/status PATCH', 'nodestates POST'."""
    resource, sub, verb = key
    return f"{resource}/{sub} {verb}" if sub else f"{resource} {verb}"


def altered_status(status: Mapping[str, Any]) -> dict:
    """``status`` with its observedGeneration (a field every kind's status
    schema keeps) changed, or set when absent: a real write, not a no-op the
    API server answers without storing."""
    out = copy.deepcopy(dict(status))
    gen = out.get("observedGeneration")
    out["observedGeneration"] = gen + 1 if isinstance(gen, int) else 1
    return out


def floor_seconds(counts: Mapping[Key, int], samples: Mapping[Key, tuple[int, float]]) -> float | None:
    """Sum over kinds of count x (seconds / writes) of that kind's sample; None
    when a counted kind has no sample."""
    total = 0.0
    for key, n in counts.items():
        sampled = samples.get(key)
        if not sampled or sampled[0] <= 0:
            return None
        total += n * sampled[1] / sampled[0]
    return total


def by_kind(counts: Mapping[Key, int]) -> dict[str, int]:
    """The table's columns: creates of VirtualServices and RealServers, status
    writes of each kind, NodeState writes (create, replace, patch), total."""
    def n(pred) -> int:
        return sum(v for k, v in counts.items() if pred(*k))
    return {
        "creates": n(lambda r, s, v: r in ("virtualservices", "realservers") and not s),
        "vs_status": n(lambda r, s, v: r == "virtualservices" and s == "status"),
        "rs_status": n(lambda r, s, v: r == "realservers" and s == "status"),
        "ns_status": n(lambda r, s, v: r == "nodestates" and s == "status"),
        "ns_writes": n(lambda r, s, v: r == "nodestates" and not s),
        "writes": sum(counts.values()),
    }
