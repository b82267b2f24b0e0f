"""The container image: built with Debian's Docker engine from a registry-free
base (debootstrap + docker import), then both entrypoints run in it."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

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
