"""Tiny name servers and clients for traffic tests inside the lab VM.

Servers answer with their own name so a test can see which real server a request
reached:

* TCP: a minimal HTTP/1.0 responder; the body is ``"<name> <client-ip>\\n"``;
* UDP: an echo that answers any datagram with ``"<name> <client-ip>\\n"``, sent from
  the address the datagram was sent to (IP_PKTINFO), so DR/TUN replies come from
  the VIP even though the socket is bound to the wildcard address.

Python is ~15-20x slower under TCG, so by default servers are *threads of the test
process*: :class:`ServerHub` creates the listening sockets inside each namespace
(:func:`lvs_lab.netns.call_in_netns`) and serves all of them from one selector
thread. ``python -m lvs_lab.servers --name rs1 --port 80`` runs the same hub as a
separate process (start it with ``ip netns exec NS``) when a test needs to kill a
server process.

Clients (:func:`tcp_replies`, :func:`udp_replies`, ...) also run in a namespace via a
thread, with short timeouts and bounded loops: a failed request yields ``None``.
"""

from __future__ import annotations

import argparse
import ipaddress
import selectors
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from .netns import call_in_netns

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)


class Reply(NamedTuple):
    name: str
    peer: str  # the client address the server saw


def _family(host: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def _body(name: str, peer: str) -> bytes:
    return f"{name} {peer}\n".encode()


def _parse(body: bytes) -> Reply | None:
    parts = body.decode(errors="replace").split()
    if not parts:
        return None
    return Reply(parts[0], parts[1] if len(parts) > 1 else "")


def _peer_ip(addr) -> str:
    ip = addr[0]
    if ip.startswith("::ffff:"):
        ip = ip[7:]
    return ip


# ----------------------------------------------------------------------------- server


@dataclass(eq=False)
class Server:
    name: str
    ns: str | None
    port: int
    sockets: list[socket.socket] = field(default_factory=list)
    tcp_served: int = 0
    udp_served: int = 0
    closed: bool = False

    @property
    def served(self) -> int:
        return self.tcp_served + self.udp_served


class ServerHub:
    """Serves any number of name servers (in any namespaces) from one thread."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.servers: list[Server] = []

    def serve(
        self,
        ns: str | None,
        name: str,
        port: int = 80,
        *,
        tcp: bool = True,
        udp: bool = True,
        families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6),
        bind: str | None = None,
    ) -> Server:
        """Start answering ``name`` on ``port`` in namespace ``ns`` (wildcard addresses)."""
        srv = Server(name, ns, port)

        def make() -> list[tuple[socket.socket, str]]:
            out = []
            fams = (_family(bind),) if bind else families
            for fam in fams:
                host = bind or ("::" if fam == socket.AF_INET6 else "0.0.0.0")
                if tcp:
                    s = socket.socket(fam, socket.SOCK_STREAM)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if fam == socket.AF_INET6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    s.bind((host, port))
                    s.listen(64)
                    s.setblocking(False)
                    out.append((s, "tcp"))
                if udp:
                    u = socket.socket(fam, socket.SOCK_DGRAM)
                    u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if fam == socket.AF_INET6:
                        u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                        u.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
                    else:
                        u.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                    u.bind((host, port))
                    u.setblocking(False)
                    out.append((u, "udp"))
            return out

        socks = call_in_netns(ns, make)
        with self._lock:
            for s, kind in socks:
                srv.sockets.append(s)
                self._sel.register(s, selectors.EVENT_READ, (srv, kind))
            self.servers.append(srv)
        self._ensure_thread()
        return srv

    def stop(self, srv: Server) -> None:
        """Stop one server (closes its sockets: later requests are refused)."""
        with self._lock:
            for s in srv.sockets:
                try:
                    self._sel.unregister(s)
                except (KeyError, ValueError):
                    pass
                s.close()
            srv.sockets.clear()
            srv.closed = True

    def close(self) -> None:
        for srv in list(self.servers):
            self.stop(srv)
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._sel.close()

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="lab-servers", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if not self._sel.get_map():
                    events = []
                else:
                    events = None
            if events is not None:
                time.sleep(0.05)
                continue
            try:
                events = self._sel.select(timeout=0.2)
            except (OSError, ValueError):
                continue
            for key, _ in events:
                srv, kind = key.data
                try:
                    if kind == "tcp":
                        self._handle_tcp(srv, key.fileobj)
                    else:
                        self._handle_udp(srv, key.fileobj)
                except OSError:
                    pass

    @staticmethod
    def _handle_tcp(srv: Server, lsock: socket.socket) -> None:
        try:
            conn, addr = lsock.accept()
        except (BlockingIOError, InterruptedError):
            return
        with conn:
            conn.settimeout(2.0)
            buf = b""
            try:
                while b"\r\n\r\n" not in buf and b"\n\n" not in buf and len(buf) < 8192:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
            except (socket.timeout, OSError):
                pass
            body = _body(srv.name, _peer_ip(addr))
            head = (
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\nX-Server: {srv.name}\r\nConnection: close\r\n\r\n"
            ).encode()
            try:
                conn.sendall(head + body)
                srv.tcp_served += 1
            except OSError:
                pass

    @staticmethod
    def _handle_udp(srv: Server, usock: socket.socket) -> None:
        try:
            data, anc, _flags, addr = usock.recvmsg(4096, socket.CMSG_SPACE(64))
        except (BlockingIOError, InterruptedError):
            return
        cmsgs = []
        for level, ctype, cdata in anc:
            if level == socket.IPPROTO_IP and ctype == IP_PKTINFO and len(cdata) >= 12:
                # struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
                dst = cdata[8:12]
                cmsgs.append((socket.IPPROTO_IP, IP_PKTINFO, struct.pack("i4s4s", 0, dst, b"\0" * 4)))
            elif level == socket.IPPROTO_IPV6 and ctype == IPV6_PKTINFO and len(cdata) >= 20:
                # struct in6_pktinfo { in6_addr addr; int ifindex; }
                cmsgs.append((socket.IPPROTO_IPV6, IPV6_PKTINFO, cdata[:16] + struct.pack("i", 0)))
        usock.sendmsg([_body(srv.name, _peer_ip(addr))], cmsgs, 0, addr)
        srv.udp_served += 1


# ----------------------------------------------------------------------------- clients


def _tcp_once(host: str, port: int, timeout: float, source: str | None) -> Reply | None:
    fam = _family(host)
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        if source:
            s.bind((source, 0))
        s.connect((host, port))
        hosthdr = f"[{host}]" if fam == socket.AF_INET6 else host
        s.sendall(f"GET / HTTP/1.0\r\nHost: {hosthdr}:{port}\r\n\r\n".encode())
        buf = b""
        while len(buf) < 65536:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        _, sep, body = buf.partition(b"\r\n\r\n")
        if not sep or not buf.startswith(b"HTTP/"):
            return None
        return _parse(body)
    except OSError:
        return None
    finally:
        s.close()


def _udp_once(host: str, port: int, timeout: float, source: str | None) -> Reply | None:
    s = socket.socket(_family(host), socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        if source:
            s.bind((source, 0))
        s.connect((host, port))  # a new socket per request: a new source port each time
        s.send(b"who?\n")
        data = s.recv(4096)
        return _parse(data)
    except OSError:
        return None
    finally:
        s.close()


def tcp_replies(
    ns: str | None, host: str, port: int = 80, count: int = 1, *,
    timeout: float = 2.0, source: str | None = None,
) -> list[Reply | None]:
    """``count`` HTTP requests (one TCP connection each) from namespace ``ns``."""
    return call_in_netns(ns, lambda: [_tcp_once(host, port, timeout, source) for _ in range(count)])


def udp_replies(
    ns: str | None, host: str, port: int = 80, count: int = 1, *,
    timeout: float = 2.0, source: str | None = None,
) -> list[Reply | None]:
    """``count`` UDP requests (a new source port each) from namespace ``ns``."""
    return call_in_netns(ns, lambda: [_udp_once(host, port, timeout, source) for _ in range(count)])


def tcp_names(ns: str | None, host: str, port: int = 80, count: int = 1, **kw) -> list[str | None]:
    """Names of the servers that answered ``count`` HTTP requests (None: no answer)."""
    return [r.name if r else None for r in tcp_replies(ns, host, port, count, **kw)]


def udp_names(ns: str | None, host: str, port: int = 80, count: int = 1, **kw) -> list[str | None]:
    return [r.name if r else None for r in udp_replies(ns, host, port, count, **kw)]


def wait_tcp(ns: str | None, host: str, port: int = 80, *, deadline: float = 10.0,
             interval: float = 0.2) -> Reply:
    """Retry one request until it is answered (e.g. while ARP/ND settles); raise on timeout."""
    end = time.monotonic() + deadline
    while True:
        r = tcp_replies(ns, host, port, 1, timeout=min(2.0, max(0.2, end - time.monotonic())))[0]
        if r is not None:
            return r
        if time.monotonic() >= end:
            raise TimeoutError(f"no TCP answer from {host}:{port} in {ns or 'root ns'} after {deadline}s")
        time.sleep(interval)


def wait_udp(ns: str | None, host: str, port: int = 80, *, deadline: float = 10.0,
             interval: float = 0.2) -> Reply:
    end = time.monotonic() + deadline
    while True:
        r = udp_replies(ns, host, port, 1, timeout=min(1.0, max(0.2, end - time.monotonic())))[0]
        if r is not None:
            return r
        if time.monotonic() >= end:
            raise TimeoutError(f"no UDP answer from {host}:{port} in {ns or 'root ns'} after {deadline}s")
        time.sleep(interval)


def udp_names_one_socket(ns: str | None, host: str, port: int = 80, count: int = 1, *,
                         timeout: float = 2.0) -> list[str | None]:
    """``count`` datagrams from ONE socket (one source port), one at a time:
    what one client's flow looks like to IPVS (a UDP "connection")."""
    def run() -> list[str | None]:
        s = socket.socket(_family(host), socket.SOCK_DGRAM)
        s.settimeout(timeout)
        out: list[str | None] = []
        try:
            s.connect((host, port))
            for _ in range(count):
                try:
                    s.send(b"who?\n")
                    r = _parse(s.recv(4096))
                    out.append(r.name if r else None)
                except OSError:
                    out.append(None)
        finally:
            s.close()
        return out
    return call_in_netns(ns, run)


def hold_tcp(ns: str | None, host: str, port: int, *, source: str | None = None,
             sport: int = 0, timeout: float = 3.0) -> tuple[str | None, socket.socket | None]:
    """Open a TCP connection and keep it (IPVS counts it active while held);
    the server must send a line first (a greeting with its name). Returns
    (that name, the socket) or (None, None) when nobody answered."""
    def do():
        s = socket.socket(_family(host), socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            if source or sport:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((source or "", sport))
            s.connect((host, port))
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(64)
                if not chunk:
                    break
                data += chunk
            if data.strip():
                return data.decode().strip(), s
        except OSError:
            pass
        s.close()
        return None, None
    return call_in_netns(ns, do)


def reset_close(sock: socket.socket) -> None:
    """Close with a RST (SO_LINGER 0): IPVS moves the connection to its CLOSE
    state, which expires in seconds, not to TIME_WAIT's two minutes."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class SctpServer:
    """Answers every SCTP association on ``bind``:``port`` with its name
    (one-to-one style sockets, IPPROTO_SCTP; needs the kernel's sctp module).
    Bound to one address, so its INIT-ACK lists no other address of its own
    (which a client behind NAT could not reach)."""

    def __init__(self, ns: str | None, name: str, bind: str, port: int):
        self.name = name

        def make() -> socket.socket:
            s = socket.socket(_family(bind), socket.SOCK_STREAM, socket.IPPROTO_SCTP)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((bind, port))
            s.listen(16)
            return s

        self.sock = call_in_netns(ns, make)
        self.served = 0
        threading.Thread(target=self._loop, name=f"sctp:{name}", daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                c, addr = self.sock.accept()
            except OSError:
                return
            with c:
                try:
                    c.sendall(_body(self.name, _peer_ip(addr)))
                    self.served += 1
                except OSError:
                    pass

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _sctp_once(host: str, port: int, timeout: float, source: str | None) -> Reply | None:
    s = socket.socket(_family(host), socket.SOCK_STREAM, socket.IPPROTO_SCTP)
    try:
        s.settimeout(timeout)
        if source:
            s.bind((source, 0))
        s.connect((host, port))
        return _parse(s.recv(4096))
    except OSError:
        return None
    finally:
        s.close()


def sctp_replies(ns: str | None, host: str, port: int = 80, count: int = 1, *,
                 timeout: float = 3.0, source: str | None = None) -> list[Reply | None]:
    """``count`` SCTP associations from namespace ``ns``, each read to its
    server's greeting (bind ``source``: the INIT then lists only it)."""
    return call_in_netns(ns, lambda: [_sctp_once(host, port, timeout, source) for _ in range(count)])


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lvs_lab.servers",
                                description="serve a name over HTTP/TCP and UDP in the current netns")
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, action="append", default=[])
    p.add_argument("--no-udp", action="store_true")
    p.add_argument("--no-tcp", action="store_true")
    a = p.parse_args(argv)
    hub = ServerHub()
    for port in a.port or [80]:
        hub.serve(None, a.name, port, tcp=not a.no_tcp, udp=not a.no_udp)
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        hub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
