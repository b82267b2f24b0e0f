"""IPVS connection timeouts (``ipvsadm --set``) in the planner (pure).

The kernel holds three per-namespace timeouts (TCP established, TCP FIN_WAIT,
UDP). A node spec may declare some (``NodeSpec.timeouts``); the planner sets
those that differ and, when no spec asks for one any more, puts back the value
found before the agent first changed it, but only while the kernel still holds
what the agent wrote: a value somebody set after us (``ipvsadm --set`` by
hand, keepalived's global_defs) is theirs and is left alone.

The observed values and the ownership records travel in the maps the planner
already has for sysctls (``Observed.sysctls``, ``Ownership.sysctls``) under
keys no sysctl can have (``ipvs-timeout:tcp``): the ownership record's file
format and the observer's result stay as they are, and the record keeps the
originals across restarts like every sysctl original. A record's value is
``"ORIGINAL WRITTEN"`` in seconds. The sysctl code skips these keys
(``real_sysctls``).
"""
from __future__ import annotations

from typing import Iterable, Mapping, TypeVar

from lvs_model.nodespec import TIMEOUT_NAMES, NodeSpec, timeout_map

from . import ops as O
from .state import Observed, Ownership

KEY_PREFIX = "ipvs-timeout:"  # ":" never appears in a sysctl name
KEYS = tuple(KEY_PREFIX + n for n in TIMEOUT_NAMES)

V = TypeVar("V")


def key(name: str) -> str:
    return KEY_PREFIX + name


def is_key(name: str) -> bool:
    return name.startswith(KEY_PREFIX)


def real_sysctls(values: Mapping[str, V]) -> dict[str, V]:
    """``values`` without the timeout entries: what the sysctl code may act on."""
    return {k: v for k, v in values.items() if not is_key(k)}


def observe_keys(spec: NodeSpec, owned: Ownership) -> set[str]:
    """The timeout keys the observer must read: wanted or recorded ones."""
    return {key(n) for n in timeout_map(spec)} | {k for k in owned.sysctls if is_key(k)}


def observed(obs: Observed) -> dict[str, int]:
    """name -> seconds the kernel holds now (names it could not read left out)."""
    out = {}
    for k, v in obs.sysctls.items():
        if is_key(k) and v is not None and str(v).isdigit():
            out[k[len(KEY_PREFIX):]] = int(v)
    return out


def encode(original: int | None, written: int) -> str:
    return f"{'-' if original is None else original} {written}"


def decode(text: str | None) -> tuple[int | None, int] | None:
    """(original or None when it was not known, written); None: unreadable."""
    try:
        original, written = str(text).split()
        return (None if original == "-" else int(original)), int(written)
    except ValueError:
        return None


def records(owned: Ownership) -> dict[str, tuple[int | None, int]]:
    """name -> (original, written) of every timeout the agent changed."""
    out = {}
    for k, v in owned.sysctls.items():
        if is_key(k) and (rec := decode(v)) is not None:
            out[k[len(KEY_PREFIX):]] = rec
    return out


def plan(desired: NodeSpec, obs: Observed, owned: Ownership) -> tuple[list[O.Op], list[O.Op]]:
    """(ops that set what the spec declares, ops that restore originals).

    One SET_CONFIG each at most: the kernel reads the three values as one
    structure and leaves out the ones a message does not carry."""
    want, have = timeout_map(desired), observed(obs)
    sets = tuple(sorted((n, v) for n, v in want.items() if have.get(n) != v))
    back = tuple(sorted((n, original) for n, (original, written) in records(owned).items()
                        if n not in want and original is not None and original != written
                        and have.get(n) == written))
    return ([O.SetIPVSTimeouts(sets)] if sets else []), ([O.SetIPVSTimeouts(back, restore=True)] if back else [])


def claim(own: Ownership, p_ops: Iterable[O.Op], obs: Observed, desired: NodeSpec) -> Ownership:
    """Record (in place) what the plan writes before it is applied: the
    original on the first write, the new value on every write. Forget the
    records of timeouts nobody wants whose kernel value is no longer ours."""
    want, have = timeout_map(desired), observed(obs)
    recs = records(own)
    for n, (original, written) in recs.items():
        if n not in want and n in have and (have[n] != written or original in (None, written)):
            del own.sysctls[key(n)]
    for op in p_ops:
        if isinstance(op, O.SetIPVSTimeouts) and not op.restore:
            for n, v in op.timeouts:
                original = recs[n][0] if n in recs else have.get(n)
                own.sysctls[key(n)] = encode(original, v)
    return own


def settle(own: Ownership, results: Iterable[tuple[O.Op, str | None]]) -> Ownership:
    """Drop (in place) the records of timeouts put back."""
    for op, err in results:
        if isinstance(op, O.SetIPVSTimeouts) and op.restore and not err:
            for n, _ in op.timeouts:
                own.sysctls.pop(key(n), None)
    return own
