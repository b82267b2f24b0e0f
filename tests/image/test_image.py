"""The container image: built with Debian's Docker engine from a registry-free
base (debootstrap + docker import), then both entrypoints run in it, and every
program the agent runs (lvs_agent.tools) is in it."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lvs_agent.tools import EXTERNAL_TOOLS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def image():
    r = subprocess.run(["bash", str(ROOT / "deploy/image/build.sh")], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return "kube-lvs:dev"


def run(image: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "run", "--rm", "--network=none", image, *argv],
                          capture_output=True, text=True, timeout=300)


def test_operator_entrypoint(image):
    r = run(image, "lvs-operator", "--help")
    assert r.returncode == 0 and "usage: lvs-operator" in r.stdout, r.stderr


def test_agent_entrypoint(image):
    r = run(image, "lvs-agent", "--help")
    assert r.returncode == 0 and "usage: lvs-agent" in r.stdout, r.stderr


def test_runs_as_non_root_by_default(image):
    r = run(image, "id", "-u")
    assert r.stdout.strip() == "65532"


def test_lvsctl_is_in_the_image(image):
    r = run(image, "lvsctl", "--help")
    assert r.returncode == 0 and "lvsctl" in r.stdout


# How to run each tool harmlessly: --version, except birdc, which has none
# (it runs when it gets as far as looking for BIRD's control socket).
PROBES = {"birdc": (["-s", "/nonexistent", "show", "status"], "Unable to connect to server control socket")}


@pytest.mark.parametrize("tool", sorted(EXTERNAL_TOOLS))
def test_every_program_the_agent_runs_is_in_the_image(image, tool):
    """Issue 22 item 6: the image lacked nft, the one program the agent runs
    (for a natReturn: snat service's table). Each tool of lvs_agent.tools
    runs in the image from its PATH, and the agent's own lookup finds it."""
    args, expect = PROBES.get(tool, (["--version"], None))
    r = run(image, tool, *args)
    assert (r.returncode == 0 if expect is None else expect in r.stdout + r.stderr), (tool, r.stdout, r.stderr)
    r = run(image, "python3", "-c", "from lvs_agent import tools; print(sorted(tools.missing(list(tools.EXTERNAL_TOOLS))))")
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)
