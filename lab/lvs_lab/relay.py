"""Per-connection relay for qemu's ``guestfwd=...-cmd:`` (runs on the host).

qemu's ``guestfwd=tcp:IP:PORT-tcp:HOST:PORT`` form opens ONE connection to the host
service when qemu starts (it fails if nothing listens yet) and carries only the
guest's first connection: a second connection hangs. The ``cmd:`` form instead runs a
command for every guest connection, with the connection on its stdin/stdout (a
socket pair). This script is that command: it connects to ``HOST:PORT`` and copies
bytes both ways, passing half-closes through, until both directions are done.

Usage (built by lvs_lab.vm): ``python relay.py 127.0.0.1 PORT``. Nothing may be
written to stderr: it is the guest's connection too.
"""

import os
import selectors
import socket
import sys


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    try:
        guest = socket.socket(fileno=os.dup(0))
    except OSError:
        return 1
    try:
        upstream = socket.create_connection((host, port), timeout=10)
    except OSError:
        guest.close()
        return 1
    upstream.settimeout(None)
    guest.setblocking(False)
    upstream.setblocking(False)
    sel = selectors.DefaultSelector()
    peer = {guest: upstream, upstream: guest}
    open_dirs = {guest, upstream}  # sources still sending
    for s in open_dirs:
        sel.register(s, selectors.EVENT_READ)
    while open_dirs:
        for key, _ in sel.select():
            src = key.fileobj
            try:
                data = src.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            dst = peer[src]
            if data:
                try:
                    dst.setblocking(True)
                    dst.sendall(data)
                    dst.setblocking(False)
                except OSError:
                    return 0
            else:
                sel.unregister(src)
                open_dirs.discard(src)
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        sys.exit(1)
