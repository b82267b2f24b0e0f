"""Helpers shared by the engine's kernel tests (imported by name: pytest puts
this folder on sys.path for its test modules)."""
from __future__ import annotations

from lvs_agent import ops as O
from lvs_agent.engine import Engine
from lvs_lab.held import HoldServer  # noqa: F401 - the kernel tests import it from here
from lvs_model.nodespec import NodeSpec, parse_node_spec


def spec(doc: dict) -> NodeSpec:
    s, errors = parse_node_spec(doc)
    assert not errors, errors
    return s


def reconcile_ok(engine: Engine, doc: dict, incremental: bool = False):
    r = engine.reconcile(spec(doc), incremental=incremental)
    assert r.ok, (r.service_errors, r.problems, r.errors)
    return r


def converged(engine: Engine, doc: dict) -> None:
    """A second reconcile has nothing to do: observe decodes what apply wrote."""
    r = engine.reconcile(spec(doc))
    assert r.ops == [], [O.describe(op) for op in r.ops]
