"""The BGP section of the node spec and the announce decision (lvs_model.bgp).

Before this change a node spec had no ``bgp`` key (the parser refused it as
an unknown field), nothing decided what a director announces, and nothing
implied sloppy TCP/SCTP: every test here fails on that code (the import of
lvs_model.bgp alone)."""
from __future__ import annotations

from dataclasses import replace

import pytest

from lvs_model import bgp as B
from lvs_model.nodespec import dump_node_spec, effective_sysctls, parse_node_spec

VIP, VIP2, VIP6 = "192.168.2.100", "192.168.2.101", "fd00:2::100"
PEER = {"address": "10.1.0.254", "asn": 65000}


def doc(bgp: dict | list | None = None, weights=(1, 1), vips=(VIP,), addresses=(VIP,)) -> dict:
    out = {"node": "d1",
           "services": [{"address": v, "port": 80, "scheduler": "mh",
                         "dests": [{"address": f"10.1.0.{11 + i}", "method": "dr", "weight": w}
                                   for i, w in enumerate(weights)]} for v in vips],
           "directorAddresses": list(addresses)}
    if bgp is not None:
        out["bgp"] = bgp
    return out


def section(**kw) -> dict:
    return {"routerId": "10.1.0.1", "localAsn": 65001, "peers": [PEER], "vips": [VIP], **kw}


def parsed(d: dict):
    spec, errors = parse_node_spec(d)
    return spec, [str(e) for e in errors]


def all_programmed(spec) -> B.Health:
    return B.Health(frozenset(s.key for s in spec.services))


# --------------------------------------------------------------------------
# Parsing: each bad field is named, the rest is kept
# --------------------------------------------------------------------------

def test_a_full_section_parses_with_defaults():
    spec, errors = parsed(doc(section()))
    assert errors == []
    (part,) = spec.bgp
    assert part == B.BgpSpec("10.1.0.1", (B.BgpPeer("10.1.0.254", 65000, 65001),), (VIP,), False)
    peer = part.peers[0]
    assert (peer.port, peer.hold_time, peer.keepalive_time, peer.bfd, peer.password_file) == (179, 9, 0, False, "")


@pytest.mark.parametrize("peer, path, words", [
    ({"asn": 65000}, "bgp.peers[0].address", "is required"),
    ({"address": "10.1.0.254"}, "bgp.peers[0].asn", "is required"),
    ({**PEER, "asn": 0}, "bgp.peers[0].asn", "out of range"),
    ({**PEER, "asn": 2**32}, "bgp.peers[0].asn", "out of range"),
    ({**PEER, "address": "127.0.0.1"}, "bgp.peers[0].address", "loopback"),
    ({**PEER, "address": "router"}, "bgp.peers[0].address", "not an IP address"),
    ({**PEER, "port": 0}, "bgp.peers[0].port", "out of range"),
    ({**PEER, "holdTime": 2}, "bgp.peers[0].holdTime", "minimum is 3"),
    ({**PEER, "holdTime": 0}, "bgp.peers[0].holdTime", "minimum is 3"),
    ({**PEER, "holdTime": 6, "keepaliveTime": 6}, "bgp.peers[0].keepaliveTime", "not below holdTime"),
    ({**PEER, "passwordFile": "../../etc/shadow"}, "bgp.peers[0].passwordFile", "never a path"),
    ({**PEER, "passwordFile": "/etc/shadow"}, "bgp.peers[0].passwordFile", "never a path"),
    ({**PEER, "passwordFile": ".."}, "bgp.peers[0].passwordFile", "never a path"),
    ({**PEER, "bfd": "yes"}, "bgp.peers[0].bfd", "true or false"),
    ({**PEER, "secret": "x"}, "bgp.peers[0].secret", "unknown field"),
    ("10.1.0.254", "bgp.peers[0]", "must be a mapping"),
])
def test_a_bad_peer_is_named_and_left_out(peer, path, words):
    spec, errors = parsed(doc(section(peers=[peer, {"address": "10.1.0.253", "asn": 65000}])))
    assert any(e.startswith(path + ":") and words in e for e in errors), errors
    assert [p.address for p in spec.bgp[0].peers] == ["10.1.0.253"]  # the good one is kept


@pytest.mark.parametrize("change, path, words", [
    ({"routerId": "director-1"}, "bgp.routerId", "not a router id"),
    ({"routerId": "0.0.0.0"}, "bgp.routerId", "not a router id"),
    ({"routerId": None}, "bgp.routerId", "not a router id"),
    ({"localAsn": "x"}, "bgp.localAsn", "must be an integer"),
    ({"vips": ["224.0.0.1"]}, "bgp.vips[0]", "multicast"),
    ({"vips": [VIP6]}, "bgp.vips[0]", "no peer is"),
    ({"vips": VIP}, "bgp.vips", "must be a list"),
    ({"drain": 1}, "bgp.drain", "true or false"),
    ({"peers": {"a": 1}}, "bgp.peers", "must be a list"),
    ({"community": "65000:1"}, "bgp.community", "unknown field"),
])
def test_a_bad_section_field_is_named(change, path, words):
    _, errors = parsed(doc(section(**change)))
    assert any(e.startswith(path + ":") and words in e for e in errors), errors


def test_without_a_local_asn_anywhere_the_peer_says_what_to_give():
    s = section()
    del s["localAsn"]
    spec, errors = parsed(doc(s))
    assert errors == ["bgp.peers[0].localAsn: is required (here or as the section's localAsn): "
                      "this director's AS number"]
    _, errors = parsed(doc({**s, "peers": [{**PEER, "localAsn": 65009}]}))
    assert errors == []


def test_peers_need_a_router_id_and_a_peer_is_declared_once():
    s = section(peers=[PEER, {**PEER, "holdTime": 30}])
    del s["routerId"]
    _, errors = parsed(doc(s))
    assert "bgp.peers[1].address: 10.1.0.254 is already peers[0]" in errors
    assert any(e.startswith("bgp.routerId: is required with peers") for e in errors)


def test_services_still_parse_when_the_bgp_section_is_bad():
    spec, errors = parsed(doc(section(peers="x")))
    assert errors and len(spec.services) == 1


@pytest.mark.parametrize("bgp", [
    section(),
    section(peers=[{**PEER, "port": 1179, "holdTime": 3, "keepaliveTime": 1, "passwordFile": "tor1",
                    "bfd": True, "localAsn": 65002}], drain=True),
    [section(), section(vips=[VIP2], routerId="10.1.0.1")],
])
def test_dump_is_the_inverse_of_parse(bgp):
    spec, errors = parsed(doc(bgp, vips=(VIP, VIP2), addresses=(VIP, VIP2)))
    assert errors == []
    again, errors = parse_node_spec(dump_node_spec(spec))
    assert errors == [] and again == spec


def test_no_section_dumps_no_key():
    spec, _ = parsed(doc())
    assert spec.bgp == () and "bgp" not in dump_node_spec(spec)


# --------------------------------------------------------------------------
# The decision: announce only what this director serves
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name, d, health, reason, announced", [
    ("serving", doc(section()), "all", B.ANNOUNCED, True),
    ("one server of two at weight 0", doc(section(), weights=(0, 3)), "all", B.ANNOUNCED, True),
    ("every server at weight 0 (failed checks or drained)", doc(section(), weights=(0, 0)), "all",
     B.NO_REAL_SERVER, False),
    ("no real server at all", doc(section(), weights=()), "all", B.NO_REAL_SERVER, False),
    ("the service failed to program", doc(section()), "none", B.NOT_PROGRAMMED, False),
    ("no service on the VIP", doc(section(), vips=(VIP2,), addresses=(VIP, VIP2)), "all", B.NO_SERVICE, False),
    ("the VIP is not a local address", doc(section(), addresses=()), "all", B.NO_ADDRESS, False),
    ("the director is drained", doc(section(drain=True)), "all", B.DRAINED, False),
    ("the agent is stopping", doc(section()), "stopping", B.STOPPING, False),
])
def test_decide(name, d, health, reason, announced):
    spec, errors = parsed(d)
    assert errors == []
    h = {"all": all_programmed(spec), "none": B.Health(),
         "stopping": replace(all_programmed(spec), stopping=True)}[health]
    (dec,) = B.decide(spec, h)
    assert (dec.reason, dec.announced) == (reason, announced), (name, dec)
    assert dec.message
    assert B.announced(spec, h) == ({f"{VIP}/32"} if announced else set())


def test_a_vip_with_one_serving_service_of_two_is_announced():
    """A route is per address: one port without servers must not take the
    other port's traffic away."""
    d = doc(section())
    d["services"].append({"address": VIP, "port": 443, "scheduler": "mh",
                          "dests": [{"address": "10.1.0.11", "method": "dr", "weight": 0}]})
    spec, _ = parsed(d)
    (dec,) = B.decide(spec, all_programmed(spec))
    assert dec.announced and "tcp:192.168.2.100:80" in dec.message and ":443" not in dec.message


def test_ipv6_vips_are_announced_as_host_routes():
    d = doc(section(peers=[PEER, {"address": "fd00:1::fe", "asn": 65000}], vips=[VIP, VIP6]),
            vips=(VIP, VIP6), addresses=(VIP, VIP6))
    d["services"][1]["dests"] = [{"address": "fd00:1::11", "method": "dr"}]
    spec, errors = parsed(d)
    assert errors == []
    assert B.announced(spec, all_programmed(spec)) == {f"{VIP}/32", f"{VIP6}/128"}


def test_parts_of_several_nodestates_combine():
    a, _ = parsed(doc(section()))
    b, _ = parsed(doc(section(vips=[VIP2], peers=[PEER, {"address": "10.1.0.253", "asn": 65000}])))
    merged = replace(a, bgp=a.bgp + b.bgp)
    bgp, problems = B.combined(merged)
    assert bgp.vips == (VIP, VIP2) and [p.address for p in bgp.peers] == ["10.1.0.254", "10.1.0.253"]
    assert problems == []
    c, _ = parsed(doc(section(peers=[{**PEER, "holdTime": 30}], routerId="10.1.0.9", drain=True)))
    bgp, problems = B.combined(replace(a, bgp=a.bgp + c.bgp))
    assert bgp.peers[0].hold_time == 9 and bgp.router_id == "10.1.0.1" and bgp.drain
    assert len(problems) == 2


# --------------------------------------------------------------------------
# Sysctls: sloppy TCP/SCTP where VIPs are announced over BGP
# --------------------------------------------------------------------------

def test_bgp_directors_get_sloppy_tcp_and_sctp():
    spec, _ = parsed(doc(section()))
    got = effective_sysctls(spec, "eth0")
    assert got["net.ipv4.vs.sloppy_tcp"] == "1" and got["net.ipv4.vs.sloppy_sctp"] == "1"
    plain, _ = parsed(doc())
    assert "net.ipv4.vs.sloppy_tcp" not in effective_sysctls(plain, "eth0")


def test_a_declared_sloppy_value_wins():
    d = doc(section())
    d["sysctls"] = {"net.ipv4.vs.sloppy_tcp": "0"}
    spec, errors = parsed(d)
    assert errors == []
    assert effective_sysctls(spec, "eth0")["net.ipv4.vs.sloppy_tcp"] == "0"
