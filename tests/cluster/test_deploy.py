"""deploy/ against the real API server: it applies server-side with no diff
after, every row of the permissions table in deploy/README.md holds both ways,
and the examples apply cleanly."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SA = {"agent": "system:serviceaccount:kube-lvs-system:kube-lvs-agent",
      "operator": "system:serviceaccount:kube-lvs-system:kube-lvs-operator"}


def rbac_rows() -> list[tuple[str, str, str, str, bool]]:
    rows = []
    for line in (ROOT / "deploy" / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in SA:
            rows.append((cells[0], cells[1], cells[2], cells[3], cells[4] == "yes"))
    return rows


@pytest.fixture(scope="module")
def installed(control_plane):
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(ROOT / "deploy"))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                          "crd/virtualservices.lvs.kube-lvs.io", "crd/realservers.lvs.kube-lvs.io",
                          "crd/vippools.lvs.kube-lvs.io", "crd/nodestates.lvs.kube-lvs.io")
    return control_plane


def test_apply_is_idempotent_and_diff_is_empty(installed):
    out = installed.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(ROOT / "deploy")).stdout
    assert "daemonset.apps/kube-lvs-agent serverside-applied" in out
    assert "deployment.apps/kube-lvs-operator serverside-applied" in out
    diff = installed.kubectl("diff", "--server-side", "--force-conflicts", "-k", str(ROOT / "deploy"), check=False)
    assert diff.returncode == 0 and diff.stdout == "", diff.stdout + diff.stderr


def test_crds_carry_the_argocd_sync_wave(installed):
    crd = installed.kubectl_json("get", "crd", "virtualservices.lvs.kube-lvs.io")
    assert crd["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] == "-1"


def test_the_table_has_enough_rows():
    rows = rbac_rows()
    assert len(rows) >= 25 and any(r[4] for r in rows) and any(not r[4] for r in rows)


@pytest.mark.parametrize("who,verb,resource,namespace,allowed", rbac_rows(),
                         ids=[f"{r[0]}-{r[1]}-{r[2]}-{r[3] or 'cluster'}" for r in rbac_rows()])
def test_permission_table_row(installed, who, verb, resource, namespace, allowed):
    args = ["auth", "can-i", verb]
    if resource.endswith("/status"):
        args += [resource[: -len("/status")], "--subresource=status"]
    else:
        args.append(resource)
    args += ["-n", namespace] if namespace else ["--all-namespaces"] if verb in ("list", "watch") and resource == "secrets" else []
    args.append(f"--as={SA[who]}")
    r = installed.kubectl(*args, check=False)
    answer = r.stdout.strip()
    assert answer in ("yes", "no"), r.stderr
    assert (answer == "yes") == allowed, f"{who} {verb} {resource} in {namespace or 'cluster'}: {answer}"


def test_examples_apply_cleanly(installed):
    for example in ("seed-nat", "seed-tun"):
        path = str(ROOT / "examples" / example)
        out = installed.kubectl("apply", "-k", path).stdout
        assert re.search(r"virtualservice\.lvs\.kube-lvs\.io/http (created|configured|unchanged)", out), out
        assert out.count("realserver.lvs.kube-lvs.io/") == 2, out
        installed.kubectl("delete", "-k", path, "--wait=false")


def test_privileged_overlay_applies(installed):
    """deploy/overlays/privileged, the one overlay: the API server takes it (dry run)."""
    out = installed.kubectl("apply", "--server-side", "--force-conflicts", "--dry-run=server",
                            "-k", str(ROOT / "deploy" / "overlays" / "privileged")).stdout
    assert "daemonset.apps/kube-lvs-agent serverside-applied" in out, out
