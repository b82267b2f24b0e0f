"""NodeState status writes without the kubernetes client's per-call machinery.

Writing 10k statuses is most of what the agent does after a mass create, and
in the lab VM the generated client spent about a third of each write on
argument validation (pydantic), serialising, re-deriving the auth header and
decoding the whole object it got back, none of which a status write needs.
This sends the same merge patch through the client's own connection pool
(its TLS settings, client certificates and proxy) and reads the answer's
status code only.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Mapping
from urllib.parse import quote

from lvs_model.channel import GROUP, NODESTATE_PLURAL, VERSION


class PatchError(Exception):
    """A status write the API server refused (``status``: the HTTP code)."""

    def __init__(self, status: int, reason: str, body: bytes):
        self.status, self.reason = status, reason
        super().__init__(f"({status}) {reason}: {body[:300].decode(errors='replace')}")


class StatusPatcher:
    """``patch(namespace, name, body)``: a merge patch of a NodeState's status."""

    AUTH_TTL = 10.0  # seconds an auth header is reused (the client's refresh hook rotates tokens)
    TIMEOUT = 30.0

    def __init__(self, api_client: Any, plural: str = NODESTATE_PLURAL):
        self._client = api_client
        self._pool = api_client.rest_client.pool_manager
        self._base = f"{api_client.configuration.host.rstrip('/')}/apis/{GROUP}/{VERSION}"
        self._plural = plural
        self._lock = threading.Lock()
        self._headers: tuple[float, dict[str, str]] | None = None

    def headers(self) -> dict[str, str]:
        with self._lock:
            now = time.monotonic()
            if self._headers is None or now - self._headers[0] >= self.AUTH_TTL:
                h = {**self._client.default_headers, "Content-Type": "application/merge-patch+json",
                     "Accept": "application/json"}
                for auth in self._client.configuration.auth_settings().values():
                    if auth.get("in") == "header" and auth.get("value"):
                        h[auth["key"]] = auth["value"]
                self._headers = (now, h)
            return self._headers[1]

    def patch(self, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        url = f"{self._base}/namespaces/{quote(namespace)}/{self._plural}/{quote(name)}/status"
        r = self._pool.request("PATCH", url, body=json.dumps(body, separators=(",", ":")).encode(),
                               headers=self.headers(), timeout=self.TIMEOUT, preload_content=True)
        if not 200 <= r.status < 300:
            raise PatchError(r.status, r.reason or "", r.data or b"")


__all__ = ["PatchError", "StatusPatcher"]
