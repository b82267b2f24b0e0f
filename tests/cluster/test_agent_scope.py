"""deploy/base/agent-scope.yaml against the real API server: the agent's
ServiceAccount writes the status of its own node's NodeStates only.

The node comes from the user's extra `authentication.kubernetes.io/node-name`,
which the API server puts there for a token bound to a pod (or a node). Here
it is given by impersonation, as kubectl --as-user-extra sends it, and once by
a real node-bound token (the way the end-to-end tier authenticates agents)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lvs_model.channel import DEFAULT_NAMESPACE, LABEL_NODE, NODESTATE_PLURAL, label_value

ROOT = Path(__file__).resolve().parents[2]
AGENT = "system:serviceaccount:kube-lvs-system:kube-lvs-agent"
NODE_EXTRA = "authentication.kubernetes.io/node-name"
STATUS = json.dumps({"status": {"observedGeneration": 1}})


def nodestate(node: str) -> dict:
    return {"apiVersion": "lvs.kube-lvs.io/v1alpha1", "kind": "NodeState",
            "metadata": {"name": f"{node}-scope-test", "namespace": DEFAULT_NAMESPACE,
                         "labels": {LABEL_NODE: label_value(node)}},
            "spec": {"node": node}}


@pytest.fixture(scope="module")
def installed(control_plane):
    cp = control_plane
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(ROOT / "deploy"))
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{NODESTATE_PLURAL}.lvs.kube-lvs.io")
    cp.apply([nodestate("node-a"), nodestate("node-b")])
    yield cp
    cp.kubectl("delete", "-n", DEFAULT_NAMESPACE, f"{NODESTATE_PLURAL}.lvs.kube-lvs.io",
               "node-a-scope-test", "node-b-scope-test", "--wait=false", check=False)


def agent_patch(cp, name: str, *, node: str | None, subresource: bool = True, body: str = STATUS):
    """kubectl patch as the agent's ServiceAccount; ``node``: the token's node (None: none)."""
    args = ["patch", f"{NODESTATE_PLURAL}.lvs.kube-lvs.io", name, "-n", DEFAULT_NAMESPACE,
            "--type=merge", "-p", body, f"--as={AGENT}", "--as-group=system:serviceaccounts",
            "--as-group=system:serviceaccounts:kube-lvs-system", "--as-group=system:authenticated"]
    if node is not None:
        args.append(f"--as-user-extra={NODE_EXTRA}={node}")
    if subresource:
        args.append("--subresource=status")
    return cp.kubectl(*args, check=False)


def wait_for_policy(cp) -> None:
    """A new ValidatingAdmissionPolicy takes a moment to be loaded: retry the
    one request it must deny until it does."""
    import time
    deadline = time.monotonic() + 60
    while agent_patch(cp, "node-b-scope-test", node="node-a").returncode == 0:
        assert time.monotonic() < deadline, "the policy never started denying"
        time.sleep(1)


def test_own_node_status_allowed_other_node_denied(installed):
    wait_for_policy(installed)
    ok = agent_patch(installed, "node-a-scope-test", node="node-a")
    assert ok.returncode == 0, ok.stderr
    denied = agent_patch(installed, "node-b-scope-test", node="node-a")
    assert denied.returncode != 0
    assert "ValidatingAdmissionPolicy 'kube-lvs-agent-own-node'" in denied.stderr, denied.stderr
    assert "may write the status of its own node's NodeStates only" in denied.stderr, denied.stderr
    assert "node-b-scope-test is node node-b's" in denied.stderr, denied.stderr


def test_agent_without_a_node_is_denied(installed):
    wait_for_policy(installed)
    r = agent_patch(installed, "node-a-scope-test", node=None)
    assert r.returncode != 0 and "only with a pod-bound token" in r.stderr, r.stderr


def test_spec_patch_is_denied_by_rbac(installed):
    r = agent_patch(installed, "node-a-scope-test", node="node-a", subresource=False,
                    body=json.dumps({"spec": {"node": "node-b"}}))
    assert r.returncode != 0 and "Forbidden" in r.stderr and "cannot patch resource" in r.stderr, r.stderr


def test_others_are_not_bound_by_the_policy(installed):
    """The operator (and an admin) are not the agent: the policy leaves them alone."""
    r = installed.kubectl("patch", f"{NODESTATE_PLURAL}.lvs.kube-lvs.io", "node-b-scope-test", "-n",
                          DEFAULT_NAMESPACE, "--type=merge", "-p", STATUS, "--subresource=status", check=False)
    assert r.returncode == 0, r.stderr


def test_a_real_node_bound_token_carries_the_node(installed):
    """What the end-to-end tier does: a token bound to a Node object has the
    node name in its extra, so the policy admits that node's NodeStates only."""
    cp = installed
    cp.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}})
    wait_for_policy(cp)
    token = cp.kubectl("create", "token", "kube-lvs-agent", "-n", DEFAULT_NAMESPACE,
                       "--bound-object-kind=Node", "--bound-object-name=node-a").stdout.strip()
    base = ["patch", f"{NODESTATE_PLURAL}.lvs.kube-lvs.io", "-n", DEFAULT_NAMESPACE, "--type=merge",
            "-p", STATUS, "--subresource=status", f"--token={token}"]
    kc = cp.kubeconfig_for_serviceaccount(DEFAULT_NAMESPACE, "kube-lvs-agent")
    mine = cp.kubectl(*base, "node-a-scope-test", kubeconfig=kc, check=False)
    assert mine.returncode == 0, mine.stderr
    other = cp.kubectl(*base, "node-b-scope-test", kubeconfig=kc, check=False)
    assert other.returncode != 0 and "is node node-b's" in other.stderr, other.stderr
