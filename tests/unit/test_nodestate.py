"""The agent's merge of NodeState objects and the status it writes back."""
from lvs_agent.verdicts import UNHEALTHY, DestHealth, effective_spec
from lvs_agent.nodestate import build_status, merge, status_changed


def obj(name, services, gen=1, **extra):
    return {"metadata": {"name": name, "generation": gen}, "spec": {"node": "d1", "services": services, **extra}}


WEB = {"name": "team-a/web", "address": "192.168.0.30", "port": 80, "scheduler": "rr",
       "healthCheck": {"type": "tcp", "interval": 1, "timeout": 0.5},
       "dests": [{"address": "10.0.0.51"}, {"address": "10.0.0.52", "weight": 0}]}
DNS = {"name": "team-b/dns", "address": "192.168.0.31", "port": 53, "protocol": "udp",
       "dests": [{"address": "10.0.0.53"}]}


def test_merge_unions_objects_and_reports_bad_ones_without_stopping_others():
    objs = {
        "d1-a-web": obj("d1-a-web", [WEB], directorAddresses=["192.168.0.30"]),
        "d1-b-dns": obj("d1-b-dns", [DNS], sysctls={"net.ipv4.vs.conntrack": "1"}),
        "d1-c-bad": obj("d1-c-bad", [{**DNS, "address": "0.0.0.0"}]),
        "d1-z-dup": obj("d1-z-dup", [{**WEB, "scheduler": "wlc"}]),
    }
    m = merge(objs, "d1")
    assert [s.port for s in m.spec.services] == [80, 53]
    assert m.spec.services[0].scheduler == "rr"  # d1-a-web sorts first and wins
    assert set(m.errors) == {"d1-c-bad", "d1-z-dup"}
    assert "already programmed by d1-a-web" in str(m.errors["d1-z-dup"][0])
    assert m.spec.director_addresses[0].address == "192.168.0.30"
    assert dict(m.spec.sysctls) == {"net.ipv4.vs.conntrack": "1"}


def test_status_carries_health_weights_conns_and_conditions():
    objs = {"d1-a-web": obj("d1-a-web", [WEB], gen=4), "d1-c-bad": obj("d1-c-bad", [{**DNS, "port": -1}])}
    m = merge(objs, "d1")
    web = m.spec.services[0]
    verdicts = {(web.key, web.dests[0].key): DestHealth(UNHEALTHY)}
    programmed = effective_spec(m.spec, verdicts)
    conns = {(web.key, "10.0.0.51", 80): (3, 7)}
    st = build_status("d1-a-web", objs["d1-a-web"], m, programmed, {}, verdicts, {web.key}, conns, "T")
    assert st["observedGeneration"] == 4
    assert st["services"] == [{"key": "tcp:192.168.0.30:80", "programmed": True, "error": ""}]
    assert st["dests"][0] == {"service": "tcp:192.168.0.30:80", "address": "10.0.0.51", "port": 80,
                              "health": "Unhealthy", "weight": 0, "activeConns": 3, "inactiveConns": 7}
    assert st["dests"][1]["health"] == "Draining"
    assert st["conditions"][0]["status"] == "True"
    bad = build_status("d1-c-bad", objs["d1-c-bad"], m, programmed, {}, {}, set(), {}, "T")
    assert bad["conditions"][0]["status"] == "False" and "services[0].port" in bad["conditions"][0]["message"]
    failed = build_status("d1-a-web", objs["d1-a-web"], m, programmed, {web.key: "ENOENT: no scheduler"}, {}, set(), {}, "T")
    assert failed["services"][0]["programmed"] is False
    assert "ENOENT" in failed["conditions"][0]["message"]


def test_one_status_finds_its_programmed_service_without_indexing_them_all():
    """build_status runs once per changed object after every change's pass; a
    lookup that indexes every service (10k in bench part 5) per pass was most
    of its time. The merge's index places the service in the programmed spec
    (whose services keep the merged order, health weights applied)."""
    objs = {f"d1-{i}": obj(f"d1-{i}", [{**WEB, "name": f"t/{i}", "address": f"192.168.1.{i}"}]) for i in range(50)}
    m = merge(objs, "d1")
    web = m.spec.services[m.index[m.parsed["d1-7"].spec.services[0].key]]
    verdicts = {(web.key, web.dests[0].key): DestHealth(UNHEALTHY)}
    programmed = effective_spec(m.spec, verdicts)
    st = build_status("d1-7", objs["d1-7"], m, programmed, {}, verdicts, {web.key}, {}, "T")
    assert [d["weight"] for d in st["dests"]] == [0, 0] and st["dests"][0]["health"] == "Unhealthy"
    assert "_by_key" not in vars(programmed)  # no dict of every service was built
    other = merge({k: v for k, v in objs.items() if k != "d1-3"}, "d1")  # a spec in another order
    st = build_status("d1-7", objs["d1-7"], m, other.spec, {}, {}, set(), {}, "T")
    assert [d["weight"] for d in st["dests"]] == [1, 0]  # found by key all the same


def test_condition_keeps_transition_time_and_status_change_ignores_timestamp():
    objs = {"d1-a-web": obj("d1-a-web", [WEB])}
    m = merge(objs, "d1")
    first = build_status("d1-a-web", objs["d1-a-web"], m, m.spec, {}, {}, set(), {}, "T1")
    objs["d1-a-web"]["status"] = first
    second = build_status("d1-a-web", objs["d1-a-web"], m, m.spec, {}, {}, set(), {}, "T2")
    assert second["conditions"][0]["lastTransitionTime"] == "T1"
    assert not status_changed(first, second)


def test_merge_carries_every_node_level_list_and_service_flags():
    route = {"address": "10.0.0.51", "port": 80, "protocol": "tcp", "via": ["10.0.0.30"]}
    objs = {"d1-a": obj("d1-a", [{**WEB, "snat": True}], replyRoutes=[route]),
            "d1-b": obj("d1-b", [DNS], backendVips=[{"address": "192.168.1.3", "method": "tun"}])}
    m = merge(objs, "d1")
    assert m.spec.services[0].snat is True
    assert [v.address for v in m.spec.backend_vips] == ["192.168.1.3"]
    assert [(r.address, r.port) for r in m.spec.reply_routes] == [("10.0.0.51", 80)]


def test_status_lists_only_the_objects_own_services_once():
    objs = {"d1-a-web": obj("d1-a-web", [WEB, {**WEB, "scheduler": "wlc"}]),  # the same key twice
            "d1-b-dns": obj("d1-b-dns", [DNS]),
            "d1-z-dup": obj("d1-z-dup", [WEB])}  # loses the key to d1-a-web
    m = merge(objs, "d1")
    st = {n: build_status(n, o, m, m.spec, {}, {}, set(), {}, "T") for n, o in objs.items()}
    assert [s["key"] for s in st["d1-a-web"]["services"]] == ["tcp:192.168.0.30:80"]
    assert [d["address"] for d in st["d1-a-web"]["dests"]] == ["10.0.0.51", "10.0.0.52"]
    assert [s["key"] for s in st["d1-b-dns"]["services"]] == ["udp:192.168.0.31:53"]
    assert st["d1-z-dup"]["services"] == [] and st["d1-z-dup"]["conditions"][0]["status"] == "False"
    assert m.spec.service(m.spec.services[1].key) is m.spec.services[1]


def test_merge_swaps_changed_objects_in_place_and_falls_back_when_anything_else_moves():
    objs = {"d1-a-web": obj("d1-a-web", [WEB], directorAddresses=["192.168.0.30"]),
            "d1-b-dns": obj("d1-b-dns", [DNS])}
    first = merge(objs, "d1")

    def same_as_fresh(m, objects):
        fresh = merge(objects, "d1")
        return (m.spec, m.errors, m.owner, m.index) == (fresh.spec, fresh.errors, fresh.owner, fresh.index)

    assert merge(dict(objs), "d1", first) is first  # nothing changed
    heavier = {**objs, "d1-b-dns": obj("d1-b-dns", [{**DNS, "dests": [{"address": "10.0.0.53", "weight": 9}]}])}
    fast = merge(heavier, "d1", first)
    assert same_as_fresh(fast, heavier)
    assert fast.spec.services[0] is first.spec.services[0]  # the unchanged service is the same object
    assert fast.owner is first.owner  # the fast path: nothing re-derived
    for changed in ({**objs, "d1-b-dns": obj("d1-b-dns", [{**DNS, "port": 54}])},  # another key
                    {**objs, "d1-b-dns": obj("d1-b-dns", [DNS], sysctls={"net.ipv4.vs.conntrack": "1"})},
                    {**objs, "d1-c-new": obj("d1-c-new", [{**DNS, "port": 55}])},  # a new object
                    {"d1-a-web": objs["d1-a-web"]},  # one gone
                    {**objs, "d1-b-dns": obj("d1-b-dns", [{**DNS, "port": -1}])},  # now invalid
                    {**objs, "d1-b-dns": obj("d1-b-dns", [WEB])}):  # now a duplicate of d1-a-web's
        m = merge(changed, "d1", first)
        assert m.owner is not first.owner and same_as_fresh(m, changed)


def test_merge_looks_only_at_the_objects_marked_changed_and_counts_health_checks():
    objs = {"d1-a-web": obj("d1-a-web", [WEB]), "d1-b-dns": obj("d1-b-dns", [DNS])}
    first = merge(objs, "d1")
    assert first.health_checked == 1  # WEB has a TCP check, DNS none
    checked_dns = {**DNS, "healthCheck": {"type": "tcp", "interval": 1, "timeout": 0.5}}
    both = {**objs, "d1-b-dns": obj("d1-b-dns", [checked_dns], gen=2)}
    # Marked: seen, and the count follows. Not marked: not even looked at.
    m = merge(both, "d1", first, changed={"d1-b-dns"})
    assert m.spec.services[1].health.type == "tcp" and m.health_checked == 2
    assert merge(both, "d1", first, changed={"d1-a-web"}) is first
    assert merge(both, "d1", first, changed=set()) is first
    # A marked name that is gone, or a new one: the full merge.
    fresh = merge({"d1-a-web": objs["d1-a-web"]}, "d1", first, changed={"d1-b-dns"})
    assert fresh.health_checked == 1 and len(fresh.spec.services) == 1


def test_objects_arriving_one_pass_at_a_time_are_appended_not_merged_again():
    """Bench part 5 creates 10k NodeStates while the agent runs: a full merge
    per pass made that quadratic. A new object with keys nobody has and no
    node-level field of its own is appended; anything else is a full merge."""
    def svc(i):
        return {**DNS, "name": f"t/{i}", "address": f"192.168.2.{i}"}
    names = [f"d1-{i:02d}" for i in (5, 1, 9, 3, 7)]  # not in sort order
    objs = {names[0]: obj(names[0], [svc(5)], directorAddresses=["192.168.0.30"])}
    m = merge(objs, "d1")
    for n in names[1:]:
        objs = {**objs, n: obj(n, [svc(int(n[-2:]))], directorAddresses=["192.168.0.30"])}
        before = m
        m = merge(objs, "d1", before, changed={n})
        assert m.spec.services[:-1] == before.spec.services and all(
            a is b for a, b in zip(m.spec.services, before.spec.services))  # appended, the rest kept
        assert before.owner.keys() != m.owner.keys()  # the previous merge is left as it was
        fresh = merge(objs, "d1")
        assert set(m.spec.services) == set(fresh.spec.services) and m.owner == fresh.owner
        assert all(m.spec.services[i].key == k for k, i in m.index.items()) and not m.errors
        assert m.spec.director_addresses == fresh.spec.director_addresses
    # Falls back to the full merge (whose rules hold) when the new object ...
    for new, why in ((obj("d1-00", [svc(9)]), "takes a key: d1-00 sorts first and wins it"),
                     (obj("d1-99", [svc(99)], sysctls={"net.ipv4.vs.conntrack": "1"}), "adds a sysctl"),
                     (obj("d1-99", [svc(99)], directorAddresses=["192.168.0.31"]), "adds an address"),
                     (obj("d1-99", [{**svc(99), "port": -1}]), "is invalid")):
        grown = {**objs, new["metadata"]["name"]: new}
        got, fresh = merge(grown, "d1", m, changed={new["metadata"]["name"]}), merge(grown, "d1")
        assert (got.spec, got.errors, got.owner) == (fresh.spec, fresh.errors, fresh.owner), why
    assert "already programmed by d1-00" in str(merge({**objs, "d1-00": obj("d1-00", [svc(9)])}, "d1", m,
                                                      changed={"d1-00"}).errors["d1-09"][0])
    # ... or was not marked (it arrived after the marks were taken): never left out.
    late = {**objs, "d1-98": obj("d1-98", [svc(98)])}
    assert len(merge(late, "d1", m, changed=set()).spec.services) == len(objs) + 1


def test_statuses_after_a_merge_that_only_added_objects_skip_the_owner_comparison():
    from lvs_agent.nodestate import StatusInputs, stale_statuses
    a = {"d1-a": obj("d1-a", [WEB])}
    m1 = merge(a, "d1")
    grown = {**a, "d1-b": obj("d1-b", [DNS])}
    m2 = merge(grown, "d1", m1, changed={"d1-b"})
    assert m2.grown_from is m1.owner
    prev = StatusInputs(m1.owner)
    assert stale_statuses(prev, StatusInputs(m2.owner, owner_grown_from=m2.grown_from)) == set()
    # The same owners from a full merge: compared, and the new object's name comes out.
    full = merge(grown, "d1")
    assert full.grown_from is None and stale_statuses(prev, StatusInputs(full.owner)) == {"d1-b"}
    # A service changing hands (d1-0 sorts first and takes WEB): both names.
    taken = merge({**a, "d1-0": obj("d1-0", [WEB])}, "d1", m1, changed={"d1-0"})
    assert taken.grown_from is None
    assert stale_statuses(prev, StatusInputs(taken.owner, owner_grown_from=taken.grown_from)) == {"d1-a", "d1-0"}


def test_a_nodestate_asking_for_a_foreign_sysctl_programs_the_rest_and_says_what_it_refused():
    """Whoever writes a NodeState cannot make the agent write outside the
    allowlist: the refused entries are named in the object's status, the
    service and the allowed sysctl still apply (one bad field never stops a
    node's other work)."""
    evil = obj("d1-a-web", [WEB], sysctls={"kernel.core_pattern": "|/tmp/x", "net.ipv4.vs.conntrack": "1",
                                           "net.ipv4.conf.x/../../../kernel.rp_filter": "0"},
               uplink="all")
    m = merge({"d1-a-web": evil}, "d1")
    assert [s.port for s in m.spec.services] == [80]
    assert dict(m.spec.sysctls) == {"net.ipv4.vs.conntrack": "1"} and m.spec.uplink == ""
    st = build_status("d1-a-web", evil, m, m.spec, {}, {}, set(), {}, "T")
    cond = st["conditions"][0]
    assert cond["status"] == "False"
    for word in ("sysctls.kernel.core_pattern", "sysctls.net.ipv4.conf.x/../../../kernel.rp_filter",
                 "not written", "uplink"):
        assert word in cond["message"], word


def test_status_lists_a_draining_dest_and_a_drain_marks_its_owner_stale():
    """A dest gone from the spec but kept at weight 0 by the engine (drain.py)
    is listed with health Draining and its counts; before drains existed the
    status had no entry for it (build_status took no ``draining``)."""
    from lvs_agent.drain import by_service
    from lvs_agent.nodestate import StatusInputs, stale_statuses
    from lvs_model.nodespec import DestKey
    objs = {"d1-a-web": obj("d1-a-web", [WEB]), "d1-b-dns": obj("d1-b-dns", [DNS])}
    m = merge(objs, "d1")
    web = m.spec.services[0]
    gone = DestKey("10.0.0.59", 80)
    st = build_status("d1-a-web", objs["d1-a-web"], m, m.spec, {}, {}, set(), {(web.key, "10.0.0.59", 80): (2, 1)},
                      "T", by_service({(web.key, gone)}))
    assert st["dests"][-1] == {"service": "tcp:192.168.0.30:80", "address": "10.0.0.59", "port": 80,
                               "health": "Draining", "weight": 0, "activeConns": 2, "inactiveConns": 1}
    assert len(st["dests"]) == 3
    before = StatusInputs(m.owner)
    assert stale_statuses(before, StatusInputs(m.owner, draining=frozenset({(web.key, gone)}))) == {"d1-a-web"}
    assert stale_statuses(StatusInputs(m.owner, draining=frozenset({(web.key, gone)})), before) == {"d1-a-web"}
