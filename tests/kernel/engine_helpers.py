"""Helpers shared by the engine's kernel tests (imported by name: pytest puts
this folder on sys.path for its test modules)."""
from __future__ import annotations

import socket
import threading

from lvs_agent import ops as O
from lvs_agent.engine import Engine
from lvs_lab.netns import call_in_netns
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


class HoldServer:
    """Sends its name as soon as a connection is accepted and keeps the
    connection open (IPVS counts it active while the client holds it); with
    `echo`, also echoes, so a held connection can prove later that it works."""

    def __init__(self, ns: str, name: str, port: int, echo: bool = False):
        self.name, self.echo = name, echo

        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.listen(64)
            return s

        self.sock = call_in_netns(ns, make)
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        try:
            c.sendall(f"{self.name}\n".encode())
            while self.echo and (data := c.recv(4096)):
                c.sendall(data)
        except OSError:
            pass

    def drop_all(self) -> None:
        for c in self.conns:
            c.close()
        self.conns.clear()

    def close(self) -> None:
        self.drop_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
