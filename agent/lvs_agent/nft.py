"""nftables through the nft binary: only kube-lvs's own table is ever read."""
from __future__ import annotations

import errno
import json
import subprocess

from .netns import in_netns
from .state import NftTable
from .tools import program

# How long one nft run may take: it only lists or loads one small table.
NFT_TIMEOUT = 60

NFT = program("nft")  # KUBE_LVS_NFT may name another binary (tools.py)


def run_nft(args: list[str], netns: str | None = None, input: str | None = None):
    """Run nft inside ``netns`` (the child inherits the calling thread's namespace)."""
    with in_netns(netns):
        return subprocess.run([NFT, *args], input=input, capture_output=True, text=True, timeout=NFT_TIMEOUT)


def read_nft_table(family: str, name: str, netns: str | None = None) -> NftTable | None:
    """One nftables table's chains and rule comments, or None if there is no
    such table. Raises OSError when nft itself fails for another reason."""
    p = run_nft(["-j", "list", "table", family, name], netns)
    if p.returncode != 0:
        if "No such file or directory" in p.stderr:
            return None
        raise OSError(errno.EIO, f"nft list table {family} {name}: {p.stderr.strip()}")
    chains, rules = [], []
    for item in json.loads(p.stdout).get("nftables", []):
        if "chain" in item:
            c = item["chain"]
            chains.append((c["name"], c.get("type", ""), c.get("hook", ""), int(c.get("prio", 0))))
        elif "rule" in item:
            r = item["rule"]
            rules.append((r["chain"], r.get("comment", "")))
    return NftTable(tuple(chains), tuple(rules))

