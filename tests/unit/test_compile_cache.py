"""compile_cache: the compiler's memo is an object its caller owns, and changes nothing but speed."""
from __future__ import annotations

import copy

from lvs_operator.compile_cache import NO_CACHE, CompileCache
from lvs_operator.compiler import compile_cluster
from lvs_operator.shards import ANNOTATION_SHARD, UNSHARDED_MAX

from test_compiler import NODES, POOLS, rs, vs


def _cluster(n_vs: int = 3, n_rs: int = 4, dests: int = 0):
    vss = [vs(f"web{i}", address=f"192.168.0.{10 + i}", port=80) for i in range(n_vs)]
    rss = [rs(f"web{i}-{j}", f"web{i}", f"10.0.{i}.{j + 1}", weight=j + 1) for i in range(n_vs) for j in range(n_rs)]
    # one sharded VirtualService: the shard digests go through the cache too
    vss.append(vs("big", address="192.168.0.99", port=80))
    rss += [rs(f"big-{j}", "big", f"10.9.{j // 250}.{j % 250 + 1}") for j in range(dests)]
    for i, o in enumerate(vss + rss):
        o["metadata"]["uid"] = f"uid-{i}"
        o["metadata"]["resourceVersion"] = str(i + 1)
    return vss, rss


def _compile(vss, rss, cache=NO_CACHE):
    return compile_cluster(copy.deepcopy(vss), copy.deepcopy(rss), POOLS, NODES, now="T", cache=cache)


def test_two_compilations_with_one_cache_equal_uncached_ones():
    vss, rss = _cluster(dests=UNSHARDED_MAX + 5)
    plain = _compile(vss, rss)
    assert any(ANNOTATION_SHARD in b["metadata"]["annotations"] for b in plain.nodestates.values())
    cache = CompileCache()
    first, second = _compile(vss, rss, cache), _compile(vss, rss, cache)
    assert len(cache) > 0  # it did remember
    for cached in (first, second):
        assert cached.nodestates == plain.nodestates
        assert cached.vs_status == plain.vs_status and cached.rs_status == plain.rs_status
        assert cached.events == plain.events
    # an edit (a new resourceVersion) is compiled anew, as without the cache
    rss[0]["spec"]["weight"] = 7
    rss[0]["metadata"]["resourceVersion"] = "999"
    assert _compile(vss, rss, cache).nodestates == _compile(vss, rss).nodestates != plain.nodestates


def test_the_cache_is_bounded():
    cache = CompileCache(max_parsed=5, max_calls=7)
    vss, rss = _cluster(n_vs=6, n_rs=5)
    for _ in range(3):
        _compile(vss, rss, cache)
    assert len(cache._parsed) <= 5
    assert all(f.cache_info().currsize <= 7 for f in cache._calls.values())
    assert cache.memo(("rs", "", ""), lambda: object()) is not cache.memo(("rs", "", ""), lambda: object())


def test_no_cache_remembers_nothing():
    calls = []

    def f(x):
        calls.append(x)
        return x
    assert NO_CACHE.calls(f) is f
    NO_CACHE.memo(("vs", "u", "1"), lambda: calls.append("m"))
    NO_CACHE.memo(("vs", "u", "1"), lambda: calls.append("m"))
    assert calls == ["m", "m"] and len(NO_CACHE) == 0
