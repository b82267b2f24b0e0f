"""A command channel from the host into the lab VM.

The VM's only network path is a guestfwd to host loopback (restrict=on), so
the guest *connects out* to a port the host listens on, and then obeys: run a
command, start a named background process, signal it. JSON lines over TCP,
stdlib only, because Python starts slowly under TCG and this must be up fast.

Host:   ctl = Controller(); port = ctl.port  ... boot the VM with forwards=(port,)
        ctl.wait_connected(); ctl.run(["ip", "netns", "list"])
Guest:  python -m lvs_e2e.remote 10.0.2.100 PORT
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def check(self) -> "Result":
        if self.rc != 0:
            raise RuntimeError(f"guest command failed rc={self.rc}: {self.err.strip() or self.out.strip()}")
        return self


class Controller:
    """Host side: listens on 127.0.0.1, accepts the one guest connection."""

    def __init__(self) -> None:
        self._srv = socket.socket()
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", 0))
        self._srv.listen(1)
        self.port: int = self._srv.getsockname()[1]
        self._conn: socket.socket | None = None
        self._pending: dict[int, Future] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._connected = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        conn, _ = self._srv.accept()
        self._conn = conn
        self._connected.set()
        buf = conn.makefile("r", encoding="utf-8")
        for line in buf:
            msg = json.loads(line)
            fut = self._pending.pop(msg.pop("id"), None)
            if fut:
                fut.set_result(msg)
        for fut in list(self._pending.values()):
            fut.set_exception(ConnectionError("lab VM disconnected"))

    def wait_connected(self, timeout: float) -> None:
        if not self._connected.wait(timeout):
            raise TimeoutError(f"the lab VM did not connect back within {timeout:.0f}s")

    def call(self, deadline_s: float, **req) -> dict:
        assert self._conn is not None, "guest not connected"
        fut: Future = Future()
        rid = next(self._ids)
        self._pending[rid] = fut
        data = (json.dumps({"id": rid, **req}) + "\n").encode()
        with self._lock:
            self._conn.sendall(data)
        return fut.result(deadline_s)

    def run(self, argv: list[str], timeout: float = 120, input: str | None = None) -> Result:
        r = self.call(timeout + 30, op="run", argv=argv, timeout=timeout, input=input)
        return Result(r["rc"], r["out"], r["err"])

    def sh(self, script: str, timeout: float = 120) -> Result:
        return self.run(["sh", "-c", script], timeout)

    def spawn(self, name: str, argv: list[str], log: str, env: dict[str, str] | None = None) -> int:
        return self.call(60, op="spawn", name=name, argv=argv, log=log, env=env or {})["pid"]

    def signal(self, name: str, sig: int = signal.SIGTERM, wait: float = 30) -> int | None:
        """Signal a spawned process and wait for it; returns its exit code."""
        return self.call(wait + 30, op="signal", name=name, sig=int(sig), wait=wait)["rc"]

    def alive(self, name: str) -> bool:
        return self.call(30, op="alive", name=name)["alive"]

    def close(self) -> None:
        try:
            if self._conn:
                self.call(30, op="exit")
        except Exception:  # noqa: BLE001
            pass
        self._srv.close()


# ---------------------------------------------------------------------------
# Guest side
# ---------------------------------------------------------------------------

def serve(host: str, port: int) -> None:
    sock = socket.create_connection((host, port), timeout=60)
    sock.settimeout(None)
    out_lock = threading.Lock()
    procs: dict[str, subprocess.Popen] = {}

    def reply(rid: int, **msg) -> None:
        with out_lock:
            sock.sendall((json.dumps({"id": rid, **msg}) + "\n").encode())

    def handle(req: dict) -> None:
        rid, op = req["id"], req["op"]
        try:
            if op == "run":
                try:
                    p = subprocess.run(req["argv"], input=req.get("input"), capture_output=True, text=True,
                                       timeout=req["timeout"])
                    reply(rid, rc=p.returncode, out=p.stdout, err=p.stderr)
                except subprocess.TimeoutExpired as e:
                    reply(rid, rc=124, out=str(e.stdout or ""), err=f"timed out after {req['timeout']}s")
            elif op == "spawn":
                log = open(req["log"], "ab")
                p = subprocess.Popen(req["argv"], stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **req.get("env", {})}, start_new_session=True)
                procs[req["name"]] = p
                reply(rid, pid=p.pid)
            elif op == "signal":
                p = procs.get(req["name"])
                rc = None
                if p is not None:
                    if p.poll() is None:
                        os.killpg(p.pid, req["sig"])
                    try:
                        rc = p.wait(req["wait"])
                    except subprocess.TimeoutExpired:
                        os.killpg(p.pid, signal.SIGKILL)
                        rc = p.wait()
                    procs.pop(req["name"], None)
                reply(rid, rc=rc)
            elif op == "alive":
                p = procs.get(req["name"])
                reply(rid, alive=p is not None and p.poll() is None)
            elif op == "exit":
                reply(rid, ok=True)
                for p in procs.values():
                    if p.poll() is None:
                        os.killpg(p.pid, signal.SIGKILL)
                os._exit(0)
            else:
                reply(rid, error=f"unknown op {op}")
        except Exception as e:  # noqa: BLE001
            reply(rid, rc=-1, out="", err=f"{type(e).__name__}: {e}", pid=-1, alive=False)

    for line in sock.makefile("r", encoding="utf-8"):
        threading.Thread(target=handle, args=(json.loads(line),), daemon=True).start()
    for p in procs.values():
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
