"""IPVS has one way in, the batched netlink client: when its socket cannot
open, the error surfaces (the ops fail, a read raises) instead of the agent
switching to another implementation."""
from __future__ import annotations

import errno

import pytest

from lvs_agent import drain as D
from lvs_agent import netlink_batch as NB
from lvs_agent import observe as OB
from lvs_agent import ops as O
from lvs_agent.apply import Applier
from lvs_model.nodespec import ServiceKey, parse_node_spec


def _refuse(monkeypatch) -> list:
    opened = []

    def refused(netns=None):
        opened.append(netns)
        raise PermissionError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(NB, "IPVSConnection", refused)
    monkeypatch.setattr(OB, "IPVSConnection", refused)  # observe holds its own name for it
    return opened


def _service():
    s, errors = parse_node_spec({"services": [{"address": "10.5.5.5", "port": 80,
                                               "dests": [{"address": "10.6.6.6"}]}]})
    assert not errors, errors
    return s.services[0]


def test_an_unopened_socket_fails_every_ipvs_op_and_nothing_else(monkeypatch, caplog):
    opened = _refuse(monkeypatch)
    svc = _service()
    ops = [O.AddService(svc), O.AddDest(svc, svc.dests[0]), O.DelService(ServiceKey("ipv4", "tcp", "10.9.9.9", 80))]
    app = Applier("ns1")
    results = app.apply(ops)
    assert [op for op, _ in results] == ops
    assert [err.split(":")[0] for _, err in results] == ["EPERM", "EPERM", "EPERM"]
    assert all("opening the IPVS netlink socket" in err for _, err in results)
    assert opened == ["ns1"]
    assert "IPVS netlink socket not opened" in caplog.text


def test_reads_raise_when_the_socket_cannot_open(monkeypatch):
    _refuse(monkeypatch)
    key = ServiceKey("ipv4", "tcp", "10.5.5.5", 80)
    with pytest.raises(PermissionError):
        OB.read_ipvs("ns1")
    with pytest.raises(PermissionError):
        OB.read_ipvs_services("ns1", [key])
    with pytest.raises(PermissionError):
        D.read_active("ns1", [key])
    with pytest.raises(PermissionError):
        Applier("ns1").batch_conn()


class _Conn:
    def __init__(self):
        self.closed = False
        self.asked: list = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closed = True

    def read_services(self, keys):
        self.asked.append(sorted(keys))
        return {}


def test_reads_without_a_connection_open_one_of_their_own(monkeypatch):
    conns: list[_Conn] = []

    def fake(netns=None):
        conns.append(_Conn())
        return conns[-1]
    monkeypatch.setattr(NB, "IPVSConnection", fake)
    monkeypatch.setattr(OB, "IPVSConnection", fake)
    key = ServiceKey("ipv4", "tcp", "10.5.5.5", 80)
    assert OB.read_ipvs_services("ns1", [key]) == {}
    assert len(conns) == 1 and conns[0].asked == [[key]] and conns[0].closed
