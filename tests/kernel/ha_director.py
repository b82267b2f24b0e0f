"""A director process for the failover tests: the agent's director side
without the Kubernetes watch (the node spec comes from a file).

It runs what the agent runs for a director group -- the engine (IPVS
services, the VIP address when held), ha_agent.HaController (its Lease,
ha_owner.decide, takeover announcements, the sync daemons through
ipvs_sync) -- with the same defaults, in the namespace it is started in
(``ip netns exec``), so a test can kill -9 it like an agent.

The Leases live in a JSON file (:class:`FileLeases`) with the API server's
semantics that matter here: resource versions (a stale write is a 409),
list by label, delete; while a file ``LEASES.down`` exists every call fails
with 503, as when the API server is stopped. The lab VM has no API server; the e2e tier is where
the real one is. A NAT gateway in the group (``directorGroups[].gateway``)
is held with the VIP on the device of the route to the real servers, found
by the controller in this namespace, as the agent does.

    python ha_director.py SPEC.json LEASES.json STATE_DIR
"""
from __future__ import annotations

import fcntl
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path


class FileLeases:
    """The leases resource of one namespace, shared by processes via a file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @contextmanager
    def _locked(self):
        if self.path.with_suffix(".down").exists():  # the test stopped "the API server"
            from kubernetes.client.exceptions import ApiException
            raise ApiException(status=503, reason="Service Unavailable")
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = json.loads(self.path.read_text()) if self.path.exists() else {"rv": 0, "objs": {}}
                yield data
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(data))
                tmp.replace(self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _error(status: int):
        from kubernetes.client.exceptions import ApiException
        return ApiException(status=status, reason={404: "Not Found", 409: "Conflict"}[status])

    def _store(self, data: dict, body: dict) -> dict:
        data["rv"] += 1
        body = {**body, "metadata": {**body["metadata"], "resourceVersion": str(data["rv"])}}
        data["objs"][body["metadata"]["name"]] = body
        return body

    def create_namespaced_custom_object(self, group, version, ns, plural, body):
        with self._locked() as data:
            if body["metadata"]["name"] in data["objs"]:
                raise self._error(409)
            return self._store(data, body)

    def replace_namespaced_custom_object(self, group, version, ns, plural, name, body):
        with self._locked() as data:
            cur = data["objs"].get(name)
            if cur is None:
                raise self._error(404)
            if body["metadata"].get("resourceVersion") != cur["metadata"]["resourceVersion"]:
                raise self._error(409)
            return self._store(data, body)

    def get_namespaced_custom_object(self, group, version, ns, plural, name):
        with self._locked() as data:
            if name not in data["objs"]:
                raise self._error(404)
            return data["objs"][name]

    def list_namespaced_custom_object(self, group, version, ns, plural, label_selector=""):
        key, _, value = label_selector.partition("=")
        with self._locked() as data:
            return {"items": [o for o in data["objs"].values()
                              if (o["metadata"].get("labels") or {}).get(key) == value]}

    def delete_namespaced_custom_object(self, group, version, ns, plural, name):
        with self._locked() as data:
            if data["objs"].pop(name, None) is None:
                raise self._error(404)


def main(spec_path: str, leases_path: str, state_dir: str) -> int:
    from lvs_agent import announce
    from lvs_agent.engine import Engine
    from lvs_agent.ha_agent import HaController, kernel_sync
    from lvs_agent.ha_lease import DirectorLease
    from lvs_model.nodespec import parse_node_spec

    spec, errors = parse_node_spec(json.loads(Path(spec_path).read_text()))
    assert not errors, errors
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    engine = Engine(state / "ownership.json", uplink=spec.uplink)
    ha = HaController(DirectorLease(FileLeases(leases_path), "lvs", spec.node),
                      lambda device, vip: announce.announce(device, vip, count=3), sync=kernel_sync(None),
                      link_running=announce.link_running)
    ha.update(spec)
    engine.reconcile(ha.filter(spec))
    last = time.monotonic()
    print("ready", flush=True)
    while True:
        changed = ha.step()
        if changed or time.monotonic() - last > 10:
            engine.reconcile(ha.filter(spec))
            ha.after_pass()
            last = time.monotonic()
            print("holds", sorted(ha.held), "gateways", [f"{a.address} on {a.device}" for a in ha.given_gateways],
                  flush=True)
        time.sleep(ha.renew_every)


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:4]))
