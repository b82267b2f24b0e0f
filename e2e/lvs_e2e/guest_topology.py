"""Runs in the lab VM: builds one topology (namespaces `<kind>-<host>`), marks it
ready, holds it until SIGTERM, then tears it down.

``ha``: three directors, a client, two DR real servers and a router on one
L2 segment (HA_HOSTS); the real servers hold both VIPs on ``lo`` (prepared
by hand: the tests are about the directors), the directors only their own
address and a default route through the client's. HA_VIP is the failover
tests' (active-standby); BGP_VIP is announced by the directors over BGP to
the router (active-active), which the client reaches it through.

The real servers are not started here: the end-to-end tests run each one as its
own process so they can stop and restart it. The VIP is *not* put on the
director and the TUN backends are *not* prepared by hand: the agents do that.
"""
import signal
import sys
from pathlib import Path

from lvs_lab.topology import Lab, dr_backend_prepare, seed_nat, tun_one_subnet

HA_VIP, BGP_VIP = "192.168.30.100", "192.168.30.200"
HA_HOSTS = {"client": "192.168.30.1", "d1": "192.168.30.2", "d2": "192.168.30.3", "d3": "192.168.30.4",
            "rs1": "192.168.30.10", "rs2": "192.168.30.11", "router": "192.168.30.254"}


def ha_lan(lab: Lab) -> None:
    for host, addr in HA_HOSTS.items():
        lab.host(host)
        lab.connect(host, "lan", "eth0", [f"{addr}/24"])
    for d in ("d1", "d2", "d3"):
        lab.ip(d, f"route add default via {HA_HOSTS['client']}")
    for r in ("rs1", "rs2"):
        dr_backend_prepare(lab, r, HA_VIP)
        lab.ip(r, f"addr add {BGP_VIP}/32 dev lo")
    # The router forwards to the directors its BGP routes name, hashing each
    # flow's ports too (the default hashes addresses only: one client, one director).
    lab.sysctl("router", {"net.ipv4.ip_forward": 1, "net.ipv4.fib_multipath_hash_policy": 1})
    lab.ip("client", f"route add {BGP_VIP}/32 via {HA_HOSTS['router']}")
    lab.apply()


def main() -> None:
    kind, ready = sys.argv[1], sys.argv[2]
    lab = Lab(prefix=f"{kind}-")
    if kind == "nat":
        seed_nat(lab=lab)
    elif kind == "tun":
        tun_one_subnet(lab=lab, backend_prepare=False, vip_on_director=False)
    elif kind == "ha":
        ha_lan(lab)
    else:
        raise SystemExit(f"unknown topology {kind}")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    Path(ready).write_text("ready\n")
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    lab.close()


if __name__ == "__main__":
    main()
