"""deploy/base/agent.yaml: the agent is unprivileged, and the lab's sandbox
(lvs_e2e.sandbox, which the end-to-end tests run every agent in) reads its
privileges from it, so the two cannot drift."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lvs_e2e import sandbox as S

ROOT = Path(__file__).resolve().parents[2]


def daemonset(path: Path = S.MANIFEST) -> dict:
    return next(d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "DaemonSet")


def test_the_default_agent_is_not_privileged():
    sb = S.from_manifest()
    # NET_RAW: failover announcements; NET_BIND_SERVICE: BIRD's BGP port 179
    assert sb.capabilities == ("NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE")
    assert sb.cap_mask == 1 << 12 | 1 << 13 | 1 << 10
    assert (sb.uid, sb.gid, sb.no_new_privs, sb.read_only_root) == (0, 0, True, True)
    assert (sb.sysctl_mount, sb.sysctl_root) == ("/host/proc/sys/net", "/host/proc/sys")


def test_privileged_is_only_an_overlay():
    assert not (ROOT / "deploy" / "overlays" / "unprivileged").exists()
    overlay = (ROOT / "deploy" / "overlays" / "privileged" / "kustomization.yaml").read_text()
    assert "privileged: true" in overlay and "../../base" in overlay
    assert "privileged: true" not in (ROOT / "deploy" / "base" / "agent.yaml").read_text()


def test_the_sandbox_drops_to_the_manifests_set():
    sb = S.from_manifest()
    argv = sb.command("nat-director", "/tmp/e2e/a.root", "/tmp/e2e/a", ["lvs-agent", "--node", "a"])
    assert argv[:5] == ["ip", "netns", "exec", "nat-director", "sh"]
    assert "--bounding-set=-all,+net_admin,+net_raw,+net_bind_service" in argv and "--no-new-privs" in argv
    assert argv[-2:] == ["--sysctl-root", "/tmp/e2e/a.root/host/proc/sys"]
    assert "--netns" not in argv  # the agent starts inside its namespace: no setns
    script = argv[6]
    assert "mount --bind /proc/sys/net /tmp/e2e/a.root/host/proc/sys/net" in script
    assert "mount -o remount,bind,ro /proc/sys" in script
    assert script.index("/proc/sys/net /tmp") < script.index("remount,bind,ro /proc/sys")


def _write(tmp_path: Path, mutate) -> Path:
    doc = daemonset()
    mutate(doc["spec"]["template"]["spec"])
    out = tmp_path / "agent.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


def _container(spec: dict) -> dict:
    return spec["containers"][0]


@pytest.mark.parametrize("mutate,why", [
    (lambda s: _container(s)["securityContext"].update(privileged=True), "privileged"),
    (lambda s: _container(s)["securityContext"]["capabilities"].update(drop=[]), "drop ALL"),
    (lambda s: _container(s)["securityContext"]["capabilities"].update(add=["NET_TELEPATHY"]), "unknown"),
    (lambda s: _container(s).update(volumeMounts=[m for m in _container(s)["volumeMounts"]
                                                  if m["name"] == "state"]), "no hostPath"),
    (lambda s: _container(s).update(env=[e for e in _container(s)["env"]
                                         if e["name"] != S.SYSCTL_ROOT_ENV]), "KUBE_LVS_SYSCTL_ROOT"),
    (lambda s: next(e for e in _container(s)["env"] if e["name"] == S.SYSCTL_ROOT_ENV).update(value="/elsewhere"),
     "does not hold"),
])
def test_a_manifest_the_lab_cannot_reproduce_is_refused(tmp_path, mutate, why):
    with pytest.raises(S.ManifestError, match=why):
        S.from_manifest(_write(tmp_path, mutate))


def test_proc_status_and_mountinfo_parsing():
    caps = S.status_caps("Name:\tlvs-agent\nCapInh:\t0000000000000000\nCapEff:\t0000000000001000\nNoNewPrivs:\t1\n")
    assert caps == {"CapInh": 0, "CapEff": 0x1000, "NoNewPrivs": 1}
    info = ("22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
            "30 22 0:21 /sys /proc/sys ro,relatime - proc proc rw\n"
            "31 25 0:21 /sys/net /tmp/e2e/a.root/host/proc/sys/net rw,relatime - proc proc rw\n")
    assert S.writable_mounts(info) == ["/proc", "/tmp/e2e/a.root/host/proc/sys/net"]
