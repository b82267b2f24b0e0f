"""The agent's copy of its NodeStates on disk: what it programs when it starts
while the API server is away (adds and updates only, `reconcile_from_cache`)."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Callable

from lvs_model.nodespec import NodeSpec

from . import ops as O
from .plan import Plan, claim


def slim(obj: dict) -> dict:
    """The object without managedFields, most of its bytes and never read back."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {**obj, "metadata": meta}


class ObjectCache:
    """One JSON file of name -> object, written whole and replaced atomically.

    Each object is serialised once per version and the file is joined from those
    texts: ``json.dumps`` of the whole map holds the interpreter lock for the
    whole call, a time that grows with the objects, and a change to program
    would wait for it. Serialising object by object lets the other threads run
    between objects, and an unchanged object costs a comparison."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        # name -> (the object, its status, its resourceVersion, its '"name": {...}' text). The
        # references are kept so that ``is`` can tell an object (or a status the
        # agent wrote into it) is the same one, never a new one at a reused id.
        self._texts: dict[str, tuple[dict, Any, Any, str]] = {}

    def load(self) -> dict[str, dict] | None:
        """The cached objects; None when there is no usable file."""
        try:
            objects = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return objects if isinstance(objects, dict) else None

    # Objects between two calls of save's ``pause``: a slice short next to a
    # change's pass, long enough that the calls themselves cost nothing.
    PAUSE_EVERY = 256

    def save(self, objects: dict[str, dict], pause: Callable[[], object] | None = None) -> None:
        """``pause``: called every PAUSE_EVERY objects; it may wait (the agent's
        waits while a change is programmed: both need the interpreter)."""
        with self._lock:
            texts: dict[str, tuple[dict, Any, Any, str]] = {}
            for i, (name, obj) in enumerate(list(objects.items())):
                if pause is not None and i % self.PAUSE_EVERY == 0:
                    pause()
                status, rv = obj.get("status"), (obj.get("metadata") or {}).get("resourceVersion")
                old = self._texts.get(name)
                if old is not None and old[0] is obj and old[1] is status and old[2] == rv:
                    texts[name] = old
                else:
                    texts[name] = (obj, status, rv, f"{json.dumps(name)}: {json.dumps(slim(obj))}")
            self._texts = texts
            body = "{" + ", ".join(t[3] for t in texts.values()) + "}"
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(body)
            os.replace(tmp, self.path)


# What a pass programmed from the cache alone leaves out: every op that
# removes or undoes something (a drained dest is a removal too, and a
# replaced SNAT table drops the rules of services the cache does not list).
_REMOVALS = (O.DelService, O.DelDest, O.DelAddress, O.DelLink, O.DelFouPort, O.DelGreCsum, O.DelRule,
             O.DelRoute, O.DelNftTable)


def additive(p: Plan) -> Plan:
    """``p`` with only its adds and updates.

    The cache can be older than the ownership record: it is written every few
    seconds, the record before every apply. A service created after the last
    cache write is owned but not in the cache, and a full reconcile from the
    cache alone would delete it (and its VIP, its dests...) while the API
    server, once it answers, still wants it. Until the first list has come,
    nothing is removed; the first full reconcile after it removes what the
    API server no longer has."""
    keep = [op for op in p.ops
            if not isinstance(op, _REMOVALS) and not getattr(op, "restore", False)
            and not (isinstance(op, O.SetLinkUp) and not op.up)
            and not (isinstance(op, O.ReplaceNftTable) and not op.create)]
    return Plan(keep, dict(p.problems))


def reconcile_from_cache(engine: Any, spec: NodeSpec) -> Any:
    """The engine's full reconcile (plan, claim, save, apply, settle, save)
    with an `additive` plan: the agent's pass before its first list (an
    engine.Report)."""
    from .engine import build_report
    with engine._lock:
        p, obs, owned, uplink = engine.plan(spec)
        p = additive(p)
        results = engine._claim_apply_settle(p, owned, claim(owned, p, obs, spec, uplink))
    return build_report(spec, p, results, uplink)
