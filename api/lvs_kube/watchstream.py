"""The events of one WATCH response, each line's JSON decoded once.

Shared by both programs' informers (``lvs_kube.informer``). The kubernetes
client's ``Watch`` decodes an event, encodes its object again and decodes it
a second time ("deserialize"): three times the decoding for every event,
most of them the agent's own status writes coming back.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Iterator


class Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


def _lines(resp: Any) -> Iterator[bytes]:
    buf = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        *lines, buf = (buf + chunk).split(b"\n")
        yield from (line for line in lines if line.strip())
    if buf.strip():
        yield buf


def check(resp: Any) -> Any:
    """``resp`` (an unread urllib3 response) if it is a 200, else Gone or RuntimeError."""
    if resp.status != 200:
        body = resp.data[:300].decode(errors="replace")
        resp.release_conn()
        raise Gone(body) if resp.status == 410 else RuntimeError(f"{resp.status} {body}")
    return resp


def events(resp: Any) -> Iterator[dict]:
    """The decoded events (BOOKMARKs too: they carry the resourceVersion); an
    ERROR event raises Gone (410) or RuntimeError."""
    for line in _lines(resp):
        ev = json.loads(line)
        if ev.get("type") == "ERROR":
            obj = ev.get("object") or {}
            if obj.get("code") == 410:
                raise Gone(obj.get("message", "gone"))
            raise RuntimeError(f"watch: {obj.get('message') or obj}")
        yield ev


def resource_version(ev: dict, default: str) -> str:
    return ((ev.get("object") or {}).get("metadata") or {}).get("resourceVersion") or default


def follow(resp: Any, rv: str, on_event: Callable[[dict], None], stopped: Callable[[], bool]) -> str:
    """Hand each event of one WATCH response to ``on_event`` until it ends (or
    ``stopped()``), then release the connection; the last resourceVersion."""
    try:
        for ev in events(resp):
            if stopped():
                break
            rv = resource_version(ev, rv)
            on_event(ev)
    finally:
        resp.release_conn()
    return rv


__all__ = ["Gone", "check", "events", "follow", "resource_version"]
