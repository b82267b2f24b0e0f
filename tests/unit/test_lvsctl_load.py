"""lvsctl reads its node file through yaml_load (libyaml's events when PyYAML
has it) and builds the document yaml.safe_load builds."""
from __future__ import annotations

import io

import pytest
import yaml

from lvs_agent import lvsctl as L

DOC = """\
node: n1
uplink: eth0
services:
- name: ns/web
  protocol: tcp
  address: 192.0.2.10
  port: 80
  scheduler: wlc
  persistence_timeout: 300
  scheduler_flags: [sh-fallback]
  dests:
  - {address: 198.51.100.1, port: 8080, weight: 1, method: nat}
  - address: 2001:db8::1
    port: 08080
    weight: 0x10
    method: "nat"
    enabled: yes
    ratio: 1.5
    note: ~
    when: 2001-12-14
"""


def test_the_file_goes_through_yaml_load(monkeypatch, tmp_path):
    from lvs_agent import yaml_load
    seen = []
    monkeypatch.setattr(yaml_load, "load", lambda text: seen.append(text) or {"services": []})
    f = tmp_path / "node.yaml"
    f.write_text(DOC)
    assert L.load_spec_document(str(f)) == {"services": []}
    assert seen == [DOC]


def test_the_loader_builds_what_safe_load_builds(tmp_path):
    f = tmp_path / "node.yaml"
    f.write_text(DOC)
    assert L.load_spec_document(str(f)) == yaml.safe_load(DOC)


def test_stdin_and_an_empty_file(monkeypatch, tmp_path):
    monkeypatch.setattr(L.sys, "stdin", io.StringIO(DOC))
    assert L.load_spec_document("-") == yaml.safe_load(DOC)
    f = tmp_path / "empty.yaml"
    f.write_text("")
    assert L.load_spec_document(str(f)) == {}


def test_the_loader_stays_safe(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(yaml.YAMLError):
        L.load_spec_document(str(f))
