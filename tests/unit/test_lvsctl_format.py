"""lvsctl's ipvsadm-compatible output, from IPVSTable objects (no kernel).

The golden texts were printed by Debian's ipvsadm 1.31 in the lab VM for the
same table (tests/kernel/test_engine_lvsctl.py compares the two live).
"""
from __future__ import annotations

import functools
import random
import sys
import types

import pytest
from hypothesis import given, strategies as st

from lvs_agent import lvsctl as L
from lvs_agent.ipvs_codec import (DestRuntime, IPVSTable, Stats, decode_service, ipv6_netmask_decode,
                                  ipv6_netmask_encode, sched_flag_names, svc_flags)
from lvs_agent.sysctl import sysctl_path
from lvs_model.nodespec import Dest, Service, parse_node_spec


def table_of(*services: Service, **kw) -> IPVSTable:
    t = IPVSTable(**kw)
    for s in services:
        t.services[s.key] = s
    return t


def svc(address="", port=0, protocol="tcp", family=None, **kw) -> Service:
    family = family or ("ipv6" if ":" in address else "ipv4")
    if kw.get("fwmark"):
        protocol = ""
    return Service(family=family, protocol=protocol, address=address, port=port, **kw)


# The table of the VM run, in the order the kernel dumped it (dests newest first).
SAMPLE = table_of(
    svc("10.1.1.1", 80, scheduler="rr",
        dests=(Dest("10.2.2.3", 8080), Dest("10.2.2.2", 8080, weight=3, upper_threshold=10, lower_threshold=5))),
    svc("10.1.1.1", 53, "udp", scheduler="sh", scheduler_flags=("sh-fallback", "sh-port"), one_packet=True,
        dests=(Dest("10.2.2.2", 53, method="dr"),)),
    svc("2001:db8::1", 443, scheduler="wlc", persistence_timeout=600, persistence_netmask="64",
        dests=(Dest("2001:db8::11", 443, weight=0), Dest("2001:db8::10", 443, method="tun"))),
    svc(fwmark=7, scheduler="mh", scheduler_flags=("mh-port",), persistence_timeout=30,
        persistence_netmask="255.255.255.0",
        dests=(Dest("10.3.3.4", 0, method="tun", tunnel_type="gre", tunnel_csum="remcsum"),
               Dest("10.3.3.3", 0, method="tun", tunnel_type="gue", tunnel_port=6080, tunnel_csum="csum"))),
    svc(fwmark=8, family="ipv6", scheduler="lc", dests=(Dest("2001:db8::20", 0, method="dr"),)),
    svc("200.1.1.1", 80, scheduler="nq",
        dests=(Dest("240.0.0.1", 80), Dest("1.1.1.1", 80), Dest("192.168.1.1", 80), Dest("10.2.2.2", 80))),
    svc("1.1.1.1", 80, "sctp", scheduler="sed", dests=(Dest("10.2.2.2", 80, method="dr"),)),
    svc("10.1.1.3", 0, persistence_timeout=100, dests=(Dest("10.2.2.7", 0, method="dr"),)),
)

LIST_N = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  200.1.1.1:80 nq
  -> 192.168.1.1:80               Masq    1      0          0         
  -> 240.0.0.1:80                 Masq    1      0          0         
  -> 1.1.1.1:80                   Masq    1      0          0         
  -> 10.2.2.2:80                  Masq    1      0          0         
TCP  10.1.1.1:80 rr
  -> 10.2.2.2:8080                Masq    3      0          0         
  -> 10.2.2.3:8080                Masq    1      0          0         
TCP  10.1.1.3:0 wlc persistent 100
  -> 10.2.2.7:0                   Route   1      0          0         
UDP  10.1.1.1:53 sh (sh-fallback,sh-port) ops
  -> 10.2.2.2:53                  Route   1      0          0         
SCTP 1.1.1.1:80 sed
  -> 10.2.2.2:80                  Route   1      0          0         
TCP  [2001:db8::1]:443 wlc persistent 600 mask 64
  -> [2001:db8::10]:443           Tunnel  1      0          0         
  -> [2001:db8::11]:443           Masq    0      0          0         
FWM  7 mh (mh-port) persistent 30 mask 255.255.255.0
  -> 10.3.3.3:0                   Tunnel  1      0          0         
  -> 10.3.3.4:0                   Tunnel  1      0          0         
FWM  8 IPv6 lc
  -> [2001:db8::20]:0             Route   1      0          0         
"""

SAVE_N = """\
-A -t 200.1.1.1:80 -s nq
-a -t 200.1.1.1:80 -r 192.168.1.1:80 -m -w 1
-a -t 200.1.1.1:80 -r 240.0.0.1:80 -m -w 1
-a -t 200.1.1.1:80 -r 1.1.1.1:80 -m -w 1
-a -t 200.1.1.1:80 -r 10.2.2.2:80 -m -w 1
-A -t 10.1.1.1:80 -s rr
-a -t 10.1.1.1:80 -r 10.2.2.2:8080 -m -w 3
-a -t 10.1.1.1:80 -r 10.2.2.3:8080 -m -w 1
-A -t 10.1.1.3:0 -s wlc -p 100
-a -t 10.1.1.3:0 -r 10.2.2.7:0 -g -w 1
-A -u 10.1.1.1:53 -s sh -o -b sh-fallback,sh-port
-a -u 10.1.1.1:53 -r 10.2.2.2:53 -g -w 1
-A --sctp-service 1.1.1.1:80 -s sed
-a --sctp-service 1.1.1.1:80 -r 10.2.2.2:80 -g -w 1
-A -t [2001:db8::1]:443 -s wlc -p 600 -M 64
-a -t [2001:db8::1]:443 -r [2001:db8::10]:443 -i -w 1 --tun-type ipip
-a -t [2001:db8::1]:443 -r [2001:db8::11]:443 -m -w 0
-A -f 7 -s mh -p 30 -M 255.255.255.0 -b mh-port
-a -f 7 -r 10.3.3.3:0 -i -w 1 --tun-type gue --tun-port 6080 --tun-csum
-a -f 7 -r 10.3.3.4:0 -i -w 1 --tun-type gre --tun-remcsum
-A -f 8 -6 -s lc
-a -f 8 -6 -r [2001:db8::20]:0 -g -w 1
"""


def test_list_numeric_is_ipvsadm_Ln():
    assert L.format_list(SAMPLE) == LIST_N


def test_save_numeric_is_ipvsadm_Sn():
    assert L.format_save(SAMPLE) == SAVE_N


def test_empty_table():
    assert L.format_list(IPVSTable()) == LIST_N.split("TCP")[0]
    assert L.format_save(IPVSTable()) == ""


def test_header_uses_the_kernels_version_and_table_size():
    t = IPVSTable(version=0x010203, conn_tab_size=1048576)
    assert L.format_list(t).splitlines()[0] == "IP Virtual Server version 1.2.3 (size=1048576)"


def test_pe_and_thresholds_and_persistent_conn_and_tun_info():
    s = svc("10.9.9.9", 5060, "udp", scheduler="rr", persistence_timeout=60,
            dests=(Dest("10.8.8.8", 5060, weight=2, upper_threshold=100, lower_threshold=10),
                   Dest("10.8.8.9", 5060, method="tun", tunnel_type="gue", tunnel_port=6080)))
    t = table_of(s)
    t.pe_names[s.key] = "sip"
    t.dest_runtime[(s.key, s.dests[0].key)] = DestRuntime(active=3, inactive=7, persistent=2)
    assert L.format_list(t).splitlines()[3:] == [
        "UDP  10.9.9.9:5060 rr persistent 60 pe sip",
        "  -> 10.8.8.8:5060                Masq    2      3          7         ",
        "  -> 10.8.8.9:5060                Tunnel  1      0          0         ",
    ]
    assert L.format_save(t).splitlines()[0] == "-A -u 10.9.9.9:5060 -s rr -p 60 --pe sip"
    assert L.format_list(t, "thresholds").splitlines()[1:] == [
        "Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn ",
        "  -> RemoteAddress:Port",
        "UDP  10.9.9.9:5060 rr persistent 60 pe sip",
        "  -> 10.8.8.8:5060                100        10         3          7         ",
        "  -> 10.8.8.9:5060                0          0          0          0         ",
    ]
    assert L.format_list(t, "persistent-conn").splitlines()[1:4:2] == [
        "Prot LocalAddress:Port            Weight    PersistConn ActiveConn InActConn ",
        "UDP  10.9.9.9:5060 rr persistent 60 pe sip",
    ]
    assert L.format_list(t, "persistent-conn").splitlines()[4] == \
        "  -> 10.8.8.8:5060                2         2           3          7         "
    assert L.format_list(t, "tun-info").splitlines()[1:] == [
        "Prot LocalAddress:Port Scheduler Flags",
        "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn",
        "UDP  10.9.9.9:5060 rr persistent 60 pe sip",
        "  -> 10.8.8.8:5060                Masq    n/a           2      3          7         ",
        "  -> 10.8.8.9:5060                Tunnel  gue:6080:-c   1      0          0         ",
    ]


def test_stats_and_rate_layouts():
    s = svc("192.168.0.30", 80, scheduler="wrr", dests=(Dest("10.0.0.51", 80),))
    t = table_of(s)
    t.service_stats[s.key] = Stats(conns=12, inpkts=123456789, outpkts=99, inbytes=5_000_000_000,
                                   outbytes=250_000_000_000_000, cps=1, inpps=2, outpps=3, inbps=400, outbps=500)
    t.dest_runtime[(s.key, s.dests[0].key)] = DestRuntime(
        stats=Stats(conns=12, inpkts=7, outpkts=8, inbytes=900, outbytes=1000, cps=1, inpps=2, outpps=3,
                    inbps=123_456_789, outbps=5))
    assert L.format_list(t, "stats").splitlines()[1:] == [
        "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes",
        "  -> RemoteAddress:Port",
        "TCP  192.168.0.30:80                    12  123456K       99    5000M     250T",
        "  -> 10.0.0.51:80                       12        7        8      900     1000",
    ]
    assert L.format_list(t, "stats", exact=True).splitlines()[3] == \
        "TCP  192.168.0.30:80                    12 123456789       99 5000000000 250000000000000"
    assert L.format_list(t, "rate").splitlines()[1:] == [
        "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS",
        "  -> RemoteAddress:Port",
        "TCP  192.168.0.30:80                     1        2        3      400      500",
        "  -> 10.0.0.51:80                        1        2        3  123456K        5",
    ]


@pytest.mark.parametrize("n, text", [(0, "        0"), (99_999_999, " 99999999"), (100_000_000, "  100000K"),
                                     (999_999_999, "  999999K"), (1_000_000_000, "    1000M"),
                                     (99_999_999_999, "   99999M"), (100_000_000_000, "     100G"),
                                     (100_000_000_000_000, "     100T")])
def test_largenum(n, text):
    assert L.largenum(n) == text


def test_largenum_exact():
    assert L.largenum(5, exact=True) == "        5"
    assert L.largenum(123456789, exact=True) == " 123456789"


def test_names_without_n_are_resolved_like_ipvsadm():
    namer = L.Namer(numeric=False, host=lambda a: {"10.0.0.51": "rs1"}.get(a, a),
                    port=lambda p, proto: {80: "http"}.get(p, str(p)))
    s = svc("192.168.0.30", 80, scheduler="rr", dests=(Dest("10.0.0.52", 81), Dest("10.0.0.51", 80)))
    s6 = svc("fd00::30", 80, scheduler="rr", dests=(Dest("fd00::1", 81),))
    lines = L.format_list(table_of(s, s6), numeric=False, namer=namer).splitlines()
    assert lines[3:] == ["TCP  192.168.0.30:http rr",
                         "  -> rs1:http                     Masq    1      0          0         ",
                         "  -> 10.0.0.52:81                 Masq    1      0          0         ",
                         "TCP  [fd00::30]:http rr",
                         "  -> [fd00::1]:81                 Masq    1      0          0         "]


def test_long_ipv4_names_are_cut_like_ipvsadm():
    namer = L.Namer(numeric=False, host=lambda a: "a-very-long-host-name.example.org", port=lambda p, q: "http")
    s = svc("192.168.0.30", 80, scheduler="rr", dests=(Dest("10.0.0.51", 80),))
    lines = L.format_list(table_of(s), numeric=False, namer=namer).splitlines()
    assert lines[3] == "TCP  a-very-long-host-name.exampl rr"  # cut at 33 characters
    assert lines[4].startswith("  -> a-very-long-host-name.exampl Masq")  # cut at 28


# --------------------------------------------------------------------------
# ipvsadm's sort
# --------------------------------------------------------------------------

def test_address_comparison_wraps_around_like_c():
    a, b = svc("200.1.1.1", 80), svc("10.1.1.1", 80)
    # 0xC8010101 - 0x0A010101 does not fit an int: negative, so 200.x sorts first.
    assert L.cmp_services(a, b) < 0 and L.cmp_services(b, a) > 0
    assert L.cmp_services(svc("10.1.1.1", 80), svc("10.1.1.3", 0)) < 0
    assert L.cmp_services(svc("10.1.1.1", 80), svc("10.1.1.1", 53, "udp")) < 0  # protocol before address
    assert L.cmp_services(svc(fwmark=1), svc("10.1.1.1", 80)) > 0  # fwmark 0 first
    assert L.cmp_services(svc("fd00::1", 80), svc("10.1.1.1", 80)) > 0  # AF_INET6 after AF_INET


def test_msort_takes_the_left_run_on_ties():
    items = [(1, "a"), (0, "b"), (1, "c"), (0, "d")]
    assert L.glibc_msort(items, lambda x, y: x[0] - y[0]) == [(0, "b"), (0, "d"), (1, "a"), (1, "c")]


@given(st.lists(st.integers(-50, 50), max_size=40))
def test_msort_is_a_stable_sort_for_total_orders(xs):
    pairs = list(enumerate(xs))
    got = L.glibc_msort(pairs, lambda a, b: a[1] - b[1])
    assert got == sorted(pairs, key=lambda p: p[1])


def test_dest_order_from_the_kernels_list_order():
    # The kernel lists dests newest first; ipvsadm's wrap-around sort then gives this.
    ds = [Dest(a, 80) for a in ("240.0.0.1", "1.1.1.1", "192.168.1.1", "10.2.2.2")]
    got = [d.address for d in L.glibc_msort(ds, L.cmp_dests)]
    assert got == ["192.168.1.1", "240.0.0.1", "1.1.1.1", "10.2.2.2"]


def test_sorting_random_ipv4_tables_never_loses_services():
    rnd = random.Random(7)
    svcs = [svc(f"{rnd.randrange(256)}.{rnd.randrange(256)}.0.1", rnd.randrange(1, 65535)) for _ in range(50)]
    assert sorted(map(id, L.glibc_msort(svcs, L.cmp_services))) == sorted(map(id, svcs))


# --------------------------------------------------------------------------
# Kernel values the printers rely on
# --------------------------------------------------------------------------

def test_decoded_services_equal_the_specs():
    doc = {"services": [
        {"address": "10.0.0.1", "port": 80, "scheduler": "rr"},
        {"address": "fd00::1", "port": 80, "persistence": {"timeout": 30, "netmask": 64}},
        {"fwmark": 5, "scheduler": "sh", "schedulerFlags": ["sh-port"], "persistence": {"timeout": 9}},
        {"address": "10.0.0.2", "port": 53, "protocol": "udp", "onePacket": True},
    ]}
    spec, errors = parse_node_spec(doc)
    assert not errors
    HASHED = 0x2
    for s in spec.services:
        fam = 10 if s.family == "ipv6" else 2
        mask = ipv6_netmask_encode(int(s.netmask)) if fam == 10 else s.netmask
        got = decode_service(fam, {"tcp": 6, "udp": 17, "": 0}[s.protocol], s.address or None, s.port,
                             s.fwmark, s.scheduler, svc_flags(s) | HASHED, s.persistence_timeout, mask)
        assert got == s and got.attrs() == s.attrs()


def test_non_persistent_service_ignores_the_kernels_timeout_and_default_mask():
    got = decode_service(2, 6, "10.0.0.1", 80, 0, "wlc", 0x2, 300, "255.255.255.255")
    assert got.persistence_timeout == 0 and got.persistence_netmask == ""
    got6 = decode_service(10, 6, "fd00::1", 80, 0, "wlc", 0x2, 0, ipv6_netmask_encode(128))
    assert got6.persistence_netmask == "" and got6.netmask == "128"


def test_ipv6_netmask_is_a_prefix_length_in_an_ipv4_shaped_attribute():
    assert ipv6_netmask_encode(128) == "128.0.0.0"  # as pyroute2 decodes it on little-endian hosts
    assert ipv6_netmask_decode(ipv6_netmask_encode(64)) == 64


def test_sched_flags_names_per_scheduler():
    assert sched_flag_names("sh", 0x8 | 0x10) == ("sh-fallback", "sh-port")
    assert sched_flag_names("mh", 0x10) == ("mh-port",)
    assert sched_flag_names("rr", 0x8 | 0x20) == ("flag-1", "flag-3")
    s = svc("10.0.0.1", 80, scheduler="rr", scheduler_flags=("flag-1", "flag-3"))
    assert svc_flags(s) == 0x28 and s.flags == 0x28
    assert L.format_save(table_of(s)) == "-A -t 10.0.0.1:80 -s rr -b flag-1,flag-3\n"


def test_sysctl_paths_keep_dotted_device_names():
    assert sysctl_path("net.ipv4.ip_forward") == "/proc/sys/net/ipv4/ip_forward"
    assert sysctl_path("net.ipv4.conf.eth0.100.rp_filter") == "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"
    assert sysctl_path("net.ipv4.vs.expire_nodest_conn") == "/proc/sys/net/ipv4/vs/expire_nodest_conn"


# --------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["list", "-n"], ["save"], ["list", "--stats"]])
def test_not_root_is_a_clear_error(monkeypatch, capsys, argv):
    monkeypatch.setattr(L.os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit) as e:
        L.main(argv)
    assert e.value.code == 2
    assert "lvsctl must run as root (it programs the kernel's IPVS table)" in capsys.readouterr().err


def test_apply_prints_field_errors_before_needing_root(monkeypatch, capsys, tmp_path):
    f = tmp_path / "spec.yaml"
    f.write_text("services:\n- address: 0.0.0.0\n  port: 80\n- address: 10.0.0.1\n  port: 80\n")
    monkeypatch.setattr(L.os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit):
        L.main(["apply", str(f), "--dry-run"])
    out = capsys.readouterr()
    assert "invalid     services[0].address: 0.0.0.0 never matches a packet" in out.out
    assert "must run as root" in out.err


def test_apply_reads_a_nodestate_object_too(tmp_path):
    f = tmp_path / "ns.yaml"
    f.write_text("apiVersion: lvs.kube-lvs.io/v1alpha1\nkind: NodeState\nspec:\n  services: []\n")
    assert L.load_spec_document(str(f)) == {"services": []}


def test_import_dispatches_to_the_operator_package(monkeypatch):
    seen = {}
    mod = types.ModuleType("lvs_operator.importer")
    mod.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "lvs_operator.importer", mod)
    assert L.main(["import", "rules.txt", "--namespace", "x"]) == 0
    assert seen["argv"] == ["rules.txt", "--namespace", "x"]


def test_import_without_the_operator_package(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lvs_operator.importer", None)
    assert L.main(["import", "rules.txt"]) == 2
    assert "lvs_operator.importer" in capsys.readouterr().err
