"""One YAML document to Python objects, as ``yaml.safe_load`` builds them, faster.

PyYAML's safe loaders (libyaml's included) compose a node for every scalar and
construct each node through generic Python code; a node file repeats the same
few scalars (protocol, port, method, weight) tens of thousands of times. This
loader walks libyaml's events instead: containers are built directly, and each
distinct scalar is resolved and constructed once, by PyYAML's own safe
resolver and constructor, then reused (every safe scalar is immutable).

Anything beyond plain documents (anchors and aliases, explicit tags, merge
keys, a collection as a mapping key, a second document) is left to
``yaml.CSafeLoader`` on the same text, so the result, or the error, is always
``yaml.safe_load``'s.
"""
from __future__ import annotations

from typing import Any

import yaml
from yaml.events import (DocumentEndEvent, DocumentStartEvent, MappingEndEvent, MappingStartEvent,
                         ScalarEvent, SequenceEndEvent, SequenceStartEvent, StreamEndEvent,
                         StreamStartEvent)
from yaml.nodes import ScalarNode

# The scalars the safe constructor builds from untagged text: all immutable.
PLAIN_TAGS = frozenset("tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "timestamp"))

_SEQ = object()  # a frame's key slot when the frame is a sequence
_NO_KEY = object()  # a mapping frame waiting for its next key


class _Unsupported(Exception):
    """The document needs PyYAML's full composer."""


def load(text: str) -> Any:
    """``yaml.safe_load(text)``'s result (or error); PyYAML's pure-Python loader
    when PyYAML was built without libyaml."""
    if not hasattr(yaml, "CSafeLoader"):
        return yaml.load(text, Loader=yaml.SafeLoader)  # noqa: S506 - a safe loader
    loader = yaml.CSafeLoader(text)
    try:
        return _build(loader)
    except _Unsupported:
        pass
    finally:
        loader.dispose()
    return yaml.load(text, Loader=yaml.CSafeLoader)  # noqa: S506 - a safe loader


def _scalar(loader: Any, ev: ScalarEvent, cache: dict, key: tuple) -> Any:
    """A scalar not met before in this document: resolved and constructed by
    PyYAML, then cached under its (text, implicit) key."""
    tag = loader.resolve(ScalarNode, ev.value, ev.implicit)
    if tag not in PLAIN_TAGS:
        raise _Unsupported
    value = loader.construct_object(ScalarNode(tag, ev.value, ev.start_mark, ev.end_mark, ev.style), deep=True)
    cache[key] = value
    return value


def _build(loader: Any) -> Any:
    get = loader.get_event
    if type(get()) is not StreamStartEvent:
        raise _Unsupported
    ev = get()
    if type(ev) is StreamEndEvent:
        return None
    if type(ev) is not DocumentStartEvent:
        raise _Unsupported
    cache: dict = {}
    root: list = []
    # The open container and its key slot live in locals (one event is a few
    # bytecodes: the loop runs once per scalar); ``stack`` keeps the enclosing
    # ones. The key slot is _SEQ for a sequence, else the pending key or _NO_KEY.
    stack: list[tuple] = []
    cur: Any = root
    k: Any = _SEQ
    cached = cache.get
    while True:
        ev = get()
        cls = type(ev)
        if cls is ScalarEvent:
            if ev.anchor is not None or ev.tag is not None:
                raise _Unsupported
            key = (ev.value, ev.implicit)
            value = cached(key, _NO_KEY)
            if value is _NO_KEY:
                value = _scalar(loader, ev, cache, key)
            if k is _SEQ:
                cur.append(value)
            elif k is _NO_KEY:
                k = value
            else:
                cur[k] = value
                k = _NO_KEY
        elif cls is MappingEndEvent or cls is SequenceEndEvent:
            cur, k = stack.pop()
        elif cls is MappingStartEvent or cls is SequenceStartEvent:
            if ev.anchor is not None or ev.tag is not None or k is _NO_KEY:
                raise _Unsupported  # anchored, tagged, or a collection as a key
            new: Any = {} if cls is MappingStartEvent else []
            if k is _SEQ:
                cur.append(new)
                stack.append((cur, _SEQ))
            else:
                cur[k] = new
                stack.append((cur, _NO_KEY))
            cur, k = new, (_NO_KEY if cls is MappingStartEvent else _SEQ)
        elif cls is DocumentEndEvent:
            break
        else:  # an alias
            raise _Unsupported
    if type(get()) is not StreamEndEvent:
        raise _Unsupported  # more documents: the composer's error
    return root[0] if root else None
