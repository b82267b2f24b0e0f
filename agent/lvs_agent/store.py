"""This node's NodeStates: the list+watch, the object cache file, and which
objects changed since the last pass.

Objects a LIST shows unchanged keep their dicts (and so their parse: the
merge reuses a parse while the spec mapping is the very same), and an event
or a listed object that changes nothing but status keeps its old spec
mapping. The cache file only ever seeds the objects before the first list: a
list that finished first stands (the watch resumes from its version, so an
object the list no longer has would never be deleted again).
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

from lvs_kube.informer import CustomObjects, Informer
from lvs_model.channel import GROUP, NODESTATE_PLURAL, VERSION

from .nodestate import node_selector
from .object_cache import ObjectCache

log = logging.getLogger("lvs-agent")

# Seconds between two writes of the cache file at most: it is the whole map
# (megabytes at 10k objects), and a restart reading objects that much older
# relists anyway; the stop flushes what is newer.
CACHE_EVERY = 5.0


class NodeStates:
    """The objects (name -> dict), filled by the informer's thread.

    ``wake()``: a pass is due; ``forget(name)``: the object is new or gone,
    so what was last written as its status says nothing (None: every object's);
    ``stopped()``: the watch ends."""

    def __init__(self, api: object, namespace: str, node: str, cache_path: Path, *,
                 wake: Callable[[], None], forget: Callable[[str | None], None], stopped: Callable[[], bool]):
        self.cache_path = cache_path
        self.cache = ObjectCache(cache_path)
        self.wake, self.forget = wake, forget
        self.objects: dict[str, dict] = {}
        self.synced = False
        # Programming from the cache file alone: no list since the start. Such
        # passes add and update only (object_cache.additive), one per resync.
        self.from_cache = False
        self._lock = threading.Lock()  # the first list against a cache load
        # Statuses to rebuild: objects the watch changed (None: all of them).
        self._dirty: set[str] | None = None
        self._dirty_lock = threading.Lock()
        self.cache_dirty, self.cache_saved = False, 0.0
        self.cache_thread: threading.Thread | None = None
        source = CustomObjects(api, GROUP, VERSION, namespace, NODESTATE_PLURAL, node_selector(node))
        self.informer = Informer(source, self._listed, self._event, stopped, name=NODESTATE_PLURAL)

    # -- changes ---------------------------------------------------------------
    def touch(self, name: str | None = None) -> None:
        """Mark an object's status for rebuilding (None: every object's)."""
        with self._dirty_lock:
            if name is None or self._dirty is None:
                self._dirty = None
            else:
                self._dirty.add(name)

    def take_dirty(self) -> set[str] | None:
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
            return dirty

    # -- the watch (the informer's thread) ---------------------------------------
    def run(self) -> None:
        self.informer.run()

    def relist(self) -> str:
        """List this node's objects now; the resourceVersion to watch from."""
        return self.informer.list()

    def _listed(self, items: list[dict]) -> None:
        first = not self.synced
        fresh: dict[str, dict] = {}
        changed: list[str] = []
        for o in items:
            name = o["metadata"]["name"]
            old = self.objects.get(name)
            if old is not None and (old.get("metadata") or {}).get("resourceVersion") == o["metadata"].get(
                    "resourceVersion"):
                fresh[name] = old
                continue
            fresh[name] = o
            if old is not None and only_status_changed(old, o):
                o["spec"] = old.get("spec")
                continue
            changed.append(name)
        changed += [n for n in self.objects if n not in fresh]
        with self._lock:
            self.objects = fresh
            self.synced, self.from_cache = True, False
        if first:
            self.forget(None)
            self.touch()
        for name in changed:
            self.forget(name)
            self.touch(name)
        self.save_cache()
        self.wake()

    def _event(self, ev: dict) -> None:
        obj, kind = ev["object"], ev["type"]
        name = obj["metadata"]["name"]
        before = self.objects.get(name)
        if kind == "DELETED":
            self.objects.pop(name, None)
        else:
            self.objects[name] = obj
        if kind != "MODIFIED":  # gone, or a new object of that name
            self.forget(name)
        if kind != "DELETED" and only_status_changed(before, obj):
            # Our own status write coming back: nothing to program. Keeping
            # the equal spec mapping keeps its parse (nodestate.parse_object).
            obj["spec"] = before.get("spec")
            return
        self.touch(name)
        self.cache_dirty = True  # written by the loop's cache thread, never before the wake
        self.wake()

    # -- the cache file ------------------------------------------------------------
    def load_cache(self) -> None:
        """Seed the objects from the cache file, only before the first list."""
        cached = self.cache.load()
        if cached is None:
            return
        with self._lock:
            if self.synced:
                return
            self.objects, self.synced, self.from_cache = cached, True, True
        log.info("API server unreachable at start: using %d cached objects", len(cached))

    def save_cache(self, now: bool = True, pause: Callable[[], object] | None = None) -> None:
        """Write the objects for a start without the API server; ``now=False``:
        only if the last write is CACHE_EVERY old (the loop writes the rest);
        ``pause``: see ObjectCache.save."""
        self.cache_dirty = True
        if not now and time.monotonic() - self.cache_saved < CACHE_EVERY:
            return
        self.cache_dirty = False
        self.cache_saved = time.monotonic()
        self.cache.save(self.objects, pause)

    def save_cache_soon(self, pause: Callable[[], object] | None = None) -> None:
        """The loop's cache write, in a thread of its own: a change never waits for it."""
        if self.cache_thread is not None and self.cache_thread.is_alive():
            return
        self.cache_thread = threading.Thread(target=self.save_cache, daemon=True, kwargs={"pause": pause})
        self.cache_thread.start()

    def flush_cache(self) -> None:
        """On the way out (SIGTERM): what the watch changed since the last
        write, so a restart never reads objects up to CACHE_EVERY old."""
        if self.cache_thread is not None:
            self.cache_thread.join()
        if self.cache_dirty:
            self.save_cache()

    def until_cache(self) -> float:
        """Seconds until the cache file may be written again."""
        return max(0.0, CACHE_EVERY - (time.monotonic() - self.cache_saved))


def only_status_changed(old: dict | None, new: dict) -> bool:
    """Whether a watch event changes nothing but status (and bookkeeping)."""
    if old is None:
        return False
    skip = ("resourceVersion", "managedFields")
    meta = lambda o: {k: v for k, v in (o.get("metadata") or {}).items() if k not in skip}  # noqa: E731
    return old.get("spec") == new.get("spec") and meta(old) == meta(new)


__all__ = ["CACHE_EVERY", "NodeStates", "only_status_changed"]
