"""The agent's director side in a group (lvs_agent.ha_agent) and the node
spec's directorGroups: only held VIPs reach the engine, takeovers are
announced after the pass, a dead director's VIPs move, an API server outage
moves nothing, shutdown deletes the Lease; without groups nothing changes.

Each fails before the change: there was no ha_agent module and no
directorGroups in the node spec (parse_node_spec reported it as unknown).
"""
from __future__ import annotations

from lvs_agent.ha_agent import HaController, held_spec, policies, unserved, wanted_daemons
from lvs_agent.ha_lease import DirectorLease
from lvs_agent.ipvs_sync import SyncDaemon
from lvs_model.nodespec import (Dest, DirectorGroup, LocalAddress, NodeSpec, Service, dump_node_spec,
                                parse_node_spec)

from test_ha_lease import FakeLeases

V1, V2, OTHER = "10.0.0.1", "10.0.0.2", "10.9.9.9"


def spec(node: str, weights=(1,), groups=None) -> NodeSpec:
    svcs = tuple(Service(address=v, port=80, dests=tuple(Dest("192.168.0.10", 80, weight=w) for w in weights))
                 for v in (V1, V2, OTHER))
    groups = groups if groups is not None else (DirectorGroup("g", ("d1", "d2"), (V1, V2), sync_id=7),)
    return NodeSpec(node=node, services=svcs, director_addresses=tuple(LocalAddress(v) for v in (V1, V2, OTHER)),
                    director_groups=groups)


def addresses(s: NodeSpec) -> set[str]:
    return {a.address for a in s.director_addresses}


def test_node_spec_director_groups_round_trip():
    doc = {"node": "d1", "directorGroups": [{"name": "g", "members": ["d2", "d1"], "vips": [V2, V1],
                                             "syncId": 7, "device": "eth1", "preferred": "d2",
                                             "failBack": True}]}
    parsed, errors = parse_node_spec(doc)
    assert not errors
    assert parsed.director_groups == (DirectorGroup("g", ("d1", "d2"), (V1, V2), 7, "eth1", "d2", True),)
    assert parse_node_spec(dump_node_spec(parsed))[0].director_groups == parsed.director_groups


def test_node_spec_director_group_errors_name_the_field():
    _, errors = parse_node_spec({"directorGroups": [{"name": "g", "vips": ["nope"], "syncId": 300}]})
    paths = {e.path for e in errors}
    assert "directorGroups[0].vips[0]" in paths and any(p.startswith("directorGroups[0].syncId") for p in paths)


def test_held_spec_keeps_only_held_group_vips_and_every_other_address():
    s = spec("d1")
    assert addresses(held_spec(s, {V2})) == {V2, OTHER}
    assert addresses(held_spec(s, set())) == {OTHER}


def test_without_groups_the_spec_is_untouched():
    s = spec("d1", groups=())
    assert held_spec(s, set()) is s
    assert policies(s) == {}


def test_a_group_this_node_is_not_in_is_ignored():
    s = spec("d3")
    assert policies(s) == {} and held_spec(s, set()) is s


def test_unserved_vips_have_no_dest_above_weight_zero():
    assert unserved(spec("d1", weights=(0, 0)), [V1, V2]) == {V1, V2}
    assert unserved(spec("d1", weights=(0, 1)), [V1, V2]) == frozenset()


def test_one_sync_daemon_pair_per_director_the_lowest_sync_id_wins():
    groups = (DirectorGroup("a", ("d1",), (V1,), 9), DirectorGroup("b", ("d1",), (V2,), 4, "eth1"))
    daemons, problem = wanted_daemons(spec("d1", groups=groups), "eth0")
    assert daemons == [SyncDaemon("master", "eth1", 4), SyncDaemon("backup", "eth1", 4)]
    assert "9 on eth0" in problem
    assert wanted_daemons(spec("d1", groups=()), "eth0") == ([], "")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run(clock, *directors, seconds: float = 12.0, check=None):
    """Step the directors every 2 s of the fake clock (the renewal period),
    past the start-up grace of one Lease duration."""
    end = clock.now + seconds
    while clock.now <= end:
        for d in directors:
            d.step()
            if check is not None:
                check()
        clock.now += 2.0


def director(api, node, clock, announced, synced=None):
    c = HaController(DirectorLease(api, "lvs", node, duration=10), lambda dev, vip: announced.append((node, dev, vip)),
                     sync=(lambda want: synced.append((node, want))) if synced is not None else None, clock=clock)
    c.update(spec(node), "eth0")
    return c


def test_two_directors_one_holder_per_vip_announced_after_the_pass():
    api, clock, announced, synced = FakeLeases(), Clock(), [], []
    d1, d2 = director(api, "d1", clock, announced, synced), director(api, "d2", clock, announced, synced)
    run(clock, d1, d2)
    assert d1.held | d2.held == {V1, V2} and not d1.held & d2.held
    assert announced == []  # not before the addresses are there
    d1.after_pass(), d2.after_pass()
    assert sorted(v for _, _, v in announced) == [V1, V2] and {dev for _, dev, _ in announced} == {"eth0"}
    assert d1.active(V1) == d2.active(V1) and d1.active(OTHER) is None
    assert ("d1", [SyncDaemon("master", "eth0", 7), SyncDaemon("backup", "eth0", 7)]) in synced


def test_a_dead_directors_vips_move_after_its_lease_expires():
    api, clock, announced = FakeLeases(), Clock(), []
    d1, d2 = director(api, "d1", clock, announced), director(api, "d2", clock, announced)
    run(clock, d1, d2)
    dead, alive = (d1, d2) if d1.held else (d2, d1)
    was = set(dead.held)
    run(clock, alive, seconds=14)  # the dead one stops renewing
    assert was <= alive.held and alive.takeovers >= len(was)


def test_api_server_away_moves_nothing_however_long():
    api, clock, announced = FakeLeases(), Clock(), []
    d1, d2 = director(api, "d1", clock, announced), director(api, "d2", clock, announced)
    run(clock, d1, d2)
    before = (d1.held, d2.held)
    assert before[0] | before[1] == {V1, V2}
    api.down = True
    run(clock, d1, d2, seconds=120)
    api.down = False  # back: the Leases count as fresh, nobody is declared dead
    d1.step(), d2.step()
    assert (d1.held, d2.held) == before


def test_a_cut_off_director_drops_a_vip_another_announced():
    api, clock, announced = FakeLeases(), Clock(), []
    d1 = director(api, "d1", clock, announced)
    run(clock, d1)
    assert d1.held == {V1, V2}
    api.down = True
    d1.seen_announcement(V1)
    d1.step()
    assert d1.held == {V2}


def test_shutdown_deletes_the_lease_and_returns_what_was_held():
    api, clock, announced = FakeLeases(), Clock(), []
    d1 = director(api, "d1", clock, announced)
    run(clock, d1)
    assert d1.stop() == {V1, V2}
    assert api.objs == {} and d1.held == frozenset()


def test_no_groups_no_lease_no_daemon():
    """A single director: nothing is written, every VIP stays in the spec."""
    api, clock, synced = FakeLeases(), Clock(), []
    c = HaController(DirectorLease(api, "lvs", "d1"), lambda d, v: None, sync=synced.append, clock=clock)
    c.update(spec("d1", groups=()), "eth0")
    assert c.step() is False
    assert api.writes == 0 and synced == []
    assert addresses(c.filter(spec("d1", groups=()))) == {V1, V2, OTHER}


def test_status_names_the_holder_of_each_group_vip_of_that_object():
    api, clock, announced = FakeLeases(), Clock(), []
    d1 = director(api, "d1", clock, announced)
    run(clock, d1)
    status: dict = {}
    d1.annotate(status, spec("d1"))
    since = {r.pop("since") for r in status["activeDirectors"]}  # when it took them (the operator's tie-break)
    assert len(since) == 1 and since.pop().endswith("Z")
    assert status["activeDirectors"] == [{"address": V1, "director": "d1", "held": True},
                                         {"address": V2, "director": "d1", "held": True}]
    plain: dict = {}
    d1.annotate(plain, NodeSpec(node="d1", director_addresses=(LocalAddress(OTHER),)))  # in no group
    assert plain == {}


def test_the_agent_programs_only_held_vips_and_announces_after_the_pass(tmp_path):
    """The loop's wiring (main.Agent): before it every selected director held
    every VIP, so the first assertion (V1 absent while d2 holds it) failed."""
    import asyncio

    from lvs_agent.main import Agent
    from test_agent_incremental import FakeApi, FakeEngine

    eng, seen = FakeEngine(), []
    plain = eng.reconcile
    eng.reconcile = lambda s, **kw: (seen.append({a.address for a in s.director_addresses}), plain(s, **kw))[1]
    a = Agent("d1", "lvs", eng, FakeApi(), tmp_path / "cache.json")
    a.objects = {"o1": {"metadata": {"name": "o1", "generation": 1}, "spec": {
        "node": "d1", "services": [{"address": V1, "port": 80, "dests": [{"address": "192.168.0.10", "port": 80}]}],
        "directorAddresses": [V1],
        "directorGroups": [{"name": "g", "members": ["d1", "d2"], "vips": [V1]}]}}}
    a._touch()
    leases, clock, announced = FakeLeases(), Clock(), []
    d2 = DirectorLease(leases, "lvs", "d2", duration=10)
    d2.renew([V1], [])  # d2 holds V1
    a.ha = HaController(DirectorLease(leases, "lvs", "d1", duration=10),
                        lambda dev, vip: announced.append((dev, vip)), clock=clock)
    a.ha.uplink = "eth0"

    async def go():
        await a.reconcile_once(full=True)
        run(clock, a.ha, check=lambda: d2.renew([V1], []))  # d2 alive throughout
        await a.reconcile_once(full=False)
        assert seen[-1] == set() and announced == []
        d2.release()  # d2 shuts down
        assert a.ha.step() is True
        await a.reconcile_once(full=False)
        assert seen[-1] == {V1} and announced == [("eth0", V1)]
        a.status.stop()
    asyncio.run(go())


def test_directors_starting_together_never_both_hold_a_vip():
    """Seen in the lab: d2 started a moment before d1's Lease was written,
    each saw a group without the other's claim and both took the VIP for a
    round. A starting director now takes nothing for one Lease duration."""
    api, clock, announced = FakeLeases(), Clock(), []
    d1, d2 = director(api, "d1", clock, announced), director(api, "d2", clock, announced)

    def one_holder_at_most():
        assert not d1.held & d2.held, (d1.held, d2.held)
    run(clock, d1, d2, check=one_holder_at_most)
    assert d1.held | d2.held == {V1, V2}


class Watcher:
    def __init__(self):
        self.seen: set[str] = set()

    def poll(self):
        out, self.seen = self.seen, set()
        return out


def test_cut_off_holder_stops_answering_for_a_vip_it_saw_announced_by_another():
    """The split the issue names: d1 cannot reach the API server, d2 can and
    takes V1 over after d1's Lease expires, announcing it; d1, frozen, drops
    V1 when it sees that announcement and keeps V2."""
    api, clock, announced = FakeLeases(), Clock(), []
    watcher = Watcher()
    d1 = HaController(DirectorLease(api, "lvs", "d1", duration=10), lambda d, v: None, clock=clock,
                      watch=lambda device: watcher)
    d1.update(spec("d1"), "eth0")
    run(clock, d1)
    assert d1.held == {V1, V2}
    api.down = True
    run(clock, d1, seconds=4)
    assert d1.held == {V1, V2}  # frozen: nothing dropped for the outage alone
    watcher.seen = {V1, OTHER}  # d2's gratuitous ARP (and one for a VIP d1 does not hold)
    d1.step()
    assert d1.held == {V2}


def test_a_director_whose_uplink_is_down_gives_its_vips_up():
    """Its Lease may still renew (the API server reachable another way), but
    nobody on the segment can reach it: it lists its VIPs as unserved and
    the other director takes them. Before, only the Lease's expiry moved
    them, which never came."""
    from lvs_agent.ha_agent import cut_off
    assert cut_off(spec("d1"), [V1, V2], "eth0", lambda dev: dev != "eth0") == {V1, V2}
    assert cut_off(spec("d1"), [V1, V2], "eth0", lambda dev: True) == frozenset()
    own = spec("d1", groups=(DirectorGroup("g", ("d1", "d2"), (V1,), sync_id=7, device="eth1"),
                             DirectorGroup("h", ("d1", "d2"), (V2,), sync_id=7)))
    assert cut_off(own, [V1, V2], "eth0", lambda dev: dev != "eth1") == {V1}  # the group's own device

    api, clock, announced = FakeLeases(), Clock(), []
    d1, d2 = director(api, "d1", clock, announced), director(api, "d2", clock, announced)
    run(clock, d1, d2)
    holder = d1 if V1 in d1.held else d2
    other = d2 if holder is d1 else d1
    holder.link_running = lambda dev: False
    run(clock, d1, d2)
    assert V1 in other.held and V1 not in holder.held


def test_link_running_reads_the_device_flags():
    from lvs_agent.announce import link_running
    assert link_running("lo") is True  # up, and loopback always has a carrier
    assert link_running("no-such-dev0") is False
