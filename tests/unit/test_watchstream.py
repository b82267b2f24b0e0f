"""Watch events decoded from a response's chunks (split anywhere)."""
import json

import pytest

from lvs_kube.watchstream import Gone, events, resource_version


class Resp:
    def __init__(self, *events_, split=7):
        data = b"".join(json.dumps(e).encode() + b"\n" for e in events_)
        self.chunks = [data[i:i + split] for i in range(0, len(data), split)]

    def stream(self, amt=None, decode_content=False):
        yield from self.chunks


def ev(typ, name, rv, **obj):
    return {"type": typ, "object": {"metadata": {"name": name, "resourceVersion": rv}, **obj}}


def test_events_are_decoded_once_whole_across_chunks_and_carry_the_resource_version():
    got = list(events(Resp(ev("ADDED", "a", "5", spec={"x": "y\n"}), ev("BOOKMARK", "", "9"))))
    assert [e["type"] for e in got] == ["ADDED", "BOOKMARK"] and got[0]["object"]["spec"] == {"x": "y\n"}
    assert [resource_version(e, "1") for e in got] == ["5", "9"] and resource_version({}, "1") == "1"


def test_an_expired_watch_is_gone_other_errors_raise_with_the_message():
    with pytest.raises(Gone):
        list(events(Resp(ev("ADDED", "a", "5"), {"type": "ERROR", "object": {"code": 410, "message": "too old"}})))
    with pytest.raises(RuntimeError, match="internal"):
        list(events(Resp({"type": "ERROR", "object": {"code": 500, "message": "internal"}})))
