"""The agent's copy of its NodeStates on disk: what it programs when it starts
while the API server is away."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Callable


def slim(obj: dict) -> dict:
    """The object without managedFields, most of its bytes and never read back."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {**obj, "metadata": meta}


class ObjectCache:
    """One JSON file of name -> object, written whole and replaced atomically.

    Each object is serialised once per version and the file is joined from those
    texts: ``json.dumps`` of the whole map holds the interpreter lock for the
    whole call, seconds at 10k objects in a slow VM, and a change to program
    waited for it. Serialising object by object lets the other threads run
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

    PAUSE_EVERY = 256  # objects between two calls of save's ``pause``

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
