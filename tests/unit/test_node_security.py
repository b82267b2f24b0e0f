"""What a NodeState may make an agent do on its host: the allowlists (issue 16).

Each row is an attempt by whoever can write a NodeState; the agent parses
every NodeState with parse_node_spec, so a refused entry here is never
written to the node. The same rules are the NodeState CRD's CEL (checked
against these tables in test_crd.py and, on a real API server, in the
cluster tier).
"""
from __future__ import annotations

import re

import pytest

from lvs_model.nodespec import parse_node_spec, unusable_address
from lvs_model.sysctls import DEVICE_RE, SYSCTL_NAME_RE, device_error, sysctl_error

# (name, value): refused, each with the reason it is dangerous.
REFUSED_SYSCTLS = [
    ("kernel.core_pattern", "|/tmp/x"),                          # root on the node
    ("kernel.modprobe", "/tmp/x"),
    ("net.ipv4.conf.eth0/../../../kernel/core_pattern.rp_filter", "0"),  # leaves /proc/sys/net
    ("net.ipv4.conf.../../../kernel.rp_filter", "0"),
    ("net.ipv4.conf.eth0.rp_filter/../../../../kernel/core_pattern", "0"),
    ("net/ipv4/ip_forward", "1"),                                # path form
    ("net.ipv4.ip_forward ", "1"),
    ("net.ipv4.conf.eth0.accept_redirects", "1"),                # a net sysctl we do not manage
    ("net.ipv4.conf.eth0.forwarding", "1"),
    ("net.ipv4.ip_local_port_range", "1 65535"),
    ("net.core.bpf_jit_enable", "1"),
    ("net.ipv4.conf.a-device-name-far-too-long.rp_filter", "0"),  # over IFNAMSIZ-1
    ("net.ipv4.conf.-eth0.rp_filter", "0"),
    ("net.ipv4.conf.eth 0.rp_filter", "0"),
    ("net.ipv4.conf.eth0:1.rp_filter", "0"),
    ("net.ipv4.ip_forward", "1\nkernel.core_pattern=|/x"),       # value smuggling
    ("net.ipv4.ip_forward", "2"),                                # out of range
    ("net.ipv4.conf.all.arp_ignore", "9"),
    ("net.ipv4.conf.eth0.arp_announce", "-1"),
    ("net.ipv4.vs.sloppy_tcp", "yes"),
]
ALLOWED_SYSCTLS = [
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.ipv4.vs.conntrack", "1"),
    ("net.ipv4.vs.expire_nodest_conn", "0"),
    ("net.ipv4.vs.sloppy_tcp", "1"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.tunl0.rp_filter", "0"),
    ("net.ipv4.conf.eth0.100.arp_ignore", "1"),   # a VLAN device: dots in the device part
    ("net.ipv4.conf.ens3f0np0.arp_announce", "2"),
]


@pytest.mark.parametrize("name,value", REFUSED_SYSCTLS)
def test_a_refused_sysctl_is_reported_and_not_in_the_spec(name, value):
    spec, errors = parse_node_spec({"node": "n", "sysctls": {name: value, "net.ipv4.vs.conntrack": "1"}})
    assert spec.sysctls == (("net.ipv4.vs.conntrack", "1"),), "the allowed entry still applies"
    assert [e.path for e in errors] == [f"sysctls.{name}"]
    assert "not written" in errors[0].message
    assert sysctl_error(name, value)


@pytest.mark.parametrize("name,value", ALLOWED_SYSCTLS)
def test_the_settings_kube_lvs_needs_are_allowed(name, value):
    spec, errors = parse_node_spec({"node": "n", "sysctls": {name: value}})
    assert errors == [] and spec.sysctls == ((name, value),)


@pytest.mark.parametrize("name,value", REFUSED_SYSCTLS + ALLOWED_SYSCTLS)
def test_the_crd_regex_agrees_with_the_model(name, value):
    """The CRD carries SYSCTL_NAME_RE; RE2 (CEL) reads it as Python does."""
    by_regex = bool(re.match(SYSCTL_NAME_RE, name)) and bool(re.fullmatch(r"[0-9]{1,2}", value))
    if by_regex:
        # The regex lets through names whose value the range check refuses.
        assert sysctl_error(name, value) is None or "is not a value" in sysctl_error(name, value)
    else:
        assert sysctl_error(name, value)


@pytest.mark.parametrize("device,ok", [
    ("eth0", True), ("bond0.100", True), ("veth1@if3", True), ("ens3f0np0", True),
    ("all", False), ("default", False), ("", False), (".", False), ("..", False),
    ("../../etc", False), ("eth0/x", False), ("eth0:1", False), ("eth 0", False),
    ("sixteen-chars-xx", False), ("-eth0", False),
])
def test_devices_follow_the_kernel_rules_and_are_never_all(device, ok):
    assert (device_error(device) is None) is ok
    assert bool(re.match(DEVICE_RE, device)) is (ok or device in ("all", "default"))
    spec, errors = parse_node_spec({"node": "n", "uplink": device,
                                    "directorAddresses": [{"address": "192.0.2.1", "device": device}]})
    if ok:
        assert errors == [] and spec.uplink == device and spec.director_addresses[0].device == device
    elif device:
        assert {e.path for e in errors} == {"uplink", "directorAddresses[0].device"}
        assert spec.uplink == "" and spec.director_addresses == ()


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.1.2.3", "::1", "169.254.169.254", "fe80::1", "224.0.0.81", "ff02::1",
    "255.255.255.255", "0.0.0.0", "::", "::ffff:10.0.0.1",
])
def test_addresses_that_are_not_one_host_are_refused_everywhere(address):
    assert unusable_address(address)
    six = ":" in address
    vip = "2001:db8::10" if six else "192.0.2.10"
    doc = {"node": "n",
           "services": [{"address": vip, "port": 80, "dests": [{"address": address, "port": 80}]},
                        {"address": address, "port": 81, "dests": []}],
           "directorAddresses": [address],
           "backendVips": [{"address": address, "method": "dr"}],
           "replyRoutes": [{"address": address, "via": ["10.0.0.1" if not six else "2001:db8::1"]},
                           {"address": "10.0.0.2" if not six else "2001:db8::2", "via": [address]}]}
    spec, errors = parse_node_spec(doc)
    paths = {e.path for e in errors}
    assert {"services[0].dests[0].address", "services[1].address", "directorAddresses[0].address",
            "backendVips[0].address", "replyRoutes[0].address", "replyRoutes[1].via[0]"} <= paths
    assert spec.services == () and spec.director_addresses == () and spec.backend_vips == ()
    assert spec.reply_routes == ()


@pytest.mark.parametrize("address", ["10.0.0.5", "192.168.0.30", "203.0.113.7", "2001:db8::5", "fd00::5"])
def test_private_and_public_unicast_addresses_are_fine(address):
    assert unusable_address(address) == ""


def test_a_real_server_equal_to_the_vip_is_refused():
    _, errors = parse_node_spec({"services": [{"address": "192.0.2.10", "port": 80,
                                               "dests": [{"address": "192.0.2.10", "port": 80}]}]})
    assert [e.path for e in errors] == ["services[0].dests[0].address"]
    assert "own address" in errors[0].message


def test_health_checks_no_more_often_than_once_a_second():
    _, errors = parse_node_spec({"services": [{"address": "192.0.2.10", "port": 80,
                                               "healthCheck": {"interval": 0.1, "timeout": 0.05}}]})
    assert [e.path for e in errors] == ["services[0].healthCheck.interval"]
    _, errors = parse_node_spec({"services": [{"address": "192.0.2.10", "port": 80,
                                               "healthCheck": {"interval": 1, "timeout": 0.5}}]})
    assert errors == []
