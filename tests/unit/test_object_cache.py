"""The agent's on-disk object cache: what a start without the API server reads."""
import json
import threading

from lvs_agent.object_cache import ObjectCache


def obj(name: str, rv: str, weight: int = 1) -> dict:
    return {"metadata": {"name": name, "resourceVersion": rv,
                         "managedFields": [{"manager": "lvs-operator", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"services": [{"address": "10.0.0.1", "weight": weight}]}}


def test_round_trip_without_managed_fields(tmp_path):
    c = ObjectCache(tmp_path / "cache.json")
    assert c.load() is None  # no file: not the same as an empty node
    objects = {"a": obj("a", "1"), "b\"q": obj("b\"q", "2", 3)}
    c.save(objects)
    back = c.load()
    assert set(back) == {"a", "b\"q"} and back["b\"q"]["spec"] == objects["b\"q"]["spec"]
    assert all("managedFields" not in o["metadata"] for o in back.values())
    assert objects["a"]["metadata"]["managedFields"]  # the live object keeps them
    c.save({})
    assert c.load() == {}
    (tmp_path / "cache.json").write_text("{trunc")
    assert c.load() is None


def test_an_unchanged_object_is_not_serialised_again_a_changed_one_is(tmp_path):
    c = ObjectCache(tmp_path / "cache.json")
    a, b = obj("a", "1"), obj("b", "1")
    c.save({"a": a, "b": b})
    # Same dict, same version, same status: its text is reused (an in-place edit
    # that the agent never makes shows that it was not serialised again).
    a["spec"]["marker"] = "not written"
    b2 = obj("b", "2", 7)  # a new version from the watch
    c.save({"a": a, "b": b2})
    back = c.load()
    assert "marker" not in back["a"]["spec"]
    assert back["b"]["spec"]["services"][0]["weight"] == 7
    # The agent's own status write lands in the same dict, same version.
    a["status"] = {"observedGeneration": 3}
    c.save({"a": a})
    back = c.load()
    assert back["a"]["status"] == {"observedGeneration": 3} and back["a"]["spec"]["marker"] == "not written"
    assert set(back) == {"a"}  # a deleted object leaves the file


def test_concurrent_saves_leave_a_whole_file(tmp_path):
    c = ObjectCache(tmp_path / "cache.json")
    objects = {f"o{i}": obj(f"o{i}", str(i)) for i in range(200)}
    threads = [threading.Thread(target=c.save, args=(dict(objects),)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(json.loads((tmp_path / "cache.json").read_text())) == set(objects)


def test_save_pauses_between_slices_of_objects(tmp_path):
    """The agent's background cache write lets a change's pass go first: it
    calls ``pause`` (which waits while a pass runs) every PAUSE_EVERY objects."""
    c = ObjectCache(tmp_path / "cache.json")
    c.PAUSE_EVERY = 2
    pauses = []
    objects = {f"o{i}": obj(f"o{i}", str(i)) for i in range(5)}
    c.save(objects, pause=lambda: pauses.append(len(pauses)))
    assert pauses == [0, 1, 2]  # before objects 0, 2 and 4
    assert set(json.loads((tmp_path / "cache.json").read_text())) == set(objects)
