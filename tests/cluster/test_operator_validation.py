"""The API server rejects bad objects itself (schema + CEL), each with a message naming the field.

Table-driven against the real kube-apiserver (server-side dry run: full
validation, nothing stored). Every VirtualService/RealServer/VIPPool case the
engine model can judge on its own is also rejected by the model (the `model`
column), so the API server's rules and the engine's agree; the positive
controls prove the base objects are valid, so each rejection is the case's.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from lvs_model import channel as C
from lvs_model.errors import FieldError
from lvs_operator.crmodel import RealServer, VIPPool, VirtualService

ROOT = Path(__file__).resolve().parents[2]

VS = {"address": "192.168.0.30", "port": 80, "directorSelector": {}}
RS = {"virtualService": "web", "address": "10.0.0.51"}
POOL = {"addresses": ["192.168.0.0/24"], "namespaces": ["web"]}


def vs(**kw):
    spec = {**VS, **kw}
    return {k: v for k, v in spec.items() if v is not None}


def rs(**kw):
    spec = {**RS, **kw}
    return {k: v for k, v in spec.items() if v is not None}


def pool(**kw):
    spec = {**POOL, **kw}
    return {k: v for k, v in spec.items() if v is not None}


# (id, kind, spec, field named in the error, message fragment, the engine model rejects it too)
CASES = [
    ("vip-0.0.0.0", "VirtualService", vs(address="0.0.0.0"), "spec.address",
     "0.0.0.0 and :: never match a packet", True),
    ("vip-::", "VirtualService", vs(address="::"), "spec.address", "firewall-mark service (spec.fwmark)", True),
    ("vip-not-an-ip", "VirtualService", vs(address="192.168.0.300"), "spec.address",
     "must be an IPv4 or IPv6 address", True),
    ("vip-with-prefix", "VirtualService", vs(address="192.168.0.30/32"), "spec.address",
     "must be an IPv4 or IPv6 address", True),
    ("no-address-no-fwmark", "VirtualService", vs(address=None), "spec.address",
     "spec.address is required (or give spec.fwmark", True),
    ("no-port", "VirtualService", vs(port=None), "spec.port", "spec.port is required", True),
    ("port-out-of-range", "VirtualService", vs(port=70000), "spec.port", "less than or equal to 65535", True),
    ("fwmark-with-address", "VirtualService", vs(fwmark=5, port=None), "spec.fwmark",
     "matched by its mark alone", True),
    ("fwmark-with-protocol", "VirtualService", vs(fwmark=5, address=None, port=None, protocol="udp"),
     "spec.fwmark", "drop spec.address, spec.port and spec.protocol", True),
    ("fwmark-zero", "VirtualService", vs(fwmark=0, address=None, port=None), "spec.fwmark",
     "greater than or equal to 1", False),
    ("family-mismatch", "VirtualService", vs(family="ipv6"), "spec.family", "does not match spec.address", True),
    ("port-0-without-persistence", "VirtualService", vs(port=0), "spec.port",
     "port 0 (all ports) needs spec.persistence.timeout", True),
    ("sh-flag-on-wlc", "VirtualService", vs(schedulerFlags=["sh-port"]), "spec.schedulerFlags",
     "sh-fallback and sh-port need scheduler sh", True),
    ("mh-flag-on-sh", "VirtualService", vs(scheduler="sh", schedulerFlags=["mh-fallback"]), "spec.schedulerFlags",
     "mh-fallback and mh-port need scheduler mh", True),
    ("unknown-scheduler", "VirtualService", vs(scheduler="fastest"), "spec.scheduler",
     'Unsupported value: "fastest"', True),
    ("unknown-method", "VirtualService", vs(method="masq"), "spec.method", 'Unsupported value: "masq"', True),
    ("one-packet-on-tcp", "VirtualService", vs(onePacket=True), "spec.onePacket",
     "one-packet scheduling is for UDP services", True),
    ("tunnel-on-nat", "VirtualService", vs(tunnel={"type": "gre"}), "spec.tunnel",
     "spec.tunnel only applies to method tun", True),
    ("gue-without-port", "VirtualService", vs(method="tun", tunnel={"type": "gue"}), "spec.tunnel.port",
     "GUE needs the UDP port", True),
    ("ipip-with-port", "VirtualService", vs(method="tun", tunnel={"type": "ipip", "port": 5555}),
     "spec.tunnel.port", "only GUE tunnels have a port", True),
    ("ipip-with-checksum", "VirtualService", vs(method="tun", tunnel={"checksum": "csum"}), "spec.tunnel.checksum",
     "ipip has no checksum option", True),
    ("netmask-not-contiguous", "VirtualService", vs(persistence={"timeout": 60, "netmask": "255.0.255.0"}),
     "spec.persistence.netmask", "IPv4 takes a netmask like 255.255.255.0", True),
    ("ipv6-dotted-netmask", "VirtualService",
     vs(address="2001:db8::1", persistence={"timeout": 60, "netmask": "255.255.255.0"}),
     "spec.persistence.netmask", "IPv6 a prefix length 1-128", True),
    ("persistence-timeout-0", "VirtualService", vs(persistence={"timeout": 0}), "spec.persistence.timeout",
     "greater than or equal to 1", True),
    ("check-timeout-over-interval", "VirtualService", vs(healthCheck={"interval": 1, "timeout": 2}),
     "spec.healthCheck.timeout", "must not be longer than healthCheck.interval", True),
    ("check-relative-path", "VirtualService", vs(healthCheck={"type": "http", "path": "healthz"}),
     "spec.healthCheck.path", "should match '^/'", True),
    ("check-rise-0", "VirtualService", vs(healthCheck={"rise": 0}), "spec.healthCheck.rise",
     "greater than or equal to 1", True),
    ("fwmark-check-without-port", "VirtualService",
     vs(address=None, port=None, fwmark=7, healthCheck={"type": "tcp"}), "spec.healthCheck.port",
     "a firewall-mark service needs an explicit check port", True),
    ("no-director-selector", "VirtualService", vs(directorSelector=None), "spec.directorSelector",
     "Required value", True),
    ("selector-in-without-values", "VirtualService",
     vs(directorSelector={"matchExpressions": [{"key": "a", "operator": "In"}]}),
     "spec.directorSelector.matchExpressions[0]", "values must be non-empty for In/NotIn", False),
    ("weight-over-65535", "RealServer", rs(weight=65536), "spec.weight", "less than or equal to 65535", True),
    ("weight-negative", "RealServer", rs(weight=-1), "spec.weight", "greater than or equal to 0", True),
    ("threshold-lower-above-upper", "RealServer", rs(upperThreshold=10, lowerThreshold=20),
     "spec.lowerThreshold", "must not be above spec.upperThreshold", True),
    ("threshold-negative", "RealServer", rs(upperThreshold=-5), "spec.upperThreshold",
     "greater than or equal to 0", True),
    ("rs-tunnel-with-dr", "RealServer", rs(method="dr", tunnel={"type": "gre"}), "spec.tunnel",
     "spec.tunnel only applies to method tun", True),
    ("rs-gue-without-port", "RealServer", rs(method="tun", tunnel={"type": "gue"}), "spec.tunnel.port",
     "GUE needs the UDP port", True),
    ("rs-hostname", "RealServer", rs(address="rs1.example.com"), "spec.address",
     "must be an IPv4 or IPv6 address", True),
    ("rs-port-out-of-range", "RealServer", rs(port=65536), "spec.port", "less than or equal to 65535", True),
    ("rs-without-virtualservice", "RealServer", rs(virtualService=None), "spec.virtualService",
     "Required value", False),
    ("pool-bad-cidr", "VIPPool", pool(addresses=["10.0.0.0/33"]), "spec.addresses[0]",
     "each entry is a CIDR, an IP address, or a range", True),
    ("pool-mixed-family-range", "VIPPool", pool(addresses=["10.0.0.1-fd00::1"]), "spec.addresses[0]",
     "a range first-last of one family", True),
    ("pool-open-to-nobody", "VIPPool", pool(namespaces=None), "spec",
     "spec.namespaces or spec.namespaceSelector must say which namespaces", False),
    ("pool-fwmarks-reversed", "VIPPool", pool(fwmarks=[{"first": 10, "last": 5}]), "spec.fwmarks[0]",
     "first must not be above last", True),
    ("pool-bad-real-server-range", "VIPPool", pool(realServerAddresses=["10.0.0.0/40"]),
     "spec.realServerAddresses[0]", "each entry is a CIDR, an IP address, or a range", True),
    ("vip-loopback", "VirtualService", vs(address="127.0.0.1"), "spec.address", "not loopback", True),
    ("vip-multicast", "VirtualService", vs(address="ff02::1"), "spec.address", "multicast", True),
    ("rs-link-local", "RealServer", rs(address="169.254.169.254"), "spec.address",
     "where cloud metadata services live", True),
    ("rs-broadcast", "RealServer", rs(address="255.255.255.255"), "spec.address", "broadcast", True),
    ("check-interval-under-1s", "VirtualService", vs(healthCheck={"interval": 0.5, "timeout": 0.2}),
     "spec.healthCheck.interval", "greater than or equal to 1", True),
]

PLURAL = {"VirtualService": C.VIRTUALSERVICE_PLURAL, "RealServer": C.REALSERVER_PLURAL, "VIPPool": C.VIPPOOL_PLURAL}


@pytest.fixture(scope="module")
def api(kube_lvs):
    from kubernetes import client
    return client.CustomObjectsApi(kube_lvs.api_client())


@pytest.fixture(scope="module")
def namespace(control_plane):
    name = f"lvs-validation-{uuid.uuid4().hex[:5]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def dry_run_create(api, namespace, kind, spec):
    body = {"apiVersion": C.API_VERSION, "kind": kind, "metadata": {"name": "case"}, "spec": spec}
    if kind == "VIPPool":
        return api.create_cluster_custom_object(C.GROUP, C.VERSION, PLURAL[kind], body, dry_run="All")
    return api.create_namespaced_custom_object(C.GROUP, C.VERSION, namespace, PLURAL[kind], body, dry_run="All")


def model_rejects(kind, spec) -> list:
    errors: list[FieldError] = []
    obj = {"metadata": {"name": "case", "namespace": "web"}, "spec": spec}
    if kind == "VirtualService":
        VirtualService.of(obj).to_service(errors)
    elif kind == "RealServer":
        v = VirtualService.of({"metadata": {"name": "web", "namespace": "web"}, "spec": VS})
        svc = v.to_service(errors)
        RealServer.of(obj).to_dest(v, svc, errors)
    else:
        errors.extend(VIPPool.of(obj).errors)
    return errors


def test_the_table_is_big_enough():
    assert len(CASES) >= 20
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("kind,spec", [("VirtualService", VS), ("RealServer", RS), ("VIPPool", POOL),
                                       ("VirtualService", vs(address=None, port=None, fwmark=7, family="ipv6")),
                                       ("VirtualService", vs(port=0, persistence={})),
                                       ("VirtualService", vs(address="2001:db8::1", persistence={"netmask": "/64"})),
                                       ("VirtualService", vs(method="tun", tunnel={"type": "gue", "port": 6080,
                                                                                  "checksum": "remcsum"})),
                                       ("VIPPool", pool(addresses=["10.0.0.1-10.0.0.9", "fd00::/64", "10.1.1.1"],
                                                        namespaces=None, namespaceSelector={})),
                                       ("VIPPool", pool(realServerAddresses=["10.0.0.0/24", "fd00::1-fd00::9"],
                                                        backendNodeSelector={"matchLabels": {"a": "b"}},
                                                        directorNodeSelector={}))],
                         ids=["vs", "rs", "pool", "fwmark-v6", "all-ports", "v6-netmask", "gue", "pool-ranges",
                              "pool-limits"])
def test_positive_controls_are_accepted(api, namespace, kind, spec):
    created = dry_run_create(api, namespace, kind, spec)
    assert created["metadata"]["name"] == "case"
    assert model_rejects(kind, created["spec"]) == []


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_rejected_by_the_api_server_with_its_message(api, namespace, case):
    from kubernetes.client.exceptions import ApiException
    name, kind, spec, field, fragment, model = case
    with pytest.raises(ApiException) as exc:
        dry_run_create(api, namespace, kind, spec)
    assert exc.value.status == 422, exc.value.body
    message = json.loads(exc.value.body)["message"]
    assert field in message, message
    assert fragment in message, message
    if model:
        assert model_rejects(kind, spec), f"{name}: the engine model accepts what the API server rejects"
