"""The IPVS sync daemon messages (lvs_agent.ipvs_sync), byte for byte against
the layout of include/uapi/linux/ip_vs.h, decoded back, and the start/stop plan.

Each fails before the change: there was no ipvs_sync module (pyroute2 0.9.7
neither encodes nor decodes IPVS_CMD_ATTR_DAEMON).
"""
from __future__ import annotations

import struct

import pytest

from lvs_agent.ipvs_sync import SyncDaemon, decode, encode, encode_stop, format_daemon, plan, same


def attr(typ: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, typ) + payload + b"\0" * (((n + 3) & ~3) - n)


def nested(*parts: bytes) -> bytes:
    body = b"".join(parts)
    return struct.pack("=HH", 4 + len(body), 3 | 0x8000) + body


BASE = [attr(1, struct.pack("=I", 1)), attr(2, b"eth0\0"), attr(3, struct.pack("=I", 7))]

CASES = [
    ("minimal master", SyncDaemon("master", "eth0", 7), BASE),
    ("backup", SyncDaemon("backup", "eth0", 7), [attr(1, struct.pack("=I", 2))] + BASE[1:]),
    ("maxlen u16", SyncDaemon("master", "eth0", 7, maxlen=1472), BASE + [attr(4, struct.pack("=H", 1472))]),
    ("ipv4 group, network order", SyncDaemon("master", "eth0", 7, group="239.1.2.3"),
     BASE + [attr(5, bytes([239, 1, 2, 3]))]),
    ("ipv6 group", SyncDaemon("master", "eth0", 7, group="ff02::81"),
     BASE + [attr(6, bytes.fromhex("ff020000000000000000000000000081"))]),
    ("port in host order", SyncDaemon("master", "eth0", 7, port=8848), BASE + [attr(7, struct.pack("=H", 8848))]),
    ("ttl u8", SyncDaemon("master", "eth0", 7, ttl=3), BASE + [attr(8, b"\x03")]),
    ("everything", SyncDaemon("backup", "br-lvs0", 255, 1400, "224.0.0.81", 9000, 2),
     [attr(1, struct.pack("=I", 2)), attr(2, b"br-lvs0\0"), attr(3, struct.pack("=I", 255)),
      attr(4, struct.pack("=H", 1400)), attr(5, bytes([224, 0, 0, 81])), attr(7, struct.pack("=H", 9000)),
      attr(8, b"\x02")]),
]


@pytest.mark.parametrize("name,daemon,parts", CASES, ids=[c[0] for c in CASES])
def test_encode_is_the_kernels_layout(name, daemon, parts):
    assert encode(daemon) == nested(*parts)


@pytest.mark.parametrize("name,daemon,parts", CASES, ids=[c[0] for c in CASES])
def test_decode_reads_back_what_encode_wrote(name, daemon, parts):
    msg = nested(*parts)
    assert decode(msg, 0, len(msg)) == daemon


def test_decode_a_dump_answer_as_the_kernel_fills_it():
    """ip_vs_genl_fill_daemon writes every field, the port in host order."""
    msg = nested(attr(1, struct.pack("=I", 2)), attr(2, b"eth1\0"), attr(3, struct.pack("=I", 4)),
                 attr(4, struct.pack("=H", 1472)), attr(7, struct.pack("=H", 8848)), attr(8, b"\x01"),
                 attr(5, bytes([224, 0, 0, 81])))
    d = decode(b"\0" * 8 + msg, 8, 8 + len(msg))
    assert d == SyncDaemon("backup", "eth1", 4, 1472, "224.0.0.81", 8848, 1)
    assert format_daemon(d) == ("backup sync daemon (mcast=eth1, syncid=4, maxlen=1472, group=224.0.0.81, "
                                "port=8848, ttl=1)")


def test_a_message_without_a_daemon_decodes_to_none():
    other = attr(4, struct.pack("=I", 900))
    assert decode(other, 0, len(other)) is None


def test_stop_carries_the_state_alone():
    assert encode_stop("backup") == nested(attr(1, struct.pack("=I", 2)))


@pytest.mark.parametrize("kwargs,message", [
    (dict(state="primary", ifname="eth0", sync_id=1), "master or backup"),
    (dict(state="master", ifname="a-very-long-ifname", sync_id=1), "interface name"),
    (dict(state="master", ifname="", sync_id=1), "interface name"),
    (dict(state="master", ifname="eth0", sync_id=256), "sync id"),
])
def test_invalid_daemons_are_refused_before_the_kernel(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyncDaemon(**kwargs)


KERNEL_M = SyncDaemon("master", "eth0", 7, 1472, "224.0.0.81", 8848, 1)
KERNEL_B = SyncDaemon("backup", "eth0", 7, 1472, "224.0.0.81", 8848, 1)


FRESH = [SyncDaemon("master", "eth0", 7), SyncDaemon("backup", "eth0", 7)]
MOVED = [SyncDaemon("master", "eth0", 8), SyncDaemon("backup", "eth0", 8)]


@pytest.mark.parametrize("want,running,ours,stops,starts", [
    (FRESH, [], ("master", "backup"), [], ["backup", "master"]),
    (FRESH, [KERNEL_M, KERNEL_B], ("master", "backup"), [], []),  # kernel filled in the defaults
    (MOVED, [KERNEL_M, KERNEL_B], ("master", "backup"), ["backup", "master"], ["backup", "master"]),
    ([], [KERNEL_M, KERNEL_B], ("master",), ["master"], []),  # the backup is not ours: left alone
], ids=["from nothing", "as wanted", "sync id changed: restart", "stop only ours"])
def test_plan(want, running, ours, stops, starts):
    got_stops, got_starts = plan(want, running, ours)
    assert got_stops == stops and [d.state for d in got_starts] == starts


def test_a_different_device_is_not_the_same_daemon():
    assert not same(SyncDaemon("master", "eth1", 7), KERNEL_M)
    assert same(SyncDaemon("master", "eth0", 7, port=8848), KERNEL_M)
    assert not same(SyncDaemon("master", "eth0", 7, port=9000), KERNEL_M)
