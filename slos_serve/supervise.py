"""A local cluster's child processes: how each is started, stopped, and restarted when it dies.

Every child leads its own process group (in the launcher's session: see `spawn_options`),
so that signalling the group reaches whatever the child spawned (vLLM's EngineCore,
VLLM::Worker, resource_tracker). Stopping escalates from SIGTERM to SIGKILL (`stop_groups`).

`Supervisor` keeps the children running: a child that exits has its whole group killed
(SIGKILL: the orphans of a dead vLLM worker otherwise keep its ports, and a worker restarted
on them never becomes ready), and is started again with the same command line, so on the same
ports (its address is what the coordinator knows), after a backoff that doubles with each
death in a row (0.5 s, 1, 2, 4 ... capped at 30 s) and starts again from 0.5 s once the child
stayed up STABLE_S. It never gives up on a child; one that restarts more than
LOOP_RESTARTS times within LOOP_WINDOW_S is reported loudly, and keeps being restarted at
the capped backoff while the rest of the cluster serves.

Imports nothing heavy: every `slos-serve` child imports this (`die_with_parent`) at start.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

STOP_GRACE_S = 20.0
PARENT_ENV = "SLOS_PARENT_PID"

BACKOFF_FIRST_S = 0.5
BACKOFF_CAP_S = 30.0
STABLE_S = 60.0  # up this long: its next death is a first one again (backoff from 0.5 s)
LOOP_WINDOW_S = 600.0
LOOP_RESTARTS = 10  # restarts within LOOP_WINDOW_S beyond which a child is reported loudly
GROUP_GONE_S = 5.0  # a killed group's members still alive after this: restarted anyway
POLL_S = 0.1


@dataclass
class Child:
    """One process of the cluster: its command line (the same at every restart) and the
    process now running it."""

    name: str
    argv: list[str]  # after `python -m slos_serve.cli`
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)  # on top of the launcher's
    popen: subprocess.Popen | None = None
    address: str = ""
    metrics_port: int = 0

    def launch(self, restart: int = 0) -> None:
        """Starts the process; a restart appends to the log, the first start truncates it."""
        with open(self.log_path, "a" if restart else "w") as log:  # the child keeps its copy
            if restart:
                log.write(f"\n----- restart {restart} of {self.name} -----\n")
                log.flush()
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "slos_serve.cli", *self.argv],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid()),
                     **self.env},
                **spawn_options(),  # type: ignore[arg-type]
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never launched"
        return self.popen.pid

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def backoff_s(deaths_in_a_row: int) -> float:
    """The wait before restarting a child that died `deaths_in_a_row` times in a row."""
    return min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2.0 ** max(0, deaths_in_a_row - 1))


@dataclass
class _Watch:
    started: float  # monotonic time of the last (re)start
    deaths: int = 0  # in a row (reset once up STABLE_S)
    restart_due: float | None = None  # dead, restarted at this time
    killed_at: float = 0.0
    restarts: deque[float] = field(default_factory=deque)  # times, within LOOP_WINDOW_S
    loop_reported: bool = False


class Supervisor:
    """Restarts the children that exit, from a thread of its own, until `stop()`.

    The thread outlives every child it starts: a child asks the kernel for SIGTERM when its
    parent THREAD exits (`die_with_parent`), so the thread must not end before the cluster
    stops."""

    def __init__(self, children: Sequence[Child],
                 report: Callable[[str], None] | None = None) -> None:
        self.children = list(children)
        self.restarts: dict[str, int] = {c.name: 0 for c in self.children}
        self._report = report or (lambda text: print(text, file=sys.stderr, flush=True))
        now = time.monotonic()
        self._watch = {c.name: _Watch(started=now) for c in self.children}
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # held while a child is being launched
        self._thread = threading.Thread(target=self._run, name="slos-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """No restart once this returns (one under way has finished: its process is in
        `children`, to be stopped with the rest)."""
        with self._lock:
            self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopping.wait(POLL_S):
            for child in self.children:
                try:
                    self._check(child, time.monotonic())
                except Exception as exc:  # a failed restart is retried, never fatal
                    self._report(f"supervisor: {child.name}: {exc!r}")
                    watch = self._watch[child.name]
                    if watch.restart_due is not None:  # dead: try again later
                        watch.restart_due = time.monotonic() + BACKOFF_CAP_S

    def _check(self, child: Child, now: float) -> None:
        watch = self._watch[child.name]
        assert child.popen is not None
        if watch.restart_due is None:
            code = child.popen.poll()
            if code is None:
                if watch.deaths and now - watch.started >= STABLE_S:
                    watch.deaths = 0
                return
            self._died(child, watch, code, now)
        if now < watch.restart_due:  # type: ignore[operator]
            return
        if group_alive(child.pid) and now - watch.killed_at < GROUP_GONE_S:
            signal_group(child.pid, signal.SIGKILL)
            return  # its members hold ports until they are gone: check again soon
        if group_alive(child.pid):
            self._report(f"supervisor: {child.name}: processes of its group {child.pid} "
                         f"still alive {GROUP_GONE_S:.0f} s after SIGKILL; restarting anyway")
        self._restart(child, watch, now)

    def _died(self, child: Child, watch: _Watch, code: int, now: float) -> None:
        signal_group(child.pid, signal.SIGKILL)  # its engine processes: no orphans
        watch.killed_at = now
        watch.deaths += 1
        delay = backoff_s(watch.deaths)
        watch.restart_due = now + delay
        self._report(f"supervisor: {child.name} (pid {child.pid}) exited with code {code}; "
                     f"restarting in {delay:.1f} s (death {watch.deaths} in a row); its log "
                     f"({child.log_path}) ends with:\n{child.tail(15)}")

    def _restart(self, child: Child, watch: _Watch, now: float) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            self.restarts[child.name] += 1
            child.launch(restart=self.restarts[child.name])
        watch.started, watch.restart_due = time.monotonic(), None
        watch.restarts.append(now)
        while watch.restarts and now - watch.restarts[0] > LOOP_WINDOW_S:
            watch.restarts.popleft()
        self._report(f"supervisor: {child.name} restarted (pid {child.pid}, restart "
                     f"{self.restarts[child.name]})")
        looping = len(watch.restarts) > LOOP_RESTARTS
        if looping and not watch.loop_reported:
            self._report(f"supervisor: !!! {child.name} restarted {len(watch.restarts)} times "
                         f"within {LOOP_WINDOW_S / 60:.0f} min: it keeps dying (see "
                         f"{child.log_path}); still restarting it every "
                         f"{BACKOFF_CAP_S:.0f} s at most, the rest of the cluster serves !!!")
        watch.loop_reported = looping


# ------------------------------------------------------------ process groups --


def spawn_options() -> dict[str, object]:
    """Popen options for a child that leads its own process group, in the caller's session.

    A process group, so `signal_group` stops the child with the engine processes it spawns;
    not a new session: Linux's autogroup scheduler (on by default) gives every session a CPU
    share as a unit, and with engines pinned to cores and vLLM's busy engine-core loops in
    sessions of their own, other processes (the coordinator, the load generator, the other
    engine) went unscheduled for 0.5-2.9 s at a time on 2 cores.
    No `preexec_fn` on Python >= 3.11: with one, the child runs Python's at-fork handlers
    before exec, and gRPC's (this process may hold channels) then broke the child's epoll
    and aborted it (`epoll_wait error: Bad file descriptor`, exit -6; seen in CI).
    `SLOS_PARENT_PID` lets a `slos-serve` child ask to be stopped with its launcher
    (`die_with_parent`)."""
    if sys.version_info >= (3, 11):
        return {"process_group": 0}
    return {"preexec_fn": os.setpgrp}


def die_with_parent() -> None:
    """In a child started with `SLOS_PARENT_PID`: SIGTERM when that launcher dies (Linux;
    strictly, when the launcher's thread that started the child ends)."""
    parent = os.environ.pop(PARENT_ENV, "")
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def stop_groups(popens: Sequence[subprocess.Popen]) -> None:
    """SIGTERM each child's process group (in the order given), wait up to STOP_GRACE_S in
    all, then SIGKILL whatever is left in the groups (vLLM's engine processes included)."""
    for popen in popens:
        signal_group(popen.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for popen in popens:
        try:
            popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for popen in popens:
        signal_group(popen.pid, signal.SIGKILL)  # stragglers in the group, if any
        if popen.poll() is None:
            popen.wait(timeout=5)


def signal_group(pid: int, sig: int) -> None:
    """Sends `sig` to the process group `pid` leads (gone or not ours: nothing). Reaches the
    group as long as any member lives, the leader dead or not."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group `pgid` (Linux /proc; elsewhere: the
    leader if it lives). Zombies count as gone: they hold no port, no memory, and an
    orphan's zombie waits for whoever adopted it to reap it."""
    if not os.path.isdir("/proc/self"):
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except (ProcessLookupError, PermissionError):
            return []
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):  # state, ppid, pgrp
            members.append(int(entry))
    return members


def group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))
