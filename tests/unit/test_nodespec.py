"""The node spec model: every bad input names its field; good input round-trips."""
import pytest

from lvs_model.errors import SpecError
from lvs_model.nodespec import (
    BackendVip, NodeSpec, dump_node_spec, effective_sysctls, parse_node_spec,
    parse_node_spec_strict,
)


def svc(**kw):
    base = {"address": "192.168.0.30", "port": 80, "dests": [{"address": "10.0.0.51"}]}
    base.update(kw)
    return base


BAD = [
    (svc(address="0.0.0.0"), "services[0].address", "firewall-mark"),
    (svc(address="::"), "services[0].address", "never matches"),
    (svc(address="300.1.1.1"), "services[0].address", "not an IP address"),
    (svc(port=70000), "services[0].port", "out of range"),
    (svc(port="http"), "services[0].port", "integer"),
    (svc(protocol="icmp"), "services[0].protocol", "tcp, udp, sctp"),
    (svc(scheduler="xyz"), "services[0].scheduler", "not one of"),
    (svc(fwmark=5), "services[0].address", "mark alone"),
    (svc(schedulerFlags=["sh-port"], scheduler="rr"), "services[0].schedulerFlags[0]", "only applies to scheduler sh"),
    (svc(schedulerFlags=["bogus"]), "services[0].schedulerFlags[0]", "not one of"),
    (svc(persistence={"timeout": 0}), "services[0].persistence.timeout", "out of range"),
    (svc(persistence={"timeout": 60, "netmask": "255.0.255.0"}), "services[0].persistence.netmask", "netmask"),
    (svc(port=0), "services[0].port", "persistence.timeout"),
    (svc(onePacket=True), "services[0].onePacket", "UDP"),
    (svc(family="ipv6"), "services[0].address", "is ipv4 but the service is ipv6"),
    (svc(dests=[{"address": "10.0.0.51", "weight": 70000}]), "services[0].dests[0].weight", "0-65535"),
    (svc(dests=[{"address": "10.0.0.51", "weight": -1}]), "services[0].dests[0].weight", "0 drains"),
    (svc(dests=[{"address": "10.0.0.51", "method": "dr", "port": 8080}]), "services[0].dests[0].port", "only method nat can map ports"),
    (svc(dests=[{"address": "10.0.0.51", "method": "tun", "port": 81}]), "services[0].dests[0].port", "only method nat"),
    (svc(dests=[{"address": "10.0.0.51", "upperThreshold": -1}]), "services[0].dests[0].upperThreshold", "out of range"),
    (svc(dests=[{"address": "10.0.0.51", "upperThreshold": 5, "lowerThreshold": 9}]), "services[0].dests[0].lowerThreshold", "above upperThreshold"),
    (svc(dests=[{"address": "fd00::1"}]), "services[0].dests[0].address", "is ipv6 but the service is ipv4"),
    (svc(dests=[{"address": "10.0.0.51", "method": "masq"}]), "services[0].dests[0].method", "nat, tun, dr"),
    (svc(dests=[{"address": "10.0.0.51", "tunnel": {"type": "ipip"}}]), "services[0].dests[0].tunnel", "only applies to method tun"),
    (svc(dests=[{"address": "10.0.0.51", "method": "tun", "tunnel": {"type": "gue"}}]), "services[0].dests[0].tunnel.port", "GUE needs"),
    (svc(dests=[{"address": "10.0.0.51", "method": "tun", "tunnel": {"type": "ipip", "checksum": "csum"}}]), "services[0].dests[0].tunnel.checksum", "ipip has no checksum"),
    (svc(dests=[{"address": "10.0.0.51"}, {"address": "10.0.0.51"}]), "services[0].dests[1]", "listed twice"),
    (svc(dests=[{"port": 80}]), "services[0].dests[0].address", "required"),
    (svc(weight=3), "services[0].weight", "unknown field"),
    ({"port": 80}, "services[0].address", "required"),
]


@pytest.mark.parametrize("raw,path,fragment", BAD, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD)])
def test_bad_service_is_rejected_naming_its_field(raw, path, fragment):
    spec, errors = parse_node_spec({"services": [raw]})
    assert spec.services == ()
    assert any(e.path == path and fragment in e.message for e in errors), errors


def test_one_bad_service_keeps_the_others():
    spec, errors = parse_node_spec({"services": [svc(), svc(address="0.0.0.0"), svc(port=443)]})
    assert [s.port for s in spec.services] == [80, 443]
    assert [e.path for e in errors] == ["services[1].address"]


def test_duplicate_service_key_is_reported():
    spec, errors = parse_node_spec({"services": [svc(), svc(scheduler="rr")]})
    assert len(spec.services) == 1 and spec.services[0].scheduler == "wlc"
    assert errors[0].path == "services[1]" and "services[0]" in errors[0].message


def test_strict_parse_raises_with_all_errors():
    with pytest.raises(SpecError) as e:
        parse_node_spec_strict({"services": [svc(port=-1), svc(scheduler="nope")]})
    assert "services[0].port" in str(e.value) and "services[1].scheduler" in str(e.value)


def test_defaults_and_canonical_forms():
    spec = parse_node_spec_strict({"services": [
        svc(address="fd00:0:0::30", dests=[{"address": "fd00:1::51", "port": 8080}]),
        {"fwmark": 7, "scheduler": "sh", "schedulerFlags": ["sh-fallback", "sh-port"],
         "dests": [{"address": "10.0.0.1", "method": "dr"}]},
        {"address": "10.1.1.1", "port": 0, "protocol": "udp", "persistence": {"timeout": 60, "netmask": 24},
         "dests": [{"address": "10.0.0.1", "method": "tun", "tunnel": {"type": "gue", "port": 5555, "checksum": "remcsum"}}]},
    ]})
    v6, fw, allports = spec.services
    assert v6.family == "ipv6" and v6.address == "fd00::30" and v6.netmask == "128"
    assert v6.dests[0].port == 8080 and v6.dests[0].weight == 1 and v6.scheduler == "wlc"
    assert fw.key.fwmark == 7 and fw.dests[0].port == 0 and fw.flags == 0x8 | 0x10
    assert allports.persistence_netmask == "255.255.255.0" and allports.flags & 1
    assert allports.dests[0].tunnel_port == 5555 and allports.dests[0].tunnel_csum == "remcsum"


def test_dump_round_trips():
    doc = {"node": "n1", "uplink": "eth0", "services": [
        svc(scheduler="sh", schedulerFlags=["sh-port"], persistence={"timeout": 30},
            dests=[{"address": "10.0.0.51", "weight": 3, "upperThreshold": 10, "lowerThreshold": 2},
                   {"address": "10.0.0.52", "method": "tun", "tunnel": {"type": "gre", "checksum": "csum"}}]),
        {"fwmark": 1, "family": "ipv6", "dests": [{"address": "fd00::1", "method": "dr"}]},
    ], "directorAddresses": [{"address": "192.168.0.30"}],
        "backendVips": [{"address": "192.168.1.3", "method": "tun"}], "sysctls": {"net.ipv4.vs.conntrack": "1"}}
    spec = parse_node_spec_strict(doc)
    assert parse_node_spec_strict(dump_node_spec(spec)) == spec


def test_sysctls_are_scoped_to_devices_not_all_for_arp():
    spec = NodeSpec(backend_vips=(BackendVip("192.168.1.3", "tun"), BackendVip("192.168.1.4", "dr")))
    s = effective_sysctls(spec, "eth0")
    assert s["net.ipv4.conf.eth0.arp_ignore"] == "1" and s["net.ipv4.conf.eth0.arp_announce"] == "2"
    assert "net.ipv4.conf.all.arp_ignore" not in s
    assert s["net.ipv4.conf.tunl0.rp_filter"] == "0" and s["net.ipv4.conf.all.rp_filter"] == "0"
    assert "net.ipv4.ip_forward" not in s


def test_nat_director_forwards_per_family():
    spec = parse_node_spec_strict({"services": [svc(), svc(address="fd00::1", dests=[{"address": "fd00:1::5"}])]})
    s = effective_sysctls(spec, "")
    assert s["net.ipv4.ip_forward"] == "1" and s["net.ipv6.conf.all.forwarding"] == "1"


def test_health_check_parses_validates_and_round_trips():
    spec = parse_node_spec_strict({"services": [svc(healthCheck={"type": "http", "path": "/healthz", "interval": 1, "timeout": 0.5, "rise": 1, "fall": 2})]})
    h = spec.services[0].health
    assert (h.type, h.path, h.interval, h.fall) == ("http", "/healthz", 1.0, 2)
    assert parse_node_spec_strict(dump_node_spec(spec)) == spec
    _, errors = parse_node_spec({"services": [svc(healthCheck={"type": "http", "path": "healthz", "interval": 1, "timeout": 3})]})
    assert {e.path for e in errors} == {"services[0].healthCheck.path", "services[0].healthCheck.timeout"}
