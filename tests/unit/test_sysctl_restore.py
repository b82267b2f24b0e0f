"""Putting a sysctl back: only while the kernel still holds the value the
agent wrote. A value somebody set since is theirs: the record is forgotten
and the value left (pure planner, claim and settle; the ownership record)."""
from __future__ import annotations

from lvs_agent import ops as O
from lvs_agent.plan import claim, plan, settle
from lvs_agent.state import Observed, Ownership, SysctlClaim
from lvs_model.nodespec import NodeSpec

NAME = "net.ipv4.conf.eth0.arp_ignore"
WANT = NodeSpec(sysctls=((NAME, "1"),))
GONE = NodeSpec()


def reconcile(spec: NodeSpec, kernel: Observed, owned: Ownership) -> tuple[list[O.Op], Ownership]:
    """plan -> claim -> apply (to ``kernel``) -> settle, as the engine does."""
    p = plan(spec, kernel, owned)
    claimed = claim(owned, p, kernel, spec)
    for op in p.ops:
        if isinstance(op, O.SetSysctl):
            kernel.sysctls[op.name] = op.value
    return p.ops, settle(claimed, [(op, None) for op in p.ops])


def programmed() -> tuple[Observed, Ownership]:
    kernel = Observed(sysctls={NAME: "0"})
    ops, owned = reconcile(WANT, kernel, Ownership())
    assert ops == [O.SetSysctl(NAME, "1")] and kernel.sysctls[NAME] == "1"
    assert owned.sysctls == {NAME: SysctlClaim("0", "1")}
    return kernel, owned


def test_the_value_we_wrote_is_put_back_when_no_longer_wanted():
    kernel, owned = programmed()
    ops, owned = reconcile(GONE, kernel, owned)
    assert ops == [O.SetSysctl(NAME, "0", restore=True)] and kernel.sysctls[NAME] == "0"
    assert owned.sysctls == {}


def test_a_value_somebody_set_since_is_left_and_the_record_forgotten():
    """Before: the original (0) was written back over the hand-set 2."""
    kernel, owned = programmed()
    kernel.sysctls[NAME] = "2"  # another component (a CNI, an admin) since
    ops, owned = reconcile(GONE, kernel, owned)
    assert ops == [] and kernel.sysctls[NAME] == "2"
    assert owned.sysctls == {}  # not ours any more: never restored later either
    assert reconcile(GONE, kernel, owned)[0] == []


def test_drift_while_wanted_is_repaired_and_stays_ours():
    kernel, owned = programmed()
    kernel.sysctls[NAME] = "2"
    ops, owned = reconcile(WANT, kernel, owned)
    assert ops == [O.SetSysctl(NAME, "1")] and owned.sysctls == {NAME: SysctlClaim("0", "1")}
    assert reconcile(GONE, kernel, owned)[0] == [O.SetSysctl(NAME, "0", restore=True)]


def test_a_new_wanted_value_is_what_was_written():
    kernel, owned = programmed()
    ops, owned = reconcile(NodeSpec(sysctls=((NAME, "2"),)), kernel, owned)
    assert ops == [O.SetSysctl(NAME, "2")] and owned.sysctls == {NAME: SysctlClaim("0", "2")}
    assert reconcile(GONE, kernel, owned)[0] == [O.SetSysctl(NAME, "0", restore=True)]


def test_record_keeps_the_written_value_and_reads_records_without_it():
    _, owned = programmed()
    data = owned.to_json()
    assert data["sysctls"] == {NAME: "0"} and data["sysctlsWritten"] == {NAME: "1"}
    assert Ownership.from_json(data).sysctls == owned.sysctls
    # A record written before the value was kept: the original alone. It is put
    # back as before (what was written is not known) until a pass that still
    # wants the sysctl records what it leaves in the kernel.
    legacy = Ownership.from_json({"sysctls": {NAME: "0"}})
    kernel = Observed(sysctls={NAME: "2"})
    assert plan(GONE, kernel, legacy).ops == [O.SetSysctl(NAME, "0", restore=True)]
    kernel.sysctls[NAME] = "1"
    _, owned = reconcile(WANT, kernel, legacy)
    assert owned.sysctls == {NAME: SysctlClaim("0", "1")}
    kernel.sysctls[NAME] = "2"
    assert reconcile(GONE, kernel, owned)[0] == []
