"""The operator's own writes that the watch has not shown yet.

A pass that runs before the watch echoes the previous pass's writes would
plan them again: every object written is kept here (by its resourceVersion)
and laid over the caches' snapshot until the caches hold that version or a
newer one. The echo itself, when it comes, is recognised as ours
(``is_echo``), so it wakes no pass of its own.

Thread-safe: the status writer's threads note their writes too.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping

from .objects import compact, project
from .scope import SCOPED_KINDS, Ref, without_status
from .write_plan import same_nodestate

Key = tuple[str, str, str]  # (plural, namespace, name)

# How long a write of ours outweighs the caches at most: far longer than a
# watch takes to echo a write, so only a watch that missed it (and relisted)
# lets an entry expire; the caches are then the truth.
TTL = 30.0


def resource_version(obj: Mapping[str, Any] | None) -> int | None:
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion"))
    except (TypeError, ValueError):
        return None


def share(echo: dict, written: Mapping[str, Any]) -> None:
    """The watch's echo of our write keeps our spec object (equal, so the
    same content): the caches then hold no second copy of what we wrote."""
    spec = written.get("spec")
    if spec is not None and echo.get("spec") is not spec and echo.get("spec") == spec:
        echo["spec"] = spec


class Overlay:
    def __init__(self, ttl: float = TTL, clock: Callable[[], float] = time.monotonic):
        self.ttl, self.clock = ttl, clock
        # key -> (projected object, or None: deleted by us; when noted)
        self.entries: dict[Key, tuple[dict | None, float]] = {}
        # Statuses being written, key -> status: their echo may arrive before the write returns.
        self.sending: dict[Key, dict] = {}
        # NodeStates being created or replaced, key -> body sent: their echo too may beat the answer.
        self.putting: dict[Key, Mapping[str, Any]] = {}
        self.writes = 0  # objects written since start
        self.lock = threading.Lock()

    def note(self, plural: str, obj: dict | None, namespace: str, name: str) -> None:
        """An object just written (None: deleted)."""
        with self.lock:
            self.entries[(plural, namespace, name)] = (compact(plural, project(plural, obj)) if obj is not None
                                                       else None, self.clock())
            self.writes += 1

    def forget(self, key: Key) -> None:
        """Deleted in the API: its word is newer than any write of ours the
        watch has not shown yet (a status written just before the delete).
        Kept, that write would put the object back into every snapshot until
        it expired, and its NodeStates would outlive it."""
        with self.lock:
            self.entries.pop(key, None)

    def sending_begin(self, key: Key, value: dict) -> None:
        with self.lock:
            self.sending[key] = value

    def sending_end(self, key: Key, value: dict) -> None:
        with self.lock:
            if self.sending.get(key) is value:
                del self.sending[key]

    def putting_begin(self, key: Key, body: Mapping[str, Any]) -> None:
        with self.lock:
            self.putting[key] = body

    def putting_end(self, key: Key, body: Mapping[str, Any]) -> None:
        with self.lock:
            if self.putting.get(key) is body:
                del self.putting[key]

    def is_echo(self, key: Key, old: dict | None, new: dict | None) -> bool:
        """Whether ``new`` is exactly what we wrote: the object held here
        (same resourceVersion), or, when the echo beats the writer thread's
        note of it, the status being written and nothing else changed, or the
        NodeState being put, its status as it was. Unrecognised, an echo
        would make the next pass recompile what this one just wrote (and,
        after a first pass, plan every status still queued a second time)."""
        if new is None:
            return False
        with self.lock:
            mine = self.entries.get(key)
            if (mine is not None and mine[0] is not None and (rv := resource_version(new)) is not None
                    and resource_version(mine[0]) == rv):
                share(new, mine[0])
                return True
            sent = self.sending.get(key)
            if (sent is not None and old is not None and new.get("status") == sent
                    and without_status(old) == without_status(new)):
                del self.sending[key]
                return True
            body = self.putting.get(key)
            if (body is not None and same_nodestate(body, new)
                    and (new.get("status") or {}) == ((old or {}).get("status") or {})):
                share(new, body)
                return True
        return False

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
            self.sending.clear()
            self.putting.clear()

    def apply(self, snap: dict[str, dict], caches: Mapping[str, Mapping[tuple[str, str], dict]],
              scope: set[Ref] | None) -> None:
        """Lay our writes over ``snap`` (kind -> key -> object, taken from
        ``caches``), dropping those the caches have caught up with or that
        expired; for a ``scope``, only writes to objects in it."""
        now = self.clock()
        with self.lock:
            for (plural, ns, name), (obj, at) in list(self.entries.items()):
                objs = snap[plural]
                cached = (caches.get(plural) or {}).get((ns, name))
                expired = now - at > self.ttl
                if obj is None:  # deleted by us
                    if cached is None or expired:
                        del self.entries[(plural, ns, name)]
                    else:
                        objs.pop((ns, name), None)
                    continue
                rv_o, rv_c = resource_version(obj), resource_version(cached)
                if expired or rv_o is None or (rv_c is not None and rv_c >= rv_o):
                    del self.entries[(plural, ns, name)]
                elif scope is None or plural not in SCOPED_KINDS or SCOPED_KINDS[plural](obj) in scope:
                    objs[(ns, name)] = obj
