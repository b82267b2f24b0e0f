"""lvs_model.addresses and the parsing/decoding built on it, checked against
``ipaddress`` (the reference it must equal) on edge cases and on thousands of
random addresses: a fast path that differs anywhere fails here."""
from __future__ import annotations

import ipaddress
import random
import socket
from typing import Any

import pytest

from lvs_agent import ipvs_codec as C
from lvs_agent.lvsctl import _cmp_addr
from lvs_model import addresses as A
from lvs_model.errors import FieldError
from lvs_model import nodespec
from lvs_model.nodespec import _canon_ip, _host_ip, parse_service, unusable_address

EDGE_TEXTS = [
    # canonical IPv4, every special range and its neighbours
    "0.0.0.0", "0.0.0.1", "0.255.255.255", "1.0.0.0", "10.0.0.1", "10.64.1.2", "126.255.255.255",
    "127.0.0.0", "127.0.0.1", "127.255.255.255", "128.0.0.0", "169.253.255.255", "169.254.0.0",
    "169.254.169.254", "169.254.255.255", "169.255.0.0", "192.168.1.1", "223.255.255.255",
    "224.0.0.0", "224.0.0.1", "239.255.255.255", "240.0.0.0", "255.255.255.254", "255.255.255.255",
    # IPv4 that is not canonical, or not an address
    "010.1.1.1", "10.01.1.1", "10.1.1.01", "00.0.0.0", "10.1", "10.1.1", "10", "167772161", "0x0a.1.1.1",
    " 10.1.1.1", "10.1.1.1 ", "10.1.1.1\n", "\t10.1.1.1", "10.1.1.1/32", "10.1.1.256", "256.1.1.1",
    "10.1.1.-1", "10.1.1.+1", "10..1.1", "10.1.1.1.", ".10.1.1.1", "1.2.3.4.5", "10.1.1.1%eth0",
    "١٠.1.1.1", "10.1.1.1\x00", "", " ", "a.b.c.d", "localhost", "1e1.1.1.1",
    # IPv6: compression, ties between zero runs, single zero groups, case, leading zeros
    "::", "::1", "::2", "1::", "fd00::1", "fd00:0:0:0:0:0:0:1", "FD00::1", "Fd00::A", "fd00::0001",
    "2001:db8::1", "2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1", "2001:0:0:1:0:0:0:1",
    "0:0:1:0:0:1:0:0", "1:0:0:2:0:0:0:3", "1:0:2:0:3:0:4:0", "1:2:3:4:5:6:7:0", "0:1:2:3:4:5:6:7",
    "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8", "1:0:0:0:0:0:0:0", "ffff::",
    "fe80::1", "fe80::", "fe7f:ffff::1", "febf:ffff::1", "fec0::", "feff::1", "ff00::", "fe00::1",
    "::ffff:0:1", "::fffe:0:1", "::1:ffff:0:1", "0:0:0:1::", "fe80::1%eth0", "fe80::1%1", "::%eth0", "ff02::1", "fec0::1", "2001:DB8::ABCD",
    # IPv4-mapped and IPv4-compatible: inet_ntop and ipaddress spell these differently
    "::ffff:1.2.3.4", "::ffff:102:304", "::FFFF:1.2.3.4", "::ffff:0.0.0.0", "::ffff:255.255.255.255",
    "::ffff:0:0", "::1.2.3.4", "::102:304", "::0.0.0.2", "::ffff:1.2.3.04", "::ffff:01.2.3.4",
    "64:ff9b::1.2.3.4", "1:2:3:4:5:6:1.2.3.4", "::ffff:0:1.2.3.4", "0:0:0:0:0:ffff:1.2.3.4",
    # not IPv6
    ":", ":::", "1:2:3:4:5:6:7:8:9", "1::2::3", "12345::1", "g::1", "[::1]", "::1 ", " ::1",
    "fd00::1/64", "1:2:3:4:5:6:7", "::1.2.3", "::256.1.1.1",
]
NON_STR = [None, 0, 167772161, 1.5, True, b"10.1.1.1", ["10.1.1.1"], {"a": 1},
           ipaddress.IPv4Address("10.1.1.1"), ipaddress.IPv6Address("fd00::1")]


def _random_v6(rng: random.Random) -> bytes:
    groups = [rng.choice((0, 0, 0, 1, rng.randrange(1 << 16))) for _ in range(8)]
    if rng.random() < 0.1:
        groups[:5] = [0] * 5
        groups[5] = rng.choice((0, 0xFFFF))
    return b"".join(g.to_bytes(2, "big") for g in groups)


def _random_packed() -> list[bytes]:
    rng = random.Random(21)
    v4 = [rng.getrandbits(32).to_bytes(4, "big") for _ in range(1000)]
    near = [bytes([rng.choice((0, 10, 127, 169, 223, 224, 239, 240, 255)), rng.choice((0, 254, 255)),
                   rng.randrange(256), rng.choice((0, 1, 255))]) for _ in range(500)]
    return v4 + near + [_random_v6(rng) for _ in range(1500)]


PACKED = _random_packed()


def _texts_of(packed: bytes) -> list[str]:
    """The spellings a document may use for the address: inet_ntop's,
    ipaddress's, uppercase and fully expanded."""
    ip = ipaddress.ip_address(packed)
    out = [socket.inet_ntop(socket.AF_INET6 if len(packed) == 16 else socket.AF_INET, packed), str(ip)]
    if ip.version == 6:
        out += [str(ip).upper(), ip.exploded]
    return out


ALL_TEXTS = EDGE_TEXTS + [t for p in PACKED for t in _texts_of(p)]


def _reference_canonical(text: str) -> str | type[ValueError]:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return ValueError


def _reference_unusable(address: str) -> str:
    """unusable_address with its fast path off: ipaddress alone decides."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nodespec, "is_host", lambda text: False)
        return nodespec.unusable_address(address)


def _reference_canon_ip(value: Any, path: str, errors: list, family: str | None = None) -> str:
    try:
        ip = ipaddress.ip_address(str(value))
    except ValueError:
        errors.append(FieldError(path, f"{value!r} is not an IP address"))
        return ""
    fam = "ipv6" if ip.version == 6 else "ipv4"
    if family and fam != family:
        errors.append(FieldError(path, f"{ip} is {fam} but the service is {family}"))
    return str(ip)


def _reference_words(address: str) -> tuple[int, ...]:
    ip = ipaddress.ip_address(address) if address else ipaddress.IPv4Address(0)
    n = int(ip)
    if ip.version == 4:
        return (n,)
    return tuple((n >> s) & 0xFFFFFFFF for s in (96, 64, 32, 0))


def _outcome(f, *args):
    try:
        return f(*args)
    except ValueError:
        return ValueError


def test_the_input_set_covers_both_families_and_refusals():
    refs = [_reference_canonical(t) for t in ALL_TEXTS]
    assert len(ALL_TEXTS) > 8000
    assert sum(r is ValueError for r in refs) > 40
    assert sum(isinstance(r, str) and ":" in r for r in refs) > 5000
    assert sum(isinstance(r, str) and "." in r and ":" not in r for r in refs) > 1500
    assert sum(isinstance(r, str) and r != t for r, t in zip(refs, ALL_TEXTS)) > 2000


def test_canonical_is_ipaddress_text():
    bad = [(t, _outcome(A.canonical, t), _reference_canonical(t)) for t in ALL_TEXTS
           if _outcome(A.canonical, t) != _reference_canonical(t)]
    assert bad == []


def test_ipv4_value_only_for_canonical_ipv4():
    for t in ALL_TEXTS:
        ref = _reference_canonical(t)
        want = int(ipaddress.IPv4Address(t)) if ref == t and ":" not in t else None
        assert A.ipv4_value(t) == want, t
    for v in NON_STR:
        assert A.ipv4_value(v) is None


def test_is_host_ipv4_is_a_usable_canonical_ipv4():
    for t in ALL_TEXTS:
        ref = _reference_canonical(t)
        want = ref == t and ":" not in t and _reference_unusable(t) == ""
        assert A.is_host_ipv4(t) is want, t


def test_is_host_is_a_usable_canonical_address():
    for t in ALL_TEXTS:
        want = _reference_canonical(t) == t and _reference_unusable(t) == ""
        got = A.is_host(t)
        assert want or not got, t  # never a wrong yes
        # False may only mean "not certain" where inet_ntop writes an
        # embedded IPv4 part (::ffff:1.2.3.4, ::1.2.3.4).
        embedded = want and ":" in t and "." in socket.inet_ntop(socket.AF_INET6,
                                                                  socket.inet_pton(socket.AF_INET6, t))
        assert got is (want and not embedded), t
    assert not any(A.is_host(v) for v in NON_STR)


def test_unusable_address_messages_unchanged():
    for t in ALL_TEXTS:
        assert _outcome(unusable_address, t) == _outcome(_reference_unusable, t), t


@pytest.mark.parametrize("family", [None, "", "ipv4", "ipv6"])
def test_canon_ip_and_host_ip_results_and_errors_unchanged(family):
    values = ALL_TEXTS + NON_STR

    def run(f) -> list:
        out = []
        for v in values:
            errors: list = []
            out.append((v, f(v, "spec.x", errors, family), errors))
        return out

    def differ(got: list, want: list) -> list:
        return [(g, w) for g, w in zip(got, want) if g != w]

    assert differ(run(_canon_ip), run(_reference_canon_ip)) == []
    fast = run(_host_ip)
    with pytest.MonkeyPatch.context() as mp:  # _host_ip on ipaddress alone
        mp.setattr(nodespec, "is_host", lambda text: False)
        mp.setattr(nodespec, "_canon_ip", _reference_canon_ip)
        reference = run(nodespec._host_ip)
    assert differ(fast, reference) == []


@pytest.mark.parametrize("address, message", [
    ("0.0.0.0", "0.0.0.0 never matches a packet"),
    ("::", ":: never matches a packet"),
    ("::%eth0", "::%eth0 never matches a packet"),
    ("0:0::0", ":: never matches a packet"),
    ("127.0.0.1", "127.0.0.1 is a loopback address: it never leaves the node; a VIP must be a unicast address"),
    ("::ffff:10.1.1.1", "::ffff:a01:101 is an IPv4-mapped IPv6 address: write the IPv4 address 10.1.1.1; "
                        "a VIP must be a unicast address"),
])
def test_vip_refusals_unchanged(address, message):
    errors: list = []
    assert parse_service({"address": address, "port": 80}, "spec.services[0]", errors) is None
    assert [e.message[:len(message)] for e in errors if e.path == "spec.services[0].address"] == [message], errors


def test_words_are_libipvs_words():
    for t in ALL_TEXTS + [""]:
        assert _outcome(A.words, t) == _outcome(_reference_words, t), t


def test_lvsctl_address_order_unchanged():
    rng = random.Random(5)
    texts = [str(ipaddress.ip_address(p)) for p in PACKED]
    for _ in range(2000):
        a, b = rng.choice(texts), rng.choice(texts)
        if (":" in a) != (":" in b):
            continue
        wa, wb = _reference_words(a), _reference_words(b)
        want = 0
        for x, y in zip(wa, wb):
            d = (x - y) & 0xFFFFFFFF
            want = d - (1 << 32) if d & 0x80000000 else d
            if want:
                break
        assert _cmp_addr(":" in a, a, b) == want, (a, b)


def test_decoded_dest_address_is_the_model_spelling():
    for packed in PACKED:
        af = socket.AF_INET6 if len(packed) == 16 else socket.AF_INET
        fields = (packed.ljust(16, b"\0"), socket.htons(80), 0, 1, 0, 0, 0, 0, 0, af)
        assert C.decode_dumped_dest(fields).address == str(ipaddress.ip_address(packed))


def test_decoded_service_address_is_the_model_spelling():
    for packed in PACKED[::10] + [socket.inet_pton(socket.AF_INET6, "::ffff:1.2.3.4"),
                                  socket.inet_pton(socket.AF_INET6, "::1.2.3.4")]:
        af = socket.AF_INET6 if len(packed) == 16 else socket.AF_INET
        svc = C.decode_service(af, 6, socket.inet_ntop(af, packed), 80, 0, "wlc", 0, 0, None)
        assert svc.address == str(ipaddress.ip_address(packed))


def test_embedded_ipv4_is_spelled_as_ipaddress_does():
    # glibc's inet_ntop writes ::ffff:1.2.3.4; the model spells what ipaddress does.
    for text in ("::ffff:1.2.3.4", "::1.2.3.4", "::ffff:0.0.0.1"):
        assert C.ip_text(text) == str(ipaddress.ip_address(text))
