"""The test control plane enforces what kube-lvs relies on.

Driven by the kubectl that cluster/build.sh built, against a real etcd +
kube-apiserver + kube-controller-manager: CRDs become Established, watches
deliver events, the status subresource splits spec from status, CEL rules
reject with their message, RBAC denies and allows per verb for a
ServiceAccount's token, owner references are garbage-collected and namespaces
delete.
"""

from __future__ import annotations

import ipaddress
import json
import queue
import socket
import ssl
import subprocess
import threading
import time
import uuid

import pytest
import yaml
from cryptography import x509

from lvs_cluster import ControlPlane, KubectlError, pinned_versions

GROUP = "test.kube-lvs.io"
CRD_NAME = f"widgets.{GROUP}"
WIDGETS = CRD_NAME  # fully qualified resource name for kubectl

WIDGET_CRD = f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {CRD_NAME}
spec:
  group: {GROUP}
  scope: Namespaced
  names:
    kind: Widget
    listKind: WidgetList
    plural: widgets
    singular: widget
    categories: [kube-lvs-test]
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources:
      status: {{}}
    additionalPrinterColumns:
    - name: Phase
      type: string
      jsonPath: .status.phase
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [vip, port]
            properties:
              vip:
                type: string
                maxLength: 45
              port:
                type: integer
                minimum: 1
                maximum: 65535
              minWeight:
                type: integer
                default: 0
              maxWeight:
                type: integer
                default: 100
            x-kubernetes-validations:
            - rule: "self.minWeight <= self.maxWeight"
              message: "minWeight must not exceed maxWeight"
            - rule: "self.vip == oldSelf.vip"
              message: "vip is immutable"
          status:
            type: object
            properties:
              phase:
                type: string
              observedGeneration:
                type: integer
"""


def widget(name: str, namespace: str, vip: str = "192.0.2.10", port: int = 80, **spec) -> str:
    return yaml.safe_dump({
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "Widget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"vip": vip, "port": port, **spec},
    })


def eventually(check, timeout: float = 60.0, interval: float = 0.5, what: str = "condition"):
    """Poll ``check`` until it returns a truthy value; fail with the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def exists(cp: ControlPlane, *args: str) -> bool:
    r = cp.kubectl("get", *args, "-o", "name", check=False)
    if r.returncode != 0 and "NotFound" not in r.stderr:
        raise AssertionError(f"kubectl get {' '.join(args)} failed: {r.stderr}")
    return r.returncode == 0


class KubectlWatch:
    """``kubectl get --watch --output-watch-events -o json`` as a stream of events."""

    def __init__(self, cp: ControlPlane, *args: str, kubeconfig=None) -> None:
        cmd = [str(cp.kubectl_path), f"--kubeconfig={kubeconfig or cp.kubeconfig}",
               "get", *args, "--watch", "--output-watch-events", "-o", "json"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.events: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        decoder = json.JSONDecoder()
        buf = ""
        for line in self.proc.stdout:
            buf += line
            while buf.strip():
                try:
                    obj, end = decoder.raw_decode(buf.lstrip())
                except json.JSONDecodeError:
                    break  # incomplete object: read more
                self.events.put(obj)
                buf = buf.lstrip()[end:]

    def wait_for(self, predicate, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                err = self.proc.stderr.read() if self.proc.poll() is not None else ""
                pytest.fail(f"no matching watch event in {timeout}s; saw "
                            f"{[(e['type'], e['object'].get('status')) for e in self.seen]} {err}")
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(event)
            if predicate(event):
                return event

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def widget_crd(control_plane: ControlPlane) -> str:
    control_plane.apply(WIDGET_CRD)
    control_plane.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}",
                          "--timeout=60s")
    # Discovery must serve the new kind before kubectl can use it by name.
    eventually(lambda: control_plane.kubectl("get", WIDGETS, "-A", check=False).returncode == 0,
               timeout=30, what="widgets in discovery")
    return CRD_NAME


# ---------------------------------------------------------------- the control plane


def test_versions_match_the_pinned_build(control_plane):
    k8s, _ = pinned_versions()
    v = control_plane.kubectl_json("version")
    assert v["clientVersion"]["gitVersion"] == k8s
    assert v["serverVersion"]["gitVersion"] == k8s


def test_serving_certificate_is_valid_for_loopback_and_the_vm_address(control_plane):
    ctx = ssl.create_default_context(cafile=str(control_plane.ca_file))
    for name in ("127.0.0.1", "localhost", "10.0.2.100"):
        # Connect to loopback but verify the certificate against each name a
        # client may use (the lab VM reaches the API server as 10.0.2.100).
        with socket.create_connection(("127.0.0.1", control_plane.port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                der = tls.getpeercert(binary_form=True)
    sans = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    ips = sans.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("10.0.2.100") in ips
    assert ipaddress.ip_address("127.0.0.1") in ips
    assert "localhost" in sans.get_values_for_type(x509.DNSName)


def _listening(port: int) -> set[str]:
    addrs = set()
    for table, family in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            host, p = local.split(":")
            if state != "0A" or int(p, 16) != port:  # 0A = LISTEN
                continue
            raw = bytes.fromhex(host)
            if family == 4:
                addrs.add(str(ipaddress.IPv4Address(raw[::-1])))
            else:
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                addrs.add(str(ipaddress.IPv6Address(words)))
    return addrs


def test_every_component_listens_on_loopback_only(control_plane):
    ports = {"kube-apiserver": control_plane.port, "etcd": control_plane.etcd_port,
             "etcd-peer": control_plane.etcd_peer_port,
             "kube-controller-manager": control_plane.kcm_port}
    for name, port in ports.items():
        addrs = _listening(port)
        assert addrs == {"127.0.0.1"}, f"{name} (port {port}) listens on {addrs}"


def test_refuses_to_listen_on_all_interfaces():
    for address in ("0.0.0.0", "::"):
        with pytest.raises(ValueError, match="loopback"):
            ControlPlane(bind_address=address)


def test_controllers_publish_the_root_ca(control_plane, kube_namespace):
    # root-ca-cert-publisher + serviceaccount controllers run as kube-controller-manager.
    def published():
        r = control_plane.kubectl("get", "configmap", "kube-root-ca.crt", "-n", kube_namespace,
                                  "-o", "jsonpath={.data.ca\\.crt}", check=False)
        return r.stdout if r.returncode == 0 else None

    ca = eventually(published, timeout=60, what="kube-root-ca.crt")
    assert ca.strip() == control_plane.ca_file.read_text().strip()
    assert exists(control_plane, "serviceaccount", "default", "-n", kube_namespace)


# ---------------------------------------------------------------- CRDs


def test_crd_is_established_and_served(control_plane, widget_crd, kube_namespace):
    crd = control_plane.kubectl_json("get", "crd", widget_crd)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions.get("Established") == "True"
    assert conditions.get("NamesAccepted") == "True"
    control_plane.kubectl("apply", "-f", "-", input=widget("w1", kube_namespace))
    # Listed through the category, with the printer column and defaults applied.
    out = control_plane.kubectl("get", "kube-lvs-test", "-n", kube_namespace).stdout
    assert "w1" in out and "PHASE" in out
    spec = control_plane.kubectl_json("get", WIDGETS, "w1", "-n", kube_namespace)["spec"]
    assert spec == {"vip": "192.0.2.10", "port": 80, "minWeight": 0, "maxWeight": 100}


def test_openapi_schema_rejects_a_bad_field(control_plane, widget_crd, kube_namespace):
    r = control_plane.kubectl("apply", "-f", "-", check=False,
                              input=widget("badport", kube_namespace, port=70000))
    assert r.returncode != 0
    assert "spec.port" in r.stderr and "65535" in r.stderr
    assert not exists(control_plane, WIDGETS, "badport", "-n", kube_namespace)


def test_cel_rule_rejects_with_its_message(control_plane, widget_crd, kube_namespace):
    bad = widget("bad", kube_namespace, minWeight=10, maxWeight=5)
    r = control_plane.kubectl("apply", "-f", "-", input=bad, check=False)
    assert r.returncode != 0
    assert "minWeight must not exceed maxWeight" in r.stderr
    assert not exists(control_plane, WIDGETS, "bad", "-n", kube_namespace)

    # The same rule lets a valid object through ...
    control_plane.kubectl("apply", "-f", "-",
                          input=widget("good", kube_namespace, minWeight=5, maxWeight=10))
    # ... and a transition rule (oldSelf) guards updates.
    r = control_plane.kubectl("apply", "-f", "-", check=False,
                              input=widget("good", kube_namespace, vip="192.0.2.99",
                                           minWeight=5, maxWeight=10))
    assert r.returncode != 0
    assert "vip is immutable" in r.stderr
    spec = control_plane.kubectl_json("get", WIDGETS, "good", "-n", kube_namespace)["spec"]
    assert spec["vip"] == "192.0.2.10"


def test_watch_and_status_subresource(control_plane, widget_crd, kube_namespace):
    cp, ns = control_plane, kube_namespace
    cp.kubectl("apply", "-f", "-", input=widget("w", ns))
    watch = KubectlWatch(cp, WIDGETS, "w", "-n", ns)
    try:
        added = watch.wait_for(lambda e: e["type"] == "ADDED")
        assert added["object"]["spec"]["port"] == 80
        assert added["object"]["metadata"]["generation"] == 1

        # Through the status subresource: status changes, the spec part is ignored.
        cp.kubectl("patch", WIDGETS, "w", "-n", ns, "--subresource=status", "--type=merge",
                   "-p", json.dumps({"status": {"phase": "Ready", "observedGeneration": 1},
                                     "spec": {"port": 81}}))
        event = watch.wait_for(lambda e: e["type"] == "MODIFIED"
                               and e["object"].get("status", {}).get("phase") == "Ready")
        obj = event["object"]
        assert obj["spec"]["port"] == 80, "a spec change through /status must be ignored"
        assert obj["metadata"]["generation"] == 1, "a status write must not bump generation"

        # Through the main resource: spec changes (generation bumps), status is ignored.
        cp.kubectl("patch", WIDGETS, "w", "-n", ns, "--type=merge",
                   "-p", json.dumps({"spec": {"port": 82}, "status": {"phase": "Hacked"}}))
        event = watch.wait_for(lambda e: e["type"] == "MODIFIED"
                               and e["object"]["spec"]["port"] == 82)
        assert event["object"]["status"]["phase"] == "Ready"
        assert event["object"]["metadata"]["generation"] == 2

        cp.kubectl("delete", WIDGETS, "w", "-n", ns)
        watch.wait_for(lambda e: e["type"] == "DELETED")
    finally:
        watch.close()


# ---------------------------------------------------------------- RBAC


AGENT_ROLE = """
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: widget-agent, namespace: {ns}}}
rules:
- apiGroups: ["{group}"]
  resources: ["widgets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["{group}"]
  resources: ["widgets/status"]
  # `kubectl patch --subresource=status` GETs widgets/status before patching.
  verbs: ["get", "patch", "update"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: widget-agent, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: widget-agent}}
subjects:
- {{kind: ServiceAccount, name: agent, namespace: {ns}}}
"""


def test_serviceaccount_is_denied_what_its_role_lacks(control_plane, widget_crd, kube_namespace):
    cp, ns = control_plane, kube_namespace
    user = f"system:serviceaccount:{ns}:agent"
    cp.kubectl("create", "serviceaccount", "agent", "-n", ns)
    cp.apply(AGENT_ROLE.format(ns=ns, group=GROUP))
    cp.kubectl("apply", "-f", "-", input=widget("w", ns))
    kubeconfig = cp.kubeconfig_for_serviceaccount(ns, "agent")

    def can_i(*args: str) -> str:
        r = cp.kubectl("auth", "can-i", *args, "-n", ns, f"--as={user}", check=False)
        return r.stdout.strip()

    assert can_i("list", WIDGETS) == "yes"
    assert can_i("patch", WIDGETS, "--subresource=status") == "yes"
    assert can_i("delete", WIDGETS) == "no"
    assert can_i("patch", WIDGETS) == "no"
    assert can_i("get", "secrets") == "no"

    # The minted kubeconfig really is that ServiceAccount (TokenRequest token).
    who = cp.kubectl_json("auth", "whoami", kubeconfig=kubeconfig)
    assert who["status"]["userInfo"]["username"] == user

    # Allowed: read and write status.
    listed = cp.kubectl("get", WIDGETS, "-n", ns, "-o", "name", kubeconfig=kubeconfig).stdout
    assert f"widget.{GROUP}/w" in listed
    cp.kubectl("patch", WIDGETS, "w", "-n", ns, "--subresource=status", "--type=merge",
               "-p", '{"status": {"phase": "Programmed"}}', kubeconfig=kubeconfig)
    assert cp.kubectl_json("get", WIDGETS, "w", "-n", ns)["status"]["phase"] == "Programmed"

    # Denied: everything else, reported as Forbidden for that user.
    for args in (("delete", WIDGETS, "w", "-n", ns),
                 ("patch", WIDGETS, "w", "-n", ns, "--type=merge", "-p", '{"spec":{"port":1}}'),
                 ("get", "secrets", "-n", ns),
                 ("get", WIDGETS, "-n", "default")):
        with pytest.raises(KubectlError) as e:
            cp.kubectl(*args, kubeconfig=kubeconfig)
        assert "forbidden" in e.value.stderr.lower() and user in e.value.stderr, e.value.stderr
    assert exists(cp, WIDGETS, "w", "-n", ns)
    assert cp.kubectl_json("get", WIDGETS, "w", "-n", ns)["spec"]["port"] == 80


def test_serviceaccount_kubeconfig_works_with_the_python_client(control_plane, kube_namespace):
    from kubernetes import client

    cp, ns = control_plane, kube_namespace
    cp.kubectl("create", "configmap", "visible", "-n", ns)
    kubeconfig = cp.kubeconfig_for_serviceaccount(ns, "reader", create=True)
    api = client.CoreV1Api(cp.api_client(kubeconfig))
    with pytest.raises(client.ApiException) as e:
        api.list_namespaced_config_map(ns)
    assert e.value.status == 403

    cp.kubectl("create", "role", "cm-reader", "-n", ns, "--verb=list", "--resource=configmaps")
    cp.kubectl("create", "rolebinding", "cm-reader", "-n", ns, "--role=cm-reader",
               f"--serviceaccount={ns}:reader")
    names = eventually(lambda: _list_names(api, ns), timeout=30, what="RBAC to allow list")
    assert "visible" in names


def _list_names(api, ns):
    from kubernetes import client

    try:
        return [c.metadata.name for c in api.list_namespaced_config_map(ns).items]
    except client.ApiException as e:
        if e.status != 403:
            raise
        return None


# ---------------------------------------------------------------- controllers


def _uid(cp: ControlPlane, *args: str) -> str:
    return cp.kubectl("get", *args, "-o", "jsonpath={.metadata.uid}").stdout


@pytest.mark.parametrize("owner_kind", ["ConfigMap", "Widget"])
def test_child_is_garbage_collected_with_its_owner(control_plane, widget_crd, kube_namespace,
                                                   owner_kind):
    cp, ns = control_plane, kube_namespace
    if owner_kind == "ConfigMap":
        cp.kubectl("create", "configmap", "owner", "-n", ns)
        owner_api, owner_res = "v1", "configmap"
    else:
        cp.kubectl("apply", "-f", "-", input=widget("owner", ns))
        owner_api, owner_res = f"{GROUP}/v1alpha1", WIDGETS
    uid = _uid(cp, owner_res, "owner", "-n", ns)
    cp.apply([
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "child", "namespace": ns, "ownerReferences": [
             {"apiVersion": owner_api, "kind": owner_kind, "name": "owner", "uid": uid}]}},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "bystander", "namespace": ns}},
    ])
    assert exists(cp, "configmap", "child", "-n", ns)
    cp.kubectl("delete", owner_res, "owner", "-n", ns)
    eventually(lambda: not exists(cp, "configmap", "child", "-n", ns), timeout=120,
               what=f"the garbage collector to delete the {owner_kind}'s child")
    assert exists(cp, "configmap", "bystander", "-n", ns)


def test_namespace_deletes_with_its_contents(control_plane, widget_crd):
    cp = control_plane
    ns = f"doomed-{uuid.uuid4().hex[:6]}"
    cp.kubectl("create", "namespace", ns)
    cp.kubectl("create", "configmap", "c", "-n", ns)
    cp.kubectl("apply", "-f", "-", input=widget("w", ns))
    assert exists(cp, WIDGETS, "w", "-n", ns)
    cp.kubectl("delete", "namespace", ns, "--timeout=120s")
    r = cp.kubectl("get", "namespace", ns, check=False)
    assert r.returncode != 0 and "NotFound" in r.stderr, (r.stdout, r.stderr)
    # Its custom resources went with it (the namespace controller had to delete them).
    assert not exists(cp, WIDGETS, "w", "-n", ns)
