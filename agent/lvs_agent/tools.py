"""The programs the agent runs besides itself, and what their absence means.

The agent does nearly everything over netlink; what it cannot, it hands to a
program: the SNAT return path's nftables table goes through ``nft``, and the
BGP announcements of active-active directors through BIRD (``bird``, driven
with ``birdc``; not a BGP implementation of our own). This
table is the one list of such programs: the image carries each one
(deploy/image/build.sh installs their Debian packages and tests/image checks
the built image against this table), and when one is missing at run time only
the services that need it fail, each with `missing_message` in its status,
while the others are programmed (plan.py, engine.py).
"""
from __future__ import annotations

import os
import shutil

# program -> (the Debian package that ships it, the variable that may name another binary)
EXTERNAL_TOOLS: dict[str, tuple[str, str]] = {
    "nft": ("nftables", "KUBE_LVS_NFT"),
    "bird": ("bird2", "KUBE_LVS_BIRD"),
    "birdc": ("bird2", "KUBE_LVS_BIRDC"),
}


def program(tool: str) -> str:
    """What to run for ``tool``: its variable's value when set, else its name."""
    return os.environ.get(EXTERNAL_TOOLS[tool][1]) or tool


def found(tool: str) -> bool:
    """Whether ``tool`` can be run now (looked up on PATH at each call: a
    binary installed later is used from the next reconcile on)."""
    return shutil.which(program(tool)) is not None


def missing(tools: tuple[str, ...] | list[str] | set[str]) -> frozenset[str]:
    """The ones of ``tools`` that cannot be run now."""
    return frozenset(t for t in tools if not found(t))


def missing_message(tool: str) -> str:
    return f"needs {tool} ({EXTERNAL_TOOLS[tool][0]}), not found in the agent's image/PATH"


def packages() -> list[str]:
    """The Debian packages the image must install for the agent's programs."""
    return sorted({pkg for pkg, _ in EXTERNAL_TOOLS.values()})


__all__ = ["EXTERNAL_TOOLS", "found", "missing", "missing_message", "packages", "program"]
