"""The ownership record against the real kernel: a sysctl somebody changed
after the agent wrote it is theirs; a service created without its ack (the
acks overran the socket's buffer: ENOBUFS) stays ours; a pass from the
object cache alone never removes what the record owns."""
from __future__ import annotations

import socket

from lvs_agent.object_cache import reconcile_from_cache
from lvs_lab.netns import call_in_netns

from engine_helpers import reconcile_ok, spec
from test_engine_lifecycle import bare, ipvsadm  # noqa: F401 - bare: the fixture

ARP = "net.ipv4.conf.lo.arp_ignore"


def read(ns: str, name: str = ARP) -> str:
    path = "/proc/sys/" + name.replace(".", "/")
    return call_in_netns(ns, lambda: open(path).read().strip())


def write(ns: str, value: str, name: str = ARP) -> None:
    path = "/proc/sys/" + name.replace(".", "/")

    def do() -> None:
        with open(path, "w") as f:
            f.write(value)
    call_in_netns(ns, do)


def test_a_sysctl_changed_by_hand_is_left_when_no_longer_wanted(bare):
    """Before: the recorded original (0) was written over the hand-set 2."""
    lab, ns, e = bare
    assert read(ns) == "0"
    reconcile_ok(e, {"sysctls": {ARP: "1"}})
    assert read(ns) == "1"
    write(ns, "2")  # another component since
    reconcile_ok(e, {})
    assert read(ns) == "2"
    assert ARP not in e.load_owned().sysctls  # forgotten: never put back later either
    reconcile_ok(e, {})
    assert read(ns) == "2"


def test_a_sysctl_still_as_written_is_put_back(bare):
    lab, ns, e = bare
    reconcile_ok(e, {"sysctls": {ARP: "1"}})
    assert read(ns) == "1"
    reconcile_ok(e, {})
    assert read(ns) == "0" and ARP not in e.load_owned().sysctls


def many(n: int) -> dict:
    return {"services": [{"address": f"10.7.{i // 200}.{i % 200 + 1}", "port": 80,
                          "dests": [{"address": "10.8.0.1", "port": 80}]} for i in range(n)]}


def test_changes_that_succeed_need_no_room_for_answers(bare):
    """The batch socket's receive buffer shrunk to the kernel's minimum (a few
    answers): one send of 80 service adds. The changes ask for no ack and the
    kernel answers only failures, within the send, so nothing overruns: every
    add is known done, recorded as ours, and in the kernel. Before (an ack per
    op): the acks overran the buffer and most outcomes were unknown."""
    lab, ns, e = bare
    doc = many(80)
    conn = e.applier.batch_conn()
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)  # the minimum
    r = e.reconcile(spec(doc))
    assert not [err for _, err in r.results if err], r.failed[:3]
    keys = {s.key for s in spec(doc).services}
    assert e.load_owned().services == keys
    assert ipvsadm(lab, ns, "-Sn").count("-A -t") == 80
    e.applier.close()  # a socket of normal size from here on
    reconcile_ok(e, doc)  # nothing "not created by kube-lvs"
    assert ipvsadm(lab, ns, "-Sn").count("-a -t") == 80
    reconcile_ok(e, {})
    assert ipvsadm(lab, ns, "-Sn") == ""


def test_a_pass_from_the_cache_alone_keeps_owned_services_the_cache_does_not_list(bare):
    """The agent created B after its last cache write, restarted, and the API
    server has not answered yet: the pass from the cache (A only) adds and
    updates, B stays programmed and owned. The first full reconcile after the
    list removes B only if the list no longer has it. (Before, that pass was
    the engine's full reconcile of the cache's spec, which deleted B.)"""
    lab, ns, e = bare
    a = {"address": "10.9.0.1", "port": 80, "dests": [{"address": "10.8.0.1", "port": 80, "weight": 1}]}
    b = {"address": "10.9.0.2", "port": 80, "dests": [{"address": "10.8.0.2", "port": 80}]}
    reconcile_ok(e, {"services": [a, b]})
    a2 = {**a, "dests": [{"address": "10.8.0.1", "port": 80, "weight": 3}]}  # the cache's newer weight
    r = reconcile_from_cache(e, spec({"services": [a2]}))
    assert r.ok and [type(op).__name__ for op in r.ops] == ["SetDest"]
    saved = ipvsadm(lab, ns, "-Sn")
    assert "-A -t 10.9.0.2:80" in saved and "-a -t 10.9.0.1:80 -r 10.8.0.1:80 -m -w 3" in saved
    assert spec({"services": [b]}).services[0].key in e.load_owned().services
    reconcile_ok(e, {"services": [a2]})  # after the list, which no longer has B
    assert "10.9.0.2" not in ipvsadm(lab, ns, "-Sn")
