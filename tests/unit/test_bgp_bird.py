"""BIRD 2 configuration and status (lvs_agent.bird_conf) and the speaker
shell's decisions about when to talk to BIRD (lvs_agent.bgp_speaker, with
fake birdc/bird: the real ones run in tests/kernel/test_bgp_ecmp.py).

Neither module existed before this change: every test here fails on the
code before it (their imports)."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from lvs_agent import bird_conf as C
from lvs_agent.bgp_speaker import BgpSpeaker, BirdError, configure_ok, programmed_keys
from lvs_model.bgp import BgpPeer, BgpSpec, Health
from lvs_model.nodespec import parse_node_spec

VIP = "192.168.2.100"
V4 = BgpPeer("10.1.0.254", 65000, 65001)
V6 = BgpPeer("fd00:1::fe", 65000, 65001, hold_time=30, keepalive_time=10)


def block(text: str, name: str) -> str:
    """The body of ``protocol ... name { ... }`` (to the closing brace at column 0)."""
    m = re.search(r"^protocol \w+ " + re.escape(name) + r" \{\n(.*?)^\}", text, re.M | re.S)
    assert m, (name, text)
    return m.group(1)


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------

@pytest.mark.parametrize("prefixes, export4, routes4", [
    ([f"{VIP}/32"], "export where net ~ [ 192.168.2.100/32 ];", ["route 192.168.2.100/32 blackhole;"]),
    ([f"{VIP}/32", "192.168.2.7/32"], "export where net ~ [ 192.168.2.100/32, 192.168.2.7/32 ];",
     ["route 192.168.2.100/32 blackhole;", "route 192.168.2.7/32 blackhole;"]),
    ([], "export none;", []),
])
def test_exactly_the_announced_prefixes_are_originated_and_exported(prefixes, export4, routes4):
    text = C.render(BgpSpec("10.1.0.1", (V4,), (VIP,)), prefixes).text
    static = block(text, C.STATIC_PROTOCOL["ipv4"])
    assert re.findall(r"route .*;", static) == routes4
    peer = block(text, C.protocol_name(V4))
    assert export4 in peer and "import none;" in peer and "next hop self;" in peer
    assert "protocol kernel" not in text  # BIRD never touches the director's routing tables


def test_a_peer_block_carries_its_settings():
    p = BgpPeer("10.1.0.254", 65000, 65001, port=1179, hold_time=3, keepalive_time=1, password_file="tor1",
                bfd=True)
    r = C.render(BgpSpec("10.1.0.1", (p, V6), (VIP,)), [f"{VIP}/32", "fd00:2::1/128"], {"tor1": "s3cret"})
    assert r.problems == ()
    peer = block(r.text, "peer_10_1_0_254")
    for line in ("local as 65001;", "neighbor 10.1.0.254 port 1179 as 65000;", "hold time 3;",
                 "keepalive time 1;", "graceful restart off;", 'password "s3cret";', "bfd on;", "ipv4 {"):
        assert line in peer, line
    six = block(r.text, "peer_fd00_1__fe")
    assert "ipv6 {" in six and "export where net ~ [ fd00:2::1/128 ];" in six and "password" not in six
    assert "bfd" not in six and "hold time 30;" in six
    assert "router id 10.1.0.1;" in r.text and "protocol bfd" in r.text


def test_without_bfd_no_bfd_protocol():
    assert "bfd" not in C.render(BgpSpec("10.1.0.1", (V4,), (VIP,)), []).text


@pytest.mark.parametrize("passwords, words", [
    ({}, "is missing"),
    ({"tor1": ""}, "is empty"),
    ({"tor1": 'a"b'}, "cannot carry"),
    ({"tor1": "a\\b"}, "cannot carry"),
    ({"tor1": "a\nb"}, "cannot carry"),
])
def test_a_peer_without_a_usable_password_is_left_out_with_a_problem(passwords, words):
    bad = BgpPeer("10.1.0.254", 65000, 65001, password_file="tor1")
    good = BgpPeer("10.1.0.253", 65000, 65001)
    r = C.render(BgpSpec("10.1.0.1", (bad, good), (VIP,)), [f"{VIP}/32"], passwords)
    assert "peer_10_1_0_254" not in r.text and "peer_10_1_0_253" in r.text
    assert len(r.problems) == 1 and words in r.problems[0] and "10.1.0.254" in r.problems[0]


def test_protocol_names_follow_the_address_not_the_order():
    a = C.render(BgpSpec("10.1.0.1", (V4, V6)), []).text
    b = C.render(BgpSpec("10.1.0.1", (V6, V4)), []).text
    assert set(re.findall(r"protocol bgp (\S+)", a)) == set(re.findall(r"protocol bgp (\S+)", b))


@pytest.mark.skipif(not shutil.which("bird"), reason="bird (Debian's bird2) not installed: lab/setup.sh installs it")
@pytest.mark.parametrize("prefixes", [[], [f"{VIP}/32", "fd00:2::1/128"]])
def test_bird_itself_accepts_the_configuration(tmp_path, prefixes):
    """BIRD's own parser (``bird -p``), no daemon started."""
    p = BgpPeer("10.1.0.254", 65000, 65001, hold_time=3, keepalive_time=1, password_file="k", bfd=True)
    conf = tmp_path / "bird.conf"
    conf.write_text(C.render(BgpSpec("10.1.0.1", (p, V6), (VIP,)), prefixes, {"k": "pw"}).text)
    r = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------
# Status
# --------------------------------------------------------------------------

SHOW_PROTOCOLS = """BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     2026-12-04 21:57:53
kube_lvs_vips4 Static     master4    up     2026-12-04 21:57:53
peer_10_1_0_254 BGP        ---        up     2026-12-04 21:58:01.123  Established
peer_fd00_1__fe BGP        ---        start  2026-12-04 21:57:53  Active        Socket: Connection refused
peer_10_1_0_9 BGP        ---        down   2026-12-04 21:57:53  Error: Invalid next hop
"""


def test_show_protocols_gives_each_bgp_session():
    rows = C.parse_protocols(SHOW_PROTOCOLS)
    assert set(rows) == {"peer_10_1_0_254", "peer_fd00_1__fe", "peer_10_1_0_9"}
    up, active, down = rows["peer_10_1_0_254"], rows["peer_fd00_1__fe"], rows["peer_10_1_0_9"]
    assert up.established and up.bgp_state == "Established" and up.since == "2026-12-04 21:58:01.123"
    assert not active.established and active.bgp_state == "Active" and "Connection refused" in active.info
    assert not down.established and down.state == "down"


@pytest.mark.parametrize("reply, ok", [
    ("Reading configuration from /s/bird.conf\nReconfigured\n", True),
    ("Reading configuration from /s/bird.conf\nReconfiguration in progress\n", True),
    ("Reading configuration from /s/bird.conf\n/s/bird.conf:12:3 syntax error, unexpected CF_SYM_UNDEFINED\n",
     False),
])
def test_configure_reply(reply, ok):
    assert configure_ok(reply) is ok


# --------------------------------------------------------------------------
# The speaker shell against fake programs
# --------------------------------------------------------------------------

class FakeBird:
    """bird and birdc: records every call in order, answers like BIRD."""

    def __init__(self):
        self.calls: list[str] = []
        self.alive = False
        self.refuse = False

    def run(self, argv, timeout):
        cmd = " ".join(argv[argv.index("-s") + 2:])
        self.calls.append(f"birdc {cmd}")
        if not self.alive:
            return 1, "Unable to connect to server control socket"
        if cmd == "configure":
            return 0, "Reading configuration\n" + ("syntax error" if self.refuse else "Reconfigured")
        if cmd == "down":
            self.alive = False
            return 0, "Shutdown requested"
        if cmd == "show protocols":
            return 0, SHOW_PROTOCOLS
        return 0, "BIRD 2.0.12 ready."

    def spawn(self, argv):
        self.calls.append("bird " + " ".join(argv[1:]))
        self.alive = True
        fake = self

        class Proc:
            def poll(self):
                return None if fake.alive else 0

            def wait(self, timeout=None):
                return 0

            def terminate(self):
                fake.alive = False

            kill = terminate
        return Proc()


def speaker(tmp_path, fake: FakeBird, **kw) -> BgpSpeaker:
    return BgpSpeaker(tmp_path / "state", run=fake.run, spawn=fake.spawn, sleep=lambda s: None, **kw)


def spec_doc(weight: int = 1, peers=({"address": "10.1.0.254", "asn": 65000},), password_file: str = ""):
    peers = [{**p, **({"passwordFile": password_file} if password_file else {})} for p in peers]
    d = {"node": "d1", "directorAddresses": [VIP],
         "services": [{"address": VIP, "port": 80, "scheduler": "mh",
                       "dests": [{"address": "10.1.0.11", "method": "dr", "weight": weight}]}],
         "bgp": {"routerId": "10.1.0.1", "localAsn": 65001, "peers": list(peers), "vips": [VIP]}}
    spec, errors = parse_node_spec(d)
    assert not errors
    return spec, Health(programmed_keys(spec, {}))


def test_bird_is_configured_only_when_the_text_changes(tmp_path):
    fake = FakeBird()
    s = speaker(tmp_path, fake)
    spec, health = spec_doc()
    s.update(spec, health)
    assert fake.calls[0].startswith("bird -f -c ") and "-s" in fake.calls[0]
    assert f"route {VIP}/32 blackhole;" in s.conf.read_text()
    assert oct(s.conf.stat().st_mode & 0o777) == "0o600"
    n = len(fake.calls)
    s.update(spec, health)  # the same decision: BIRD is not asked anything
    assert len(fake.calls) == n
    s.update(*spec_doc(weight=0))  # every server at 0: withdrawn by a reconfiguration
    assert fake.calls[n:] == ["birdc configure"]
    assert f"route {VIP}/32" not in s.conf.read_text() and "export none;" in s.conf.read_text()
    assert [d.reason for d in s.decisions] == ["NoRealServer"]


def test_a_refused_configuration_is_an_error_and_is_retried(tmp_path):
    fake = FakeBird()
    s = speaker(tmp_path, fake)
    s.update(*spec_doc())
    fake.refuse = True
    with pytest.raises(BirdError):
        s.update(*spec_doc(weight=0))
    assert s.errors == 1
    fake.refuse = False
    s.update(*spec_doc(weight=0))  # the text BIRD runs did not change: asked again
    assert fake.calls[-1] == "birdc configure" and s.configures == 2


def test_stop_withdraws_before_it_shuts_bird_down(tmp_path):
    fake = FakeBird()
    s = speaker(tmp_path, fake)
    s.update(*spec_doc())
    n = len(fake.calls)
    s.stop()
    assert fake.calls[n:] == ["birdc configure", "birdc down"]
    assert not s.running and [d.reason for d in s.decisions] == ["Stopping"]


def test_a_spec_without_peers_stops_bird_withdrawing_first(tmp_path):
    fake = FakeBird()
    s = speaker(tmp_path, fake)
    s.update(*spec_doc())
    n = len(fake.calls)
    s.update(*spec_doc(peers=()))
    assert fake.calls[n:] == ["birdc configure", "birdc down"]


def test_without_peers_bird_is_never_started(tmp_path):
    fake = FakeBird()
    speaker(tmp_path, fake).update(*spec_doc(peers=()))
    assert fake.calls == []


def test_passwords_come_from_the_secret_directory(tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "tor1").write_text("s3cret\n")
    fake = FakeBird()
    s = speaker(tmp_path, fake, secret_dir=secrets)
    s.update(*spec_doc(password_file="tor1"))
    assert 'password "s3cret";' in s.conf.read_text() and s.problems == ()
    (secrets / "tor1").unlink()
    s.update(*spec_doc(password_file="tor1"))
    assert "peer_10_1_0_254" not in s.conf.read_text() and "is missing" in s.problems[0]


def test_status_names_each_vip_and_peer(tmp_path):
    fake = FakeBird()
    s = speaker(tmp_path, fake)
    s.update(*spec_doc())
    st = s.status()
    assert st["vips"] == [{"address": VIP, "announced": True, "reason": "Announced",
                           "message": "1 real server(s) with a weight above 0 behind tcp:192.168.2.100:80"}]
    assert st["peers"] == [{"address": "10.1.0.254", "asn": 65000, "state": "Established", "info": "Established",
                            "since": "2026-12-04 21:58:01.123"}]


def test_a_leftover_bird_on_the_socket_is_shut_down_first(tmp_path):
    fake = FakeBird()
    s = speaker(tmp_path, fake)
    s.sock.parent.mkdir(parents=True)
    s.sock.touch()
    fake.alive = True  # an earlier agent's BIRD still answers
    s.update(*spec_doc())
    assert fake.calls[:2] == ["birdc down", fake.calls[1]] and fake.calls[1].startswith("bird -f")


def test_programmed_keys_leave_out_services_with_errors():
    spec, _ = spec_doc()
    key = spec.services[0].key
    assert programmed_keys(spec, {}) == {key}
    assert programmed_keys(spec, {key: "EINVAL"}) == frozenset()


def test_after_pass_takes_the_engine_report_and_never_raises(tmp_path):
    """The agent's hook: a service the pass failed is not programmed, and a
    BIRD failure is counted, not raised into the agent's loop."""
    fake = FakeBird()
    s = speaker(tmp_path, fake)
    spec, _ = spec_doc()

    class Report:
        service_errors = {spec.services[0].key: "EINVAL"}
        problems: dict = {}
    s.after_pass(spec, Report())
    assert [d.reason for d in s.decisions] == ["NotProgrammed"]
    s.after_pass(spec, None)
    assert [d.reason for d in s.decisions] == ["Announced"]
    fake.refuse = True
    s.after_pass(spec, Report())  # a refused configuration: logged and counted
    assert s.errors == 1
