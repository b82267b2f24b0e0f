"""Runs in the lab VM for the director failover tests (tests/e2e/test_zz_zha.py).

    python -m lvs_e2e.ha_traffic servers PORT NS:NAME...   echo servers that hold
        every connection (lvs_lab.held.HoldServer), until SIGTERM
    python -m lvs_e2e.ha_traffic probe DIR NS VIP HOLD_PORT HELD [TIMEOUT]
        from ``NS``: HELD connections to VIP:HOLD_PORT held open, and a new
        HTTP request to VIP:80 every 50 ms (TIMEOUT seconds each, 0.5 by
        default), each logged to DIR/requests.log as
        "<CLOCK_BOOTTIME at start> <1|0> <seconds taken>"; a file DIR/check-K
        makes it echo through every held connection and write DIR/check-K.json
        ({"answering": n}); DIR/stop ends it
    python -m lvs_e2e.ha_traffic arp NS SOURCE IP   the MACs that answer ARP for IP

CLOCK_BOOTTIME is what /proc/uptime shows, so the host side can stamp an
event (a director's death) on the same clock with one guest command.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

from lvs_lab.arp import arp_answers
from lvs_lab.held import Held, HoldServer
from lvs_lab.servers import tcp_replies


def now() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def servers(port: int, specs: list[str]) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    held = [HoldServer(ns, name, port, echo=True) for ns, _, name in (s.partition(":") for s in specs)]
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    for h in held:
        h.close()


def probe(workdir: str, ns: str, vip: str, hold_port: int, count: int, timeout: float = 0.5) -> None:
    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    held = [Held(ns, vip, hold_port) for _ in range(count)]
    assert all(h.echo("before") == "before" for h in held)
    (out / "held.json").write_text(json.dumps({"held": count, "ports": [h.sock.getsockname()[1] for h in held]}))
    stop = threading.Event()

    def requests() -> None:
        with open(out / "requests.log", "a", buffering=1) as log:
            while not stop.is_set():
                started = now()
                ok = tcp_replies(ns, vip, 80, timeout=timeout)[0] is not None
                log.write(f"{started:.3f} {int(ok)} {now() - started:.3f}\n")
                time.sleep(max(0.0, 0.05 - (now() - started)))
    thread = threading.Thread(target=requests, daemon=True)
    thread.start()
    done: set[str] = set()
    while not (out / "stop").exists():
        for req in out.glob("check-*"):
            if req.suffix == ".json" or req.name in done:
                continue
            answering = 0
            for h in held:
                try:
                    answering += h.echo(req.name) == req.name
                except OSError:
                    pass
            (out / f"{req.name}.json").write_text(json.dumps({"answering": answering, "held": count}))
            done.add(req.name)
        time.sleep(0.2)
    stop.set()
    thread.join(5)
    for h in held:
        h.close()


def main(argv: list[str]) -> None:
    cmd, rest = argv[0], argv[1:]
    if cmd == "servers":
        servers(int(rest[0]), rest[1:])
    elif cmd == "probe":
        probe(rest[0], rest[1], rest[2], int(rest[3]), int(rest[4]), *map(float, rest[5:6]))
    elif cmd == "arp":
        print(" ".join(sorted(arp_answers(rest[0], rest[1], rest[2]))))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
