"""`lvsctl import`: the seed's NAT and TUN rule sets round-trip through the CRs.

The save files below are what `ipvsadm -Sn` prints after the seed notes'
commands (../shared/seed/000_5b7713e7ae6b680f.txt): its first example on
0.0.0.0:80, its NAT setup (VIP 192.168.0.30, real servers 10.0.0.51/52) and
its TUN setup (VIP 192.168.1.3, real servers 192.168.1.10/11, `-r $RIP`
without a port, so ipvsadm uses the service's).
"""
from __future__ import annotations

import yaml

from lvs_operator import importer
from lvs_operator.compiler import compile_cluster
from lvs_model.nodespec import parse_node_spec

SEED_FIRST = """\
-A -t 0.0.0.0:80 -s wlc
-a -t 0.0.0.0:80 -r 192.168.100.112:80 -m -w 1
-a -t 0.0.0.0:80 -r 192.168.100.113:80 -m -w 1
"""
SEED_NAT = """\
-A -t 192.168.0.30:80 -s wlc
-a -t 192.168.0.30:80 -r 10.0.0.51:80 -m -w 1
-a -t 192.168.0.30:80 -r 10.0.0.52:80 -m -w 1
"""
SEED_TUN = """\
-A -t 192.168.1.3:80 -s wlc
-a -t 192.168.1.3:80 -r 192.168.1.10:80 -i -w 1 --tun-type ipip
-a -t 192.168.1.3:80 -r 192.168.1.11:80 -i -w 1 --tun-type ipip
"""
# ipvsadm before 1.30 saved tunnel dests without --tun-type: imported the same.
SEED_TUN_OLD = SEED_TUN.replace(" --tun-type ipip", "")
MORE = """\
-A -u [2001:db8::10]:53 -s mh -o -b mh-fallback,mh-port
-a -u [2001:db8::10]:53 -r [fd00::51]:53 -i -w 3 --tun-type gue --tun-port 6080 --tun-csum
-a -u [2001:db8::10]:53 -r [fd00::52]:53 -i -w 1 --tun-type gue --tun-port 6080 --tun-csum
-A -f 100 -s rr -p 600 -M 255.255.255.0
-a -f 100 -r 10.0.0.51:0 -g -w 2 -x 100 -y 50
-A -t 192.168.0.31:0 -s sh -p 300
-a -t 192.168.0.31:0 -r 10.0.0.52:0 -g -w 1
-A --sctp-service 192.168.0.32:9000 -s wrr
-a --sctp-service 192.168.0.32:9000 -r 10.0.0.51:9001 -m -w 4
-A -t 192.168.0.33:80 -s wlc
-a -t 192.168.0.33:80 -r 10.0.1.1:80 -i -w 1 --tun-type gre --tun-csum
-a -t 192.168.0.33:80 -r 10.0.1.2:80 -i -w 1 --tun-type ipip
-a -t 192.168.0.33:80 -r 10.0.1.3:80 -i -w 1 --tun-type gre --tun-nocsum
"""


def run(tmp_path, capsys, text, *args):
    f = tmp_path / "rules.txt"
    f.write_text(text)
    rc = importer.main([str(f), "--namespace", "web", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def round_trip(yaml_text: str) -> str:
    """Apply the imported objects to the compiler (one fake director) and save the result."""
    objs = list(yaml.safe_load_all(yaml_text))
    by_kind = {k: [o for o in objs if o["kind"] == k] for k in ("VIPPool", "VirtualService", "RealServer")}
    for o in objs:
        o["metadata"].setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
    node = {"metadata": {"name": "director", "labels": {"lvs.kube-lvs.io/director": "true"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.30"}]}}
    r = compile_cluster(by_kind["VirtualService"], by_kind["RealServer"], by_kind["VIPPool"], [node])
    for st in r.vs_status.values():
        assert st["conditions"][0]["status"] == "True", st["conditions"][0]
    for st in r.rs_status.values():
        assert st["conditions"][0]["status"] == "True", st["conditions"][0]
    lines = []
    for name in sorted(r.nodestates):
        spec, errors = parse_node_spec(r.nodestates[name]["spec"])
        assert errors == []
        for svc in spec.services:
            lines += importer.save_lines(svc)
    return "".join(line + "\n" for line in lines)


def test_seed_nat_round_trip(tmp_path, capsys):
    rc, out, err = run(tmp_path, capsys, SEED_NAT)
    assert rc == 0 and err == ""
    objs = list(yaml.safe_load_all(out))
    assert [o["kind"] for o in objs] == ["VIPPool", "VirtualService", "RealServer", "RealServer"]
    assert objs[0]["spec"] == {"addresses": ["192.168.0.30/32"], "namespaces": ["web"]}
    assert objs[1]["spec"] == {"address": "192.168.0.30", "port": 80, "protocol": "tcp", "scheduler": "wlc",
                               "method": "nat",
                               "directorSelector": {"matchLabels": {"lvs.kube-lvs.io/director": "true"}}}
    assert [o["spec"] for o in objs[2:]] == [
        {"virtualService": "tcp-192-168-0-30-80", "address": "10.0.0.51", "port": 80, "weight": 1},
        {"virtualService": "tcp-192-168-0-30-80", "address": "10.0.0.52", "port": 80, "weight": 1}]
    assert round_trip(out) == SEED_NAT


def test_seed_tun_round_trip(tmp_path, capsys):
    rc, out, err = run(tmp_path, capsys, SEED_TUN)
    assert rc == 0
    vs = list(yaml.safe_load_all(out))[1]
    assert vs["spec"]["method"] == "tun"
    assert round_trip(out) == SEED_TUN
    rc, old, err = run(tmp_path, capsys, SEED_TUN_OLD)
    assert rc == 0 and list(yaml.safe_load_all(old)) == list(yaml.safe_load_all(out))


def test_seed_first_example_on_0000_needs_a_real_vip(tmp_path, capsys):
    rc, out, err = run(tmp_path, capsys, SEED_FIRST)
    assert rc == 2 and out == ""
    assert "0.0.0.0:80 never matches a packet" in err and "--vip" in err
    rc, out, err = run(tmp_path, capsys, SEED_FIRST, "--vip", "192.168.100.10")
    assert rc == 0
    assert "WARNING" in err and "192.168.100.10" in err
    assert "# WARNING: line 1: 0.0.0.0:80 never matches a packet" in out  # said in the YAML too
    vs = list(yaml.safe_load_all(out))[1]
    assert vs["spec"]["address"] == "192.168.100.10"
    assert vs["metadata"]["annotations"] == {"lvs.kube-lvs.io/imported-address": "0.0.0.0"}
    assert round_trip(out) == SEED_FIRST.replace("0.0.0.0", "192.168.100.10")


def test_everything_else_round_trips(tmp_path, capsys):
    rc, out, err = run(tmp_path, capsys, MORE)
    assert rc == 0, err
    objs = list(yaml.safe_load_all(out))
    assert objs[0]["spec"]["fwmarks"] == [{"first": 100, "last": 100}]
    expect = sorted(MORE.splitlines())
    got = sorted(round_trip(out).splitlines())
    assert got == expect


def test_hostnames_are_refused(tmp_path, capsys):
    rc, out, err = run(tmp_path, capsys, "-A -t www.example.com:http -s wlc\n")
    assert rc == 2 and "ipvsadm -Sn" in err
