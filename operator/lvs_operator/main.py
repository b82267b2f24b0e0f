"""`lvs-operator`: the kube-lvs operator (kopf underneath).

    lvs-operator [--namespace kube-lvs-system] [--liveness http://0.0.0.0:8080/healthz]

Credentials: in a pod its ServiceAccount; elsewhere $KUBECONFIG (or
~/.kube/config). Watches VirtualServices, RealServers, VIPPools, Nodes,
Namespaces and its own NodeStates cluster-wide; only the holder of the Lease
``<namespace>/kube-lvs-operator`` writes (see leader.py).
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from lvs_model import channel as C

from .leader import LEASE_DURATION, LEASE_RENEW
from .reconciler import DEBOUNCE, RESYNC
from .scope import RESYNC_SLICES


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lvs-operator", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE") or C.DEFAULT_NAMESPACE,
                    help="where NodeStates and the leader Lease live ($POD_NAMESPACE)")
    ap.add_argument("--liveness", default=os.environ.get("LVS_OPERATOR_LIVENESS", "http://0.0.0.0:8080/healthz"),
                    help="liveness endpoint URL ('' to disable)")
    ap.add_argument("--identity", default=os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
                    help="this replica's name in the Lease ($POD_NAME)")
    ap.add_argument("--lease-name", default="kube-lvs-operator")
    ap.add_argument("--lease-duration", type=float, default=LEASE_DURATION,
                    help="seconds a Lease holds without renewal (a dead leader is replaced within it)")
    ap.add_argument("--lease-renew", type=float, default=LEASE_RENEW, help="seconds between renewals")
    ap.add_argument("--no-leader-election", action="store_true",
                    help="write without holding the Lease (a single replica only)")
    ap.add_argument("--debounce", type=float, default=DEBOUNCE,
                    help="at most this many seconds between passes while changes keep coming (a burst is "
                         "compiled together; a change after a quiet spell is compiled at once)")
    ap.add_argument("--resync", type=float, default=RESYNC,
                    help=f"seconds in which every VirtualService is recompiled (in {RESYNC_SLICES} slices)")
    ap.add_argument("--default-loadbalancer", action="store_true",
                    default=os.environ.get("LVS_OPERATOR_DEFAULT_LOADBALANCER", "") == "true",
                    help="also serve LoadBalancer Services that name no loadBalancerClass (kube-lvs as the "
                         "cluster's default load balancer; leave off where another one, e.g. a cloud's, serves them)")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--debug", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import kopf  # after --help

    from . import handlers

    handlers.CONFIG.update(
        namespace=args.namespace, identity=args.identity, lease_name=args.lease_name,
        lease_duration=args.lease_duration, lease_renew=args.lease_renew,
        leader_election=not args.no_leader_election, debounce=args.debounce, resync=args.resync,
        default_loadbalancer=args.default_loadbalancer)
    kopf.configure(verbose=args.verbose, debug=args.debug)
    for name in ("lvs_operator", "lvs_model"):  # lvs_model: the status writer's backlog line
        logging.getLogger(name).setLevel(logging.DEBUG if args.debug else logging.INFO)
    kopf.run(clusterwide=True, standalone=True, liveness_endpoint=args.liveness or None,
             identity=args.identity)
    return 0


if __name__ == "__main__":
    sys.exit(main())
