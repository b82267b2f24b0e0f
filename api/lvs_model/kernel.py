"""IPVS vocabulary as the kernel spells it (include/uapi/linux/ip_vs.h).

Kept in one table so the model, the netlink applier and the ipvsadm-style
printers agree on names, bits and letters.
"""
from __future__ import annotations

# Every scheduler the kernel ships; `twos` arrived in 6.2, so a 6.1 kernel
# rejects it at apply time (reported per service, never fatal).
SCHEDULERS: tuple[str, ...] = (
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq",
    "fo", "ovf", "mh", "twos",
)

# Service flags (IP_VS_SVC_F_*).
SVC_F_PERSISTENT = 0x0001
SVC_F_HASHED = 0x0002
SVC_F_ONEPACKET = 0x0004
SVC_F_SCHED1 = 0x0008
SVC_F_SCHED2 = 0x0010
SVC_F_SCHED3 = 0x0020

# Scheduler flags by name -> (schedulers that understand it, bit).
SCHED_FLAGS: dict[str, tuple[tuple[str, ...], int]] = {
    "sh-fallback": (("sh",), SVC_F_SCHED1),
    "sh-port": (("sh",), SVC_F_SCHED2),
    "mh-fallback": (("mh",), SVC_F_SCHED1),
    "mh-port": (("mh",), SVC_F_SCHED2),
}

# Forwarding methods (IP_VS_CONN_F_FWD_MASK values).
FWD_MASQ = 0
FWD_LOCALNODE = 1
FWD_TUNNEL = 2
FWD_DROUTE = 3
FWD_BYPASS = 4

METHODS: dict[str, int] = {"nat": FWD_MASQ, "tun": FWD_TUNNEL, "dr": FWD_DROUTE}
METHOD_BY_CODE: dict[int, str] = {v: k for k, v in METHODS.items()}
# ipvsadm -Ln's "Forward" column.
METHOD_LABEL: dict[str, str] = {"nat": "Masq", "tun": "Tunnel", "dr": "Route"}
# ipvsadm --save's switch.
METHOD_SWITCH: dict[str, str] = {"nat": "-m", "tun": "-i", "dr": "-g"}

TUNNEL_TYPES: dict[str, int] = {"ipip": 0, "gue": 1, "gre": 2}
TUNNEL_TYPE_BY_CODE: dict[int, str] = {v: k for k, v in TUNNEL_TYPES.items()}
TUNNEL_CSUM: dict[str, int] = {"none": 0, "csum": 1, "remcsum": 2}
TUNNEL_CSUM_BY_CODE: dict[int, str] = {v: k for k, v in TUNNEL_CSUM.items()}

PROTOCOLS: dict[str, int] = {"tcp": 6, "udp": 17, "sctp": 132}
PROTOCOL_BY_CODE: dict[int, str] = {v: k for k, v in PROTOCOLS.items()}
# ipvsadm's service switch per protocol.
PROTOCOL_SWITCH: dict[str, str] = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}

FAMILIES: dict[str, int] = {"ipv4": 2, "ipv6": 10}  # AF_INET, AF_INET6
FAMILY_BY_CODE: dict[int, str] = {v: k for k, v in FAMILIES.items()}

MAX_WEIGHT = 65535
MAX_TIMEOUT = 2**31 - 1
