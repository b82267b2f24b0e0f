"""`lvsctl apply` and the agent's ownership record: lvsctl keeps a record of
its own, and one a running agent holds (state.RecordLock) is refused before
anything is read or written. No kernel: the engine is a fake here (the
kernel tier runs lvsctl apply for real)."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from lvs_agent import engine as E
from lvs_agent import lvsctl as L
from lvs_agent.plan import Plan
from lvs_agent.state import AGENT_RECORD, RecordHeld, hold_record, lock_path

SPEC = "services:\n- address: 192.0.2.10\n  port: 80\n  dests:\n  - address: 198.51.100.1\n"

HOLD = """
import sys, time
from lvs_agent.state import hold_record
lock = hold_record(sys.argv[1], "lvs-agent (pid 4242, node d1)")
print("held", flush=True)
sys.stdin.read()
"""


class FakeEngine:
    """Records what apply asked for; checks the record's lock is held meanwhile."""

    made: list = []

    def __init__(self, state, netns=None, uplink=""):
        self.state = state
        FakeEngine.made.append(self)
        self.held_during_plan = None

    def plan(self, spec):
        try:
            hold_record(self.state, "test").release()
            self.held_during_plan = False
        except RecordHeld:
            self.held_during_plan = True
        return Plan(), None, None, ""

    def close(self):
        pass


@pytest.fixture
def fake_engine(monkeypatch, tmp_path):
    FakeEngine.made = []
    monkeypatch.setattr(E, "Engine", FakeEngine)
    monkeypatch.setattr(L, "_require_root", lambda: None)
    monkeypatch.setenv("KUBE_LVS_STATE_DIR", str(tmp_path / "state"))
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    return spec


@pytest.fixture
def agent_holding(tmp_path):
    """Another process holding the agent's record, as a running agent does."""
    record = tmp_path / "state" / AGENT_RECORD
    record.parent.mkdir()
    record.write_text('{"version":1,"services":[]}')
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(record)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield record
    finally:
        proc.stdin.close()
        proc.wait(10)


def test_default_record_is_lvsctls_own_not_the_agents(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBE_LVS_STATE_DIR", str(tmp_path))
    assert L.default_state_path() == tmp_path / "lvsctl.json"
    assert L.default_state_path("/run/netns/director") == tmp_path / "lvsctl.director.json"
    assert L.default_state_path() != tmp_path / AGENT_RECORD
    assert L.default_state_path() != E.default_state_path()


def test_apply_without_state_uses_lvsctls_record(fake_engine, tmp_path, capsys):
    assert L.main(["apply", str(fake_engine), "--dry-run"]) == 0
    assert [e.state for e in FakeEngine.made] == [tmp_path / "state" / "lvsctl.json"]
    assert "nothing to do" in capsys.readouterr().out


def test_apply_refuses_a_record_a_running_agent_holds(fake_engine, agent_holding, capsys):
    before = (agent_holding.read_bytes(), agent_holding.stat().st_mtime_ns)
    for extra in ([], ["--dry-run"]):
        assert L.main(["apply", str(fake_engine), "--state", str(agent_holding), *extra]) == 2
        err = capsys.readouterr().err
        assert f"refusing to apply with {agent_holding}" in err
        assert "lvs-agent (pid 4242, node d1)" in err  # the holder
        assert str(lock_path(agent_holding)) in err
        assert "Leave out --state" in err and "lvsctl.json" in err  # the fix
    assert FakeEngine.made == []  # nothing read, nothing planned
    assert (agent_holding.read_bytes(), agent_holding.stat().st_mtime_ns) == before


def test_apply_refuses_the_agents_record_through_a_symlink(fake_engine, agent_holding, tmp_path, capsys):
    alias = tmp_path / "alias.json"
    alias.symlink_to(agent_holding)
    assert L.main(["apply", str(fake_engine), "--state", str(alias)]) == 2
    assert "lvs-agent (pid 4242" in capsys.readouterr().err


def test_apply_proceeds_when_nobody_holds_the_record_and_holds_it_meanwhile(fake_engine, tmp_path):
    record = tmp_path / "state" / AGENT_RECORD  # the agent's name, but no agent runs
    assert L.main(["apply", str(fake_engine), "--state", str(record), "--dry-run"]) == 0
    (engine,) = FakeEngine.made
    assert engine.state == record and engine.held_during_plan is True
    hold_record(record, "after").release()  # released when apply ends


def test_an_agent_starting_waits_for_the_holder(tmp_path):
    """The agent's hold (main) waits, saying who holds the record, then holds it."""
    record = tmp_path / AGENT_RECORD
    first = hold_record(record, "lvsctl apply (pid 1)")
    told: list[RecordHeld] = []
    got: list = []
    t = threading.Thread(target=lambda: got.append(
        hold_record(record, "lvs-agent (pid 2, node d1)", wait=True, waiting=told.append)))
    t.start()
    deadline = time.monotonic() + 5
    while not told and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [w.holder for w in told] == ["lvsctl apply (pid 1)"]
    assert not got
    first.release()
    t.join(5)
    assert got
    with pytest.raises(RecordHeld) as held:
        hold_record(record, "lvsctl apply (pid 3)")
    assert held.value.holder == "lvs-agent (pid 2, node d1)"
    got[0].release()


def test_apply_says_once_that_the_old_default_record_is_not_its_own(fake_engine, tmp_path, capsys):
    """Before, lvsctl's default was ownership.json: its services are foreign to
    the new default record, and apply says how to adopt them."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / AGENT_RECORD).write_text("{}")
    assert L.main(["apply", str(fake_engine), "--dry-run"]) == 0
    assert f"pass --state {tmp_path / 'state' / AGENT_RECORD}" in capsys.readouterr().err
    (tmp_path / "state" / "lvsctl.json").write_text("{}")
    assert L.main(["apply", str(fake_engine), "--dry-run"]) == 0
    assert "note:" not in capsys.readouterr().err
