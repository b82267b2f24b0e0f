"""A small JSON record in the agent's state directory (drain starts, health
verdicts): replaced atomically, so a crash mid-write leaves the previous
record; a missing or unreadable one reads as empty (each record's owner says
why empty is the safe reading)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class JsonRecord(Generic[T]):
    def __init__(self, path: str | os.PathLike, parse: Callable[[Any], T], dump: Callable[[T], Any],
                 empty: Callable[[], T]):
        self.path = Path(path)
        self._parse, self._dump, self._empty = parse, dump, empty

    def load(self) -> T:
        try:
            return self._parse(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return self._empty()
        except (ValueError, TypeError, KeyError, AttributeError):
            return self._empty()

    def save(self, value: T) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.stem}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self._dump(value), separators=(",", ":")))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


__all__ = ["JsonRecord"]
