"""Runs in the lab VM: builds one topology (namespaces `<kind>-<host>`), marks it
ready, holds it until SIGTERM, then tears it down.

The real servers are not started here: the end-to-end tests run each one as its
own process so they can stop and restart it. The VIP is *not* put on the
director and the TUN backends are *not* prepared by hand: the agents do that.
"""
import signal
import sys
from pathlib import Path

from lvs_lab.topology import Lab, seed_nat, tun_one_subnet


def main() -> None:
    kind, ready = sys.argv[1], sys.argv[2]
    lab = Lab(prefix=f"{kind}-")
    if kind == "nat":
        seed_nat(lab=lab)
    elif kind == "tun":
        tun_one_subnet(lab=lab, backend_prepare=False, vip_on_director=False)
    else:
        raise SystemExit(f"unknown topology {kind}")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    Path(ready).write_text("ready\n")
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    lab.close()


if __name__ == "__main__":
    main()
