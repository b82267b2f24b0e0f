"""settle: only the kernel's refusal gives up a claim; an unknown outcome
(state.unknown_result: a lost ack, ENOBUFS, a socket error after the send)
keeps it, and the next pass reads the kernel."""
from __future__ import annotations

import pytest

from lvs_agent import ops as O
from lvs_agent.plan import settle
from lvs_agent.state import Ownership, outcome_unknown, unknown_result
from lvs_model.nodespec import Dest, Service

SVC = Service(address="10.0.0.1", port=80, scheduler="rr", dests=(Dest("10.1.0.1", 80),))
CREATES = [O.AddService(SVC), O.AddDest(SVC, SVC.dests[0]), O.AddAddress("lvs0", "10.0.0.1", 32),
           O.AddLink("lvs0", "dummy")]


def claimed() -> Ownership:
    return Ownership(services={SVC.key}, dests={SVC.key: {SVC.dests[0].key}},
                     addresses={("lvs0", "10.0.0.1")}, links={"lvs0": "created"})


def kept(own: Ownership) -> dict[str, bool]:
    return {"service": SVC.key in own.services, "dest": SVC.dests[0].key in own.dests.get(SVC.key, set()),
            "address": ("lvs0", "10.0.0.1") in own.addresses, "link": "lvs0" in own.links}


def test_unknown_result_is_recognised_and_names_its_cause():
    text = unknown_result("ENOBUFS: No buffer space available (no ack: add service x)")
    assert outcome_unknown(text) and "ENOBUFS" in text
    assert not outcome_unknown("ENOBUFS: No buffer space available") and not outcome_unknown(None)
    assert not outcome_unknown("EEXIST: File exists")


@pytest.mark.parametrize("op", CREATES, ids=lambda op: type(op).__name__)
def test_a_create_whose_outcome_is_unknown_stays_claimed(op):
    """Before: an address or link create without an answer was dropped like a
    refused one (any error), and the batch client's ENOBUFS text read as a
    refusal for every op."""
    own = settle(claimed(), [(op, unknown_result("ENOBUFS: No buffer space available (no ack)"))])
    assert all(kept(own).values()), kept(own)


@pytest.mark.parametrize("op,what", list(zip(CREATES, ["service", "dest", "address", "link"])),
                         ids=lambda x: x if isinstance(x, str) else type(x).__name__)
@pytest.mark.parametrize("err", ["EEXIST: File exists", "EINVAL: Invalid argument", "ENOENT: gone"])
def test_a_create_the_kernel_refused_is_given_up(op, what, err):
    own = settle(claimed(), [(op, err)])
    assert not kept(own)[what]


@pytest.mark.parametrize("op", [O.DelService(SVC.key), O.DelDest(SVC.key, SVC.dests[0].key),
                                O.DelAddress("lvs0", "10.0.0.1", 32), O.DelLink("lvs0")],
                         ids=lambda op: type(op).__name__)
def test_a_removal_whose_outcome_is_unknown_stays_claimed_and_a_done_one_does_not(op):
    assert all(kept(settle(claimed(), [(op, unknown_result("timed out"))])).values())
    assert not all(kept(settle(claimed(), [(op, None)])).values())
