"""The operations a plan is made of; the applier turns each into netlink/sysctl calls."""
from __future__ import annotations

from dataclasses import dataclass

from lvs_model.nodespec import Dest, DestKey, Service, ServiceKey


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
class SetSysctl:
    name: str
    value: str
    restore: bool = False  # putting back the value found before we changed it


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


Op = (AddLink | SetLinkUp | DelLink | SetSysctl | AddAddress | DelAddress | AddService
      | SetService | DelService | AddDest | SetDest | DelDest)

IPVS_OPS = (AddService, SetService, DelService, AddDest, SetDest, DelDest)


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
        case SetSysctl(n, v, restore):
            return f"{'restore' if restore else 'set'} sysctl {n}={v}"
    raise TypeError(op)
