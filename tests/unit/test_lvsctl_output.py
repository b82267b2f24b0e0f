"""`lvsctl apply`'s output: the lines of a dry run and of a reconcile, written
to stdout at once (one write however many services), with the exit codes."""
from __future__ import annotations

import io

import pytest

from lvs_agent import engine as E
from lvs_agent import lvsctl as L
from lvs_agent import ops as O
from lvs_agent.plan import Plan
from lvs_model.nodespec import parse_node_spec

SPEC = "services:\n- address: 192.0.2.10\n  port: 80\n  dests:\n  - address: 198.51.100.1\n"


def service():
    spec, errors = parse_node_spec({"services": [{"address": "192.0.2.10", "port": 80}]})
    assert not errors
    return spec.services[0]


def test_plan_lines():
    s = service()
    p = Plan(ops=[O.AddService(s)], problems={s.key: "held by a foreign service"})
    assert L.plan_lines(p) == [f"would       {O.describe(O.AddService(s))}\n",
                               f"problem     {s.key}: held by a foreign service\n"]
    assert L.plan_lines(Plan()) == ["nothing to do\n"]


def test_report_lines():
    s = service()
    r = E.Report(results=[(O.AddService(s), None), (O.AddService(s), "EEXIST")], programmed=[s.key],
                 problems={s.key: "p"}, service_errors={s.key: "f"}, errors=["e"], uplink="", duration=1.234)
    assert L.report_lines(r) == [f"programmed  {s.key}\n", f"problem     {s.key}: p\n", f"failed      {s.key}: f\n",
                                 "error       e\n", "2 operations, 1 failed, uplink -, 1.23s\n"]
    r = E.Report(uplink="eth0")
    assert L.report_lines(r) == ["0 operations, 0 failed, uplink eth0, 0.00s\n"]


class CountingOut(io.StringIO):
    writes = 0

    def write(self, s):
        self.writes += 1
        return super().write(s)


class FakeEngine:
    def __init__(self, state, netns=None, uplink=""):
        pass

    def plan(self, spec):
        return Plan(ops=[O.AddService(s) for s in spec.services]), None, None, ""

    def reconcile(self, spec):
        return E.Report(results=[(O.AddService(s), None) for s in spec.services],
                        programmed=[s.key for s in spec.services])

    def close(self):
        pass


@pytest.mark.parametrize("dry_run", [False, True])
def test_apply_writes_its_lines_at_once(monkeypatch, tmp_path, dry_run):
    monkeypatch.setattr(E, "Engine", FakeEngine)
    monkeypatch.setattr(L, "_require_root", lambda: None)
    f = tmp_path / "spec.yaml"
    f.write_text("services:\n" + "".join(f"- address: 192.0.2.{i}\n  port: 80\n" for i in range(1, 51)))
    out = CountingOut()
    monkeypatch.setattr(L.sys, "stdout", out)
    argv = ["apply", str(f), "--state", str(tmp_path / "lvsctl.json")] + (["--dry-run"] if dry_run else [])
    assert L.main(argv) == 0
    lines = out.getvalue().splitlines()
    assert out.writes == 1
    assert len(lines) == (50 if dry_run else 51)
    assert lines[0] == ("would       add service tcp:192.0.2.1:80 scheduler wlc" if dry_run
                        else "programmed  tcp:192.0.2.1:80")


def test_a_dry_run_with_a_problem_exits_1(monkeypatch, tmp_path):
    s = service()

    class Problem(FakeEngine):
        def plan(self, spec):
            return Plan(problems={s.key: "held"}), None, None, ""
    monkeypatch.setattr(E, "Engine", Problem)
    monkeypatch.setattr(L, "_require_root", lambda: None)
    f = tmp_path / "spec.yaml"
    f.write_text(SPEC)
    assert L.main(["apply", str(f), "--dry-run", "--state", str(tmp_path / "lvsctl.json")]) == 1
