"""Status writes over kept-alive HTTPS connections of their own.

After a mass create, status writes are most of what the agent and the
operator do: one per NodeState from the agent, one or two per VirtualService
and RealServer from the operator. Through the kubernetes client each write
pays for argument validation, serialising, re-deriving the auth header,
urllib3's URL and pool handling and http.client's header parser (the email
package), costs far larger than the write's own bytes.
A write here is one request line, a few cached headers and a read of the
status line, the body's length and the body; the TLS settings, client
certificates and bearer token are the client's own. A proxy in the client's
configuration sends the writes through the client's urllib3 pool instead.
"""
from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from typing import Any, Mapping
from urllib.parse import quote, urlsplit

from lvs_model.channel import GROUP, VERSION

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class PatchError(Exception):
    """A write the API server refused (``status``: the HTTP code)."""

    def __init__(self, status: int, reason: str, body: bytes):
        self.status, self.reason, self.body = status, reason, body
        super().__init__(f"({status}) {reason}: {body[:300].decode(errors='replace')}")


class _Closed(ConnectionError):
    """The server closed a kept-alive connection before answering."""


class _Connection:
    """One HTTP/1.1 connection, reopened when the server drops it."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None, server_hostname: str,
                 timeout: float):
        self._addr, self._ctx, self._sni, self._timeout = (host, port), context, server_hostname, timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock, self._buf = None, b""

    def request(self, head: bytes, body: bytes) -> tuple[int, bytes, bytes]:
        """(status code, reason, body). A kept-alive connection the server
        closed meanwhile is reopened and the request sent once more (a status
        patch is idempotent; a create sent twice is a 409 the caller can tell)."""
        while True:
            reused = self._sock is not None
            try:
                return self._roundtrip(head, body)
            except (_Closed, ConnectionResetError, BrokenPipeError, ssl.SSLEOFError):
                self.close()
                if not reused:  # a fresh connection failed: no second try
                    raise
            except BaseException:
                self.close()
                raise

    def _roundtrip(self, head: bytes, body: bytes) -> tuple[int, bytes, bytes]:
        if self._sock is None:
            sock = socket.create_connection(self._addr, self._timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ctx is not None:
                sock = self._ctx.wrap_socket(sock, server_hostname=self._sni)
            self._sock = sock
        self._sock.sendall(head + body)
        end = self._fill(lambda b: b.find(b"\r\n\r\n"), first=True)
        header, self._buf = self._buf[:end], self._buf[end + 4:]
        line, _, fields = header.partition(b"\r\n")
        parts = line.split(b" ", 2)
        code, reason = int(parts[1]), parts[2] if len(parts) > 2 else b""
        fields = b"\r\n" + fields.lower()
        length = _field(fields, b"content-length")
        if length is not None:
            n = int(length)
            self._fill(lambda b: n if len(b) >= n else -1)
            data, self._buf = self._buf[:n], self._buf[n:]
        elif b"chunked" in (_field(fields, b"transfer-encoding") or b""):
            data = self._chunks()
        else:  # the body runs to the end of the connection
            data = self._rest()
        if _field(fields, b"connection") == b"close":
            self.close()
        return code, reason, data

    def _fill(self, found: Any, first: bool = False) -> int:
        """Read until ``found(buffer)`` is not -1; return it."""
        while (at := found(self._buf)) < 0:
            chunk = self._sock.recv(65536)  # type: ignore[union-attr]
            if not chunk:
                if first and not self._buf:
                    raise _Closed("connection closed by the API server")
                raise ConnectionError("connection closed mid-response")
            self._buf += chunk
        return at

    def _chunks(self) -> bytes:
        out = []
        while True:
            eol = self._fill(lambda b: b.find(b"\r\n"))
            size = int(self._buf[:eol].split(b";", 1)[0], 16)
            self._buf = self._buf[eol + 2:]
            if size == 0:
                end = self._fill(lambda b: b.find(b"\r\n"))  # no trailers from the API server
                self._buf = self._buf[end + 2:]
                return b"".join(out)
            self._fill(lambda b: size + 2 if len(b) >= size + 2 else -1)
            out.append(self._buf[:size])
            self._buf = self._buf[size + 2:]

    def _rest(self) -> bytes:
        while chunk := self._sock.recv(65536):  # type: ignore[union-attr]
            self._buf += chunk
        data = self._buf
        self.close()
        return data


def _field(fields: bytes, name: bytes) -> bytes | None:
    """A header's value in a lower-cased header block, each field after a CRLF."""
    at = fields.find(b"\r\n" + name + b":")
    if at < 0:
        return None
    start = at + len(name) + 3
    end = fields.find(b"\r\n", start)
    return fields[start:end if end >= 0 else None].strip()


class StatusPatcher:
    """``patch(plural, namespace, name, body)``: a patch of an object's status
    subresource (namespace "" for a cluster-scoped one); returns the answer's
    body (the object as written)."""

    # Seconds an auth header is reused: far below any token's lifetime (the
    # client's refresh hook rotates tokens), far above the time between writes.
    AUTH_TTL = 10.0
    # Seconds one write may take before its connection is given up: a status
    # write is small, so a longer wait means a dead connection, not a slow server.
    TIMEOUT = 30.0

    def __init__(self, api_client: Any):
        self._client = api_client
        cfg = api_client.configuration
        url = urlsplit(cfg.host)
        self._prefix = (url.path.rstrip("/") + f"/apis/{GROUP}/{VERSION}").encode()
        self._host_header = url.netloc.encode()
        self._proxied = bool(getattr(cfg, "proxy", None))
        self._lock = threading.Lock()
        self._idle: list[_Connection] = []
        self._headers: tuple[float, bytes, dict[str, str]] | None = None
        if self._proxied:
            self._pool = api_client.rest_client.pool_manager
            self._base = cfg.host.rstrip("/")
            return
        context = None
        if url.scheme == "https":
            context = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
            if not cfg.verify_ssl:
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            elif getattr(cfg, "assert_hostname", None) is False:
                context.check_hostname = False
            if cfg.cert_file:
                context.load_cert_chain(cfg.cert_file, cfg.key_file)
        port = url.port or (443 if url.scheme == "https" else 80)
        sni = getattr(cfg, "tls_server_name", None) or url.hostname or ""
        self._connect = lambda: _Connection(url.hostname or "", port, context, sni, self.TIMEOUT)

    def _auth(self) -> tuple[bytes, dict[str, str]]:
        """The headers every write carries, cached AUTH_TTL seconds (as bytes, and as a dict)."""
        with self._lock:
            now = time.monotonic()
            if self._headers is None or now - self._headers[0] >= self.AUTH_TTL:
                h = {**self._client.default_headers, "Accept": "application/json"}
                for auth in self._client.configuration.auth_settings().values():
                    if auth.get("in") == "header" and auth.get("value"):
                        h[auth["key"]] = auth["value"]
                raw = b"".join(f"{k}: {v}\r\n".encode() for k, v in h.items()
                               if k.lower() not in ("host", "content-length", "content-type"))
                self._headers = (now, raw, h)
            return self._headers[1], self._headers[2]

    def patch(self, plural: str, namespace: str, name: str, body: Mapping[str, Any] | list,
              content_type: str = MERGE_PATCH) -> bytes:
        where = f"/namespaces/{quote(namespace)}" if namespace else ""
        return self.request("PATCH", f"{where}/{plural}/{quote(name)}/status", body, content_type)

    def request(self, method: str, path: str, body: Mapping[str, Any] | list,
                content_type: str = "application/json") -> bytes:
        """``method`` of ``path`` under the group's API (/apis/<group>/<version>);
        the answer's body. (The bench creates its objects this way too.)"""
        path_b = self._prefix + path.encode()
        data = json.dumps(body, separators=(",", ":")).encode()
        raw, headers = self._auth()
        if self._proxied:
            r = self._pool.request(method, self._base + path_b.decode(), body=data, timeout=self.TIMEOUT,
                                   headers={**headers, "Content-Type": content_type}, preload_content=True)
            code, reason, answer = r.status, (r.reason or "").encode(), r.data or b""
        else:
            head = (method.encode() + b" " + path_b + b" HTTP/1.1\r\nHost: " + self._host_header + b"\r\n" + raw
                    + f"Content-Type: {content_type}\r\nContent-Length: {len(data)}\r\n\r\n".encode())
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            conn = conn or self._connect()
            code, reason, answer = conn.request(head, data)  # a failure closes it: it is not kept
            with self._lock:
                self._idle.append(conn)
        if not 200 <= code < 300:
            raise PatchError(code, reason.decode(errors="replace"), answer)
        return answer


__all__ = ["JSON_PATCH", "MERGE_PATCH", "PatchError", "StatusPatcher"]
