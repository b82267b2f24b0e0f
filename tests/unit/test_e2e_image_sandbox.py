"""How the end-to-end tier runs the agent from the image (lvs_e2e.sandbox):
chrooted into the exported tree, with deploy/base/agent.yaml's mounts at the
manifest's own paths inside it. Pure: the command is built, not run (the e2e
tier runs it in the lab VM). Before issue 22 item 6 there was no image mode:
the agents ran from the host's virtualenv."""
from __future__ import annotations

from lvs_e2e.sandbox import IMAGE_FILES, from_manifest

ROOT = "/cache/image-root/abc"


def command():
    sb = from_manifest()
    argv = sb.image_command("nat-director", ROOT, ("PATH=/opt/kube-lvs/bin:/usr/bin",), "/tmp/e2e/agent-x",
                            {"kubeconfig": "/build/agent-x.kubeconfig"}, ["lvs-agent", "--node", "x"])
    return sb, argv


def test_the_manifests_mount_paths_are_made_in_the_tree():
    sb = from_manifest()
    assert sb.state_mount == "/var/lib/kube-lvs" and sb.sysctl_mount == "/host/proc/sys/net"
    assert {sb.state_mount, sb.sysctl_mount, "/proc", "/sys", "/dev", "/run"} <= set(sb.image_mount_points())


def test_the_agent_is_chrooted_with_only_the_images_environment_then_dropped():
    sb, argv = command()
    assert argv[:4] == ["ip", "netns", "exec", "nat-director"]
    i = argv.index("chroot")
    assert argv[i:i + 5] == ["chroot", ROOT, "/usr/bin/env", "-i", "PATH=/opt/kube-lvs/bin:/usr/bin"]
    rest = argv[i + 5:]
    assert rest[:len(sb.setpriv())] == sb.setpriv()  # capabilities cut after the chroot, as before
    assert rest[len(sb.setpriv()):] == ["lvs-agent", "--node", "x", "--sysctl-root", sb.sysctl_root,
                                        "--state-dir", sb.state_mount]


def test_the_mounts_land_at_the_manifests_paths_inside_the_tree():
    sb, argv = command()
    script = argv[argv.index("-c") + 1]
    assert f"mount --bind /proc/sys/net {ROOT}{sb.sysctl_mount}" in script
    assert f"mount --bind /tmp/e2e/agent-x {ROOT}{sb.state_mount}" in script
    assert f"mount -o remount,bind,ro {ROOT}/proc/sys" in script
    assert f"cp /build/agent-x.kubeconfig {ROOT}{IMAGE_FILES}/kubeconfig" in script
    # Read-only root: everything but /proc, /dev and the two hostPath mounts.
    keep = script.split("case \"$mp\" in ", 1)[1].split(")", 1)[0].split("|")
    assert set(keep) == {f"{ROOT}/proc", f"{ROOT}/proc/*", f"{ROOT}/dev", f"{ROOT}/dev/*",
                         f"{ROOT}{sb.sysctl_mount}", f"{ROOT}{sb.state_mount}"}
    assert script.rstrip().endswith('exec "$@"')
