"""An active-active director process for the BGP tests: the agent's engine
and its BGP speaker without the Kubernetes watch (the node spec comes from
a file, re-read when the file changes, as the agent re-reads NodeStates).

It programs the spec with the engine, takes the services the pass left
without an error as programmed, and lets lvs_agent.bgp_speaker run BIRD 2
and announce what lvs_model.bgp.decide allows, in the namespace it is
started in (``ip netns exec``), so a test can kill -9 it like an agent (its
BIRD ends with it). On SIGTERM it withdraws first, as the agent must.

    python bgp_director.py SPEC.json STATE_DIR
"""
from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path


def main(spec_path: str, state_dir: str) -> int:
    from lvs_agent.bgp_speaker import BgpSpeaker, programmed_keys
    from lvs_agent.engine import Engine
    from lvs_model.bgp import Health
    from lvs_model.nodespec import parse_node_spec

    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    speaker = BgpSpeaker(state, linger=0.5)
    engine = None
    seen, said = None, None
    while not stop.is_set():
        text = Path(spec_path).read_text()
        if text != seen:
            spec, errors = parse_node_spec(json.loads(text))
            assert not errors, errors
            engine = engine or Engine(state / "ownership.json", uplink=spec.uplink)
            report = engine.reconcile(spec)
            health = Health(programmed_keys(spec, set(report.service_errors) | set(report.problems)))
            seen = text
        decisions = speaker.update(spec, health)
        now = [(d.vip, d.reason) for d in decisions]
        if now != said:
            print("bgp", json.dumps(now), flush=True)
            said = now
        stop.wait(0.5)
    speaker.stop()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
