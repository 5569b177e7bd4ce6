"""Two "hosts" on one machine: network namespaces joined by a veth pair (the netns tests).

Each namespace has its own loopback, its own interface and its own address, so a process
in one reaches the other only across the veth, as it would reach another machine: what
binds to 127.0.0.1 or advertises it is found out. The tests create and remove their
namespaces themselves (root, or CAP_NET_ADMIN, is needed: `skip_reason` says when the
machine cannot).

Every name starts with PREFIX and the creating process's pid; `remove_stale` deletes what
a run that is gone left behind, and `Hosts.destroy` (registered with atexit too) kills
every process in the namespaces before deleting them, which also deletes the veth pair.
Processes run through `ip netns exec`, which enters the namespace and execs the command:
the process keeps its pid, in a process group of its own (in the caller's session, like
`up`'s children: see slos_serve.supervise.spawn_options), so killing the group kills the
whole worker (vLLM's engine processes included).
"""

from __future__ import annotations

import atexit
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from slos_serve.supervise import signal_group, spawn_options

PREFIX = "slos-t"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=30)


def skip_reason() -> str:
    """'' if this machine lets us create a namespace; else why not (EPERM only: any other
    failure is an error, raised)."""
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        done = _ip("netns", "add", probe, check=False)
    except FileNotFoundError:
        return "no `ip` command (iproute2) on this machine"
    if done.returncode == 0:
        _ip("netns", "del", probe)
        return ""
    if "Operation not permitted" in done.stderr or "Permission denied" in done.stderr:
        return ("cannot create a network namespace here (needs CAP_NET_ADMIN): "
                + done.stderr.strip())
    raise RuntimeError(f"ip netns add {probe}: {done.stderr}")


def pids_in(ns: str) -> list[int]:
    """Every process whose network namespace is `ns`."""
    done = _ip("netns", "pids", ns, check=False)
    return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []


def kill_all_in(ns: str, timeout_s: float = 10.0) -> list[int]:
    """SIGKILLs every process of namespace `ns` (a "node" lost at once); the pids killed.
    Waits until none is left (zombies excepted: they hold no socket)."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout_s
    while (pids := [p for p in pids_in(ns) if not _zombie(p)]) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return sorted(set(killed))


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def owner_alive(ns: str) -> bool:
    """Whether the process that made namespace `ns` (its pid is in the name) still runs."""
    pid = ns[len(PREFIX):].split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    return True


def remove_stale() -> list[str]:
    """Deletes every PREFIX namespace (and what runs in it) that a run no longer running
    left behind (a killed pytest: its atexit never ran); another live run's are kept."""
    stale = [ns for line in _ip("netns", "list").stdout.splitlines()
             if (ns := line.split()[0]).startswith(PREFIX) and not owner_alive(ns)]
    for ns in stale:
        kill_all_in(ns)
        _ip("netns", "del", ns, check=False)
    return stale


@dataclass
class Host:
    """One namespace: its name, its end of the veth and its address."""

    ns: str
    ifname: str
    ip: str

    def argv(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *cmd]

    def run(self, cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(cmd), capture_output=True, text=True, **kwargs)

    def link(self, up: bool) -> None:
        """Takes this host's end of the veth up or down (a cable pulled, or put back)."""
        _ip("-n", self.ns, "link", "set", self.ifname, "up" if up else "down")

    def route_default(self) -> None:
        """A default route out of this host's veth end. Nothing is sent along it; Ray finds
        a process's own address by routing a UDP socket to a public address, and without a
        route it falls back to 127.0.0.1 (a driver would not find its node's raylet)."""
        _ip("-n", self.ns, "route", "replace", "default", "dev", self.ifname)

    def rx_tx_bytes(self) -> tuple[int, int]:
        """Bytes this host's veth end received and sent (the kernel's counters)."""
        done = self.run(["cat", f"/sys/class/net/{self.ifname}/statistics/rx_bytes",
                         f"/sys/class/net/{self.ifname}/statistics/tx_bytes"], check=True)
        rx, tx = done.stdout.split()
        return int(rx), int(tx)


@dataclass
class Hosts:
    """Two namespaces a and b, joined by one veth pair, on a random 10.S.0.0/24 subnet.
    A context manager; `spawn` starts processes in them, `destroy` removes everything."""

    a: Host
    b: Host
    procs: list[subprocess.Popen] = field(default_factory=list)
    created: list[str] = field(default_factory=list)  # the namespaces this object made

    @classmethod
    def create(cls) -> Hosts:
        tag = secrets.token_hex(3)  # not `random`: a test plugin may seed it
        subnet = 213 + secrets.randbelow(38)  # 10.213-10.250
        owner = f"{PREFIX}{os.getpid()}-{tag}"  # the pid: remove_stale spares live runs
        a = Host(f"{owner}a", f"st{tag}a", f"10.{subnet}.0.1")
        b = Host(f"{owner}b", f"st{tag}b", f"10.{subnet}.0.2")
        hosts = cls(a, b)
        try:
            for h in (a, b):
                _ip("netns", "add", h.ns)  # fails on a name taken: then nothing of ours
                hosts.created.append(h.ns)
            atexit.register(hosts.destroy)
            _ip("link", "add", a.ifname, "netns", a.ns, "type", "veth",
                "peer", "name", b.ifname, "netns", b.ns)
            for h in (a, b):
                _ip("-n", h.ns, "addr", "add", f"{h.ip}/24", "dev", h.ifname)
                _ip("-n", h.ns, "link", "set", "lo", "up")
                h.link(True)
        except BaseException:
            hosts.destroy()
            raise
        return hosts

    def spawn(self, host: Host, cmd: list[str], log: Path,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        """`cmd` in `host`'s namespace, in a process group of its own, output to `log`."""
        with open(log, "w") as out:
            proc = subprocess.Popen(host.argv(cmd), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                    **spawn_options())  # type: ignore[arg-type]
        self.procs.append(proc)
        return proc

    def destroy(self) -> None:
        """Every process started here (by group), then whatever else runs in the
        namespaces, then the namespaces (deleting one deletes its veth end, and so the
        pair). Idempotent."""
        for proc in self.procs:
            signal_group(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        for ns in self.created:
            kill_all_in(ns)
            _ip("netns", "del", ns, check=False)
        self.created.clear()

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def log_tails(paths: list[Path], lines: int = 15) -> str:
    """Each log's last lines, for a failing assertion's message."""
    return "\n".join(f"--- {p.name}\n" + "\n".join(
        p.read_text(errors="replace").splitlines()[-lines:]) for p in sorted(paths))


@contextmanager
def made_or_skipped() -> Iterator[Hosts]:
    """A test's two hosts (what stale runs left removed first); the test skips, saying why,
    where the machine cannot create namespaces."""
    import pytest

    if reason := skip_reason():
        pytest.skip(reason)
    remove_stale()
    with Hosts.create() as hosts:
        yield hosts
