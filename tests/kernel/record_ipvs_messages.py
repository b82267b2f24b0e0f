"""Record real IPVS generic-netlink messages for tests/unit/test_ipvs_codec.py.

Run inside the lab VM (it needs a kernel with IPVS and root)::

    flock /tmp/lab-vm.lock .venv/bin/python -m lvs_lab run --timeout 900 -- \
        .venv/bin/python tests/kernel/record_ipvs_messages.py

In a network namespace of its own it programs each case's service and dests
through netlink_batch (every op must be acked without error), records the
request bytes of each op, dumps the table raw (the kernel's own service and
dest messages, byte for byte), then changes a dest, deletes one and deletes
the service, recording those requests too. Everything goes to
tests/unit/data/ipvs_messages.json: the unit tier decodes the replies and
re-encodes the ops without a kernel.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from lvs_agent import ops as O
from lvs_agent.genl import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
from lvs_agent.ipvs_codec import CMD_GET_DEST, CMD_GET_SERVICE, service_key_nest
from lvs_agent.netlink_batch import IPVSConnection
from lvs_model.nodespec import Dest, Service

OUT = Path(__file__).resolve().parents[1] / "unit" / "data" / "ipvs_messages.json"
NETNS = "kl-ipvs-rec"
SEQ0 = 1000  # the sequence numbers the recorded requests carry: fixed, so the test can rebuild them

# (name, service, dests): every protocol, both families, fwmark, each forwarding
# method and tunnel type/checksum, schedulers with flags, persistence with a
# netmask, one-packet scheduling, weights and thresholds.
CASES: list[tuple[str, Service, tuple[Dest, ...]]] = [
    ("tcp4-wlc-nat", Service("ipv4", "tcp", "10.0.0.1", 80, scheduler="wlc"),
     (Dest("192.168.1.10", 8080, weight=1, method="nat"),
      Dest("192.168.1.11", 8080, weight=5, method="nat", upper_threshold=100, lower_threshold=10))),
    ("udp4-rr-ops-dr", Service("ipv4", "udp", "10.0.0.2", 53, scheduler="rr", one_packet=True),
     (Dest("192.168.1.20", 53, weight=0, method="dr"),
      Dest("192.168.1.21", 53, weight=65535, method="dr"))),
    ("sctp4-sh-flags-tun", Service("ipv4", "sctp", "10.0.0.3", 3868, scheduler="sh",
                                   scheduler_flags=("sh-fallback", "sh-port")),
     (Dest("192.168.1.30", 3868, method="tun", tunnel_type="ipip"),
      Dest("192.168.1.31", 3868, method="tun", tunnel_type="gue", tunnel_port=6080, tunnel_csum="csum"),
      Dest("192.168.1.32", 3868, method="tun", tunnel_type="gue", tunnel_port=5555, tunnel_csum="remcsum"),
      Dest("192.168.1.33", 3868, method="tun", tunnel_type="gre", tunnel_csum="csum"))),
    ("tcp4-persistent-netmask", Service("ipv4", "tcp", "10.0.0.4", 443, scheduler="lc",
                                        persistence_timeout=600, persistence_netmask="255.255.255.0"),
     (Dest("192.168.1.40", 443, weight=3),)),
    ("fwmark4-mh-port", Service("ipv4", "", "", 0, fwmark=42, scheduler="mh", scheduler_flags=("mh-port",)),
     (Dest("192.168.1.50", 0, method="dr"), Dest("192.168.1.51", 0, method="dr", weight=2))),
    ("tcp6-wrr-nat", Service("ipv6", "tcp", "fd00::1", 80, scheduler="wrr"),
     (Dest("fd00:1::10", 8080, weight=7), Dest("fd00:1::11", 8080, upper_threshold=5))),
    ("udp6-persistent-plen-tun", Service("ipv6", "udp", "fd00::2", 4500, scheduler="sed",
                                         persistence_timeout=300, persistence_netmask="64"),
     (Dest("fd00:1::20", 4500, method="tun", tunnel_type="ipip"),
      Dest("fd00:1::21", 4500, method="tun", tunnel_type="gue", tunnel_port=6081))),
    ("sctp6-nq-dr", Service("ipv6", "sctp", "fd00::3", 9899, scheduler="nq"),
     (Dest("fd00:1::30", 9899, method="dr"),)),
    ("fwmark6-sh", Service("ipv6", "", "", 0, fwmark=7, scheduler="sh", scheduler_flags=("sh-port",)),
     (Dest("fd00:1::40", 0, method="dr"),)),
]


def fields(obj) -> dict:
    """The IPVS fields of a Service or Dest, as JSON (no dests, no agent-only fields)."""
    if isinstance(obj, Dest):
        return dataclasses.asdict(obj)
    keep = ("family", "protocol", "address", "port", "fwmark", "scheduler", "scheduler_flags",
            "persistence_timeout", "persistence_netmask", "one_packet")
    return {k: (list(v) if isinstance(v, tuple) else v) for k in keep for v in [getattr(obj, k)]}


def op_record(op: O.Op) -> dict:
    rec: dict = {"op": type(op).__name__}
    if isinstance(op, (O.AddDest, O.SetDest)):
        rec["dest"] = fields(op.dest)
    elif isinstance(op, O.DelDest):
        rec["dest"] = {"address": op.dest.address, "port": op.dest.port}
    return rec


def raw_dump(conn: IPVSConnection, cmd: int, body: bytes) -> list[bytes]:
    """Every answer of one dump, whole (nlmsghdr included), as the kernel sent it."""
    seq = conn._request(cmd, body, NLM_F_REQUEST | NLM_F_DUMP)
    out: list[bytes] = []
    while True:
        for typ, _, rseq, s, e, buf in conn._recv():
            if rseq != seq:
                continue
            if typ == NLMSG_DONE:
                return out
            if typ == NLMSG_ERROR:
                raise OSError(-int.from_bytes(buf[s:s + 4], sys.byteorder, signed=True), "dump failed")
            out.append(bytes(buf[s - 16:e]))


def run(conn: IPVSConnection, ops: list[O.Op], seq: int) -> tuple[list[dict], int]:
    """Send each op (with a fixed sequence number), require a clean ack, record its bytes."""
    recs = []
    for op in ops:
        msg = conn.message(op, seq)
        rec = op_record(op)
        rec.update(seq=seq, hex=msg.hex())
        recs.append(rec)
        seq += 1
    errs = conn.execute(ops)
    bad = [(O.describe(op), e) for op, e in zip(ops, errs) if e]
    if bad:
        raise SystemExit(f"the kernel refused: {bad}")
    return recs, seq


def main() -> int:
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    # With no address at all the namespace has no local routing table, and the
    # kernel refuses an IPv4 dest whose address type it cannot tell (EINVAL).
    subprocess.run(["ip", "-n", NETNS, "link", "set", "lo", "up"], check=True)
    try:
        with IPVSConnection(NETNS) as conn:
            seq = SEQ0
            cases = []
            for name, svc, dests in CASES:
                full = dataclasses.replace(svc, dests=dests)
                requests, seq = run(conn, [O.AddService(full), *(O.AddDest(full, d) for d in dests)], seq)
                svc_msgs = raw_dump(conn, CMD_GET_SERVICE, b"")  # each case's service is alone
                if len(svc_msgs) != 1:
                    raise SystemExit(f"{name}: {len(svc_msgs)} service messages in the dump")
                dest_msgs = raw_dump(conn, CMD_GET_DEST, service_key_nest(svc.key))
                changed = dataclasses.replace(dests[0], weight=dests[0].weight + 1,
                                              upper_threshold=dests[0].upper_threshold + 2)
                tail, seq = run(conn, [O.SetService(full),
                                       O.SetDest(full, changed), O.DelDest(svc.key, dests[-1].key),
                                       O.DelService(svc.key)], seq)
                cases.append({"name": name, "service": fields(svc), "dests": [fields(d) for d in dests],
                              "requests": requests + tail,
                              "service_reply": svc_msgs[0].hex(),
                              "dest_replies": [m.hex() for m in dest_msgs]})
            doc = {"kernel": os.uname().release, "family": conn.family, "cases": cases}
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{len(cases)} cases from kernel {doc['kernel']} -> {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
