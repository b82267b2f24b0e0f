"""Drain-then-delete (drain.py), the pure core and its record.

Before drain.py the planner deleted a dest the moment it left the spec
(DelDest), whatever its connections: every test here that expects a leaving
dest to be kept at weight 0 fails on that code (there was no ``decide`` to
keep it, and ``plan`` alone gives a DelDest)."""
from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from lvs_agent import ops as O
from lvs_agent.drain import DrainStore, by_service, decide, leaving, merge_records
from lvs_agent.plan import plan_services
from lvs_agent.state import Ownership
from lvs_model.nodespec import Dest, DestKey, Service

NOW = 1_000_000.0
A, B, C = Dest("10.1.0.1", 80, 3), Dest("10.1.0.2", 80, 2), Dest("10.1.0.3", 80, 1)


def svc(*dests: Dest, timeout: int = 60, address: str = "10.0.0.1") -> Service:
    return Service(address=address, port=80, scheduler="rr", dests=tuple(dests), drain_timeout=timeout)


def owned_all(*services: Service) -> dict:
    return {s.key: {d.key for d in s.dests} for s in services}


def test_a_removed_dest_with_active_connections_drains_at_weight_zero():
    kernel = svc(A, B)
    want = svc(A)
    dec = decide([want], {kernel.key: kernel}, owned_all(kernel), {(kernel.key, B.key): 2}, {}, NOW)
    assert dec.services == (svc(A, replace(B, weight=0)),)
    assert dec.records == {(kernel.key, B.key): NOW}
    assert dec.zero == {(kernel.key, B.key)} and dec.delete == frozenset()
    # The planner then sets its weight to 0 and deletes nothing.
    p = plan_services(dec.services, {kernel.key: kernel}, Ownership({kernel.key}, owned_all(kernel)))
    assert p.ops == [O.SetDest(dec.services[0], replace(B, weight=0))]
    # Without the drain the same change was an immediate delete (the old behaviour).
    p_old = plan_services([want], {kernel.key: kernel}, Ownership({kernel.key}, owned_all(kernel)))
    assert p_old.ops == [O.DelDest(kernel.key, B.key)]


@pytest.mark.parametrize("timeout,active,started,kept", [
    (60, 2, None, True),  # starts draining now
    (60, 2, NOW - 59, True),  # within its timeout
    (60, 2, NOW - 60, False),  # timeout reached: goes though busy
    (60, 0, NOW - 1, False),  # drained: goes before its timeout
    (60, 0, None, False),  # idle from the start: never drains
    (0, 5, None, False),  # drainTimeout 0: at once
    (0, 5, NOW - 1, False),  # timeout lowered to 0 mid-drain: at once
    (60, None, NOW - 30, True),  # count not read: busy until the timeout
    (60, None, NOW - 61, False),
    (60, 2, NOW + 3600, True),  # clock set back: counted from now
])
def test_each_way_a_drain_ends_or_goes_on(timeout, active, started, kept):
    kernel = svc(A, B, timeout=timeout)
    want = svc(A, timeout=timeout)
    k = (kernel.key, B.key)
    counts = {} if active is None else {k: active}
    records = {} if started is None else {k: started}
    dec = decide([want], {kernel.key: kernel}, owned_all(kernel), counts, records, NOW)
    if kept:
        assert dec.services[0].dests == (A, replace(B, weight=0))
        assert dec.records == {k: min(started if started is not None else NOW, NOW)}
        assert dec.delete == frozenset()
    else:
        assert dec.services == (want,) and dec.records == {} and dec.delete == {k}


def test_only_owned_kernel_dests_of_staying_services_are_considered():
    kernel = svc(A, B, C)
    hand_made = C  # in the kernel, not in our record: never drained, never deleted
    own = {kernel.key: {A.key, B.key}}
    dec = decide([svc(A)], {kernel.key: kernel}, own, {(kernel.key, B.key): 1, (kernel.key, C.key): 1}, {}, NOW)
    assert [d.key for d in dec.services[0].dests] == [A.key, B.key]
    assert hand_made.key not in {d.key for s in dec.services for d in s.dests}
    # A service no longer desired: no drain, its dests go with it (the planner's DelService).
    gone = svc(A, B, address="10.0.0.9")
    assert leaving([svc(A)], {kernel.key: kernel, gone.key: gone}, {**own, **owned_all(gone)}) == \
        {(kernel.key, B.key): B}
    dec = decide([svc(A)], {gone.key: gone}, owned_all(gone), {(gone.key, B.key): 4},
                 {(gone.key, B.key): NOW - 1}, NOW)
    assert dec.records == {} and dec.services == (svc(A),)


def test_a_dest_back_in_the_spec_stops_draining_and_gets_its_weight():
    drained = svc(A, replace(B, weight=0))
    k = (drained.key, B.key)
    dec = decide([svc(A, B)], {drained.key: drained}, owned_all(drained), {k: 3}, {k: NOW - 5}, NOW)
    assert dec.records == {} and dec.services == (svc(A, B),)
    p = plan_services(dec.services, {drained.key: drained}, Ownership({drained.key}, owned_all(drained)))
    assert p.ops == [O.SetDest(svc(A, B), B)]


def test_an_already_zero_dest_keeps_draining_without_an_op():
    kernel = svc(A, replace(B, weight=0))
    k = (kernel.key, B.key)
    dec = decide([svc(A)], {kernel.key: kernel}, owned_all(kernel), {k: 1}, {k: NOW - 5}, NOW)
    assert dec.zero == frozenset() and dec.records == {k: NOW - 5}
    assert plan_services(dec.services, {kernel.key: kernel}, Ownership({kernel.key}, owned_all(kernel))).ops == []


def test_a_restart_keeps_the_start_and_deletes_at_the_original_deadline(tmp_path):
    """A drain's start read back from the record ends it at start + timeout,
    not a timeout after the restart; with the record lost it starts anew
    (never an early delete)."""
    kernel = svc(A, B, timeout=100)
    k = (kernel.key, B.key)
    store = DrainStore(tmp_path / "drain.json")
    first = decide([svc(A, timeout=100)], {kernel.key: kernel}, owned_all(kernel), {k: 1}, {}, NOW)
    store.save(first.records)
    # "Restart" 90 s later: the record says when it began.
    again = DrainStore(tmp_path / "drain.json").load()
    assert again == {k: NOW}
    mid = decide([svc(A, timeout=100)], {kernel.key: kernel}, owned_all(kernel), {k: 1}, again, NOW + 90)
    assert mid.records == {k: NOW}
    late = decide([svc(A, timeout=100)], {kernel.key: kernel}, owned_all(kernel), {k: 1}, again, NOW + 100)
    assert late.delete == {k}
    lost = decide([svc(A, timeout=100)], {kernel.key: kernel}, owned_all(kernel), {k: 1}, {}, NOW + 100)
    assert lost.records == {k: NOW + 100} and lost.delete == frozenset()


def test_store_round_trip_missing_and_corrupt(tmp_path):
    s6 = Service(family="ipv6", address="fd00::1", port=443, protocol="tcp")
    fw = Service(fwmark=7)
    recs = {(s6.key, DestKey("fd00::2", 443)): NOW, (fw.key, DestKey("10.1.0.1", 0)): NOW - 1.5}
    store = DrainStore(tmp_path / "d" / "drain.json")
    assert store.load() == {}
    store.save(recs)
    assert store.load() == recs
    assert json.loads(store.path.read_text())["version"] == 1
    store.path.write_text("{not json")
    assert store.load() == {}


def test_merge_records_replaces_only_the_decided_services():
    s1, s2 = svc(A), svc(A, address="10.0.0.2")
    old = {(s1.key, B.key): 1.0, (s2.key, B.key): 2.0}
    assert merge_records(old, {}, [s1.key]) == {(s2.key, B.key): 2.0}
    assert merge_records(old, {(s1.key, C.key): 3.0}, [s1.key]) == {(s2.key, B.key): 2.0, (s1.key, C.key): 3.0}
    assert by_service(old) == {s1.key: (B.key,), s2.key: (B.key,)}


# ---- every combination, against the rule stated independently ----------------------

DESTS = [Dest(f"10.1.0.{i}", 80, w) for i, w in zip(range(1, 5), (1, 0, 4, 2))]


@settings(max_examples=400, deadline=None)
@given(in_kernel=st.sets(st.integers(0, 3)), in_spec=st.sets(st.integers(0, 3)), mine=st.sets(st.integers(0, 3)),
       active=st.dictionaries(st.integers(0, 3), st.one_of(st.none(), st.integers(0, 3))),
       started=st.dictionaries(st.integers(0, 3), st.floats(NOW - 200, NOW + 50)),
       timeout=st.sampled_from([0, 1, 60, 300]))
def test_decide_holds_every_rule(in_kernel, in_spec, mine, active, started, timeout):
    kernel = svc(*(DESTS[i] for i in sorted(in_kernel)), timeout=timeout)
    want = svc(*(DESTS[i] for i in sorted(in_spec)), timeout=timeout)
    key = kernel.key
    own = {key: {DESTS[i].key for i in mine}}
    counts = {(key, DESTS[i].key): n for i, n in active.items() if n is not None}
    recs = {(key, DESTS[i].key): t for i, t in started.items()}
    dec = decide([want], {key: kernel}, own, counts, recs, NOW)
    out = {d.key: d for d in dec.services[0].dests}
    for i in range(4):
        d, k = DESTS[i], (key, DESTS[i].key)
        if i in in_spec:  # desired: untouched
            assert out[d.key] == d and k not in dec.records and k not in dec.delete
            continue
        if i not in in_kernel or i not in mine:  # nothing of ours to drain
            assert d.key not in out and k not in dec.records and k not in dec.delete
            continue
        start = min(recs.get(k, NOW), NOW)
        busy = counts.get(k, 1) > 0
        if timeout and busy and NOW - start < timeout:
            assert out[d.key] == replace(d, weight=0) and dec.records[k] == start and k not in dec.delete
            assert (k in dec.zero) == (d.weight != 0)
        else:
            assert d.key not in out and k in dec.delete and k not in dec.records
    # The planner on the result: draining dests are never deleted, drained ones always.
    kern_own = Ownership({key}, own)
    ops = plan_services(dec.services, {key: kernel}, kern_own).ops
    deleted = {op.dest for op in ops if isinstance(op, O.DelDest)}
    assert deleted == {k[1] for k in dec.delete}
    assert not deleted & {k[1] for k in dec.records}


def test_every_small_case_matches_the_hypothesis_rule():
    """The same rule over every (active, record, timeout) of one leaving dest."""
    kernel = svc(A, B)
    k = (kernel.key, B.key)
    for active, started, timeout in itertools.product((None, 0, 1), (None, NOW - 400, NOW - 10, NOW + 10),
                                                      (0, 20, 300)):
        s = replace(kernel, drain_timeout=timeout)
        dec = decide([svc(A, timeout=timeout)], {s.key: s}, owned_all(s), {} if active is None else {k: active},
                     {} if started is None else {k: started}, NOW)
        start = NOW if started is None else min(started, NOW)
        expect_drain = timeout > 0 and (active is None or active > 0) and NOW - start < timeout
        assert (k in dec.records) == expect_drain, (active, started, timeout)
        assert (k in dec.delete) == (not expect_drain)
