"""What the kernel holds (observed) and what this engine created (owned).

IPVS has no labels, so ownership is a record kept by the engine; it is
persisted as JSON on the node so a restart knows its own objects and leaves
everybody else's (kube-proxy's, keepalived's, hand-made) alone.

A record has one writer at a time: whoever programs with it holds an
advisory lock (flock) on ``<record>.lock`` beside it, the agent for its
lifetime, ``lvsctl apply`` for one run. A full reconcile with somebody else's
record deletes every service of theirs it is not given, so a second program
is refused (RecordHeld), never let in.
"""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Callable

from lvs_model.nodespec import DestKey, Service, ServiceKey


@dataclass(frozen=True)
class LinkState:
    kind: str  # "dummy", "ipip", ... ("" if unknown)
    up: bool


@dataclass(frozen=True, order=True)
class RuleKey:
    """A policy-routing rule ``from SRC [ipproto P sport N] lookup TABLE``
    (priority PRIORITY). Only rules with no other selector are observed as
    RuleKeys, so one that also matches an iif, a mark, ... never equals ours."""

    family: str  # ipv4 | ipv6
    priority: int
    src: str  # address (host prefix)
    protocol: str  # tcp | udp | sctp | "" (any)
    sport: int  # 0: any
    table: int

    def __str__(self) -> str:
        sel = f" ipproto {self.protocol}" if self.protocol else ""
        sel += f" sport {self.sport}" if self.sport else ""
        return f"{self.family} rule pref {self.priority} from {self.src}{sel} lookup {self.table}"


@dataclass(frozen=True, order=True)
class RouteKey:
    """A default route ``default via GATEWAY metric METRIC table TABLE``."""

    family: str
    table: int
    gateway: str
    metric: int = 0

    def __str__(self) -> str:
        return f"{self.family} route default via {self.gateway} metric {self.metric} table {self.table}"


@dataclass(frozen=True)
class NftTable:
    """What the planner needs to know of an nftables table: its chains
    ((name, type, hook, priority)) and its rules' comments, in order."""

    chains: tuple[tuple[str, str, str, int], ...] = ()
    rules: tuple[tuple[str, str], ...] = ()  # (chain, comment)


@dataclass
class Observed:
    services: dict[ServiceKey, Service] = field(default_factory=dict)
    addresses: set[tuple[str, str]] = field(default_factory=set)  # (device, address)
    links: dict[str, LinkState] = field(default_factory=dict)
    sysctls: dict[str, str | None] = field(default_factory=dict)  # None: no such sysctl
    # Read only when the spec or the ownership record needs them (reply paths).
    rules: set[RuleKey] = field(default_factory=set)
    routes: set[RouteKey] = field(default_factory=set)  # default routes in our tables only
    nft_tables: dict[tuple[str, str], NftTable] = field(default_factory=dict)  # (family, name)


def _skey(d: dict) -> ServiceKey:
    return ServiceKey(d["family"], d["protocol"], d["address"], d["port"], d.get("fwmark", 0))


# Sort keys as tuples (compared in C): the dataclasses' own ordering is Python
# code, and the record is saved, sorted whole, on every pass that adds a service.
_SERVICE_ORDER = attrgetter("family", "protocol", "address", "port", "fwmark")
_DEST_ORDER = attrgetter("address", "port")


def _skey_json(k: ServiceKey) -> dict:
    return {"family": k.family, "protocol": k.protocol, "address": k.address, "port": k.port,
            "fwmark": k.fwmark}


@dataclass(frozen=True)
class SysctlClaim:
    """A sysctl this engine changed: the value it found, to put back when no
    longer wanted, and the value it wrote. It puts the original back only if
    the kernel still holds what it wrote: a different value is somebody
    else's since (a CNI that turned ip_forward on), not the agent's to undo."""

    original: str | None  # None: the sysctl did not exist (nothing to put back)
    written: str | None = None  # None: not known (a record from before it was kept)

    def restore_to(self, now: str | None) -> str | None:
        """The value to write back when the sysctl is no longer wanted and the
        kernel holds ``now``; None: leave the kernel as it is and forget the claim."""
        if self.original is None or now == self.original:
            return None
        if self.written is not None and now != self.written:
            return None  # changed by someone else since we wrote it
        return self.original


def sysctl_claim(record: "SysctlClaim | str | None") -> SysctlClaim:
    """A record of ``Ownership.sysctls`` as a claim: a bare value is an
    original whose written value is not known (records written before it was
    kept; other writers of the map keep strings of their own there)."""
    return record if isinstance(record, SysctlClaim) else SysctlClaim(record)


# An operation that was sent but whose answer never came (the acks overran
# the socket's buffer: ENOBUFS; a timeout; the socket failed after the send)
# may or may not have been done. Its result text starts with UNKNOWN, never
# with the socket's errno, which `plan.settle` would take for the kernel
# refusing the object: a service the kernel did create would become foreign.
UNKNOWN = "EIO"


def unknown_result(cause: str) -> str:
    """The result text of an operation whose outcome is unknown."""
    return f"{UNKNOWN}: outcome unknown: {cause}"


def outcome_unknown(err: str | None) -> bool:
    """Whether an error text says the outcome is unknown (not a refusal)."""
    return bool(err) and err.split(":", 1)[0] == UNKNOWN


@dataclass
class Ownership:
    """Kernel objects this engine created, and the sysctls it changed."""

    services: set[ServiceKey] = field(default_factory=set)
    dests: dict[ServiceKey, set[DestKey]] = field(default_factory=dict)
    addresses: set[tuple[str, str]] = field(default_factory=set)
    links: dict[str, str] = field(default_factory=dict)  # name -> "created" | "upped"
    sysctls: dict[str, SysctlClaim | str | None] = field(default_factory=dict)  # see sysctl_claim
    rules: set[RuleKey] = field(default_factory=set)
    routes: set[RouteKey] = field(default_factory=set)
    nft_tables: set[tuple[str, str]] = field(default_factory=set)  # (family, name)

    def copy(self) -> "Ownership":
        return Ownership(set(self.services), {k: set(v) for k, v in self.dests.items()},
                         set(self.addresses), dict(self.links), dict(self.sysctls),
                         set(self.rules), set(self.routes), set(self.nft_tables))

    def to_json(self) -> dict:
        return {
            "version": 1,
            "services": [
                {**_skey_json(k), "dests": [[d.address, d.port] for d in sorted(self.dests.get(k, ()), key=_DEST_ORDER)]}
                for k in sorted(self.services, key=_SERVICE_ORDER)
            ],
            "addresses": sorted([list(a) for a in self.addresses]),
            "links": dict(sorted(self.links.items())),
            # name -> original, as records have always been; what was written beside it.
            "sysctls": {n: sysctl_claim(c).original for n, c in sorted(self.sysctls.items())},
            "sysctlsWritten": {n: c.written for n, c in sorted(self.sysctls.items())
                               if isinstance(c, SysctlClaim) and c.written is not None},
            "rules": [[r.family, r.priority, r.src, r.protocol, r.sport, r.table]
                      for r in sorted(self.rules)],
            "routes": [[r.family, r.table, r.gateway, r.metric] for r in sorted(self.routes)],
            "nftTables": sorted([list(t) for t in self.nft_tables]),
        }

    @classmethod
    def from_json(cls, data: dict) -> "Ownership":
        own = cls()
        for s in data.get("services", []):
            k = _skey(s)
            own.services.add(k)
            own.dests[k] = {DestKey(a, p) for a, p in s.get("dests", [])}
        own.addresses = {(d, a) for d, a in data.get("addresses", [])}
        own.links = dict(data.get("links", {}))
        written = data.get("sysctlsWritten", {})
        own.sysctls = {n: o if written.get(n) is None else SysctlClaim(o, written[n])
                       for n, o in data.get("sysctls", {}).items()}
        own.rules = {RuleKey(*r) for r in data.get("rules", [])}
        own.routes = {RouteKey(*r) for r in data.get("routes", [])}
        own.nft_tables = {(f, n) for f, n in data.get("nftTables", [])}
        return own


class OwnershipStore:
    """The ownership record on disk, replaced atomically so a crash mid-write
    leaves the previous record intact."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def load(self) -> Ownership:
        try:
            return Ownership.from_json(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return Ownership()

    def save(self, own: Ownership) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".ownership.")
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(own.to_json(), separators=(",", ":")))  # the C encoder (indent is Python's)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


AGENT_RECORD = "ownership.json"  # the agent's record, in its state directory
LVSCTL_RECORD = "lvsctl.json"  # lvsctl apply's own record, beside it


class RecordHeld(Exception):
    """Another process holds an ownership record's lock."""

    def __init__(self, record: Path, holder: str):
        self.record, self.holder = record, holder or "program that did not name itself"
        super().__init__(f"{record} is held by {self.holder}")


def lock_path(record: str | os.PathLike) -> Path:
    """The lock file of a record: beside the file the record really is (a
    symlink to the agent's record is the agent's record)."""
    real = Path(record).resolve()
    return real.with_name(real.name + ".lock")


class RecordLock:
    """The advisory lock on one record. The lock file is never removed
    (removing a flock file lets two holders in) nor truncated before it is
    held (that would erase the holder's name); the kernel releases the lock
    when the holder's process ends, however it ends."""

    def __init__(self, record: str | os.PathLike, holder: str):
        self.record, self.holder = Path(record), holder
        self._fd: int | None = None

    def acquire(self, wait: bool = False) -> "RecordLock":
        """Take the lock; RecordHeld if another holds it (``wait``: wait for it)."""
        path = lock_path(self.record)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise RecordHeld(self.record, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.holder}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RecordLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def hold_record(record: str | os.PathLike, holder: str, wait: bool = False,
                waiting: Callable[[RecordHeld], object] | None = None) -> RecordLock:
    """Hold ``record``'s lock. Held by another: RecordHeld, or with ``wait``
    ``waiting(why)`` once and then wait for it (an agent starting while the
    old one or an lvsctl run still holds it)."""
    lock = RecordLock(record, holder)
    try:
        return lock.acquire()
    except RecordHeld as why:
        if not wait:
            raise
        if waiting is not None:
            waiting(why)
        return lock.acquire(wait=True)
