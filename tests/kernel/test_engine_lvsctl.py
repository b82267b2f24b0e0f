"""``lvsctl list`` / ``lvsctl save`` print exactly what Debian's ipvsadm prints
for the same live table: services of every shape (ours, programmed by the
engine, and foreign ones added with ipvsadm), with counters from real traffic.
"""
from __future__ import annotations

import time

import pytest

from lvs_agent import lvsctl as L
from lvs_agent.engine import Engine
from lvs_lab import topology
from lvs_model.nodespec import parse_node_spec

FOREIGN = """\
-A -t 192.168.0.30:443 -s lblc -p 300 -M 255.255.0.0
-a -t 192.168.0.30:443 -r 10.0.0.51:443 -m -w 4
-A -u 10.77.0.1:5060 -s rr -p 60
-A --sctp-service 10.77.0.2:3868 -s ovf
-a --sctp-service 10.77.0.2:3868 -r 10.0.0.52:3868 -g -w 2
-A -f 4242 -6 -s nq
-A -t 200.1.1.1:80 -s sed
-a -t 200.1.1.1:80 -r 240.0.0.1:80 -m -w 1
-a -t 200.1.1.1:80 -r 1.1.1.1:80 -m -w 1
-a -t 200.1.1.1:80 -r 192.168.1.1:80 -m -w 1
-A -t 1.2.3.4:80 -s rr
"""


def ours(t) -> dict:
    return {"services": [
        {"address": t.vip, "port": 80, "scheduler": "wrr",
         "dests": [{"address": rip, "weight": w, "upperThreshold": 100 * w, "lowerThreshold": 10 * w}
                   for rip, w in zip(t.rips, (3, 1))]},
        {"address": t.vip, "port": 81, "protocol": "udp", "scheduler": "sh", "onePacket": True,
         "schedulerFlags": ["sh-fallback", "sh-port"], "dests": [{"address": t.rips[0], "port": 80}]},
        {"address": "2001:db8:ffff:ffff:ffff:ffff:ffff:1", "port": 65535, "scheduler": "mh",
         "schedulerFlags": ["mh-port"], "persistence": {"timeout": 3600, "netmask": 96},
         "dests": [{"address": "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "method": "tun"},
                   {"address": "2001:db8::2", "method": "tun", "tunnel": {"type": "gue", "port": 5555}}]},
        {"fwmark": 99, "scheduler": "fo",
         "dests": [{"address": "10.0.0.99", "method": "tun", "tunnel": {"type": "gre", "checksum": "csum"}},
                   {"address": "10.0.0.98", "method": "dr", "weight": 65535}]},
    ]}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    with topology.seed_nat(serve=True) as t:
        yield from _programmed(t, tmp_path_factory.mktemp("lvsctl"))


def _programmed(t, tmp_path):
    t.lab.run(t.director, "ipvsadm", "-R", input=FOREIGN)
    # A persistence engine where the kernel has one (ip_vs_pe_sip autoloads).
    t.ipvsadm("-A", "-u", "10.77.0.3:5060", "-s", "rr", "-p", "60", "--pe", "sip")
    spec, errors = parse_node_spec(ours(t))
    assert not errors, errors
    with Engine(tmp_path / "own.json", netns=t.director) as e:
        r = e.reconcile(spec)
        assert r.ok, (r.service_errors, r.errors)
        t.wait_tcp()
        t.tcp_names(8)  # counters, and inactive connections in the table
        yield t
        e.reconcile(parse_node_spec({})[0])
    t.ipvsadm("-C")  # only this test's namespace


def lvsctl_out(capsys, *args: str) -> str:
    capsys.readouterr()
    assert L.main(list(args)) == 0
    return capsys.readouterr().out


def same(capsys, t, lv_args: list[str], ipvsadm_args: list[str], tries: int = 4) -> None:
    """Equal output; retried when the table moved between the two reads
    (a connection expiring, the rate estimator's 2 s tick)."""
    for _ in range(tries):
        mine = lvsctl_out(capsys, *lv_args, "--netns", t.director)
        theirs = t.ipvsadm(*ipvsadm_args).stdout
        if mine == theirs:
            return
    assert mine == theirs


def test_list_numeric_matches_ipvsadm(table, capsys):
    t = table
    out = t.ipvsadm("-Ln").stdout
    assert "pe sip" in out and "FWM  4242 IPv6" in out and "Tunnel" in out and "(sh-fallback,sh-port)" in out
    same(capsys, t, ["list", "-n"], ["-Ln"])


@pytest.mark.parametrize("opts", [["--stats"], ["--stats", "--exact"], ["--rate"], ["--thresholds"],
                                  ["--persistent-conn"], ["--tun-info"]], ids=" ".join)
def test_list_variants_match_ipvsadm(table, capsys, opts):
    t = table
    if "--stats" in opts:
        def counted() -> bool:
            return any(int(x.split()[2]) > 0 for x in t.ipvsadm("-Ln", "--stats").stdout.splitlines()
                       if x.startswith("  -> ") and "RemoteAddress" not in x)
        if not counted():  # the fixture's requests can all time out on a loaded host
            assert any(t.tcp_names(8)), "no request got through the VIP"
        # Kernel 6.1 folds the per-CPU counters into what it reports only on the
        # estimator's 2 s tick: give it a few ticks.
        deadline = time.monotonic() + 10
        while not counted() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert counted(), "no traffic counted"
    same(capsys, t, ["list", "-n", *opts], ["-Ln", *opts])


def test_save_matches_ipvsadm(table, capsys):
    t = table
    same(capsys, t, ["save", "-n"], ["-Sn"])
    # And what lvsctl saves, ipvsadm restores to the same table.
    saved = lvsctl_out(capsys, "save", "-n", "--netns", t.director)
    t.ipvsadm("-C")
    t.lab.run(t.director, "ipvsadm", "-R", input=saved)
    assert t.ipvsadm("-Sn").stdout == saved
