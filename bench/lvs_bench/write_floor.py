"""The API server's floor for a set of counted writes: the same kinds of write,
of the same objects' bodies, sent by a plain client from a thread pool as fast
as the server takes them.

Nothing else may write meanwhile, or the floor would include its writes: the
operator (on the host) and the director's agent (in the VM) are stopped
(SIGSTOP) for the length of it and continued after. Every change is undone
before they continue: a status or object write is followed by one restoring
it (both counted as writes: they are the same kind), and the copies a create
makes are deleted (not timed).
"""
from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from lvs_model.channel import LABEL_NODE

from . import apiserver_writes as W

VERSION = "v1alpha1"

FLOOR_PREFIX = "bench-floor-"
ANNOTATION = "bench.kube-lvs.io/floor"
DROP_META = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation")
# Pool sizes tried on the largest kind; the fastest is used for all of them.
THREADS = (4, 8, 16)
# Writes per pool size tried: enough that opening the pool's connections is a small share.
PROBE = 240

Task = Callable[[], int]  # one unit of work run by one thread; returns the writes it made


def _path(plural: str, ns: str, name: str = "", sub: str = "") -> str:
    return f"/namespaces/{quote(ns)}/{plural}" + (f"/{quote(name)}" if name else "") + (f"/{sub}" if sub else "")


def _bare(obj: dict) -> dict:
    """The object as a client sends it: no server-set metadata, no status."""
    meta = {k: v for k, v in obj["metadata"].items() if k not in DROP_META}
    return {**{k: v for k, v in obj.items() if k not in ("metadata", "status")}, "metadata": meta}


def tasks_for(key: W.Key, objs: list[dict], n: int, ns: str, raw: Any, made: list[tuple[str, str]]) -> list[Task]:
    """Tasks making ``n`` writes (rounded up to a pair but for creates) of kind
    ``key`` on ``objs``: one task per object, its writes in order (a replace
    names the version it replaces)."""
    from lvs_kube.status_patch import JSON_PATCH, MERGE_PATCH
    plural, sub, verb = key
    if not objs:
        raise ValueError(f"no {plural} to write")
    if verb == "POST" and not sub:
        def create(o: dict) -> Task:
            body = _bare(o)
            body["metadata"] = {**body["metadata"], "name": f"{FLOOR_PREFIX}{len(made)}"}
            labels = body["metadata"].get("labels") or {}
            if LABEL_NODE in labels:  # a NodeState copy: no agent's (a node of that name never runs one)
                body["metadata"]["labels"] = {**labels, LABEL_NODE: f"{FLOOR_PREFIX}node"}
            made.append((plural, body["metadata"]["name"]))

            def run() -> int:
                raw.request("POST", _path(plural, ns), body)
                return 1
            return run
        return [create(objs[i % len(objs)]) for i in range(n)]
    pairs = (n + 1) // 2
    per_obj = [pairs // len(objs) + (1 if i < pairs % len(objs) else 0) for i in range(min(pairs, len(objs)))]

    def status_pairs(o: dict, k: int) -> Task:
        name, status = o["metadata"]["name"], o.get("status") or {}
        changed = W.altered_status(status)

        def run() -> int:
            for value in (changed, status) * k:
                raw.patch(plural, ns, name, [{"op": "add", "path": "/status", "value": value}], JSON_PATCH)
            return 2 * k
        return run

    def put_pairs(o: dict, k: int) -> Task:
        name = o["metadata"]["name"]

        def run() -> int:
            rv = o["metadata"]["resourceVersion"]
            for change in (True, False) * k:
                body = _bare(o)
                body["metadata"]["resourceVersion"] = rv
                if sub == "status":
                    body["status"] = W.altered_status(o.get("status") or {}) if change else o.get("status")
                else:
                    notes = dict(body["metadata"].get("annotations") or {})
                    if change:
                        notes[ANNOTATION] = "1"
                    body["metadata"]["annotations"] = notes
                answer = raw.request("PUT", _path(plural, ns, name, sub), body)
                rv = json.loads(answer)["metadata"]["resourceVersion"]
            return 2 * k
        return run

    def patch_pairs(o: dict, k: int) -> Task:
        """A PATCH of the object itself (an APPLY too: sent as the same merge
        patch): an annotation set, then removed."""
        name = o["metadata"]["name"]

        def run() -> int:
            for value in ("1", None) * k:
                raw.request("PATCH", _path(plural, ns, name, sub),
                            {"metadata": {"annotations": {ANNOTATION: value}}}, MERGE_PATCH)
            return 2 * k
        return run
    make = status_pairs if sub == "status" and verb == "PATCH" else put_pairs if verb == "PUT" else patch_pairs
    return [make(o, k) for o, k in zip(objs, per_obj)]


def timed(tasks: list[Task], threads: int) -> tuple[int, float]:
    """(writes, seconds) of running ``tasks`` from ``threads`` threads."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        n = sum(ex.map(lambda t: t(), tasks))
    return n, time.perf_counter() - t0


class Paused:
    """The operator and the director's agent stopped (SIGSTOP) inside the block."""

    def __init__(self, system: Any, director: str):
        self.system, self.director = system, director
        self.guest_pids: list[str] = []

    def __enter__(self) -> "Paused":
        op = self.system.operator
        if op is not None:
            os.kill(op.pid, signal.SIGSTOP)
        r = self.system.ctl.run(["pgrep", "-f", f"lvs-agent .*--node {self.director}( |$)"])
        self.guest_pids = r.out.split()
        if self.guest_pids:
            self.system.ctl.run(["kill", "-STOP", *self.guest_pids]).check()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.guest_pids:
            self.system.ctl.run(["kill", "-CONT", *self.guest_pids])
        op = self.system.operator
        if op is not None:
            os.kill(op.pid, signal.SIGCONT)


def measure(system: Any, kubeconfig: Path, counts: dict[W.Key, int], namespaces: dict[str, str],
            select: dict[str, Callable[[dict], bool]], sample: int, director: str) -> dict:
    """The floor of ``counts`` (kind -> writes): each kind's writes (at most
    ``sample`` of them, the floor then scaled up by count / sample) at the
    fastest of THREADS threads. ``namespaces``: plural -> namespace of its
    objects; ``select``: plural -> which of them to write."""
    from kubernetes import client, config

    from lvs_kube.status_patch import StatusPatcher
    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    raw, co = StatusPatcher(api_client), client.CustomObjectsApi(api_client)

    def objects(plural: str) -> list[dict]:
        r = co.list_namespaced_custom_object(W.GROUP, VERSION, namespaces[plural], plural, _preload_content=False)
        keep = select.get(plural, lambda o: True)
        return [o for o in json.loads(r.data).get("items", [])
                if keep(o) and not o["metadata"]["name"].startswith(FLOOR_PREFIX)]

    def delete(item: tuple[str, str]) -> None:
        plural, name = item
        try:
            co.delete_namespaced_custom_object(W.GROUP, VERSION, namespaces[plural], plural, name)
        except client.exceptions.ApiException as e:
            if e.status != 404:  # a create that failed
                raise

    made: list[tuple[str, str]] = []
    out: dict[str, Any] = {"sample": sample, "kinds": {}}
    try:
        with Paused(system, director):
            biggest = max(counts, key=counts.__getitem__)
            def rate(threads: int) -> float:
                tasks = tasks_for(biggest, objects(biggest[0]), min(counts[biggest], PROBE),
                                  namespaces[biggest[0]], raw, made)
                n, secs = timed(tasks, threads)
                return round(n / secs, 1)
            rate(max(THREADS))  # opens the connections: not a probe
            probe = {threads: rate(threads) for threads in THREADS}
            best = max(probe, key=probe.__getitem__)
            out.update(probe_kind=W.label(biggest), probe_rates=probe, threads=best)
            samples: dict[W.Key, tuple[int, float]] = {}
            for key, count in counts.items():
                objs = objects(key[0])
                n, secs = timed(tasks_for(key, objs, min(count, sample), namespaces[key[0]], raw, made), best)
                samples[key] = (n, secs)
                out["kinds"][W.label(key)] = {"count": count, "sampled": n, "seconds": round(secs, 3),
                                              "rate": round(n / secs, 1), "floor_s": round(count * secs / n, 2),
                                              "body_bytes": _body_bytes(key, objs)}
            out["floor_s"] = W.floor_seconds(counts, samples)
            with ThreadPoolExecutor(8) as ex:  # the copies the creates made (not timed)
                list(ex.map(delete, made))
            made.clear()
    finally:
        for item in made:  # after a failure: whatever is left
            try:
                delete(item)
            except Exception:  # noqa: BLE001 - best effort
                pass
    return out


def _body_bytes(key: W.Key, objs: list[dict]) -> int:
    """Mean size of what one write of ``key`` sends (its JSON), over the objects written."""
    part = (lambda o: o.get("status") or {}) if key[1] == "status" else _bare
    return sum(len(json.dumps(part(o), separators=(",", ":"))) for o in objs) // max(1, len(objs))
