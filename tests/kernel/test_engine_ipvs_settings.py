"""Kernel-wide IPVS settings from a node spec (what an IPVSSettings compiles
to) on a real kernel: the engine sets the connection timeouts over generic
netlink and the net.ipv4.vs sysctls, ``ipvsadm -L --timeout`` in the same
namespace shows the timeouts and ``lvsctl list --timeout`` prints the same
line; removing them from the spec puts the originals back, except a value
somebody set by hand after the engine wrote its own.

Fails before the change: the node spec refused ``timeouts`` (unknown field),
the engine had no way to program them and lvsctl had no ``--timeout``.
"""
from __future__ import annotations

from lvs_agent import lvsctl as L
from lvs_agent.engine import Engine
from lvs_model.nodespec import parse_node_spec_strict

SYSCTLS = ("net.ipv4.vs.expire_nodest_conn", "net.ipv4.vs.sloppy_tcp", "net.ipv4.vs.conn_reuse_mode")


def _service(t) -> dict:
    return {"address": t.vip, "port": 80, "scheduler": "rr",
            "dests": [{"address": rip, "port": 80} for rip in t.rips]}


def _spec(t, **extra):
    return parse_node_spec_strict({"services": [_service(t)], **extra})


def _timeout_line(t) -> str:
    return t.ipvsadm("-L", "--timeout").stdout


def _sysctls(t) -> dict[str, str]:
    return {n: t.lab.run(t.director, "sysctl", "-n", n).stdout.strip() for n in SYSCTLS}


def _lvsctl_timeout(capsys, t) -> str:
    capsys.readouterr()
    assert L.main(["list", "--timeout", "--netns", t.director]) == 0
    return capsys.readouterr().out


def test_timeouts_and_sysctls_set_shown_by_ipvsadm_and_restored(seed_nat, tmp_path, capsys):
    t = seed_nat
    original_line = _timeout_line(t)
    assert original_line.startswith("Timeout (tcp tcpfin udp): ")
    with Engine(tmp_path / "own.json", netns=t.director) as e:
        # Without settings: today's defaults on a director.
        r = e.reconcile(_spec(t))
        assert r.ok, (r.service_errors, r.errors)
        defaults = _sysctls(t)
        assert defaults["net.ipv4.vs.expire_nodest_conn"] == "1"
        assert _timeout_line(t) == original_line
        sloppy0, reuse0 = defaults["net.ipv4.vs.sloppy_tcp"], defaults["net.ipv4.vs.conn_reuse_mode"]

        declared = _spec(t, timeouts={"tcp": 600, "tcpFin": 45, "udp": 90},
                         sysctls={"net.ipv4.vs.expire_nodest_conn": "0", "net.ipv4.vs.sloppy_tcp": "1",
                                  "net.ipv4.vs.conn_reuse_mode": "0"})
        r = e.reconcile(declared)
        assert r.ok, (r.service_errors, r.errors)
        assert _timeout_line(t) == "Timeout (tcp tcpfin udp): 600 45 90\n"
        assert _lvsctl_timeout(capsys, t) == _timeout_line(t)  # ipvsadm's own output, byte for byte
        assert _sysctls(t) == {"net.ipv4.vs.expire_nodest_conn": "0", "net.ipv4.vs.sloppy_tcp": "1",
                               "net.ipv4.vs.conn_reuse_mode": "0"}
        assert not e.reconcile(declared).results  # read back equal: nothing to do

        # Removed from the spec: the originals come back, the director's defaults stay.
        r = e.reconcile(_spec(t))
        assert r.ok, (r.service_errors, r.errors)
        assert _timeout_line(t) == original_line
        assert _lvsctl_timeout(capsys, t) == original_line
        assert _sysctls(t) == {"net.ipv4.vs.expire_nodest_conn": "1", "net.ipv4.vs.sloppy_tcp": sloppy0,
                               "net.ipv4.vs.conn_reuse_mode": reuse0}

        # A value set by hand after ours is not ours to undo.
        e.reconcile(_spec(t, timeouts={"tcp": 600, "tcpFin": 45}))
        t.ipvsadm("--set", "700", "0", "0")
        e.reconcile(_spec(t))
        tcp0, fin0, udp0 = original_line.split(":")[1].split()
        assert _timeout_line(t) == f"Timeout (tcp tcpfin udp): 700 {fin0} {udp0}\n"
        t.ipvsadm("--set", tcp0, "0", "0")  # this test's namespace only
        e.reconcile(parse_node_spec_strict({}))
