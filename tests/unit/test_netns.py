"""netns: how a namespace name becomes a path, and what entering one that does
not exist says (no namespace is entered: the unit tier has no lab)."""
from __future__ import annotations

import os

import pytest

from lvs_agent.netns import in_netns, netns_path


def test_a_name_lives_under_run_netns_and_a_path_is_kept():
    assert netns_path("lab-director") == "/run/netns/lab-director"
    assert netns_path("/proc/1/ns/net") == "/proc/1/ns/net"


def test_no_namespace_is_the_callers_own():
    before = os.readlink("/proc/thread-self/ns/net")
    with in_netns(None):
        assert os.readlink("/proc/thread-self/ns/net") == before


def test_a_missing_namespace_is_named_and_the_thread_stays_home():
    before = os.readlink("/proc/thread-self/ns/net")
    with pytest.raises(FileNotFoundError, match="no network namespace 'kl-no-such-ns'"):
        with in_netns("kl-no-such-ns"):
            pytest.fail("entered a namespace that does not exist")
    assert os.readlink("/proc/thread-self/ns/net") == before
