"""Smoke size of bench table 1b (lvsctl and ipvsadm as a user runs them, one
process each) on the real IPVS kernel: every trial runs, its table checks pass.
Never asserts a time (shared, noisy machines)."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(not os.environ.get("KUBE_LVS_LAB") or os.geteuid() != 0,
                       reason="needs the lab VM (real IPVS kernel, root): make test-kernel"),
]


def test_lvsctl_table_at_smoke_size():
    assert shutil.which("ipvsadm"), "ipvsadm not installed: run `bash bench/setup.sh` on the host"
    from lvs_bench import kernel as K
    t = K.run_lvsctl(list(K.LVSCTL_SMOKE_SIZES))
    assert t.errors() == [] and t.missing_columns() == []
    (r,) = t.rows
    assert r["dests"] == K.LVSCTL_SMOKE_SIZES[0]
    for c in t.columns:
        if c.kind in ("sec", "ratio", "int"):
            assert isinstance(r[c.key], (int, float)), f"{c.key} = {r[c.key]!r}"
