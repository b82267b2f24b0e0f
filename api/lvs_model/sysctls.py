"""Which sysctls and device names a node spec may carry (pure).

The agent runs with CAP_NET_ADMIN on the host's network namespace and writes
what a NodeState asks for. Anything it writes must therefore be a setting
kube-lvs itself needs, with a value in that setting's range: an arbitrary name
(``kernel.core_pattern``) or a path trick (``net.ipv4.conf.x/../../..``) would
turn the right to write a NodeState into root on every LVS node.

The same rules are the NodeState CRD's CEL rules (``SYSCTL_NAME_RE``,
``DEVICE_RE``: RE2 and Python ``re`` read them alike), so the API server
refuses a bad object first and the agent refuses it again.
"""
from __future__ import annotations

import re

# Linux interface names: 1-15 bytes (IFNAMSIZ-1), and never "." or "..", "/",
# ":" or white space (dev_valid_name). Narrower here: a letter or digit first
# and [A-Za-z0-9_.@-] after, which every common naming scheme fits (eth0,
# ens3f0np0, bond0.100, veth@x) and which keeps a device name one path element.
DEVICE_RE = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,14}$"
# Names that are sysctl directories, not devices: an uplink called "all" would
# turn per-device ARP settings into global ones.
RESERVED_DEVICES = ("all", "default")

# Fixed names and the values each may take (inclusive ranges).
_FIXED: dict[str, tuple[int, int]] = {
    "net.ipv4.ip_forward": (0, 1),
    "net.ipv6.conf.all.forwarding": (0, 1),
    "net.ipv4.vs.conntrack": (0, 1),
    "net.ipv4.vs.expire_nodest_conn": (0, 1),
    "net.ipv4.vs.expire_quiescent_template": (0, 1),
    "net.ipv4.vs.conn_reuse_mode": (0, 3),
    "net.ipv4.vs.sloppy_tcp": (0, 1),
    "net.ipv4.vs.sloppy_sctp": (0, 1),
}
# Per-device IPv4 settings (device = all, default or an interface name).
_PER_DEVICE: dict[str, tuple[int, int]] = {
    "arp_ignore": (0, 8),
    "arp_announce": (0, 2),
    "rp_filter": (0, 2),
}
_DEVICE_BODY = DEVICE_RE[1:-1]
# Dots as [.]: no backslash, so the CEL string literal carries it unescaped.
SYSCTL_NAME_RE = ("^(" + "|".join(n.replace(".", "[.]") for n in _FIXED) + "|net[.]ipv4[.]conf[.]"
                  + _DEVICE_BODY + "[.](" + "|".join(_PER_DEVICE) + "))$")
SYSCTL_VALUE_RE = r"^[0-9]{1,2}$"

_device = re.compile(DEVICE_RE)
_name = re.compile(SYSCTL_NAME_RE)


def device_error(name: str, *, reserved_ok: bool = False) -> str | None:
    """Why ``name`` is not a usable interface name, or None."""
    if not isinstance(name, str) or not _device.match(name):
        return (f"{name!r} is not an interface name: 1-15 characters, a letter or digit first, "
                "then letters, digits, '_', '.', '@' or '-'")
    if not reserved_ok and name in RESERVED_DEVICES:
        return f"{name!r} names every device, not one: give the interface itself (for example eth0)"
    return None


def allowed_names() -> tuple[str, ...]:
    """For messages: what may be set."""
    return (*_FIXED, *(f"net.ipv4.conf.<device>.{k}" for k in _PER_DEVICE))


def _range(name: str) -> tuple[int, int] | None:
    if name in _FIXED:
        return _FIXED[name]
    if not _name.match(name):
        return None
    return _PER_DEVICE[name.rsplit(".", 1)[1]]


def sysctl_error(name: str, value: str) -> str | None:
    """Why the agent must not write ``value`` to ``name``, or None."""
    rng = _range(str(name))
    if rng is None:
        return (f"{name!r} is not a setting kube-lvs manages; allowed: "
                + ", ".join(allowed_names()))
    text = str(value).strip()
    if not re.fullmatch(SYSCTL_VALUE_RE, text) or not rng[0] <= int(text) <= rng[1]:
        return f"{value!r} is not a value of {name}: an integer {rng[0]}-{rng[1]}"
    return None
