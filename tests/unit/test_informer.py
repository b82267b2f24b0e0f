"""lvs_kube.informer: paginated LIST, WATCH from its resourceVersion, a watch
the server ended resumed (not relisted), 410 Gone relisted, backoff while the
API server is away, a stop."""
from __future__ import annotations

import json

import pytest

from lvs_kube.backoff import Backoff
from lvs_kube.informer import CustomObjects, Informer
from lvs_kube.watchstream import Gone


class Resp:
    status = 200

    def __init__(self, *events):
        self.data = b"".join(json.dumps(e).encode() + b"\n" for e in events)
        self.released = False

    def stream(self, amt=None, decode_content=False):
        yield self.data

    def release_conn(self):
        self.released = True


def ev(typ, name, rv):
    return {"type": typ, "object": {"metadata": {"name": name, "resourceVersion": rv}}}


def obj(name):
    return {"metadata": {"name": name}}


class Source:
    """Scripted: ``pages`` per list, ``watches`` one per WATCH (a Resp or an
    exception to raise); records every request."""

    def __init__(self, lists, watches):
        self.lists, self.watches, self.calls = list(lists), list(watches), []

    def list_page(self, limit, cont):
        self.calls.append(("list", cont))
        page = self.lists.pop(0)
        if isinstance(page, BaseException):
            raise page
        return page

    def watch(self, rv, seconds):
        self.calls.append(("watch", rv))
        w = self.watches.pop(0) if self.watches else Resp()  # past the script: the stop comes next
        if isinstance(w, BaseException):
            raise w
        return w


def run(source, stop_after):
    """Run until more than ``stop_after`` requests were made (the first
    ``stop_after`` are the script's); what the callbacks got."""
    got, slept = [], []
    stopped = lambda: len(source.calls) > stop_after  # noqa: E731
    inf = Informer(source, lambda items: got.append(("list", [o["metadata"]["name"] for o in items])),
                   lambda e: got.append((e["type"], e["object"]["metadata"]["name"])), stopped,
                   backoff=Backoff(1.0, 4.0, jitter=lambda: 1.0), sleep=slept.append)
    inf.run()
    return inf, got, slept


def test_pages_are_listed_whole_then_watched_from_the_list_version_and_resumed():
    src = Source([{"items": [obj("a")], "metadata": {"continue": "c1", "resourceVersion": "1"}},
                  {"items": [obj("b")], "metadata": {"resourceVersion": "5"}}],
                 [Resp(ev("ADDED", "c", "6"), ev("BOOKMARK", "", "9")), Resp(ev("DELETED", "a", "10"))])
    inf, got, slept = run(src, 4)
    assert src.calls[:-1] == [("list", ""), ("list", "c1"), ("watch", "5"), ("watch", "9")]  # resumed, no relist
    assert got == [("list", ["a", "b"]), ("ADDED", "c"), ("DELETED", "a")]  # a bookmark is not an event
    assert inf.lists == 1 and slept == []


def test_gone_lists_again_and_errors_back_off_then_resume():
    page = {"items": [], "metadata": {"resourceVersion": "5"}}
    src = Source([page, page], [Gone("too old"), RuntimeError("refused"), RuntimeError("refused"), Resp()])
    inf, got, slept = run(src, 6)
    assert src.calls[:-1] == [("list", ""), ("watch", "5"), ("list", ""), ("watch", "5"), ("watch", "5"),
                         ("watch", "5")]
    assert slept == [1.0, 2.0] and inf.lists == 2


def test_a_list_that_fails_backs_off_and_lists_again():
    src = Source([RuntimeError("refused"), {"items": [obj("a")], "metadata": {"resourceVersion": "3"}}],
                 [Resp()])
    _, got, slept = run(src, 3)
    assert src.calls[:-1] == [("list", ""), ("list", ""), ("watch", "3")] and slept == [1.0]
    assert got == [("list", ["a"])]


def test_a_stop_ends_the_watch_at_its_next_event():
    src = Source([{"items": [], "metadata": {"resourceVersion": "1"}}],
                 [Resp(ev("ADDED", "a", "2"), ev("ADDED", "b", "3"))])
    stop = []
    inf = Informer(src, lambda items: None, lambda e: (stop.append(e), None)[1], lambda: bool(stop))
    inf.run()
    assert [e["object"]["metadata"]["name"] for e in stop] == ["a"]


def test_custom_objects_pages_and_turns_an_expired_continue_into_gone():
    class Api:
        def __init__(self):
            self.kw = []

        def list_namespaced_custom_object(self, *a, **kw):
            self.kw.append(kw)
            if kw.get("_continue") == "old":
                e = Exception("expired")
                e.status = 410
                raise e
            return {"items": [], "metadata": {}}
    api = Api()
    src = CustomObjects(api, "g", "v1", "ns", "things", "node=n1")
    src.list_page(500, "")
    assert api.kw[-1] == {"label_selector": "node=n1", "limit": 500}
    with pytest.raises(Gone):
        src.list_page(500, "old")


def test_item_is_applied_page_by_page_before_the_next_page_is_fetched():
    """What a LIST keeps is transformed as each page arrives: the raw objects
    of one page are gone before the next page is asked for."""
    seen = []

    class Paged(Source):
        def list_page(self, limit, cont):
            seen.append(("page", cont))
            return super().list_page(limit, cont)

    src = Paged([{"items": [obj("a"), obj("b")], "metadata": {"continue": "c1", "resourceVersion": "1"}},
                 {"items": [obj("c")], "metadata": {"resourceVersion": "5"}}], [])
    got = []

    def item(o):
        seen.append(("item", o["metadata"]["name"]))
        return o["metadata"]["name"].upper()

    Informer(src, got.append, lambda e: None, lambda: len(src.calls) > 2, item=item,
             backoff=Backoff(1.0, 4.0, jitter=lambda: 1.0), sleep=lambda s: None).run()
    assert got[0] == ["A", "B", "C"]
    assert seen == [("page", ""), ("item", "a"), ("item", "b"), ("page", "c1"), ("item", "c")]
