"""What the compiler may remember between passes, owned by whoever calls it.

The compiler is pure: every call with ``NO_CACHE`` (its default) starts from
nothing. A long-lived caller (the Reconciler) passes one ``CompileCache`` to
every pass: between two passes almost nothing changed, and parsing objects
and rendering node specs is most of a pass's work.

- ``memo(key, compute)``: a parsed object by ``(kind, uid, resourceVersion,
  ...)``. Both change with every write, so a hit is always the same input; a
  key without them (an object never stored, as in unit tests) is computed anew.
- ``calls(fn)``: ``fn`` with its results remembered by argument, for pure
  functions of hashable arguments (a frozen NodeSpec's document, an
  address's sort key, a dest's shard digest).

Both are bounded, so memory follows the cluster's size, not the process's age.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

# Parsed objects kept: room for every VirtualService and RealServer of a large
# cluster (several per object: its parse, its dest under each owner), so a
# steady cluster re-parses nothing; past it, all are dropped and re-parsed once.
MAX_PARSED = 400_000
# Results kept per remembered function: the distinct specs or addresses of a
# pass at scale; least recently used go first.
MAX_CALLS = 1 << 17


class CompileCache:
    def __init__(self, max_parsed: int = MAX_PARSED, max_calls: int = MAX_CALLS):
        self.max_parsed, self.max_calls = max_parsed, max_calls
        self._parsed: dict[tuple, Any] = {}
        self._calls: dict[Callable, Callable] = {}

    def memo(self, key: tuple, compute: Callable[[], Any]) -> Any:
        if not all(key[1:]):
            return compute()
        hit = self._parsed.get(key)
        if hit is None:
            if len(self._parsed) >= self.max_parsed:
                self._parsed.clear()
            hit = self._parsed[key] = compute()
        return hit

    def calls(self, fn: F) -> F:
        wrapped = self._calls.get(fn)
        if wrapped is None:
            wrapped = self._calls[fn] = functools.lru_cache(maxsize=self.max_calls)(fn)
        return wrapped  # type: ignore[return-value]

    def __len__(self) -> int:
        """Entries held: parsed objects plus remembered results."""
        return len(self._parsed) + sum(f.cache_info().currsize for f in self._calls.values())


class _NoCache(CompileCache):
    """Remembers nothing: every call computes."""

    def __init__(self) -> None:
        super().__init__(0, 0)

    def memo(self, key: tuple, compute: Callable[[], Any]) -> Any:
        return compute()

    def calls(self, fn: F) -> F:
        return fn


NO_CACHE: CompileCache = _NoCache()
