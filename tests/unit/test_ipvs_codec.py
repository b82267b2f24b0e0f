"""ipvs_codec against real kernel messages (tests/unit/data/ipvs_messages.json,
recorded in the lab VM by tests/kernel/record_ipvs_messages.py): each recorded
reply decodes to the service and dests that were programmed, and each op
encodes to the very bytes the kernel accepted.

Table-driven: one case per kind of service (TCP/UDP/SCTP/fwmark, IPv4/IPv6,
NAT/DR/TUN with each tunnel type and checksum, schedulers with flags,
persistence with a netmask, one-packet, weights and thresholds).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from lvs_agent import netlink_batch as NB
from lvs_agent import ops as O
from lvs_agent import ipvs_codec as C
from lvs_agent.genl import nla, parse_attrs
from lvs_model import kernel as K
from lvs_model.nodespec import Dest, DestKey, Service

DATA = json.loads((Path(__file__).parent / "data" / "ipvs_messages.json").read_text())
FAMILY = DATA["family"]
CASES = DATA["cases"]


def service_of(case: dict) -> Service:
    f = dict(case["service"])
    f["scheduler_flags"] = tuple(f["scheduler_flags"])
    return Service(**f)


def dests_of(case: dict) -> tuple[Dest, ...]:
    return tuple(Dest(**d) for d in case["dests"])


def op_of(rec: dict, full: Service) -> O.Op:
    match rec["op"]:
        case "AddService":
            return O.AddService(full)
        case "SetService":
            return O.SetService(full)
        case "DelService":
            return O.DelService(full.key)
        case "AddDest":
            return O.AddDest(full, Dest(**rec["dest"]))
        case "SetDest":
            return O.SetDest(full, Dest(**rec["dest"]))
        case "DelDest":
            return O.DelDest(full.key, DestKey(**rec["dest"]))
    raise AssertionError(rec["op"])


def dest_span(msg: bytes) -> tuple[int, int]:
    return parse_attrs(msg, 20, len(msg))[C.CMD_ATTR_DEST]


ids = [c["name"] for c in CASES]


def test_the_recording_covers_every_kind():
    svcs = [service_of(c) for c in CASES]
    dests = [d for c in CASES for d in dests_of(c)]
    assert {s.protocol for s in svcs} >= {"tcp", "udp", "sctp", ""}
    assert {s.family for s in svcs} == {"ipv4", "ipv6"}
    assert {s.family for s in svcs if s.fwmark} == {"ipv4", "ipv6"}
    assert {d.method for d in dests} == {"nat", "dr", "tun"}
    assert {(d.tunnel_type, d.tunnel_csum) for d in dests if d.method == "tun"} >= {
        ("ipip", "none"), ("gue", "none"), ("gue", "csum"), ("gue", "remcsum"), ("gre", "csum")}
    assert {f for s in svcs for f in s.scheduler_flags} == {"sh-fallback", "sh-port", "mh-port"}
    assert any(s.one_packet for s in svcs) and any(s.persistence_netmask for s in svcs if s.family == "ipv6")
    assert any(d.upper_threshold and d.lower_threshold for d in dests)
    assert {r["op"] for c in CASES for r in c["requests"]} == {
        "AddService", "SetService", "DelService", "AddDest", "SetDest", "DelDest"}


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_a_service_reply_decodes_to_the_service_programmed(case):
    msg = bytes.fromhex(case["service_reply"])
    svc, stats, pe, key_attrs = C.reply_service(msg, with_stats=True)
    assert svc == service_of(case)
    assert stats == C.Stats() and pe == ""  # no traffic, no persistence engine
    # The key attributes, re-sent as the kernel wrote them, name the same service.
    again, _, _, _ = C.decode_service_attrs(key_attrs, parse_attrs(key_attrs, 0, len(key_attrs)), False)
    assert again.key == svc.key
    # netlink_batch's memo gives the same, the second time from the memo.
    span = parse_attrs(msg, 20, len(msg))[C.CMD_ATTR_SERVICE]
    for _ in range(2):
        assert NB.parse_service(msg, span[0], span[1], False) == (svc, None, "", key_attrs)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_dest_replies_decode_to_the_dests_programmed(case):
    af = K.FAMILIES[case["service"]["family"]]
    msgs = [bytes.fromhex(h) for h in case["dest_replies"]]
    got = [C.reply_dest(m, af, with_stats=True) for m in msgs]
    assert sorted((d for d, _ in got), key=repr) == sorted(dests_of(case), key=repr)
    assert all(rt == C.DestRuntime() for _, rt in got)
    for m, (d, rt) in zip(msgs, got):
        s, e = dest_span(m)
        # The kernel's usual layout: one unpack gives the same dest.
        fields = C.dumped_dest_fields(m, s, e)
        assert fields is not None, "the recorded kernel no longer writes the layout DEST_DUMPED expects"
        assert C.decode_dumped_dest(fields[0]) == d and fields[1] == (0, 0, 0)
        assert NB.parse_dest_fast(m, s, e, True, True) == (d, rt)
        assert NB.parse_dest_fast(m, s, e, False, False) == (d, None)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_each_op_encodes_to_the_bytes_the_kernel_accepted(case):
    full = Service(**{**service_of(case).__dict__, "dests": dests_of(case)})
    for rec in case["requests"]:
        op = op_of(rec, full)
        assert C.op_message(op, FAMILY, rec["seq"]).hex() == rec["hex"], rec["op"]


def test_another_attribute_order_takes_the_attribute_walk():
    """A dest whose attributes are not in the usual layout (another kernel):
    the one-unpack reader declines and the generic walk decodes it."""
    d = Dest("fd00::5", 8443, weight=9, method="tun", tunnel_type="gue", tunnel_port=6080,
             tunnel_csum="csum", upper_threshold=3, lower_threshold=1)
    payload = C.dest_full(d)[4:]  # the encoder's order: ADDR(16) PORT FWD WEIGHT U L AF TUN_*
    assert C.dumped_dest_fields(payload, 0, len(payload)) is None
    got, rt = C.decode_dest_attrs(payload, 0, len(payload), 10, False)
    assert got == d and rt == C.DestRuntime()


def test_foreign_flag_bits_and_the_hashed_flag():
    """HASHED (0x2) is the kernel's and masked out; a scheduler flag the
    scheduler has no name for reads back as ipvsadm spells it."""
    attrs = (nla(C.SVC_AF, struct.pack("=H", 2)) + nla(C.SVC_FWMARK, struct.pack("=I", 9))
             + nla(C.SVC_SCHED_NAME, b"rr\0") + nla(C.SVC_FLAGS, struct.pack("=II", 0x2 | 0x20, ~0 & 0xFFFFFFFF))
             + nla(C.SVC_TIMEOUT, struct.pack("=I", 0)) + nla(C.SVC_NETMASK, bytes([255] * 4)))
    svc, _, _, _ = C.decode_service_attrs(attrs, parse_attrs(attrs, 0, len(attrs)), False)
    assert svc == Service("ipv4", "", "", 0, fwmark=9, scheduler="rr", scheduler_flags=("flag-3",))
    assert C.svc_flags(svc) == 0x20


def test_an_op_that_is_not_ipvs_cannot_be_encoded():
    with pytest.raises(TypeError):
        C.op_command(O.AddAddress("lo", "10.0.0.1", 32))
