"""One list+watch of one collection, shared by the agent and the operator.

The way client-go's informers keep a cache: a paginated LIST, then a WATCH
from the list's resourceVersion with bookmarks (so a resumed watch never
starts from a version the server has compacted away). A watch the server
ends is resumed from the last version seen; only 410 Gone lists again,
because a relist re-reads every object. While the API server is away the
informer backs off with jitter and the caller keeps what it has.

The informer owns no cache: ``on_list(items)`` gets each complete LIST and
``on_event(event)`` each ADDED/MODIFIED/DELETED event, both from the
informer's thread. Where the requests go is a ``Source``: raw GETs of a
collection path (``Collection``) or the kubernetes client's custom-object
calls (``CustomObjects``).
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Protocol

from .backoff import Backoff
from .watchstream import Gone, check, follow

log = logging.getLogger("lvs_kube.informer")

# Objects per LIST page: large enough that a page's round trip is not the
# cost, small enough that the server never builds one huge response.
PAGE = 500
# Seconds the server keeps one WATCH open; ending it is routine (the watch is
# resumed), so it only bounds how long a silently dead connection goes unnoticed.
WATCH_SECONDS = 300
# Seconds one LIST page may take before the request is abandoned and retried.
LIST_TIMEOUT = 120


class Source(Protocol):
    def list_page(self, limit: int, cont: str) -> dict:
        """One LIST page: ``{"items": [...], "metadata": {...}}``."""

    def watch(self, rv: str, seconds: int) -> Any:
        """An unread 200 WATCH response (urllib3); Gone on 410."""


class Collection:
    """A collection read with raw GETs, each line's JSON decoded once
    (no client models). ``api_client_factory()`` is asked for a client per
    request, so a replaced client is picked up after an error."""

    def __init__(self, path: str, api_client_factory: Callable[[], Any], label_selector: str | None = None):
        self.path, self.factory, self.selector = path, api_client_factory, label_selector

    def _get(self, params: list[tuple[str, Any]], timeout: float) -> Any:
        api = self.factory()
        if self.selector:
            params = params + [("labelSelector", self.selector)]
        method, url, headers, _, _ = api.param_serialize(
            "GET", self.path, query_params=params, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"])
        return check(api.call_api(method, url, header_params=headers, _request_timeout=timeout).response)

    def list_page(self, limit: int, cont: str) -> dict:
        params: list[tuple[str, Any]] = [("limit", limit)] + ([("continue", cont)] if cont else [])
        return json.loads(self._get(params, LIST_TIMEOUT).data)

    def watch(self, rv: str, seconds: int) -> Any:
        params = [("watch", "true"), ("resourceVersion", rv), ("allowWatchBookmarks", "true"),
                  ("timeoutSeconds", seconds)]
        return self._get(params, seconds + 30)


class CustomObjects:
    """A namespaced custom resource through ``CustomObjectsApi`` (what the
    agent is given, and what its tests fake)."""

    def __init__(self, api: Any, group: str, version: str, namespace: str, plural: str, label_selector: str):
        self.api, self.args, self.selector = api, (group, version, namespace, plural), label_selector

    def list_page(self, limit: int, cont: str) -> dict:
        kw: dict[str, Any] = {"limit": limit, "_continue": cont} if cont else {"limit": limit}
        try:
            return self.api.list_namespaced_custom_object(*self.args, label_selector=self.selector, **kw)
        except Exception as e:
            if getattr(e, "status", None) == 410:  # ApiException: the continue token expired
                raise Gone(str(e)) from e
            raise

    def watch(self, rv: str, seconds: int) -> Any:
        return check(self.api.list_namespaced_custom_object(
            *self.args, label_selector=self.selector, resource_version=rv, timeout_seconds=seconds,
            allow_watch_bookmarks=True, watch=True, _preload_content=False, _request_timeout=(10, seconds + 60)))


class Informer:
    """LIST + WATCH of one ``source`` until ``stopped()``.

    ``sleep(seconds)``: how a backoff waits (an Event's ``wait`` ends it at a
    stop); ``backoff``: the retry delays while the API server is away;
    ``item``: what of each listed object is kept, applied page by page so a
    LIST never holds every raw object at once."""

    def __init__(self, source: Source, on_list: Callable[[list[Any]], None], on_event: Callable[[dict], None],
                 stopped: Callable[[], bool], *, name: str = "", watch_seconds: int = WATCH_SECONDS,
                 page: int = PAGE, backoff: Backoff | None = None, sleep: Callable[[float], Any] = time.sleep,
                 item: Callable[[dict], Any] | None = None):
        self.source, self.on_list, self.on_event, self.stopped = source, on_list, on_event, stopped
        self.item = item
        self.name, self.watch_seconds, self.page = name, watch_seconds, page
        self.backoff = backoff or Backoff()
        self.sleep = sleep
        self.lists = 0

    def list(self) -> str:
        """Every page, then ``on_list``; the resourceVersion to watch from."""
        items: list[Any] = []
        cont, rv = "", ""
        while True:
            body = self.source.list_page(self.page, cont)
            page = body.get("items") or ()
            items.extend(page if self.item is None else map(self.item, page))
            meta = body.get("metadata") or {}
            cont, rv = meta.get("continue") or "", meta.get("resourceVersion") or rv
            if not cont:
                break
        self.lists += 1
        self.on_list(items)
        return rv

    def watch(self, rv: str) -> str:
        """One WATCH until the server ends it (or a stop); the last resourceVersion."""
        return follow(self.source.watch(rv, self.watch_seconds), rv, self._event, self.stopped)

    def _event(self, ev: dict) -> None:
        if ev.get("type") in ("ADDED", "MODIFIED", "DELETED"):  # a BOOKMARK only moves the resourceVersion
            self.on_event(ev)

    def run(self) -> None:
        rv = ""
        while not self.stopped():
            try:
                if not rv:
                    rv = self.list()
                    self.backoff.reset()
                rv = self.watch(rv)
                self.backoff.reset()
            except Gone:
                log.info("watch %s expired (410 Gone): listing again", self.name)
                rv = ""
            except Exception as e:  # noqa: BLE001 - the API server away: keep what we have, retry
                delay = self.backoff.next()
                log.warning("watch %s: %s; keeping what was seen, retrying in %.1fs", self.name, e, delay)
                self.sleep(delay)


__all__ = ["Collection", "CustomObjects", "Informer", "LIST_TIMEOUT", "PAGE", "Source", "WATCH_SECONDS"]
