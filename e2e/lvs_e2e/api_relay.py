"""Runs in the lab VM: the API server within reach of a node's network namespace.

A DaemonSet's agent is on the host network and reaches the API server over
it. In the lab the agent lives in its node's namespace, and the API server is
reachable only from the VM's own namespace (the guestfwd to host loopback).
This relay listens on 127.0.0.1:PORT inside the node's namespace and connects
each connection on from the VM's namespace, bytes unchanged (TLS end to end),
so the agent needs no setns and no capability for it.

    python -m lvs_e2e.api_relay NETNS PORT UPSTREAM_HOST UPSTREAM_PORT READY_FILE
"""
from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

from lvs_lab.netns import call_in_netns


def listen(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    return s


def pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy until ``src`` closes, then pass the half-close on."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def serve(conn: socket.socket, host: str, port: int) -> None:
    """One agent connection: its upstream is opened from the VM's namespace
    (this thread never left it)."""
    try:
        up = socket.create_connection((host, port), timeout=10)
    except OSError:
        conn.close()
        return
    up.settimeout(None)
    for s in (conn, up):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=pump, args=(up, conn), daemon=True)
    back.start()
    pump(conn, up)
    back.join()
    conn.close()
    up.close()


def main() -> None:
    netns, port, host, up_port, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
    server = call_in_netns(netns, listen, port)  # the socket stays in the node's namespace
    Path(ready).write_text("ready\n")
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn, host, up_port), daemon=True).start()


if __name__ == "__main__":
    main()
