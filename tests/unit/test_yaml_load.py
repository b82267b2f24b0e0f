"""yaml_load.load gives exactly yaml.safe_load's result, or its error, for any
text: its own event walk for plain documents, PyYAML's loader for the rest."""
from __future__ import annotations

import datetime

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from lvs_agent import yaml_load as Y

needs_libyaml = pytest.mark.skipif(not hasattr(yaml, "CSafeLoader"), reason="PyYAML without libyaml")

PLAIN = """\
node: n1
services:
- name: ns/web
  address: 192.0.2.10
  port: 80
  flags: [a, "b", 'c']
  empty: {}
  none: []
  dests:
  - {address: 198.51.100.1, port: 8080, weight: 1, method: nat}
  - address: 2001:db8::1
    port: 08080
    weight: 0x10
    on: yes
    off: "no"
    ratio: 1.5e3
    inf: .inf
    nothing: ~
    blank:
    when: 2001-12-14
    stamp: 2001-12-14t21:59:43.10-05:00
    text: |
      two
      lines
2: two
1.5: float key
null: null key
true: bool key
dup: first
dup: second
"""

# Each needs PyYAML's composer or constructor: the result must still be safe_load's.
ELSEWHERE = [
    "a: &x {b: 1}\nc: *x\n",
    "base: &b {p: 1}\nd:\n  <<: *b\n  q: 2\n",
    "d:\n  <<: {p: 1}\n  q: 2\n",
    "d:\n  <<: [{p: 1}, {r: 3}]\n  q: 2\n",
    "a: !!str 12\nb: !!int '7'\n",
    "s: !!set {a, b}\n",
    "b: !!binary aGVsbG8=\n",
    "x: &s scalar\ny: *s\n",
    "- &l [1]\n- *l\n",
    "%YAML 1.1\n---\na: 1\n",
    "--- 1\n",
    "",
    "# only a comment\n",
    "---\n...\n",
    "plain scalar\n",
]

# safe_load refuses these; load must raise the same error type.
REFUSED = [
    "a: 1\n---\nb: 2\n",
    "a: !!python/object/apply:os.system ['true']\n",
    "a: [1, 2\n",
    "a: b: c\n",
    "- a\nb: c\n",
    "a: *nowhere\n",
    "v: =\n",
    "? [1, 2]\n: a sequence as a key\n",
    "? {k: v}\n: a mapping as a key\n",
]


def test_a_plain_document():
    assert Y.load(PLAIN) == yaml.safe_load(PLAIN)
    doc = Y.load(PLAIN)
    assert doc["services"][0]["dests"][1]["when"] == datetime.date(2001, 12, 14)
    assert list(doc)[-1] == "dup" and doc["dup"] == "second"
    assert doc[2] == "two" and doc[None] == "null key" and doc[True] == "bool key"


@needs_libyaml
def test_a_plain_document_is_built_without_the_composer(monkeypatch):
    def no(*a, **kw):
        raise AssertionError("fell back to the composer")
    monkeypatch.setattr(yaml, "load", no)
    assert Y.load(PLAIN)["node"] == "n1"


def test_repeated_scalars_come_out_equal_and_containers_distinct():
    doc = Y.load("- {a: [1], b: x}\n- {a: [1], b: x}\n")
    assert doc == [{"a": [1], "b": "x"}] * 2
    assert doc[0] is not doc[1] and doc[0]["a"] is not doc[1]["a"]
    doc[0]["a"].append(2)
    assert doc[1]["a"] == [1]


@pytest.mark.parametrize("text", ELSEWHERE)
def test_documents_beyond_plain_ones(text):
    assert Y.load(text) == yaml.safe_load(text)


def test_an_alias_shares_the_object_as_safe_load_does():
    doc = Y.load("- &l [1]\n- *l\n")
    assert doc[0] is doc[1]


@pytest.mark.parametrize("text", REFUSED)
def test_errors_are_safe_loads(text):
    with pytest.raises(yaml.YAMLError) as want:
        yaml.safe_load(text)
    with pytest.raises(yaml.YAMLError) as got:
        Y.load(text)
    assert type(got.value) is type(want.value)


def test_without_libyaml(monkeypatch):
    monkeypatch.delattr(yaml, "CSafeLoader", raising=False)
    assert Y.load(PLAIN) == yaml.safe_load(PLAIN)


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8),
                    st.floats(allow_nan=False), st.sampled_from(["yes", "No", "0x1f", "1_000", "08", "~",
                                                                 "2001-12-14", "<<", "=", ".NaN", ""]))
documents = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(scalars, inner, max_size=4)), max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(documents, st.booleans())
def test_any_dumped_document(doc, flow):
    text = yaml.safe_dump(doc, default_flow_style=flow)
    assert Y.load(text) == yaml.safe_load(text)
