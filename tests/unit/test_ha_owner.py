"""VIP ownership in a director group (lvs_agent.ha_owner): rendezvous ranking,
stickiness (no fail-back by default), hand-over without two holders, health
give-up, the frozen member list, Lease expiry on the local clock.

Each test fails on the code before the change: there was no ha_owner module
(every selected director held every VIP, so every "exactly one holder"
assertion below would have counted all of them).
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from lvs_agent.ha_owner import LeaseTracker, Member, Policy, decide, owner, ranked, takeovers, weight

VIPS = [f"10.{i // 250}.{i % 250}.1" for i in range(1000)]


def members(*names: str, held: dict[str, set[str]] | None = None,
            unserved: dict[str, set[str]] | None = None) -> dict[str, Member]:
    held, unserved = held or {}, unserved or {}
    return {n: Member(n, "t0", 15.0, frozenset(held.get(n, ())), frozenset(unserved.get(n, ()))) for n in names}


def owners(live, vips=VIPS, policy=Policy()) -> dict[str, str | None]:
    return {v: owner(v, live, policy) for v in vips}


class Group:
    """Directors running ``decide`` in synchronous rounds, each reading the
    Leases the others published the round before (what the API server shows)."""

    def __init__(self, names, vips, policy=Policy()):
        self.vips = {v: policy for v in vips}
        self.held = {n: frozenset() for n in names}
        self.up = set(names)
        self.unserved: dict[str, set[str]] = {}
        self.holders_seen: list[dict[str, int]] = []

    def leases(self):
        return {n: Member(n, "t", 15.0, self.held[n], frozenset(self.unserved.get(n, ())))
                for n in sorted(self.up)}

    def round(self):
        view = self.leases()
        self.held = {n: (decide(n, self.vips, view, h) if n in self.up else frozenset())
                     for n, h in self.held.items()}
        self.holders_seen.append({v: sum(v in h for h in self.held.values()) for v in self.vips})

    def settle(self, rounds=4):
        for _ in range(rounds):
            self.round()
        return self

    def holder(self, vip):
        return [n for n, h in self.held.items() if vip in h]

    def never_two(self):
        return all(c <= 1 for seen in self.holders_seen for c in seen.values())


def test_weight_is_the_same_in_every_process():
    """hash() is salted per process: two agents would disagree. blake2b is not."""
    code = "from lvs_agent.ha_owner import weight; print(weight('10.0.0.1', 'node-a'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PYTHONPATH": ":".join(sys.path)})
    assert int(other.stdout) == weight("10.0.0.1", "node-a")
    assert weight("10.0.0.1", "node-a") != weight("10.0.0.1", "node-b")


def test_vips_are_spread_over_the_directors():
    got = owners(members("a", "b", "c"))
    counts = {d: sum(o == d for o in got.values()) for d in "abc"}
    assert all(c > len(VIPS) / 6 for c in counts.values()), counts  # no idle director


def test_a_director_leaving_moves_only_its_own_vips():
    before = owners(members("a", "b", "c", "d"))
    after = owners(members("a", "b", "d"))
    moved = {v for v in VIPS if before[v] != after[v]}
    assert moved == {v for v in VIPS if before[v] == "c"}
    assert all(after[v] != "c" for v in VIPS)


def test_a_director_joining_takes_only_vips_it_now_ranks_first_for():
    before = owners(members("a", "b", "c", "d"))
    after = owners(members("a", "b", "c", "d", "e"))
    moved = {v for v in VIPS if before[v] != after[v]}
    assert moved and all(after[v] == "e" for v in moved)
    assert len(moved) < len(VIPS) / 2  # about 1/5, never a reshuffle


def test_sticky_holders_a_joining_director_moves_nothing_without_fail_back():
    g = Group("abc", VIPS[:60]).settle()
    before = dict(g.held)
    g.held["d"] = frozenset()
    g.up.add("d")
    g.settle()
    assert {n: g.held[n] for n in before} == before and g.held["d"] == frozenset()


def test_every_vip_has_exactly_one_holder_and_never_two():
    g = Group("abc", VIPS[:60]).settle()
    assert all(len(g.holder(v)) == 1 for v in g.vips)
    assert g.never_two()


def test_holder_dies_its_vips_move_to_the_survivors_and_only_those():
    g = Group("abc", VIPS[:60]).settle()
    was = {v: g.holder(v)[0] for v in g.vips}
    g.up.discard("b")
    g.settle()
    now = {v: g.holder(v)[0] for v in g.vips}
    assert all(now[v] == was[v] for v in g.vips if was[v] != "b")
    assert all(now[v] in "ac" for v in g.vips if was[v] == "b")
    assert g.never_two()


def test_preferred_director_holds_its_vips_when_fresh():
    g = Group("abc", VIPS[:30], Policy(preferred="c")).settle()
    assert all(g.holder(v) == ["c"] for v in g.vips)


def test_no_fail_back_by_default_when_the_preferred_director_returns():
    g = Group("abc", VIPS[:30], Policy(preferred="c")).settle()
    g.up.discard("c")
    g.held["c"] = frozenset()
    g.settle()
    moved_to = {v: g.holder(v)[0] for v in g.vips}
    assert set(moved_to.values()) <= {"a", "b"}
    g.up.add("c")
    g.settle()
    assert {v: g.holder(v)[0] for v in g.vips} == moved_to  # nothing moves twice


def test_fail_back_hands_over_to_the_preferred_director_without_two_holders():
    policy = Policy(preferred="c", fail_back=True)
    g = Group("abc", VIPS[:30], policy).settle()
    g.up.discard("c")
    g.held["c"] = frozenset()
    g.settle()
    g.up.add("c")
    g.settle()
    assert all(g.holder(v) == ["c"] for v in g.vips)
    assert g.never_two()


def test_a_director_without_healthy_servers_for_a_vip_gives_it_up():
    g = Group("ab", VIPS[:20]).settle()
    vip = VIPS[0]
    first = g.holder(vip)[0]
    g.unserved[first] = {vip}
    g.settle()
    assert g.holder(vip) == [other for other in "ab" if other != first]
    assert g.never_two()


def test_a_vip_nobody_can_serve_is_still_held_by_one():
    live = members("a", "b", unserved={"a": {"v"}, "b": {"v"}})
    assert owner("v", live) == ranked("v", "ab")[0]


def test_two_claimants_after_a_partition_heals_the_better_ranked_keeps_it():
    best, second = ranked("v", "ab")
    live = members("a", "b", held={"a": {"v"}, "b": {"v"}})
    assert decide(best, {"v": Policy()}, live, frozenset({"v"})) == {"v"}
    assert decide(second, {"v": Policy()}, live, frozenset({"v"})) == frozenset()


def test_a_vip_claimed_by_another_live_director_is_not_taken_even_when_ranked_first():
    """Fail-back waits for the holder to let go: never two holders on purpose."""
    best, second = ranked("v", "ab")
    live = members("a", "b", held={second: {"v"}})
    assert decide(best, {"v": Policy(fail_back=True)}, live, frozenset()) == frozenset()
    assert decide(second, {"v": Policy(fail_back=True)}, live, frozenset({"v"})) == frozenset()


def test_a_director_outside_the_vips_group_never_holds_it():
    live = members("a", "b", "c")
    policy = Policy(group=frozenset("ab"))
    assert {owner(v, live, policy) for v in VIPS[:100]} <= {"a", "b"}
    assert decide("c", {v: policy for v in VIPS[:100]}, live, frozenset()) == frozenset()


def test_a_director_whose_own_lease_expired_holds_nothing():
    assert decide("a", {"v": Policy()}, members("b"), frozenset({"v"})) == frozenset()


def test_frozen_member_list_keeps_what_is_held_and_takes_nothing():
    vips = {"v1": Policy(), "v2": Policy()}
    assert decide("a", vips, {}, frozenset({"v1"}), frozen=True) == {"v1"}


def test_frozen_director_drops_a_vip_another_director_announced():
    vips = {"v1": Policy(), "v2": Policy()}
    got = decide("a", vips, {}, frozenset({"v1", "v2"}), frozen=True, announced_by_others=frozenset({"v2"}))
    assert got == {"v1"}


def test_takeovers_are_the_newly_held():
    assert takeovers(frozenset({"a", "b"}), frozenset({"b", "c"})) == {"c"}


class TestLeaseTracker:
    def test_expiry_counts_from_when_this_agent_saw_the_lease_change(self):
        t = LeaseTracker()
        t.observe([Member("a", "2020-01-01T00:00:00Z", 10.0)], now=100.0)  # an old clock on a's node
        assert set(t.live(105.0)) == {"a"}
        t.observe([Member("a", "2020-01-01T00:00:00Z", 10.0)], now=108.0)  # unchanged: not renewed
        assert set(t.live(111.0)) == set()
        t.observe([Member("a", "2020-01-01T00:00:03Z", 10.0)], now=112.0)  # renewed
        assert set(t.live(121.0)) == {"a"}

    def test_after_an_unreadable_list_every_lease_counts_as_freshly_seen(self):
        """API server away for longer than a Lease: a director is not declared
        dead the moment reads resume, before it could renew."""
        t = LeaseTracker()
        t.observe([Member("a", "r1", 10.0), Member("b", "r1", 10.0)], now=0.0)
        t.unreadable()
        assert t.frozen
        t.observe([Member("a", "r1", 10.0), Member("b", "r1", 10.0)], now=120.0)
        assert not t.frozen and set(t.live(121.0)) == {"a", "b"}
        t.observe([Member("a", "r2", 10.0), Member("b", "r1", 10.0)], now=125.0)
        assert set(t.live(131.0)) == {"a"}

    def test_a_deleted_lease_is_gone_at_once(self):
        t = LeaseTracker()
        t.observe([Member("a", "r1", 10.0), Member("b", "r1", 10.0)], now=0.0)
        t.observe([Member("a", "r1", 10.0)], now=1.0)
        assert set(t.live(2.0)) == {"a"}

    def test_frozen_until_the_first_list(self):
        assert LeaseTracker().frozen


@pytest.mark.parametrize("n", [2, 3, 5])
def test_ranking_is_a_total_order_of_the_group(n):
    names = [f"d{i}" for i in range(n)]
    assert sorted(ranked("v", names)) == names
    assert ranked("v", names, Policy(preferred="d1"))[0] == "d1"


def test_a_director_in_its_start_up_grace_keeps_but_takes_nothing():
    live = members("a", "b")
    vips = {v: Policy() for v in VIPS[:20]}
    mine = {v for v in vips if owner(v, live) == "a"}
    assert decide("a", vips, live, frozenset(), may_take=False) == frozenset()
    assert decide("a", vips, live, frozenset(mine), may_take=False) == mine
