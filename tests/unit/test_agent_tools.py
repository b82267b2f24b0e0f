"""A program the agent runs (tools.py) missing at run time fails only the
services that need it, with a message that names it; the rest are programmed.

Issue 22 item 6: the image lacked ``nft``, and one SNAT VirtualService made a
director's whole reconcile fail (reading the SNAT table ran a binary that was
not there, and the OSError ended the pass before anything was planned).
"""
from __future__ import annotations

import os
import stat

import pytest

from lvs_agent import ops as O
from lvs_agent import tools
from lvs_agent.engine import Engine, build_report
from lvs_agent.ipvs_codec import IPVSTable
from lvs_agent.nft import read_nft_table
from lvs_agent.plan import NFT_FAMILY, NFT_TABLE, claim, plan
from lvs_agent.state import Observed, Ownership
from lvs_model.nodespec import parse_node_spec

TKEY = (NFT_FAMILY, NFT_TABLE)
NEEDS_NFT = "needs nft (nftables), not found in the agent's image/PATH"


def director():
    """One SNAT service (:80) and one plain NAT service (:81)."""
    dests = [{"address": "10.0.0.51", "port": 8080}]
    s, errors = parse_node_spec({"services": [
        {"address": "192.168.0.30", "port": 80, "snat": True, "scheduler": "rr", "dests": dests},
        {"address": "192.168.0.30", "port": 81, "scheduler": "rr", "dests": dests}]})
    assert not errors, errors
    return s


@pytest.fixture
def no_nft(tmp_path, monkeypatch):
    """A PATH with no nft on it (and no KUBE_LVS_NFT naming one)."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("KUBE_LVS_NFT", raising=False)
    return empty


def test_every_tool_names_its_debian_package_and_message():
    assert tools.EXTERNAL_TOOLS["nft"][0] == "nftables"
    assert tools.packages() == sorted({pkg for pkg, _ in tools.EXTERNAL_TOOLS.values()})
    assert tools.missing_message("nft") == NEEDS_NFT


def test_a_tool_is_looked_up_on_path_at_each_call(no_nft):
    assert tools.missing(["nft"]) == {"nft"}
    fake = no_nft / "nft"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert tools.missing(["nft"]) == frozenset() and tools.found("nft")


def test_the_engine_asks_for_nft_only_when_snat_is_in_play(no_nft):
    spec = director()
    assert Engine.missing_tools(spec, Ownership()) == {"nft"}
    plain = parse_node_spec({"services": [{"address": "192.168.0.30", "port": 81, "scheduler": "rr"}]})[0]
    assert Engine.missing_tools(plain, Ownership()) == frozenset()
    # A table of ours from an earlier SNAT service: it must be read to be removed.
    assert Engine.missing_tools(plain, Ownership(nft_tables={TKEY})) == {"nft"}


def test_the_planner_fails_only_the_snat_service():
    spec, obs, owned = director(), Observed(), Ownership()
    p = plan(spec, obs, owned, missing=frozenset({"nft"}))
    assert not [op for op in p.ops if isinstance(op, O.NFT_OPS)]
    (key,) = p.problems
    assert key.port == 80 and NEEDS_NFT in p.problems[key]
    assert {op.service.key.port for op in p.ops if isinstance(op, O.AddService)} == {80, 81}
    report = build_report(spec, p, [(op, None) for op in p.ops], "")
    assert [k.port for k in report.programmed] == [81]
    # With nft the same spec plans the table and reports no problem.
    assert not plan(spec, obs, owned).problems


def test_an_unread_table_stays_owned_and_is_not_deleted():
    """With nft gone the table cannot be read: the record keeps it (a later
    pass with nft removes it), and no delete is planned through nft."""
    plain = parse_node_spec({"services": [{"address": "192.168.0.30", "port": 81, "scheduler": "rr"}]})[0]
    owned = Ownership(nft_tables={TKEY})
    p = plan(plain, Observed(), owned, missing=frozenset({"nft"}))
    assert not [op for op in p.ops if isinstance(op, O.NFT_OPS)] and not p.problems
    assert claim(owned, p, Observed(), plain, missing=frozenset({"nft"})).nft_tables == {TKEY}


def test_engine_reconcile_without_nft_programs_the_other_services(no_nft, tmp_path, monkeypatch):
    """The engine's whole pass with the kernel faked but the nft lookup real.
    Before: the read of the SNAT table ran the missing binary and the
    reconcile raised FileNotFoundError, so nothing at all was programmed."""
    import lvs_agent.engine as engine_mod

    def kernel(netns=None, sysctls=(), *, nft_tables=(), **_):
        obs = Observed(sysctls={n: "0" for n in sysctls})
        for fam, name in nft_tables:
            table = read_nft_table(fam, name, netns)  # runs nft from PATH, as the agent does
            if table is not None:
                obs.nft_tables[(fam, name)] = table
        return obs, IPVSTable()
    monkeypatch.setattr(engine_mod, "observe", kernel)
    engine = Engine(state_path=tmp_path / "ownership.json")
    monkeypatch.setattr(engine.applier, "batch_conn", lambda: None)  # no IPVS socket: the kernel is faked
    applied: list[O.Op] = []

    def apply(ops):
        applied.extend(ops)
        return [(op, None) for op in ops]
    monkeypatch.setattr(engine.applier, "apply", apply)
    report = engine.reconcile(director())
    assert [k.port for k in report.programmed] == [81]
    (key,) = report.problems
    assert key.port == 80 and NEEDS_NFT in report.problems[key]
    assert {op.service.key.port for op in applied if isinstance(op, O.AddService)} == {80, 81}
    assert not [op for op in applied if isinstance(op, O.NFT_OPS)]
    assert os.environ["PATH"] == str(no_nft)
