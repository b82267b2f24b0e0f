"""The benchmark workload, in every peer's language (pure, no I/O).

N services x M NAT dests, wlc, TCP. Addresses are derived from the indexes so
every run and every peer programs exactly the same table:

* service i:  VIP 10.1.(i >> 8).(i & 255) port 80
* dest j of service i:  10.(64 + j).(i >> 8).(i & 255) port 8080

The same rules are rendered as a kube-lvs ``NodeSpec``, as ``ipvsadm-restore``
input, and as a keepalived configuration; ``parse_save`` reads ``ipvsadm -Sn``
back so the harness can check that a table is complete and right before it
reports a time.
"""
from __future__ import annotations

from dataclasses import dataclass

VIP_PORT = 80
RIP_PORT = 8080
SCHEDULER = "wlc"
MAX_SERVICES = 65536
MAX_DESTS_PER_SERVICE = 64


@dataclass(frozen=True)
class Workload:
    services: int
    dests_per_service: int = 10

    def __post_init__(self) -> None:
        if not 1 <= self.services <= MAX_SERVICES:
            raise ValueError(f"services must be 1-{MAX_SERVICES}, got {self.services}")
        if not 1 <= self.dests_per_service <= MAX_DESTS_PER_SERVICE:
            raise ValueError(f"dests_per_service must be 1-{MAX_DESTS_PER_SERVICE}, "
                             f"got {self.dests_per_service}")

    @classmethod
    def for_total(cls, total_dests: int, dests_per_service: int = 10) -> "Workload":
        if total_dests % dests_per_service:
            raise ValueError(f"{total_dests} dests is not a multiple of {dests_per_service} per service")
        return cls(total_dests // dests_per_service, dests_per_service)

    @property
    def total_dests(self) -> int:
        return self.services * self.dests_per_service

    @property
    def rules(self) -> int:
        """Kernel objects: services plus dests."""
        return self.services + self.total_dests


def vip(i: int) -> str:
    return f"10.1.{i >> 8}.{i & 255}"


def rip(i: int, j: int) -> str:
    return f"10.{64 + j}.{i >> 8}.{i & 255}"


def weight_of(i: int, j: int, changed: tuple[int, int, int] | None = None) -> int:
    """The dest's weight: 1, or the changed one's new weight."""
    if changed and (i, j) == changed[:2]:
        return changed[2]
    return 1


def node_spec_doc(w: Workload, changed: tuple[int, int, int] | None = None) -> dict:
    """The node spec document (``parse_node_spec`` input) for the workload."""
    return {
        "node": "bench",
        "services": [
            {
                "name": f"bench/svc-{i}",
                "protocol": "tcp",
                "address": vip(i),
                "port": VIP_PORT,
                "scheduler": SCHEDULER,
                "dests": [
                    {"address": rip(i, j), "port": RIP_PORT, "weight": weight_of(i, j, changed),
                     "method": "nat"}
                    for j in range(w.dests_per_service)
                ],
            }
            for i in range(w.services)
        ],
    }


def save_lines(w: Workload, changed: tuple[int, int, int] | None = None) -> list[str]:
    """The table as ``ipvsadm -Sn`` prints it (also valid ``ipvsadm-restore`` input)."""
    out: list[str] = []
    for i in range(w.services):
        svc = f"-t {vip(i)}:{VIP_PORT}"
        out.append(f"-A {svc} -s {SCHEDULER}")
        for j in range(w.dests_per_service):
            out.append(f"-a {svc} -r {rip(i, j)}:{RIP_PORT} -m -w {weight_of(i, j, changed)}")
    return out


def restore_text(w: Workload, changed: tuple[int, int, int] | None = None) -> str:
    return "\n".join(save_lines(w, changed)) + "\n"


def keepalived_conf(w: Workload, changed: tuple[int, int, int] | None = None) -> str:
    """keepalived config: the same virtual servers, no health checkers.

    A real_server without a checker is taken as up, so keepalived programs it
    at start-up; ``delay_loop`` is irrelevant without checkers.
    """
    parts = ["global_defs {\n    router_id kube_lvs_bench\n}\n"]
    for i in range(w.services):
        rs = "".join(
            f"    real_server {rip(i, j)} {RIP_PORT} {{\n        weight {weight_of(i, j, changed)}\n    }}\n"
            for j in range(w.dests_per_service)
        )
        parts.append(
            f"virtual_server {vip(i)} {VIP_PORT} {{\n    delay_loop 3600\n    lb_algo {SCHEDULER}\n"
            f"    lb_kind NAT\n    protocol TCP\n{rs}}}\n"
        )
    return "".join(parts)


@dataclass(frozen=True)
class SaveCounts:
    services: int
    dests: int


def parse_save(text: str) -> tuple[SaveCounts, set[str]]:
    """Count services and dests in ``ipvsadm -Sn`` output; also return its rule lines."""
    services = dests = 0
    lines: set[str] = set()
    for raw in text.splitlines():
        line = " ".join(raw.split())
        if line.startswith("-A "):
            services += 1
        elif line.startswith("-a "):
            dests += 1
        else:
            continue
        lines.add(line)
    return SaveCounts(services, dests), lines


def check_table(w: Workload, save_text: str, changed: tuple[int, int, int] | None = None) -> str | None:
    """None if the table holds exactly the workload's rules, else what is wrong."""
    counts, got = parse_save(save_text)
    if counts != SaveCounts(w.services, w.total_dests):
        return (f"table incomplete: {counts.services} services / {counts.dests} dests, "
                f"expected {w.services} / {w.total_dests}")
    want = set(save_lines(w, changed))
    if got != want:
        missing = sorted(want - got)[:3]
        extra = sorted(got - want)[:3]
        return f"table differs: missing {missing}, unexpected {extra}"
    return None


def node_spec(w: Workload, changed: tuple[int, int, int] | None = None):
    """The workload as a kube-lvs ``NodeSpec``, built directly.

    Equal to ``parse_node_spec(node_spec_doc(w))`` (unit-tested) but without
    validating 100k dicts under TCG: parsing is the agent's receive path, not
    what the programming benchmark measures.
    """
    from lvs_model.nodespec import Dest, NodeSpec, Service

    services = []
    for i in range(w.services):
        dests = tuple(Dest(rip(i, j), RIP_PORT, weight_of(i, j, changed), "nat")
                      for j in range(w.dests_per_service))
        services.append(Service(family="ipv4", protocol="tcp", address=vip(i), port=VIP_PORT,
                                scheduler=SCHEDULER, dests=dests, name=f"bench/svc-{i}"))
    return NodeSpec(node="bench", services=tuple(services))
