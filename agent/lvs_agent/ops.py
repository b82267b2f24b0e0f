"""The operations a plan is made of; the applier turns each into netlink/sysctl calls."""
from __future__ import annotations

from dataclasses import dataclass

from lvs_model.nodespec import Dest, DestKey, Service, ServiceKey

from .state import RouteKey, RuleKey


@dataclass(frozen=True)
class AddLink:
    name: str
    kind: str


@dataclass(frozen=True)
class SetLinkUp:
    name: str
    up: bool = True


@dataclass(frozen=True)
class DelLink:
    name: str


@dataclass(frozen=True)
class AddFouPort:
    """``ip fou add port PORT gue`` (family ipv4 or ipv6): see fou.py."""

    family: str
    port: int


@dataclass(frozen=True)
class DelFouPort:
    family: str
    port: int


@dataclass(frozen=True)
class AddGreCsum:
    """``ip tunnel change DEVICE icsum``: the GRE device expects checksums (gre_csum.py)."""

    device: str


@dataclass(frozen=True)
class DelGreCsum:
    device: str


@dataclass(frozen=True)
class SetSysctl:
    name: str
    value: str
    restore: bool = False  # putting back the value found before we changed it


@dataclass(frozen=True)
class SetIPVSTimeouts:
    """``ipvsadm --set``: the named IPVS connection timeouts ((name, seconds),
    names tcp, tcpfin, udp), one IPVS_CMD_SET_CONFIG; names not given keep
    the kernel's value. ``restore``: putting back the values found before."""

    timeouts: tuple[tuple[str, int], ...]
    restore: bool = False


@dataclass(frozen=True)
class AddAddress:
    device: str
    address: str
    prefixlen: int


@dataclass(frozen=True)
class DelAddress:
    device: str
    address: str
    prefixlen: int


@dataclass(frozen=True)
class AddService:
    service: Service

    @property
    def key(self) -> ServiceKey:
        return self.service.key


@dataclass(frozen=True)
class SetService:
    service: Service

    @property
    def key(self) -> ServiceKey:
        return self.service.key


@dataclass(frozen=True)
class DelService:
    key: ServiceKey


@dataclass(frozen=True)
class AddDest:
    service: Service
    dest: Dest

    @property
    def key(self) -> ServiceKey:
        return self.service.key


@dataclass(frozen=True)
class SetDest:
    service: Service
    dest: Dest

    @property
    def key(self) -> ServiceKey:
        return self.service.key


@dataclass(frozen=True)
class DelDest:
    key: ServiceKey
    dest: DestKey


@dataclass(frozen=True)
class AddRule:
    rule: RuleKey


@dataclass(frozen=True)
class DelRule:
    rule: RuleKey


@dataclass(frozen=True)
class AddRoute:
    route: RouteKey


@dataclass(frozen=True)
class DelRoute:
    route: RouteKey


@dataclass(frozen=True)
class ReplaceNftTable:
    """Create or atomically replace OUR nftables table with ``ruleset`` (the
    table's body). One ``nft -f`` transaction: add table, delete table, add
    table with its content; nothing outside the table is touched.
    ``create``: the table was not in the kernel when planned (a failed
    create is not ours)."""

    family: str
    name: str
    ruleset: str
    create: bool = False


@dataclass(frozen=True)
class DelNftTable:
    family: str
    name: str


Op = (AddLink | SetLinkUp | DelLink | AddFouPort | DelFouPort | AddGreCsum | DelGreCsum | SetSysctl | SetIPVSTimeouts | AddAddress | DelAddress | AddService
      | SetService | DelService | AddDest | SetDest | DelDest | AddRule | DelRule | AddRoute
      | DelRoute | ReplaceNftTable | DelNftTable)

ROUTING_OPS = (AddRule, DelRule, AddRoute, DelRoute)
FOU_OPS = (AddFouPort, DelFouPort)
GRE_CSUM_OPS = (AddGreCsum, DelGreCsum)
NFT_OPS = (ReplaceNftTable, DelNftTable)

IPVS_OPS = (AddService, SetService, DelService, AddDest, SetDest, DelDest)


def service_key(op: Op):
    """The IPVS service an op acts on (None: not an IPVS op)."""
    match op:
        case AddService(s) | SetService(s) | AddDest(s, _) | SetDest(s, _):
            return s.key
        case DelDest(k, _) | DelService(k):
            return k
    return None


def describe(op: Op) -> str:
    """One line, ipvsadm-flavoured, for logs and `lvsctl apply --dry-run`."""
    match op:
        case AddService(s) | SetService(s):
            verb = "add" if isinstance(op, AddService) else "set"
            return f"{verb} service {s.key} scheduler {s.scheduler}"
        case DelService(k):
            return f"delete service {k}"
        case AddDest(s, d) | SetDest(s, d):
            verb = "add" if isinstance(op, AddDest) else "set"
            return f"{verb} dest {d.key} to {s.key} {d.method} weight {d.weight}"
        case DelDest(k, d):
            return f"delete dest {d} from {k}"
        case AddAddress(dev, a, p) | DelAddress(dev, a, p):
            verb = "add" if isinstance(op, AddAddress) else "delete"
            return f"{verb} address {a}/{p} on {dev}"
        case AddLink(n, kind):
            return f"add link {n} type {kind}"
        case SetLinkUp(n, up):
            return f"set link {n} {'up' if up else 'down'}"
        case DelLink(n):
            return f"delete link {n}"
        case AddGreCsum(d) | DelGreCsum(d):
            return f"{'expect' if isinstance(op, AddGreCsum) else 'stop expecting'} GRE checksums on {d}"
        case AddFouPort(f, p) | DelFouPort(f, p):
            return f"{'add' if isinstance(op, AddFouPort) else 'delete'} {f} fou port {p} gue"
        case SetSysctl(n, v, restore):
            return f"{'restore' if restore else 'set'} sysctl {n}={v}"
        case SetIPVSTimeouts(t, restore):
            return f"{'restore' if restore else 'set'} ipvs timeout " + " ".join(f"{n}={v}" for n, v in t)
        case AddRule(r) | DelRule(r):
            return f"{'add' if isinstance(op, AddRule) else 'delete'} {r}"
        case AddRoute(r) | DelRoute(r):
            return f"{'add' if isinstance(op, AddRoute) else 'delete'} {r}"
        case ReplaceNftTable(f, n, body, create):
            rules = sum(1 for line in body.splitlines() if " comment " in line)
            return f"{'create' if create else 'replace'} nft table {f} {n} ({rules} rules)"
        case DelNftTable(f, n):
            return f"delete nft table {f} {n}"
    raise TypeError(op)
