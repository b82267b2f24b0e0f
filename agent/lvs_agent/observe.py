"""Read the kernel into the model: the IPVS table, links and addresses, policy
rules and routes, nftables, sysctls -- each through its own module, put
together here into the ``Observed`` the planner compares with the spec.

Everything takes ``netns`` (netns.py says how it is entered). IPVS is read
only through the batched generic-netlink connection (netlink_batch, decoding
in ipvs_codec): one way in, so a socket that cannot open is an error the pass
reports, not a switch to another implementation. Links, addresses, rules and
routes: rtnl.RtnlReader.
"""
from __future__ import annotations

from typing import Callable, Iterable

from lvs_model.nodespec import Service, ServiceKey

from .fou import read_ports
from .gre_csum import read_csum
from .ipvs_codec import IPVSTable
from .ipvs_timeouts import KEY_PREFIX as TIMEOUT_KEY_PREFIX
from .netlink_batch import IPVSConnection
from .nft import read_nft_table
from .rtnl import RtnlReader
from .state import LinkState, Observed
from .sysctl import read_sysctls


def read_ipvs(netns: str | None = None, *, with_stats: bool = False,
              conn=None, runtime: bool = True,
              pause: Callable[[], object] | None = None) -> IPVSTable:
    """The IPVS table: through ``conn`` (an IPVSConnection), else a
    connection of its own. ``pause``: see IPVSConnection.dump_dests."""
    if conn is not None:
        return conn.dump(with_stats=with_stats, runtime=runtime, pause=pause)
    with IPVSConnection(netns) as own:
        return own.dump(with_stats=with_stats, runtime=runtime, pause=pause)


def read_ipvs_services(netns: str | None, keys: Iterable[ServiceKey], *, conn=None) -> dict[ServiceKey, Service]:
    """Only the services ``keys`` (those present), with their dests: one get
    and one dest dump each, through ``conn`` (an IPVSConnection), else a
    connection of its own."""
    if conn is not None:
        return conn.read_services(keys)
    with IPVSConnection(netns) as own:
        return own.read_services(keys)


def observe(netns: str | None = None, sysctls: Iterable[str] = (), *,
            with_stats: bool = False, need_net: bool = True,
            conn=None, runtime: bool = True, need_routing: tuple[int, int] | None = None,
            nft_tables: Iterable[tuple[str, str]] = (), ipvs_table: bool = True) -> tuple[Observed, IPVSTable]:
    """The kernel as it is now: (Observed for the planner, the full IPVS table).

    ``need_net=False`` skips links and addresses (the planner only looks at
    them when the spec or the ownership record names some). ``need_routing``
    (lo, hi): also read policy rules and the default routes of tables lo..hi-1;
    ``nft_tables``: the (family, name) nftables tables to read.
    ``ipvs_table=False``: everything but IPVS (the caller reads the services it needs)."""
    table = (read_ipvs(netns, with_stats=with_stats, conn=conn, runtime=runtime)
             if ipvs_table else IPVSTable())
    links: dict[str, LinkState] = {}
    addrs: set[tuple[str, str]] = set()
    if need_net:
        with RtnlReader(netns) as r:
            links, addrs, _ = r.read()
        links.update(read_ports(netns))  # FOU/GUE receive ports, keyed beside the links (fou.py)
        links.update(read_csum(links, netns))  # GRE devices that expect checksums (gre_csum.py)
    names = set(sysctls)
    timeouts = {n for n in names if n.startswith(TIMEOUT_KEY_PREFIX)}
    obs = Observed(services=dict(table.services), addresses=addrs, links=links,
                   sysctls=read_sysctls(sorted(names - timeouts), netns))
    if timeouts:
        obs.sysctls.update(read_timeout_keys(timeouts, netns, conn))
    if need_routing is not None:
        with RtnlReader(netns) as r:
            obs.rules = r.rules()
            obs.routes = r.table_default_routes(*need_routing)
    for fam, name in nft_tables:
        t = read_nft_table(fam, name, netns)
        if t is not None:
            obs.nft_tables[(fam, name)] = t
    return obs, table


def read_timeout_keys(keys: Iterable[str], netns: str | None = None, conn=None) -> dict[str, str | None]:
    """The IPVS timeouts ``keys`` name (Observed.sysctls carries them:
    ipvs_timeouts.py says why), as text like a sysctl's; None each when
    IPVS cannot be read (no ip_vs in this kernel, no permission)."""
    from .ipvs_config import get_timeouts, with_connection
    try:
        got = with_connection(netns, conn, get_timeouts)
    except OSError:
        got = {}
    return {k: (str(got[k[len(TIMEOUT_KEY_PREFIX):]]) if k[len(TIMEOUT_KEY_PREFIX):] in got else None)
            for k in keys}
