"""deploy/base/agent-scope.yaml against the real API server: the agent's
ServiceAccount writes the status of its own node's NodeStates only, and its
own node's director Lease only (director failover).

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


# -- director Leases (kube-lvs-agent-own-lease) ------------------------------------

def lease(name: str, holder: str) -> dict:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": DEFAULT_NAMESPACE},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}}


def node_bound_leases(cp, node: str, tmp_path: Path):
    """The agent's own Lease client (lvs_agent.ha_lease.DirectorLease's API)
    authenticated as the agent of ``node`` with a real Node-bound token."""
    import yaml
    from kubernetes import client

    cp.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
    token = cp.kubectl("create", "token", "kube-lvs-agent", "-n", DEFAULT_NAMESPACE,
                       "--bound-object-kind=Node", f"--bound-object-name={node}").stdout.strip()
    kc = yaml.safe_load(cp.kubeconfig_for_serviceaccount(DEFAULT_NAMESPACE, "kube-lvs-agent").read_text())
    kc["users"][0]["user"] = {"token": token}
    path = tmp_path / f"agent-{node}.kubeconfig"
    path.write_text(yaml.safe_dump(kc))
    return client.CustomObjectsApi(cp.api_client(path))


def wait_for_lease_policy(api) -> None:
    """The policy is loaded a moment after it is created: retry a write it must deny."""
    import time
    from kubernetes.client.exceptions import ApiException
    from lvs_agent.ha_lease import DirectorLease
    deadline = time.monotonic() + 60
    while True:
        try:
            DirectorLease(api, DEFAULT_NAMESPACE, "node-b").renew((), ())
        except ApiException as e:
            if e.status == 403:
                return
            raise
        DirectorLease(api, DEFAULT_NAMESPACE, "node-b").release()
        assert time.monotonic() < deadline, "the lease policy never started denying"
        time.sleep(1)


def test_an_agent_renews_its_own_director_lease_only(installed, tmp_path):
    """Attack: the agent of node-a renews node-b's Lease (keeping a dead
    director alive), deletes it (taking node-b's VIPs at once), or rewrites
    the operator's leader Lease. Each is denied; its own Lease works through
    the agent's own code. Before the RBAC rule the agent could not write a
    Lease at all; before the policy it could write all of them."""
    from kubernetes.client.exceptions import ApiException
    from lvs_agent.ha_lease import DirectorLease, lease_name

    cp = installed
    api = node_bound_leases(cp, "node-a", tmp_path)
    wait_for_lease_policy(api)
    cp.apply([lease(lease_name("node-b"), "node-b"), lease("kube-lvs-operator", "operator-0")])

    mine = DirectorLease(api, DEFAULT_NAMESPACE, "node-a")
    mine.renew({"192.0.2.10"}, ())
    mine.renew({"192.0.2.10"}, ())  # a replace of its own Lease
    assert {m.name: m.held for m in mine.members()}["node-a"] == frozenset({"192.0.2.10"})

    with pytest.raises(ApiException) as other:
        DirectorLease(api, DEFAULT_NAMESPACE, "node-b").renew({"192.0.2.10"}, ())
    assert other.value.status == 403
    assert "may write its own director Lease (lvs-director-node-a) only, not lvs-director-node-b" in other.value.body
    for name in (lease_name("node-b"), "kube-lvs-operator"):
        with pytest.raises(ApiException) as gone:
            api.delete_namespaced_custom_object("coordination.k8s.io", "v1", DEFAULT_NAMESPACE, "leases", name)
        assert gone.value.status == 403, name
    leader = api.get_namespaced_custom_object("coordination.k8s.io", "v1", DEFAULT_NAMESPACE, "leases",
                                              "kube-lvs-operator")
    leader["spec"]["holderIdentity"] = "node-a"
    with pytest.raises(ApiException) as stolen:
        api.replace_namespaced_custom_object("coordination.k8s.io", "v1", DEFAULT_NAMESPACE, "leases",
                                             "kube-lvs-operator", leader)
    assert stolen.value.status == 403 and "kube-lvs-agent-own-lease" in stolen.value.body
    assert cp.kubectl_json("get", "lease", lease_name("node-b"), "-n", DEFAULT_NAMESPACE)["spec"]["holderIdentity"] == "node-b"

    mine.release()
    assert "node-a" not in {m.name for m in mine.members()}


def test_an_agent_without_a_node_writes_no_lease(installed):
    import time
    deadline = time.monotonic() + 60
    while True:  # until the policy is loaded (a create it let through is undone)
        r = installed.kubectl("create", "-f", "-", f"--as={AGENT}", "--as-group=system:serviceaccounts",
                              input=json.dumps(lease("lvs-director-node-a", "node-a")), check=False)
        if r.returncode != 0 or time.monotonic() > deadline:
            break
        installed.kubectl("delete", "lease", "lvs-director-node-a", "-n", DEFAULT_NAMESPACE)
        time.sleep(1)
    assert r.returncode != 0 and "may write a Lease only with a pod-bound token" in r.stderr, r.stderr
