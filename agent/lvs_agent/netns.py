"""Entering a network namespace: the one way the agent does it.

``netns`` everywhere: ``None`` is the caller's own network namespace, a plain
name is ``/run/netns/NAME`` (as made by ``ip netns add``), an absolute path is
used as is (``/proc/PID/ns/net``).

The calling thread switches there with setns(2) and straight back, under one
lock: no process is forked (pyroute2's ``netns=`` forks one per socket, a cost
paid on every reconcile pass). What is made inside keeps the namespace: a
socket stays bound to the namespace it was created in, a child process
inherits the thread's, and ``/proc/sys/net`` resolves against the namespace of
the task that opens the file.
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
from contextlib import contextmanager
from typing import Iterator

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = None
_ns_lock = threading.RLock()


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


def netns_path(netns: str) -> str:
    return netns if netns.startswith("/") else os.path.join(NETNS_RUN_DIR, netns)


@contextmanager
def in_netns(netns: str | None) -> Iterator[None]:
    """Run the body with the calling thread inside ``netns`` (None: stay)."""
    if not netns:
        yield
        return
    with _ns_lock:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            move_thread(netns)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(home)


def move_thread(netns: str) -> None:
    """Move the calling thread into ``netns`` for good: a worker thread that
    lives there (setns is per thread; the process stays where it is)."""
    try:
        target = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"no network namespace {netns!r}", netns_path(netns)) from None
    try:
        _setns(target)
    finally:
        os.close(target)


def netlink_socket(netns: str | None, proto: int) -> socket.socket:
    """A netlink socket living in ``netns`` (SOCK_DGRAM: pyroute2's asyncio
    transport insists on a datagram socket)."""
    with in_netns(netns):
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, proto)
