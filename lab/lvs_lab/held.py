"""Held TCP connections through a VIP, for failover and drain tests: a server
that greets (and optionally echoes) and keeps every connection open, and a
client connection that proves later it still works. Shared by the kernel
tier and the end-to-end tier's guest programs."""
from __future__ import annotations

import socket
import threading

from .netns import call_in_netns


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
        """Greet, echo if asked, and keep the connection until the client
        closes it; then close it here too (health checks connect and close
        every few seconds: a server that kept those would run out of file
        descriptors in minutes and stop accepting)."""
        try:
            c.sendall(f"{self.name}\n".encode())
            while data := c.recv(4096):
                if self.echo:
                    c.sendall(data)
        except OSError:
            pass
        else:
            try:
                self.conns.remove(c)
            except ValueError:  # drop_all() got there first
                pass
            c.close()

    def drop_all(self) -> None:
        for c in list(self.conns):
            c.close()
        self.conns.clear()

    def close(self) -> None:
        self.drop_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class Held:
    """A client connection through the VIP, kept open."""

    def __init__(self, ns: str, host: str, port: int):
        def do():
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect((host, port))
            return s
        self.sock = call_in_netns(ns, do)
        self.server = self._line()

    def _line(self) -> str:
        data = b""
        while not data.endswith(b"\n"):
            chunk = self.sock.recv(256)
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data.decode().strip()

    def echo(self, text: str) -> str:
        self.sock.sendall(f"{text}\n".encode())
        return self._line()

    def close(self) -> None:
        self.sock.close()
