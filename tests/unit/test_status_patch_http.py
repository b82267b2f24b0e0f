"""The status writer's HTTP/1.1 handling, against a loopback server that
answers the ways an API server (or a proxy in front of one) may: a length,
chunks, a closed kept-alive connection, an error."""
from __future__ import annotations

import socket
import threading

import pytest

from lvs_kube.status_patch import PatchError, StatusPatcher


class Server:
    """Answers each request with the next canned response; ``close_after``:
    drop the connection after that many answers on it."""

    def __init__(self, responses: list[bytes], close_after: int = 0):
        self.responses, self.close_after = responses, close_after
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            self.connections += 1
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        buf, answered = b"", 0
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(buf) < n:
                    buf += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + buf[:n])
                buf = buf[n:]
                conn.sendall(self.responses.pop(0))
                answered += 1
                if self.close_after and answered >= self.close_after:
                    return


class Config:
    def __init__(self, port: int):
        self.host, self.proxy, self.ssl_ca_cert, self.verify_ssl = f"http://127.0.0.1:{port}", None, None, True
        self.cert_file = self.key_file = None

    def auth_settings(self):
        return {"BearerToken": {"in": "header", "key": "authorization", "value": "Bearer t0ken"}}


class Client:
    def __init__(self, port: int):
        self.configuration, self.default_headers = Config(port), {"User-Agent": "test"}


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def chunked(*parts: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n")


def test_lengths_and_chunks_on_one_connection_and_the_request_sent():
    s = Server([ok(b'{"a":1}'), chunked(b'{"b":', b"2}"), ok(b"")])
    p = StatusPatcher(Client(s.port))
    assert p.patch("nodestates", "ns1", "o 1", {"status": {"x": 1}}) == b'{"a":1}'
    assert p.patch("virtualservices", "", "vs", [{"op": "add"}], "application/json-patch+json") == b'{"b":2}'
    assert p.patch("nodestates", "ns1", "o2", {}) == b""
    assert s.connections == 1
    first = s.requests[0]
    assert first.startswith(b"PATCH /apis/lvs.kube-lvs.io/v1alpha1/namespaces/ns1/nodestates/o%201/status HTTP/1.1\r\n")
    assert b"\r\nauthorization: Bearer t0ken\r\n" in first and b"\r\nUser-Agent: test\r\n" in first
    assert b"\r\nContent-Type: application/merge-patch+json\r\n" in first and first.endswith(b'{"status":{"x":1}}')
    assert s.requests[1].startswith(b"PATCH /apis/lvs.kube-lvs.io/v1alpha1/virtualservices/vs/status ")


def test_a_kept_alive_connection_the_server_closed_is_reopened_and_the_write_sent_again():
    s = Server([ok(b"1"), ok(b"2"), ok(b"3")], close_after=1)
    p = StatusPatcher(Client(s.port))
    assert [p.patch("nodestates", "n", f"o{i}", {}) for i in range(3)] == [b"1", b"2", b"3"]
    assert s.connections == 3 and len(s.requests) == 3


def test_a_refusal_names_the_code_and_the_server_message():
    body = b'{"kind":"Status","message":"nodestates \\"x\\" not found","code":404}'
    s = Server([b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body), ok(b"after")])
    p = StatusPatcher(Client(s.port))
    with pytest.raises(PatchError) as e:
        p.patch("nodestates", "n", "x", {})
    assert e.value.status == 404 and e.value.reason == "Not Found" and "not found" in str(e.value)
    assert p.patch("nodestates", "n", "y", {}) == b"after" and s.connections == 1  # the connection stays


def test_no_server_is_a_connection_error_not_a_hang():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(ConnectionError):
        StatusPatcher(Client(port)).patch("nodestates", "n", "x", {})
