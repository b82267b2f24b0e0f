"""Director Leases (lvs_agent.ha_lease): one Lease per director whatever the
number of VIPs, what it holds and cannot serve in two annotations, read back
as the members ha_owner decides on; shutdown deletes it.

Each fails before the change: there was no ha_lease module and no director
Lease at all.
"""
from __future__ import annotations

import pytest
from kubernetes.client.exceptions import ApiException

from lvs_agent.ha_lease import HELD, LEASE_LABEL, DirectorLease, lease_body, lease_name, member_from
from lvs_agent.ha_owner import LeaseTracker, Member, Policy, decide


class FakeLeases:
    """The leases resource of one namespace, with resource versions and
    label selection, counting writes."""

    def __init__(self):
        self.objs: dict[str, dict] = {}
        self.rv = 0
        self.writes = 0
        self.down = False

    def _check(self):
        if self.down:
            raise ApiException(status=503, reason="Service Unavailable")

    def _store(self, body):
        self.rv += 1
        self.writes += 1
        body = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.rv)}}
        self.objs[body["metadata"]["name"]] = body
        return body

    def create_namespaced_custom_object(self, group, version, ns, plural, body):
        self._check()
        if body["metadata"]["name"] in self.objs:
            raise ApiException(status=409, reason="AlreadyExists")
        return self._store(body)

    def replace_namespaced_custom_object(self, group, version, ns, plural, name, body):
        self._check()
        if name not in self.objs:
            raise ApiException(status=404, reason="Not Found")
        if body["metadata"].get("resourceVersion") != self.objs[name]["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        return self._store(body)

    def get_namespaced_custom_object(self, group, version, ns, plural, name):
        self._check()
        if name not in self.objs:
            raise ApiException(status=404, reason="Not Found")
        return self.objs[name]

    def list_namespaced_custom_object(self, group, version, ns, plural, label_selector=""):
        self._check()
        key, _, value = label_selector.partition("=")
        return {"items": [o for o in self.objs.values()
                          if (o["metadata"].get("labels") or {}).get(key) == value]}

    def delete_namespaced_custom_object(self, group, version, ns, plural, name):
        self._check()
        if name not in self.objs:
            raise ApiException(status=404, reason="Not Found")
        del self.objs[name]


def test_one_write_per_renewal_whatever_the_number_of_vips():
    api = FakeLeases()
    lease = DirectorLease(api, "lvs", "d1")
    many = [f"10.1.{i // 250}.{i % 250}" for i in range(10_000)]
    for _ in range(3):
        lease.renew(many, [])
    assert api.writes == 3 and len(api.objs) == 1
    (m,) = lease.members()
    assert m.name == "d1" and m.held == frozenset(many)


def test_members_read_back_what_each_director_published_and_skip_foreign_leases():
    api = FakeLeases()
    DirectorLease(api, "lvs", "d1").renew(["10.0.0.1"], ["10.0.0.2"])
    DirectorLease(api, "lvs", "d2").renew([], [])
    api.objs["other"] = {"metadata": {"name": "other", "labels": {LEASE_LABEL: "true"}},
                         "spec": {"holderIdentity": "x"}}  # not a director's name
    got = {m.name: m for m in DirectorLease(api, "lvs", "d3").members()}
    assert set(got) == {"d1", "d2"}
    assert got["d1"].held == {"10.0.0.1"} and got["d1"].unserved == {"10.0.0.2"}
    assert got["d1"].duration == 6.0


def test_a_stale_resource_version_is_reread_and_written_once_more():
    """A restarted agent finds its Lease already there (create says 409)."""
    api = FakeLeases()
    DirectorLease(api, "lvs", "d1").renew([], [])
    again = DirectorLease(api, "lvs", "d1")
    again.renew(["10.0.0.1"], [])
    assert api.objs[lease_name("d1")]["metadata"]["annotations"][HELD] == "10.0.0.1"


def test_release_deletes_the_lease_so_the_others_take_over_at_once():
    api = FakeLeases()
    d1, d2 = DirectorLease(api, "lvs", "d1"), DirectorLease(api, "lvs", "d2")
    d1.renew(["v"], [])
    d2.renew([], [])
    tracker = LeaseTracker()
    tracker.observe(d2.members(), now=0.0)
    assert decide("d2", {"v": Policy()}, tracker.live(1.0), frozenset()) == frozenset()
    d1.release()
    tracker.observe(d2.members(), now=1.0)
    assert decide("d2", {"v": Policy()}, tracker.live(1.0), frozenset()) == {"v"}


def test_api_server_away_freezes_instead_of_dropping():
    api = FakeLeases()
    d1 = DirectorLease(api, "lvs", "d1")
    d1.renew(["v"], [])
    tracker = LeaseTracker()
    tracker.observe(d1.members(), now=0.0)
    api.down = True
    with pytest.raises(ApiException):
        d1.members()
    tracker.unreadable()
    held = decide("d1", {"v": Policy()}, tracker.live(300.0), frozenset({"v"}), frozen=tracker.frozen)
    assert held == {"v"}  # without the freeze its own Lease has expired and it would drop v


def test_body_and_member_round_trip():
    body = lease_body("lvs", "d1", 10.5, ["b", "a"], [], "2026-01-01T00:00:00.000000Z", "7")
    assert body["metadata"]["annotations"][HELD] == "a,b"
    assert body["spec"]["leaseDurationSeconds"] == 10
    assert member_from(body) == Member("d1", "2026-01-01T00:00:00.000000Z", 10.0, frozenset("ab"), frozenset())


def test_ten_thousand_ipv6_vips_fit_in_the_annotation_limit():
    """Plain text would be ~390 KB, past the API's 256 KiB for all annotations."""
    many = [f"2001:db8:{i:x}::1:{i:x}" for i in range(10_000)]
    body = lease_body("lvs", "d1", 10, many, [], "t")
    assert len(body["metadata"]["annotations"][HELD]) < 200_000
    assert member_from(body).held == frozenset(many)
