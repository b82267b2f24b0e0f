"""`make demo`: the whole system on one machine, for a newcomer.

Starts a real control plane and the operator on the host, boots the lab VM
(a real IPVS kernel), builds the seed's NAT network in namespaces, starts the
director's agent and two real servers, applies examples/seed-nat with kubectl,
and shows the result: `kubectl get virtualservices,realservers` and a run of
requests alternating between the real servers. Then it tears everything down,
or with --keep waits (Ctrl-C to stop) and prints how to poke at it.
"""
from __future__ import annotations

import argparse
import time
from collections import Counter

from .system import REPO, System, wait_until

NAT_VIP = "192.168.0.30"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    p.add_argument("--keep", action="store_true", help="leave it running until Ctrl-C")
    args = p.parse_args(argv)
    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(f"[demo {time.monotonic() - t0:6.1f}s] {msg}", flush=True)

    s = System(log=say)
    try:
        s.start_control_plane()
        s.start_operator()
        s.add_node("nat-director", director=True)
        s.boot()
        say("building the seed's NAT network: client 192.168.0.1, director 192.168.0.30/10.0.0.30, "
            "real servers 10.0.0.51 and 10.0.0.52")
        s.build_topology("nat")
        for rs in ("rs1", "rs2"):
            s.start_server("nat", rs)
        say("starting the director's agent (it imports kubernetes + pyroute2: slow under emulation)")
        s.start_agent("nat-director", "nat-director")
        say("kubectl apply -k examples/seed-nat")
        print(s.kubectl("apply", "-k", str(REPO / "examples" / "seed-nat")), flush=True)
        say("waiting for the director to program IPVS and the health checks to pass")
        wait_until("traffic through the VIP",
                   lambda: set(s.requests("nat", NAT_VIP, 4)) == {"rs1", "rs2"}, timeout=300, every=3)
        wait_until("real servers Healthy",
                   lambda: "Unknown" not in (out := s.kubectl("get", "realservers.lvs.kube-lvs.io", "-n", "web"))
                   and out.count("Healthy") == 2, timeout=180, every=3)
        say("kubectl get virtualservices,realservers -n web")
        print(s.kubectl("get", "virtualservices.lvs.kube-lvs.io,realservers.lvs.kube-lvs.io", "-n", "web"),
              flush=True)
        say("ipvsadm -Ln on the director (inside the VM)")
        print(s.ipvsadm("nat-director", "-Ln"), flush=True)
        names = s.requests("nat", NAT_VIP, 10)
        say(f"10 requests from the client to http://{NAT_VIP}/: {' '.join(names)}")
        say(f"distribution: {dict(Counter(names))}")
        if args.keep:
            say(f"left running. On the host: KUBECONFIG={s.cp.kubeconfig} {s.cp.kubectl_path} get kube-lvs -A")
            say("Ctrl-C to stop and tear down")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        say("tearing down")
        s.close()


if __name__ == "__main__":
    raise SystemExit(main())
