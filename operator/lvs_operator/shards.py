"""A large VirtualService's NodeState split in shards (pure).

One NodeState per (node, VirtualService) carries every dest of the service.
At 10k endpoints that object is about 2 MB with the agent's status, over
etcd's 1.5 MiB request limit, and a change to one endpoint rewrote all of it
(and the agent re-parsed all of it). Above ``UNSHARDED_MAX`` dests the
service's dests are spread over ``k`` NodeStates per node (k a power of
two) by a stable hash of the dest's address and port: one endpoint change
rewrites the one shard holding it, about ``SHARD_DESTS`` dests.

- ``UNSHARDED_MAX`` is the most endpoints one EndpointSlice may hold (the
  API's own cap on one object of this kind): up to it, one NodeState exactly
  as before, so small services see no change and an upgrade writes nothing.
- Every shard carries the whole service (its attributes) with its own dests,
  and the node-level fields (director address, sysctls, groups, backend
  VIPs); reply routes follow their dest's bucket. The agent merges the
  shards of one service back (``lvs_agent.nodestate``): objects naming the
  same VirtualService (annotation) and declaring the same service are its
  shards.
- k doubles (each bucket splits in two: the hash is taken modulo k) when the
  service outgrows it and shrinks only when it is a quarter too big, so a
  rolling update's surge around a boundary does not flip k back and forth
  (each flip rewrites every shard once).
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Callable

from lvs_model import channel as C
from lvs_model.nodespec import NodeSpec

UNSHARDED_MAX = 1000
SHARD_DESTS = 250  # the average a shard holds right after k grows: ~25 KB of spec, ~40 KB of status
ANNOTATION_SHARD = f"{C.GROUP}/shard"  # "i/k" on each shard; absent on an unsharded NodeState
_NAME_MAX = 253


def _pow2_for(n: int) -> int:
    k = 2
    while k * SHARD_DESTS < n:
        k *= 2
    return k


def shard_count(n: int, current: int = 1) -> int:
    """How many shards a service of ``n`` dests gets, given the count it has
    now (``current``, 1 when unsharded or new)."""
    if current <= 1:
        return 1 if n <= UNSHARDED_MAX else _pow2_for(n)
    if n <= UNSHARDED_MAX // 2:
        return 1
    want = _pow2_for(n)
    return want if want > current or want * 4 <= current else current


def _digest(address: str, port: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{address}/{port}".encode(), digest_size=4).digest(), "big")


def bucket(address: str, port: int, k: int, digest: Callable[[str, int], int] = _digest) -> int:
    """The shard of a dest (or reply route): the same on every node and in
    every process (never Python's salted hash). ``digest``: ``_digest``, or
    the same remembered by a caller's cache (compile_cache)."""
    return digest(address, port) % k


def split(spec: NodeSpec, k: int, digest: Callable[[str, int], int] = _digest) -> list[NodeSpec]:
    """``spec`` as ``k`` shards: each service with the dests of its bucket
    (possibly none: the shard still declares the service, so the names stay
    put), the reply routes of its bucket, every other field whole."""
    if k <= 1:
        return [spec]
    dests = [[[] for _ in spec.services] for _ in range(k)]
    for si, svc in enumerate(spec.services):
        for d in svc.dests:
            dests[bucket(d.address, d.port, k, digest)][si].append(d)
    routes: list[list] = [[] for _ in range(k)]
    for r in spec.reply_routes:
        routes[bucket(r.address, r.port, k, digest)].append(r)
    return [replace(spec, services=tuple(replace(s, dests=tuple(dests[i][si])) for si, s in enumerate(spec.services)),
                    reply_routes=tuple(routes[i]))
            for i in range(k)]


def shard_name(base: str, i: int, k: int) -> str:
    """``<base>.<i>-of-<k>``: k in the name, so a new count writes new objects
    (created before the old are deleted: the agent sees every dest
    throughout) instead of reusing a name for another bucket."""
    return f"{base}.{i}-of-{k}"


def fits(name: str) -> bool:
    return len(name) <= _NAME_MAX


def current_count(annotations: dict) -> int:
    """The k an existing NodeState's shard annotation names (1: unsharded or unreadable)."""
    _, sep, k = str(annotations.get(ANNOTATION_SHARD) or "").partition("/")
    try:
        return max(1, int(k)) if sep else 1
    except ValueError:
        return 1


__all__ = ["ANNOTATION_SHARD", "SHARD_DESTS", "UNSHARDED_MAX", "bucket", "current_count", "fits", "shard_count",
           "shard_name", "split"]
