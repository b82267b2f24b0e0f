"""The planner's IPVS timeouts (``ipvsadm --set``): set what differs, record
the original and what was written, put the original back when no spec asks
any more, only while the kernel still holds what the agent wrote; the
ownership record keeps it across a restart; lvsctl's ``--timeout`` line.

All of these fail before the change: there was no SetIPVSTimeouts op, no
``timeouts`` in the node spec, no ``lvsctl list --timeout``.
"""
from __future__ import annotations

import json

from lvs_agent import ipvs_timeouts as T
from lvs_agent import ops as O
from lvs_agent.lvsctl import build_parser, format_timeouts
from lvs_agent.plan import claim, plan, settle
from lvs_agent.state import Observed, Ownership
from lvs_model.nodespec import NodeSpec

KERNEL = {"tcp": 900, "tcpfin": 120, "udp": 300}


def kernel(**values) -> Observed:
    now = {**KERNEL, **values}
    return Observed(sysctls={T.key(n): str(v) for n, v in now.items()})


def spec(**timeouts) -> NodeSpec:
    return NodeSpec(node="d1", timeouts=tuple(sorted(timeouts.items())))


def one_pass(desired: NodeSpec, obs: Observed, owned: Ownership, fail: bool = False):
    p = plan(desired, obs, owned)
    claimed = claim(owned, p, obs, desired)
    results = [(op, "EPERM: no" if fail else None) for op in p.ops]
    return p, settle(claimed, results)


def test_sets_only_what_differs_in_one_message_and_records_original_and_written():
    p, own = one_pass(spec(tcp=60, udp=300), kernel(), Ownership())
    assert p.ops == [O.SetIPVSTimeouts((("tcp", 60),))]  # udp already 300: nothing to do
    assert T.records(own) == {"tcp": (900, 60)}
    assert O.describe(p.ops[0]) == "set ipvs timeout tcp=60"


def test_nothing_to_do_when_the_kernel_holds_the_declared_values():
    _, own = one_pass(spec(tcp=60), kernel(), Ownership())
    p, _ = one_pass(spec(tcp=60), kernel(tcp=60), own)
    assert not p.ops


def test_restores_the_original_once_no_spec_asks_while_the_kernel_holds_ours():
    _, own = one_pass(spec(tcp=60, tcpfin=30), kernel(), Ownership())
    p, after = one_pass(NodeSpec(node="d1"), kernel(tcp=60, tcpfin=30), own)
    assert p.ops == [O.SetIPVSTimeouts((("tcp", 900), ("tcpfin", 120)), restore=True)]
    assert T.records(after) == {}


def test_a_value_somebody_set_after_us_is_theirs_and_the_record_is_forgotten():
    _, own = one_pass(spec(tcp=60), kernel(), Ownership())
    p, after = one_pass(NodeSpec(node="d1"), kernel(tcp=77), own)  # ipvsadm --set 77 0 0 by hand
    assert not p.ops and T.records(after) == {}


def test_a_changed_declaration_keeps_the_first_original():
    _, own = one_pass(spec(tcp=60), kernel(), Ownership())
    _, own = one_pass(spec(tcp=30), kernel(tcp=60), own)
    assert T.records(own) == {"tcp": (900, 30)}
    p, _ = one_pass(NodeSpec(node="d1"), kernel(tcp=30), own)
    assert p.ops == [O.SetIPVSTimeouts((("tcp", 900),), restore=True)]


def test_a_failed_restore_keeps_the_record_for_the_next_pass():
    _, own = one_pass(spec(udp=10), kernel(), Ownership())
    _, after = one_pass(NodeSpec(node="d1"), kernel(udp=10), own, fail=True)
    assert T.records(after) == {"udp": (300, 10)}


def test_unreadable_timeouts_set_but_never_restore_a_guess():
    """No IPVS config read (the observer gave None): the set is still tried
    (its error is reported), but no original is invented to restore."""
    obs = Observed(sysctls={T.key("tcp"): None})
    p, own = one_pass(spec(tcp=60), obs, Ownership())
    assert p.ops == [O.SetIPVSTimeouts((("tcp", 60),))] and T.records(own) == {"tcp": (None, 60)}
    p2, after = one_pass(NodeSpec(node="d1"), kernel(tcp=60), own)
    assert not p2.ops and T.records(after) == {}


def test_records_survive_the_ownership_file_and_never_reach_the_sysctl_code():
    _, own = one_pass(spec(tcp=60), kernel(), Ownership())
    again = Ownership.from_json(json.loads(json.dumps(own.to_json())))
    assert T.records(again) == {"tcp": (900, 60)}
    # The generic sysctl restore never sees the record: no SetSysctl for it.
    p, _ = one_pass(NodeSpec(node="d1"), kernel(tcp=60), again)
    assert not any(isinstance(op, O.SetSysctl) for op in p.ops)


def test_observe_keys_cover_wanted_and_recorded_timeouts():
    own = Ownership(sysctls={T.key("udp"): "300 10", "net.ipv4.ip_forward": "0"})
    assert T.observe_keys(spec(tcp=5), own) == {T.key("tcp"), T.key("udp")}


def test_lvsctl_timeout_line_is_ipvsadms():
    assert format_timeouts(KERNEL) == "Timeout (tcp tcpfin udp): 900 120 300\n"
    args = build_parser().parse_args(["list", "--timeout"])
    assert args.timeout
