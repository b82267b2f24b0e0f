"""BIRD 2 configuration for a director's BGP speaker, and its status (pure).

The speaker announces exactly the prefixes it is given and nothing else:
they are the only routes of a ``protocol static`` (blackhole routes in
BIRD's own table: there is no ``protocol kernel``, so BIRD never reads or
writes the node's routing tables), and every session's export filter lists
them again, so a route that reached BIRD's table some other way is never
announced. Imports are refused: a director needs no route from its routers.

Graceful restart is off. With it a router keeps a restarting speaker's
routes for the restart time; a director whose agent restarts has no health
checks meanwhile, and a router should rather send its flows to the others
(``mh`` and sloppy TCP keep them on their real servers).

Passwords: the shell reads each peer's file from the mounted Secret and
passes the text in; the rendered file is written 0600 in the agent's state
directory. A password that cannot be written as a BIRD string leaves its
peer out, with a problem to report.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from lvs_model.bgp import BgpPeer, BgpSpec

STATIC_PROTOCOL = {"ipv4": "kube_lvs_vips4", "ipv6": "kube_lvs_vips6"}
BFD_PROTOCOL = "kube_lvs_bfd"
HEADER = "# Written by the kube-lvs agent from its NodeStates: changes made here are overwritten.\n"
_PRINTABLE = re.compile(r'^[\x20-\x7e]+$')


def protocol_name(peer: BgpPeer) -> str:
    """A BIRD symbol per peer, stable while the peer's address is (a
    reordered peer list must not restart sessions)."""
    return "peer_" + re.sub(r"[^0-9a-fA-F]", "_", peer.address)


def password_problem(secret: str) -> str:
    """Why ``secret`` cannot be a BIRD password string, or ""."""
    if not secret:
        return "is empty"
    if not _PRINTABLE.match(secret) or '"' in secret or "\\" in secret:
        return "holds a character a BIRD string cannot carry (a quote, a backslash or a control character)"
    return ""


@dataclass(frozen=True)
class Rendered:
    text: str
    problems: tuple[str, ...] = ()


def render(bgp: BgpSpec, prefixes: Iterable[str], passwords: Mapping[str, str] | None = None) -> Rendered:
    """bird.conf announcing ``prefixes`` (host routes) to ``bgp.peers``.

    ``passwords``: the Secret's file name -> its text, for the peers that
    name one; a peer whose password is missing or unusable is left out (a
    session without its password would be refused by the router anyway)."""
    passwords = passwords or {}
    by_family: dict[str, list[str]] = {"ipv4": [], "ipv6": []}
    for p in sorted(set(prefixes)):
        by_family["ipv6" if ":" in p else "ipv4"].append(p)
    problems: list[str] = []
    peers: list[tuple[BgpPeer, str]] = []
    for peer in bgp.peers:
        secret = ""
        if peer.password_file:
            secret = passwords.get(peer.password_file, "")
            why = "is missing" if peer.password_file not in passwords else password_problem(secret)
            if why:
                problems.append(f"peer {peer.address}: its password file {peer.password_file!r} {why}; "
                                "the peer is left out")
                continue
        peers.append((peer, secret))
    families = sorted({p.family for p, _ in peers})
    lines = [HEADER.rstrip("\n"),
             "log stderr { info, remote, warning, error, auth, fatal, bug };",
             "timeformat protocol iso long;"]
    if bgp.router_id:
        lines.append(f"router id {bgp.router_id};")
    # Interfaces only (BGP waits for a directly connected neighbour's interface).
    lines += ["", "protocol device {", "}"]
    for fam in families:
        lines += ["", f"protocol static {STATIC_PROTOCOL[fam]} {{", f"  {fam};"]
        lines += [f"  route {p} blackhole;" for p in by_family[fam]]
        lines.append("}")
    if any(p.bfd for p, _ in peers):
        lines += ["", f"protocol bfd {BFD_PROTOCOL} {{", "}"]
    for peer, secret in peers:
        lines += [""] + _peer_block(peer, secret, by_family[peer.family])
    return Rendered("\n".join(lines) + "\n", tuple(problems))


def _peer_block(peer: BgpPeer, secret: str, prefixes: list[str]) -> list[str]:
    out = [f"protocol bgp {protocol_name(peer)} {{",
           f"  local as {peer.local_asn};",
           f"  neighbor {peer.address} port {peer.port} as {peer.asn};",
           f"  hold time {peer.hold_time};"]
    if peer.keepalive_time:
        out.append(f"  keepalive time {peer.keepalive_time};")
    out += ["  graceful restart off;", "  long lived graceful restart off;"]
    if secret:
        out.append(f'  password "{secret}";')
    if peer.bfd:
        out.append("  bfd on;")
    export = f"where net ~ [ {', '.join(prefixes)} ]" if prefixes else "none"
    out += [f"  {peer.family} {{", "    import none;", f"    export {export};", "    next hop self;", "  };", "}"]
    return out


# --------------------------------------------------------------------------
# Status: `birdc show protocols`
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Session:
    """One BGP session as BIRD reports it: ``state`` is BIRD's protocol state
    (up, start, down, ...), ``info`` the BGP state (Established, Active,
    Connect, ...) with its last error, if any."""

    name: str
    state: str
    since: str
    info: str

    @property
    def established(self) -> bool:
        return self.state == "up" and self.info.startswith("Established")

    @property
    def bgp_state(self) -> str:
        return self.info.split()[0] if self.info else ""


_ROW = re.compile(r"^(?P<name>\S+)\s+(?P<proto>\S+)\s+(?P<table>\S+)\s+(?P<state>\S+)\s+"
                  r"(?P<since>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)\s*(?P<info>.*?)\s*$")


def parse_protocols(text: str) -> dict[str, Session]:
    """The BGP rows of ``birdc show protocols`` (with ``timeformat protocol
    iso long``), by protocol name."""
    out: dict[str, Session] = {}
    for line in text.splitlines():
        m = _ROW.match(line)
        if m and m["proto"] == "BGP":
            out[m["name"]] = Session(m["name"], m["state"], m["since"], m["info"])
    return out
