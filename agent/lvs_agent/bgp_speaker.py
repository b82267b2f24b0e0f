"""The agent's BGP speaker: BIRD 2 run as a child, told what to announce.

Active-active directors announce their VIPs to the upstream routers over
BGP (lvs_model.bgp says which, bird_conf renders the configuration). This
shell runs ``bird`` in the foreground with its own control socket in the
agent's state directory, writes the configuration atomically (0600: it may
carry peer passwords) and asks BIRD to re-read it (``birdc configure``)
only when the rendered text changed, so an unchanged pass costs nothing and
never disturbs a session. It reads the sessions (``birdc show protocols``)
for status and metrics.

Lifetime: BIRD is started with a parent-death signal, so it ends (and its
sessions with it) when the agent process dies: a director whose agent is
gone must not go on announcing VIPs nobody health-checks. On SIGTERM the
agent calls :meth:`BgpSpeaker.stop` before anything else: it withdraws every
prefix first (an empty announcement, configured and given ``linger``
seconds to leave), then shuts BIRD down; the routers move the flows to the
other directors while this one still forwards what reaches it.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from lvs_model.bgp import STOPPING, BgpSpec, Health, VipDecision, combined, decide
from lvs_model.nodespec import NodeSpec

from .bird_conf import Session, parse_protocols, protocol_name, render

log = logging.getLogger("lvs_agent.bgp")

# Where the agent's pod mounts the Secret with the peers' passwords (a peer
# names one file of it).
DEFAULT_SECRET_DIR = Path("/etc/kube-lvs/bgp-secrets")
CONFIG_FILE, SOCKET_FILE = "bird.conf", "bird.ctl"
_PR_SET_PDEATHSIG = 1


try:  # loaded here, not in the forked child: a dlopen there could wait for a lock another thread held
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the agent dies (BIRD then
    shuts down as on ``birdc down``). The signal follows the thread that
    started the child: the agent starts BIRD from a thread that lives as
    long as it does."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def configure_ok(reply: str) -> bool:
    """Whether ``birdc configure`` took the new file (a parse error names the
    file and line instead, and BIRD keeps running the old one)."""
    return any(s in reply for s in ("Reconfigured", "Reconfiguration in progress",
                                    "Reconfiguration already in progress"))


class BirdError(RuntimeError):
    pass


class BgpSpeaker:
    """This director's BGP speaker.

    ``run(argv, timeout)``: how birdc is run (returns (exit code, output));
    ``spawn(argv)``: how bird is started (a Popen-like object); both are
    seams for the unit tests, the defaults run the programs (in ``netns``
    when given, as the engine programs that namespace)."""

    def __init__(self, state_dir: Path, *, netns: str | None = None, secret_dir: Path = DEFAULT_SECRET_DIR,
                 bird: str = "bird", birdc: str = "birdc", linger: float = 1.0,
                 run: Callable[[list[str], float], tuple[int, str]] | None = None,
                 spawn: Callable[[list[str]], Any] | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.state_dir, self.netns, self.secret_dir = Path(state_dir), netns, Path(secret_dir)
        self.conf, self.sock = self.state_dir / CONFIG_FILE, self.state_dir / SOCKET_FILE
        self.bird, self.birdc_program, self.linger = bird, birdc, linger
        self._run, self._spawn, self._sleep = run or _run, spawn or self._popen, sleep
        self.proc: Any = None
        self.text: str | None = None  # the configuration BIRD runs
        self.bgp = BgpSpec()
        self.decisions: tuple[VipDecision, ...] = ()
        self.problems: tuple[str, ...] = ()
        self.configures = 0
        self.errors = 0

    # -- programs --------------------------------------------------------
    def _argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    def _popen(self, argv: list[str]) -> subprocess.Popen:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)

    def birdc(self, *args: str, timeout: float = 10.0) -> str:
        code, out = self._run(self._argv([self.birdc_program, "-s", str(self.sock), *args]), timeout)
        if code != 0:
            raise BirdError(f"birdc {' '.join(args)}: exit {code}: {out.strip()}")
        return out

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- desired state ---------------------------------------------------
    def update(self, spec: NodeSpec, health: Health) -> tuple[VipDecision, ...]:
        """Announce what ``decide`` allows now. Without peers BIRD is not
        run (and is stopped, withdrawing first, if it was)."""
        bgp, problems = combined(spec)
        decisions = decide(spec, health)
        self.bgp, self.decisions = bgp, decisions
        if not bgp.peers:
            self.problems = tuple(problems)
            if self.running:
                self.stop()
            return decisions
        rendered = render(bgp, [d.prefix for d in decisions if d.announced], self._passwords(bgp))
        self.problems = tuple(problems) + rendered.problems
        for p in rendered.problems:
            log.warning("%s", p)
        self._apply(rendered.text)
        return decisions

    def after_pass(self, programmed: NodeSpec, report: Any, stopping: bool = False) -> None:
        """The agent's hook, after each engine pass: ``programmed`` is the
        spec the engine got (health verdicts applied), ``report`` its
        Report (services with an error are not programmed). Failures are
        logged and counted, never raised: BGP must not stop programming."""
        errors = set(getattr(report, "service_errors", {}) or {}) | set(getattr(report, "problems", {}) or {})
        try:
            self.update(programmed, Health(programmed_keys(programmed, errors), stopping))
        except (BirdError, OSError) as e:
            log.warning("BGP speaker: %s", e)

    def _passwords(self, bgp: BgpSpec) -> dict[str, str]:
        out = {}
        for name in {p.password_file for p in bgp.peers if p.password_file}:
            try:
                out[name] = (self.secret_dir / name).read_text().rstrip("\r\n")
            except OSError as e:
                log.warning("BGP password %s: %s", name, e)
        return out

    def _apply(self, text: str) -> None:
        if not self.running:
            self._write(text)
            self._start()
            self.text = text
            return
        if text == self.text:
            return
        self._write(text)
        reply = self.birdc("configure")
        if not configure_ok(reply):
            self.errors += 1
            raise BirdError(f"BIRD refused the new configuration (it runs the previous one): {reply.strip()}")
        self.configures += 1
        self.text = text

    def _write(self, text: str) -> None:
        """Atomically, 0600 (it may hold passwords)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.conf.with_name(self.conf.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.conf)

    def _start(self, wait: float = 30.0) -> None:
        self._down_leftover()
        self.proc = self._spawn(self._argv([self.bird, "-f", "-c", str(self.conf), "-s", str(self.sock)]))
        end = time.monotonic() + wait
        while True:
            try:
                self.birdc("show", "status", timeout=5.0)
                break
            except BirdError:
                if not self.running or time.monotonic() > end:
                    self.errors += 1
                    raise BirdError(f"bird did not start (exit {self.proc.poll()}): see the agent's log")
                self._sleep(0.1)
        self.configures += 1
        log.info("BGP speaker started (bird, control socket %s)", self.sock)

    def _down_leftover(self) -> None:
        """A BIRD still answering on our socket (an agent that died before
        its child got the signal) is shut down: one speaker per director."""
        if not self.sock.exists():
            return
        try:
            self.birdc("down", timeout=5.0)
            log.warning("shut down a BGP speaker left on %s", self.sock)
            self._sleep(0.5)
        except BirdError:
            pass

    # -- status ----------------------------------------------------------
    def sessions(self) -> dict[str, Session]:
        """Peer address -> its session as BIRD reports it (empty when BIRD
        is not running or does not answer)."""
        if not self.running:
            return {}
        try:
            rows = parse_protocols(self.birdc("show", "protocols"))
        except BirdError as e:
            log.warning("reading the BGP sessions: %s", e)
            return {}
        return {p.address: rows[protocol_name(p)] for p in self.bgp.peers if protocol_name(p) in rows}

    def status(self) -> dict:
        """For a NodeState status: each VIP announced or withdrawn and why,
        each peer's session."""
        sessions = self.sessions()
        return {
            "vips": [{"address": d.vip, "announced": d.announced, "reason": d.reason, "message": d.message}
                     for d in self.decisions],
            "peers": [{"address": p.address, "asn": p.asn,
                       "state": sessions[p.address].bgp_state if p.address in sessions else "Unknown",
                       "info": sessions[p.address].info if p.address in sessions else "",
                       "since": sessions[p.address].since if p.address in sessions else ""}
                      for p in self.bgp.peers],
            **({"problems": list(self.problems)} if self.problems else {}),
        }

    # -- shutdown --------------------------------------------------------
    def withdraw(self) -> None:
        """Announce nothing, sessions kept (SIGTERM's first step, a drain)."""
        if not self.running:
            return
        self.decisions = tuple(VipDecision(d.vip, False, STOPPING, "the agent is stopping")
                               for d in self.decisions)
        self._apply(render(self.bgp, (), self._passwords(self.bgp)).text)

    def stop(self, wait: float = 10.0) -> None:
        """Withdraw everything, let the withdrawals leave, then end BIRD."""
        if not self.running:
            return
        try:
            self.withdraw()
            self._sleep(self.linger)
        except BirdError as e:  # shutting down anyway: the routers drop us with the sessions
            log.warning("withdrawing before shutdown: %s", e)
        try:
            self.birdc("down", timeout=5.0)
        except BirdError as e:
            log.warning("birdc down: %s", e)
            self.proc.terminate()
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=wait)
        self.proc, self.text = None, None
        log.info("BGP speaker stopped")


def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 127, str(e)
    return p.returncode, p.stdout + p.stderr


def programmed_keys(spec: NodeSpec, errors: Mapping | Iterable) -> frozenset:
    """The services of ``spec`` the last pass left as desired: all of them
    but those with an error (the engine's report: service_errors, problems)."""
    bad = set(errors)
    return frozenset(s.key for s in spec.services if s.key not in bad)


def metrics(speaker: BgpSpeaker, prefix: str) -> Iterable:
    """Prometheus families: per VIP announced or not (with the reason), per
    peer its session state, reconfigurations and failures."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    vip = GaugeMetricFamily(f"{prefix}_bgp_vip_announced", "1 while this director announces the VIP over BGP",
                            labels=["vip", "reason"])
    for d in speaker.decisions:
        vip.add_metric([d.vip, d.reason], 1.0 if d.announced else 0.0)
    yield vip
    sess = GaugeMetricFamily(f"{prefix}_bgp_session_up", "1 while the BGP session with the peer is Established",
                             labels=["peer", "state"])
    sessions = speaker.sessions()
    for p in speaker.bgp.peers:
        s = sessions.get(p.address)
        sess.add_metric([p.address, s.bgp_state if s else "Unknown"], 1.0 if s and s.established else 0.0)
    yield sess
    yield CounterMetricFamily(f"{prefix}_bgp_configures", "Configurations BIRD took (start and reconfigure)",
                              value=speaker.configures)
    yield CounterMetricFamily(f"{prefix}_bgp_errors", "BIRD failures (start, refused configuration)",
                              value=speaker.errors)
