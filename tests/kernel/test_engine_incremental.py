"""Incremental reconcile on the real kernel: only the changed services are read
and planned, nothing else is touched, drift elsewhere waits for the next full
reconcile, and anything beyond IPVS re-plans the node side too, still without
reading the IPVS table."""
from __future__ import annotations

import copy
import shutil
from collections import Counter

import pytest

from lvs_agent import netlink_batch
from lvs_agent import ops as O
from lvs_agent.engine import Engine
from lvs_agent.observe import read_ipvs_services
from lvs_agent.state import OwnershipStore
from lvs_lab.topology import Lab

from engine_helpers import reconcile_ok, spec
from pyroute2_ipvs import oracle_read
from test_engine_lifecycle import bare, ipvsadm  # noqa: F401 - the same bare namespace fixture

OURS = {"services": [
    {"address": "10.10.0.1", "port": 80, "scheduler": "wlc",
     "dests": [{"address": "10.20.0.1", "port": 8080, "weight": 2}, {"address": "10.20.0.2", "port": 8080}]},
    {"address": "10.10.0.2", "port": 53, "protocol": "udp", "scheduler": "sh", "schedulerFlags": ["sh-port"],
     "dests": [{"address": "10.20.0.3", "method": "dr"}, {"address": "10.20.0.5", "method": "dr"}]},
    {"fwmark": 77, "scheduler": "rr", "persistence": {"timeout": 120, "netmask": "255.255.255.0"},
     "dests": [{"address": "10.20.0.4", "method": "tun"}]},
]}
EXTRA = {"address": "10.10.0.3", "port": 443, "scheduler": "rr",
         "dests": [{"address": "10.20.0.6", "port": 443}, {"address": "10.20.0.7", "port": 443}]}


@pytest.fixture
def reads(monkeypatch):
    """Counts kernel reads: "dump" (whole service table), "get" (one service:
    the keys asked for are in ``reads.keys``)."""
    c = Counter()
    c.keys = []
    dump, get = netlink_batch.IPVSConnection.dump_services, netlink_batch.IPVSConnection.get_service

    def counted_dump(self, *a, **kw):
        c["dump"] += 1
        return dump(self, *a, **kw)

    def counted_get(self, key):
        c["get"] += 1
        c.keys.append(key)
        return get(self, key)
    monkeypatch.setattr(netlink_batch.IPVSConnection, "dump_services", counted_dump)
    monkeypatch.setattr(netlink_batch.IPVSConnection, "get_service", counted_get)

    def reset():
        c.clear()
        c.keys.clear()
    c.reset = reset
    return c


def keys(doc: dict) -> list:
    return [s.key for s in spec(doc).services]


def with_weight(doc: dict, i: int, j: int, weight: int) -> dict:
    out = copy.deepcopy(doc)
    out["services"][i]["dests"][j]["weight"] = weight
    return out


def converged_full(e: Engine, doc: dict) -> None:
    r = e.reconcile(spec(doc))
    assert r.ops == [], [O.describe(op) for op in r.ops]


def test_one_weight_change_is_one_op_and_reads_one_service(bare, reads):
    lab, ns, e = bare
    reconcile_ok(e, OURS, incremental=True)  # no memory yet: full
    assert reads["dump"] == 1 and reads["get"] == 0
    reads.reset()
    doc = with_weight(OURS, 0, 1, 7)
    r = reconcile_ok(e, doc, incremental=True)
    assert [O.describe(op) for op in r.ops] == [O.describe(O.SetDest(spec(doc).services[0],
                                                                     spec(doc).services[0].dests[1]))]
    assert reads["dump"] == 0 and reads.keys == [keys(doc)[0]]
    assert sorted(r.programmed) == sorted(keys(doc))  # the unchanged ones too
    assert "-a -t 10.10.0.1:80 -r 10.20.0.2:8080 -m -w 7" in ipvsadm(lab, ns, "-Sn")
    # Nothing changed: nothing read, nothing done, all still programmed.
    reads.reset()
    r = reconcile_ok(e, doc, incremental=True)
    assert r.ops == [] and reads["dump"] == reads["get"] == 0
    assert sorted(r.programmed) == sorted(keys(doc))
    converged_full(e, doc)


def test_add_and_remove_services_incrementally(bare, reads, tmp_path):
    lab, ns, e = bare
    reconcile_ok(e, OURS)
    grown = {"services": [*OURS["services"], EXTRA]}
    reads.reset()
    r = reconcile_ok(e, grown, incremental=True)
    assert [type(op).__name__ for op in r.ops] == ["AddService", "AddDest", "AddDest"]
    assert reads["dump"] == 0 and reads.keys == [keys(grown)[3]]
    owned = OwnershipStore(tmp_path / "own.json").load()
    assert set(owned.services) == set(keys(grown))  # claimed, and merged with the rest
    converged_full(e, grown)

    shrunk = {"services": [OURS["services"][0], EXTRA]}
    reads.reset()
    r = reconcile_ok(e, shrunk, incremental=True)
    assert sorted(type(op).__name__ for op in r.ops) == ["DelService", "DelService"]
    assert reads["dump"] == 0 and sorted(reads.keys) == sorted(keys(OURS)[1:])
    owned = OwnershipStore(tmp_path / "own.json").load()
    assert set(owned.services) == set(keys(shrunk))
    assert set(owned.dests) == set(keys(shrunk))
    table = ipvsadm(lab, ns, "-Sn")
    assert "10.10.0.2:53" not in table and "-f 77" not in table and "10.10.0.3:443" in table
    converged_full(e, shrunk)
    reconcile_ok(e, {}, incremental=True)  # the last service gone: full (sysctls), table empty
    assert ipvsadm(lab, ns, "-Sn").strip() == ""


def test_foreign_objects_untouched(bare, reads):
    lab, ns, e = bare
    ipvsadm(lab, ns, "-R", input="".join(
        f"-A -t 172.31.0.{i}:80 -s rr\n-a -t 172.31.0.{i}:80 -r 192.0.2.{i}:80 -m -w 3\n" for i in range(1, 21)))
    reconcile_ok(e, OURS)
    ipvsadm(lab, ns, "-a", "-t", "10.10.0.1:80", "-r", "10.99.0.1:80", "-m")  # a foreign dest in ours
    ipvsadm(lab, ns, "-A", "-t", "10.10.0.3:443", "-s", "lc")  # a foreign service on a key we will want
    foreign = [line for line in ipvsadm(lab, ns, "-Sn").splitlines()
               if "172.31.0." in line or "10.10.0.3:443" in line]
    assert len(foreign) == 41

    # Our service with the foreign dest changes (a dest of ours goes): the foreign dest stays.
    doc = {"services": [{**OURS["services"][0], "dests": OURS["services"][0]["dests"][:1]},
                        *OURS["services"][1:], EXTRA]}
    reads.reset()
    r = e.reconcile(spec(doc), incremental=True)
    assert [type(op).__name__ for op in r.ops] == ["DelDest"]
    assert list(r.problems) == [keys(doc)[3]]  # held by somebody else: a problem, no takeover
    assert sorted(r.programmed) == sorted(keys(doc)[:3])
    table = ipvsadm(lab, ns, "-Sn")
    assert "-a -t 10.10.0.1:80 -r 10.99.0.1:80 -m -w 1" in table
    assert [line for line in table.splitlines() if "172.31.0." in line or "10.10.0.3:443" in line] == foreign
    assert reads["dump"] == 0 and sorted(reads.keys) == sorted([keys(doc)[0], keys(doc)[3]])

    # The clash is re-checked on every reconcile; once the key is free it is ours.
    ipvsadm(lab, ns, "-D", "-t", "10.10.0.3:443")
    reads.reset()
    r = reconcile_ok(e, doc, incremental=True)
    assert [type(op).__name__ for op in r.ops] == ["AddService", "AddDest", "AddDest"]
    assert reads["dump"] == 0 and reads.keys == [keys(doc)[3]]
    reconcile_ok(e, {})
    assert ipvsadm(lab, ns, "-Sn").count("-A ") == 20  # only the foreign services left


def test_hand_deleted_dest_waits_for_the_full_reconcile(bare, reads):
    lab, ns, e = bare
    reconcile_ok(e, OURS)
    ipvsadm(lab, ns, "-d", "-u", "10.10.0.2:53", "-r", "10.20.0.5:53")
    doc = with_weight(OURS, 0, 0, 5)
    r = reconcile_ok(e, doc, incremental=True)
    assert [type(op).__name__ for op in r.ops] == ["SetDest"]  # drift elsewhere: not looked at
    assert "10.20.0.5" not in ipvsadm(lab, ns, "-Sn")
    reads.reset()
    r = reconcile_ok(e, doc)
    assert [type(op).__name__ for op in r.ops] == ["AddDest"] and reads["dump"] == 1
    assert "-a -u 10.10.0.2:53 -r 10.20.0.5:53 -g -w 1" in ipvsadm(lab, ns, "-Sn")
    assert e.reconcile(spec(doc), incremental=True).ops == []


def test_local_addresses_replan_the_node_side_without_the_table(bare, reads):
    lab, ns, e = bare
    doc = {**OURS, "directorAddresses": ["10.10.0.1"]}
    reconcile_ok(e, doc)
    reads.reset()
    grown = {**with_weight(OURS, 0, 0, 4), "directorAddresses": ["10.10.0.1", "10.10.0.9"]}
    r = reconcile_ok(e, grown, incremental=True)
    assert sorted(type(op).__name__ for op in r.ops) == ["AddAddress", "SetDest"]
    assert reads["dump"] == 0 and reads.keys == [keys(grown)[0]]  # the IPVS table is not read
    assert "10.10.0.9/32" in lab.run(ns, "ip", "-o", "addr", "show").stdout
    converged_full(e, grown)


def test_snat_service_change_replans_the_node_side_without_the_table(bare, reads):
    assert shutil.which("nft"), "nft (Debian package nftables) is needed for SNAT"
    lab, ns, e = bare
    doc = {"services": [{**OURS["services"][0], "snat": True}, *OURS["services"][1:]]}
    reconcile_ok(e, doc)
    reads.reset()
    fewer = {"services": [{**doc["services"][0], "dests": doc["services"][0]["dests"][:1]},
                          *doc["services"][1:]]}
    r = reconcile_ok(e, fewer, incremental=True)
    assert sorted(type(op).__name__ for op in r.ops) == ["DelDest", "ReplaceNftTable"]
    assert reads["dump"] == 0 and reads.keys == [keys(fewer)[0]]
    converged_full(e, fewer)  # the nftables table matches the new spec
    # Another service (no SNAT) changes: incremental again, the SNAT table is left alone.
    reads.reset()
    r = reconcile_ok(e, with_weight(fewer, 1, 0, 3), incremental=True)
    assert [type(op).__name__ for op in r.ops] == ["SetDest"]
    assert reads["dump"] == 0 and reads.keys == [keys(fewer)[1]]
    reconcile_ok(e, {})
    assert "kube-lvs" not in lab.run(ns, "nft", "list", "tables").stdout


def test_a_fresh_engine_has_no_memory(bare, reads, tmp_path):
    lab, ns, e = bare
    reconcile_ok(e, OURS, incremental=True)
    e.close()  # as after SIGKILL: the kernel and the ownership record stay
    doc = with_weight(OURS, 2, 0, 3)
    with Engine(tmp_path / "own.json", netns=ns) as fresh:
        reads.reset()
        r = reconcile_ok(fresh, doc, incremental=True)
        assert [type(op).__name__ for op in r.ops] == ["SetDest"]
        assert reads["dump"] == 1 and reads["get"] == 0  # full: it had nothing to build on
        grown = {"services": [*doc["services"], EXTRA]}
        reads.reset()
        r = reconcile_ok(fresh, grown, incremental=True)
        assert reads["dump"] == 0 and reads.keys == [keys(grown)[3]]  # now it has memory
    # The first engine's memory is older than the record on disk: full.
    reads.reset()
    r = reconcile_ok(e, grown, incremental=True)
    assert r.ops == [] and reads["dump"] == 1 and reads["get"] == 0
    with Engine(tmp_path / "own.json", netns=ns) as fresh:
        reconcile_ok(fresh, {})


def test_incremental_pass_matches_the_pyroute2_oracle(tmp_path):
    """An incremental pass changes only the changed dest, and what the
    batched client reads of those services (through a connection of its own)
    is what pyroute2 reads back from the kernel."""
    with Lab() as lab:
        ns = lab.host("bare")
        lab.apply()
        with Engine(tmp_path / "p.json", netns=ns) as e:
            reconcile_ok(e, OURS)
            r = reconcile_ok(e, with_weight(OURS, 1, 1, 4), incremental=True)
            assert [type(op).__name__ for op in r.ops] == ["SetDest"]
            assert "-a -u 10.10.0.2:53 -r 10.20.0.5:53 -g -w 4" in ipvsadm(lab, ns, "-Sn")
            ks = keys(OURS)
            assert read_ipvs_services(ns, ks) == {k: oracle_read(ns).services[k] for k in ks}
            converged_full(e, with_weight(OURS, 1, 1, 4))
            reconcile_ok(e, {})


def test_sweep_repairs_drift_a_slice_at_a_time(bare, reads):
    """Passes with sweep=1 re-read one unchanged service each (get + dest
    dump, never the whole table), the node side with the first slice of each
    round: a hand-deleted dest, a hand-changed weight, a hand-reset sysctl
    and a hand-deleted VIP address are repaired within one round; a foreign
    service and a foreign dest in ours are never touched. (Strays of ours:
    the unit property test, a sweep round == a full reconcile.)"""
    from lvs_model.nodespec import DIRECTOR_DEVICE, effective_sysctls
    lab, ns, e = bare
    doc = {**OURS, "directorAddresses": ["10.10.0.1"]}
    reconcile_ok(e, doc)
    ks = keys(doc)
    ipvsadm(lab, ns, "-A", "-t", "172.31.0.1:80", "-s", "rr")  # foreign
    ipvsadm(lab, ns, "-a", "-t", "10.10.0.1:80", "-r", "10.99.0.1:80", "-m")  # foreign dest in ours
    ipvsadm(lab, ns, "-d", "-u", "10.10.0.2:53", "-r", "10.20.0.5:53")
    ipvsadm(lab, ns, "-e", "-t", "10.10.0.1:80", "-r", "10.20.0.1:8080", "-m", "-w", "9")
    sysctl = [n for n, v in sorted(effective_sysctls(spec(doc), "").items()) if v != "0"][0]
    path = "/proc/sys/" + sysctl.replace(".", "/")
    lab.run(ns, "sh", "-c", f"echo 0 > {path}")
    lab.run(ns, "ip", "addr", "del", "10.10.0.1/32", "dev", DIRECTOR_DEVICE)
    assert e.reconcile(spec(doc), incremental=True).ops == []  # no sweep: nothing looked at
    seen, done = [], []
    for _ in range(len(ks)):
        reads.reset()
        r = e.reconcile(spec(doc), incremental=True, sweep=1)
        assert r.swept == 1 and reads["dump"] == 0 and len(reads.keys) == 1
        seen.append(reads.keys[0])
        done.append(r.round_done)
    assert seen == ks and done == [False, False, True]
    table = ipvsadm(lab, ns, "-Sn")
    assert "-a -u 10.10.0.2:53 -r 10.20.0.5:53 -g -w 1" in table  # dest back
    assert "-a -t 10.10.0.1:80 -r 10.20.0.1:8080 -m -w 2" in table  # weight back
    assert "-A -t 172.31.0.1:80 -s rr" in table and "10.99.0.1:80" in table  # foreign kept
    assert "10.10.0.1/32" in lab.run(ns, "ip", "-o", "addr", "show", "dev", DIRECTOR_DEVICE).stdout
    assert lab.run(ns, "cat", path).stdout.strip() != "0"
    converged_full(e, doc)
    reads.reset()
    e.reconcile(spec(doc), incremental=True, sweep=5)  # the next round starts over
    assert sorted(reads.keys) == sorted(ks)
    ipvsadm(lab, ns, "-D", "-t", "172.31.0.1:80")


def test_connection_counts_read_in_slices_with_pauses_between(bare, monkeypatch):
    """The agent's background read of every dest's counters calls ``pause``
    between slices of services (it waits there while a change is programmed):
    every service is still read, each slice once."""
    lab, ns, e = bare
    reconcile_ok(e, {**OURS, "services": [*OURS["services"], EXTRA]})
    monkeypatch.setattr(netlink_batch.IPVSConnection, "PAUSE_EVERY", 3)
    pauses = []
    conns = e.connections(pause=lambda: pauses.append(len(pauses)))
    assert pauses == [0, 1]  # 4 services in slices of 3
    assert {(a, p) for (_, a, p) in conns} == {
        ("10.20.0.1", 8080), ("10.20.0.2", 8080), ("10.20.0.3", 53), ("10.20.0.5", 53), ("10.20.0.4", 0),
        ("10.20.0.6", 443), ("10.20.0.7", 443)}
    assert all(v == (0, 0) for v in conns.values())
    reconcile_ok(e, {})
