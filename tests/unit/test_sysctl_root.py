"""The agent's sysctl reads and writes: under ``--sysctl-root`` (where the
unprivileged DaemonSet mounts the host's /proc/sys/net), and only for the
allowlisted names and values (lvs_model.sysctls), whatever a NodeState says."""
from __future__ import annotations

from pathlib import Path

import pytest

from lvs_agent import sysctl as ob


@pytest.fixture
def root(tmp_path: Path):
    """A fake sysctl tree with a few of the settings kube-lvs manages."""
    for rel, value in (("net/ipv4/ip_forward", "0\n"), ("net/ipv4/conf/eth0.100/rp_filter", "1\n"),
                       ("net/ipv4/conf/all/arp_ignore", "0\n")):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(value)
    before = ob.sysctl_root()
    ob.set_sysctl_root(str(tmp_path) + "/")
    yield tmp_path
    ob.set_sysctl_root(before)


def test_paths_are_under_the_root(root):
    assert ob.sysctl_path("net.ipv4.ip_forward") == f"{root}/net/ipv4/ip_forward"
    assert ob.sysctl_path("net.ipv4.conf.eth0.100.rp_filter") == f"{root}/net/ipv4/conf/eth0.100/rp_filter"


def test_read_and_write_through_the_root(root):
    ob.write_sysctl("net.ipv4.ip_forward", "1")
    assert (root / "net/ipv4/ip_forward").read_text() == "1"
    assert ob.read_sysctls(["net.ipv4.ip_forward", "net.ipv4.conf.all.arp_ignore",
                            "net.ipv4.conf.eth9.rp_filter"]) == {
        "net.ipv4.ip_forward": "1", "net.ipv4.conf.all.arp_ignore": "0", "net.ipv4.conf.eth9.rp_filter": None}


@pytest.mark.parametrize("name", ["kernel.core_pattern", "net.ipv4.conf.x/../../../kernel.rp_filter",
                                  "net.ipv4.conf.....rp_filter", "net.core.rmem_max", "net.ipv4.ip_forward/"])
def test_names_outside_the_allowlist_are_refused(root, name):
    with pytest.raises(ob.SysctlRefused) as e:
        ob.write_sysctl(name, "1")
    assert e.value.errno == 1  # EPERM: reported as such in NodeState status
    with pytest.raises(ob.SysctlRefused):
        ob.sysctl_path(name)
    assert ob.read_sysctls([name]) == {name: None}


@pytest.mark.parametrize("name,value", [("net.ipv4.ip_forward", "2"), ("net.ipv4.conf.all.arp_ignore", "9"),
                                        ("net.ipv4.ip_forward", "1\nkernel"), ("net.ipv4.ip_forward", "-1")])
def test_values_out_of_range_are_refused_before_opening(root, name, value):
    with pytest.raises(ob.SysctlRefused):
        ob.write_sysctl(name, value)
    assert (root / "net/ipv4/ip_forward").read_text() == "0\n"


def test_the_default_root_is_proc_sys():
    assert ob.DEFAULT_SYSCTL_ROOT == "/proc/sys"


def test_agent_refuses_a_sysctl_root_without_net(tmp_path, capsys):
    from lvs_agent.main import main
    with pytest.raises(SystemExit) as e:
        main(["--node", "n1", "--sysctl-root", str(tmp_path)])
    assert e.value.code == 2 and "mount the host's /proc/sys/net there" in capsys.readouterr().err
