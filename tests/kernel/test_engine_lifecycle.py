"""The engine over time: draining, drift, foreign objects, restarts, bad input,
and the batched netlink client checked against pyroute2 (pyroute2_ipvs, the
tests' independent oracle).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import yaml

from lvs_agent import ops as O
from lvs_agent.engine import Engine
from lvs_lab.topology import Lab
from lvs_model.nodespec import DestKey, ServiceKey

from engine_helpers import HoldServer, reconcile_ok, spec
from pyroute2_ipvs import oracle_apply, oracle_read
from lvs_lab.held import Held  # noqa: F401 - test_ha_failover imports it from here

HOLD_PORT = 8080


def op_names(report) -> list[str]:
    return [type(op).__name__ for op in report.ops]


@pytest.fixture
def echo_nat(seed_nat):
    t = seed_nat
    servers = [HoldServer(ns, name, HOLD_PORT, echo=True) for ns, name in zip(t.real_servers, t.names)]
    yield t
    for s in servers:
        s.close()


def hold_doc(t, weights=(1, 1), extra: list[dict] = ()) -> dict:
    return {"services": [{"address": t.vip, "port": HOLD_PORT, "scheduler": "rr",
                          "dests": [{"address": rip, "port": HOLD_PORT, "weight": w, "method": "nat"}
                                    for rip, w in zip(t.rips, weights)]}, *extra]}


# --------------------------------------------------------------------------
# Draining
# --------------------------------------------------------------------------

def test_weight_zero_drains(echo_nat, tmp_path):
    t = echo_nat
    e = Engine(tmp_path / "d.json", netns=t.director)
    reconcile_ok(e, hold_doc(t))
    conn = Held(t.client, t.vip, HOLD_PORT)
    try:
        victim = conn.server
        weights = tuple(0 if n == victim else 1 for n in t.names)
        r = reconcile_ok(e, hold_doc(t, weights))
        assert op_names(r) == ["SetDest"]
        # New connections all go elsewhere...
        others = [Held(t.client, t.vip, HOLD_PORT) for _ in range(4)]
        assert {h.server for h in others} == set(t.names) - {victim}
        for h in others:
            h.close()
        # ...while the established one keeps working, on the drained server.
        assert conn.echo("still here") == "still here"
        conns = e.connections()
        key = spec(hold_doc(t)).services[0].key
        assert conns[(key, t.rips[t.names.index(victim)], HOLD_PORT)][0] == 1, conns
        line = next(x for x in t.ipvsadm("-Ln").stdout.splitlines()
                    if f"{t.rips[t.names.index(victim)]}:{HOLD_PORT}" in x)
        assert line.split()[2:4] == ["Masq", "0"] and line.split()[4] == "1", line
    finally:
        conn.close()
        reconcile_ok(e, {})
        e.close()


# --------------------------------------------------------------------------
# Drift and foreign objects
# --------------------------------------------------------------------------

@pytest.fixture
def bare(tmp_path):
    """A namespace with lo up and nothing else (IPVS needs no traffic here)."""
    with Lab() as lab:
        ns = lab.host("bare")
        lab.apply()
        e = Engine(tmp_path / "own.json", netns=ns)
        yield lab, ns, e
        e.close()


def ipvsadm(lab: Lab, ns: str, *args: str, input: str | None = None) -> str:
    return lab.run(ns, "ipvsadm", *args, input=input).stdout


OURS = {"services": [
    {"address": "10.10.0.1", "port": 80, "scheduler": "wlc",
     "dests": [{"address": "10.20.0.1", "port": 8080, "weight": 2}, {"address": "10.20.0.2", "port": 8080}]},
    {"address": "10.10.0.2", "port": 53, "protocol": "udp", "scheduler": "sh", "schedulerFlags": ["sh-port"],
     "dests": [{"address": "10.20.0.3", "method": "dr"}]},
    {"fwmark": 77, "scheduler": "rr", "persistence": {"timeout": 120, "netmask": "255.255.255.0"},
     "dests": [{"address": "10.20.0.4", "method": "tun"}]},
]}


def test_drift_is_repaired(bare):
    lab, ns, e = bare
    reconcile_ok(e, OURS)
    good = ipvsadm(lab, ns, "-Sn")
    # By hand: alter the service, alter one dest, delete another, delete a whole service.
    ipvsadm(lab, ns, "-E", "-t", "10.10.0.1:80", "-s", "rr", "-p", "30")
    ipvsadm(lab, ns, "-e", "-t", "10.10.0.1:80", "-r", "10.20.0.1:8080", "-m", "-w", "9")
    ipvsadm(lab, ns, "-d", "-t", "10.10.0.1:80", "-r", "10.20.0.2:8080")
    ipvsadm(lab, ns, "-D", "-f", "77")
    assert ipvsadm(lab, ns, "-Sn") != good
    r = reconcile_ok(e, OURS)
    assert sorted(op_names(r)) == ["AddDest", "AddDest", "AddService", "SetDest", "SetService"], r.ops
    assert ipvsadm(lab, ns, "-Sn") == good
    assert e.reconcile(spec(OURS)).ops == []


def foreign_rules(n: int) -> str:
    lines = []
    for i in range(n):
        vip = f"172.31.{i // 250}.{i % 250 + 1}:80"
        lines.append(f"-A -t {vip} -s {'rr' if i % 2 else 'wlc'}" + (" -p 60" if i % 3 == 0 else ""))
        lines += [f"-a -t {vip} -r 192.0.2.{j + 1}:80 -m -w {j + 1}" for j in range(2)]
    return "\n".join(lines) + "\n"


def test_foreign_services_untouched_across_100_reconciles(bare):
    lab, ns, e = bare
    ipvsadm(lab, ns, "-R", input=foreign_rules(100))
    # A foreign service on a key we want, and a foreign dest inside one of ours.
    ipvsadm(lab, ns, "-A", "-t", "10.10.0.2:53", "-s", "lc")
    foreign = ipvsadm(lab, ns, "-Sn")
    assert foreign.count("-A ") == 101
    clash = {"address": "10.10.0.2", "port": 53, "scheduler": "rr", "dests": [{"address": "10.20.0.9"}]}
    doc = {"services": [*OURS["services"], clash]}
    r = e.reconcile(spec(doc))
    assert list(r.problems) == [spec({"services": [clash]}).services[0].key], r.problems
    ipvsadm(lab, ns, "-a", "-t", "10.10.0.1:80", "-r", "10.99.0.1:80", "-m")  # foreign dest in ours
    worked = 0
    for i in range(100):
        # Alternate a weight so every other reconcile has real work to do.
        doc["services"][0]["dests"][0]["weight"] = 2 + i % 2
        r = e.reconcile(spec(doc))
        worked += bool(r.ops)
        assert not r.failed, r.failed
    assert worked >= 99
    after = ipvsadm(lab, ns, "-Sn")
    ours = {"-t 10.10.0.1:80", "-u 10.10.0.2:53", "-f 77"}
    theirs = [line for line in after.splitlines() if " ".join(line.split()[1:3]) not in ours]
    assert "\n".join(theirs) + "\n" == foreign, "foreign services changed"
    assert "-a -t 10.10.0.1:80 -r 10.99.0.1:80 -m -w 1" in after  # the foreign dest survived
    # Our services leave the spec: exactly ours are removed (with what they held).
    reconcile_ok(e, {})
    assert ipvsadm(lab, ns, "-Sn") == foreign


# --------------------------------------------------------------------------
# Restart
# --------------------------------------------------------------------------

ENGINE_LOOP = """
import sys, time, yaml
from lvs_agent.engine import Engine
from lvs_model.nodespec import DestKey, ServiceKey, parse_node_spec
spec = parse_node_spec(yaml.safe_load(open(sys.argv[1])))[0]
e = Engine(sys.argv[2], netns=sys.argv[3])
r = e.reconcile(spec)
print("ready", len(r.results), r.ok, flush=True)
while True:
    time.sleep(0.5)
    e.reconcile(spec)
"""


def lvsctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lvs_agent.lvsctl", *args],
                          capture_output=True, text=True, timeout=300)


def test_restart_after_sigkill_changes_nothing(echo_nat, tmp_path):
    t = echo_nat
    state = tmp_path / "state" / "ownership.json"
    second = {"address": t.vip, "port": 9090, "scheduler": "rr",
              "dests": [{"address": rip, "port": 9090, "method": "nat"} for rip in t.rips]}
    doc = hold_doc(t, extra=[second])
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(doc))
    proc = subprocess.Popen([sys.executable, "-c", ENGINE_LOOP, str(spec_file), str(state), t.director],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    conn = None
    try:
        line = proc.stdout.readline()
        assert line.startswith("ready") and line.split()[2] == "True", line
        conn = Held(t.client, t.vip, HOLD_PORT)
        assert conn.echo("before") == "before"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        table = t.ipvsadm("-Sn").stdout
        # A new process, the same state file and spec: nothing to do.
        out = lvsctl("apply", str(spec_file), "--state", str(state), "--netns", t.director)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "0 operations" in out.stdout, out.stdout
        assert t.ipvsadm("-Sn").stdout == table
        assert conn.echo("after restart") == "after restart"
        # While "down": a service leaves the spec and somebody adds a foreign one.
        t.ipvsadm("-A", "-t", f"{t.vip}:7070", "-s", "rr")
        spec_file.write_text(yaml.safe_dump(hold_doc(t)))
        out = lvsctl("apply", str(spec_file), "--state", str(state), "--netns", t.director)
        assert out.returncode == 0, out.stdout + out.stderr
        table = t.ipvsadm("-Sn").stdout
        assert f"{t.vip}:9090" not in table  # ours, no longer wanted: removed
        assert f"-A -t {t.vip}:7070 -s rr" in table  # foreign: kept
        assert f"{t.vip}:{HOLD_PORT}" in table
        assert conn.echo("still") == "still"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        if conn:
            conn.close()
        t.ipvsadm("-D", "-t", f"{t.vip}:7070", check=False)
        with Engine(state, netns=t.director) as e:
            e.reconcile(spec({}))


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------

def test_one_invalid_service_does_not_block_the_others(bare, tmp_path, capsys):
    lab, ns, _ = bare
    doc = {"services": [
        {"address": "10.10.1.1", "port": 80, "dests": [{"address": "10.20.1.1", "port": 80}]},
        # Invalid in the spec: DR cannot map ports.
        {"address": "10.10.1.2", "port": 80, "dests": [{"address": "10.20.1.2", "port": 8080, "method": "dr"}]},
        # Valid in the spec, refused by this kernel: 6.1 has no twos scheduler.
        {"address": "10.10.1.3", "port": 80, "scheduler": "twos", "dests": [{"address": "10.20.1.3"}]},
        {"address": "10.10.1.4", "port": 80, "scheduler": "mh", "dests": [{"address": "10.20.1.4"}]},
    ]}
    f = tmp_path / "spec.yaml"
    f.write_text(yaml.safe_dump(doc))
    from lvs_agent import lvsctl as L
    rc = L.main(["apply", str(f), "--state", str(tmp_path / "s.json"), "--netns", ns])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "services[1].dests[0].port" in out and "only method nat can map ports" in out, out
    assert "failed      tcp:10.10.1.3:80" in out and "ENOENT" in out, out
    table = ipvsadm(lab, ns, "-Sn")
    assert "-A -t 10.10.1.1:80 -s wlc" in table and "-A -t 10.10.1.4:80 -s mh" in table, table
    assert "10.10.1.2" not in table and "10.10.1.3" not in table, table
    assert "-a -t 10.10.1.4:80 -r 10.20.1.4:80" in table


# --------------------------------------------------------------------------
# Batched netlink vs the pyroute2 oracle: the same kernel state, the same results
# --------------------------------------------------------------------------

RICH = {"directorAddresses": ["10.1.1.1", "2001:db8::1"], "services": [
    {"address": "10.1.1.1", "port": 80, "scheduler": "rr",
     "dests": [{"address": "10.2.2.2", "port": 8080, "weight": 3, "upperThreshold": 10, "lowerThreshold": 5},
               {"address": "10.2.2.3", "port": 8080}]},
    {"address": "10.1.1.1", "port": 53, "protocol": "udp", "scheduler": "sh",
     "schedulerFlags": ["sh-port", "sh-fallback"], "onePacket": True, "dests": [{"address": "10.2.2.2", "method": "dr"}]},
    {"address": "2001:db8::1", "port": 443, "scheduler": "wlc", "persistence": {"timeout": 600, "netmask": 64},
     "dests": [{"address": "2001:db8::10", "method": "tun"}, {"address": "2001:db8::11", "weight": 0}]},
    {"fwmark": 7, "scheduler": "mh", "schedulerFlags": ["mh-port"], "persistence": {"timeout": 30, "netmask": "255.255.255.0"},
     "dests": [{"address": "10.3.3.3", "method": "tun", "tunnel": {"type": "gue", "port": 6080, "checksum": "csum"}},
               {"address": "10.3.3.4", "method": "tun", "tunnel": {"type": "gre", "checksum": "remcsum"}}]},
    {"fwmark": 8, "family": "ipv6", "scheduler": "lblcr", "dests": [{"address": "2001:db8::20", "method": "dr"}]},
    {"address": "10.1.1.2", "port": 9999, "protocol": "sctp", "scheduler": "twos", "dests": [{"address": "10.2.2.9", "method": "dr"}]},
    {"address": "10.1.1.3", "port": 0, "scheduler": "fo", "persistence": {"timeout": 100},
     "dests": [{"address": "10.2.2.7", "port": 0, "method": "dr"}]},
    {"address": "10.1.1.4", "port": 80, "protocol": "sctp", "scheduler": "ovf",
     "dests": [{"address": "10.2.2.8", "weight": 5}]},
]}


def _changed(doc: dict) -> dict:
    import copy
    d = copy.deepcopy(doc)
    d["services"][0]["scheduler"] = "wrr"  # SetService
    d["services"][0]["dests"][0]["weight"] = 7  # SetDest
    d["services"][0]["dests"].pop(1)  # DelDest
    d["services"][0]["dests"].append({"address": "10.2.2.4", "port": 8080})  # AddDest
    d["services"].pop(4)  # DelService (fwmark 8, IPv6)
    d["services"][2]["persistence"] = {"timeout": 60}  # IPv6 netmask back to /128
    return d


def test_batch_engine_state_matches_the_pyroute2_oracle(tmp_path):
    """The batched engine programs host a; pyroute2 writes the same IPVS ops
    in host b: the same result codes, the same tables (ipvsadm), and pyroute2
    reads back from a what the batched client reads."""
    with Lab() as lab:
        a, b = lab.host("batch"), lab.host("perop")
        lab.apply()
        ea = Engine(tmp_path / "a.json", netns=a)
        try:
            for doc in (RICH, _changed(RICH), {}):
                ra = ea.reconcile(spec(doc))
                ipvs = [(op, err) for op, err in ra.results if isinstance(op, O.IPVS_OPS)]
                rb = list(zip([op for op, _ in ipvs], oracle_apply(b, [op for op, _ in ipvs])))
                codes = lambda r: [(str(op), (err or "").split(":")[0]) for op, err in r]  # noqa: E731
                assert codes(ipvs) == codes(rb)
                for args in (("-Sn",), ("-Ln", "--thresholds"), ("-Ln", "--tun-info")):
                    assert ipvsadm(lab, a, *args) == ipvsadm(lab, b, *args), args
                assert oracle_read(a).services == ea.table().services
                vips = sorted(x.split()[3] for x in lab.run(a, "ip", "-o", "addr", "show", "dev", "kube-lvs0",
                                                            check=False).stdout.splitlines()
                              if "scope global" in x)
                assert vips == (["10.1.1.1/32", "2001:db8::1/128"] if doc.get("services") else [])
                # Only twos (absent from 6.1) fails, and the engine converges.
                assert {k.port for k in ra.service_errors} <= {9999}
                assert [op for op in ea.reconcile(spec(doc)).ops if not isinstance(op, (O.AddService, O.AddDest))] == []
            assert ipvsadm(lab, a, "-Sn") == ""
        finally:
            ea.close()


@pytest.mark.parametrize("foreign_writer", ["ipvsadm", "pyroute2"])
def test_add_service_race_never_touches_the_foreign_service(bare, foreign_writer):
    """A service that appears between observe and apply (EEXIST), written by
    ipvsadm or by pyroute2: the add is reported, its dests are not sent to
    the foreign service, and settle leaves it unowned."""
    lab, ns, _ = bare
    from lvs_agent.apply import Applier
    s = spec({"services": [{"address": "10.5.5.5", "port": 80, "dests": [{"address": "10.6.6.6"}]},
                           {"address": "10.5.5.6", "port": 80, "dests": [{"address": "10.6.6.7"}]}]})
    if foreign_writer == "ipvsadm":
        ipvsadm(lab, ns, "-A", "-t", "10.5.5.5:80", "-s", "rr")
    else:
        assert oracle_apply(ns, [O.AddService(s.services[0])]) == [None]
    before = ipvsadm(lab, ns, "-Sn")
    ops = [O.AddService(s.services[0]), O.AddDest(s.services[0], s.services[0].dests[0]),
           O.AddService(s.services[1]), O.AddDest(s.services[1], s.services[1].dests[0]),
           O.DelService(ServiceKey("ipv4", "tcp", "10.9.9.9", 80)),
           O.DelDest(s.services[1].key, DestKey("10.6.6.99", 80))]
    app = Applier(ns)
    try:
        res = [(err or "").split(":")[0] for _, err in app.apply(ops)]
    finally:
        app.close()
    assert res == ["EEXIST", "ECANCELED", "", "", "", ""], res
    after = ipvsadm(lab, ns, "-Sn")
    assert [x for x in after.splitlines() if "10.5.5.5:" in x] == before.splitlines()
    assert "-a -t 10.5.5.6:80 -r 10.6.6.7:80 -m -w 1" in after
