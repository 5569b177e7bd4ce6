"""A cluster over two namespaces, started the static way (no launcher on the far host):
each worker is `slos-serve prefill-worker|decode-worker --host ITS_ADDRESS ...` on its
host, and one `slos-serve coordinator --prefill A:P,B:P --decode A:P,B:P` lists them
(README, "Across machines without Ray (static)").

The command lines are `up`'s own (`LocalCluster._worker_argv` / `_coordinator_argv`), with
each worker's host set to its namespace's address: the worker listens there and advertises
it, its NIXL side channel included (one side-channel port per engine). Mutual TLS as `up`
does it, with certificates that name both addresses (`slos-serve certs --host A --host B`).
Ports come from 53000-53999 (inside namespaces of our own, nothing else binds there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from netns import Host, Hosts, log_tails

from slos_serve import tls
from slos_serve.supervise import PARENT_ENV
from slos_serve.up import ClusterSpec, LocalCluster

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "tests" / "netns_client.py"
PORT_BASE = 53000


@dataclass
class Worker:
    name: str
    role: str
    host: Host
    port: int
    kv_port: int
    metrics_port: int
    proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.host.ip}:{self.port}"


@dataclass
class StaticCluster:
    """Workers placed on `hosts`' namespaces, the coordinator on hosts.a."""

    hosts: Hosts
    spec: ClusterSpec  # engine, model, scheduler, extra worker args; host is set here
    placement: list[tuple[str, Host]]  # (role, host) per worker
    log_dir: Path
    use_tls: bool = True
    env: dict[str, str] = field(default_factory=dict)  # on top of ours, for every process
    host_env: dict[str, dict[str, str]] = field(default_factory=dict)  # by namespace name
    workers: list[Worker] = field(default_factory=list)
    target: str = ""
    client_stderr: str = ""  # the load generator's last run's (its timings)

    def start(self) -> str:
        """Certificates, workers, coordinator; the coordinator's address (reachable from
        hosts.a only: `run_client` runs there). Readiness is the client's to wait for."""
        a, b = self.hosts.a, self.hosts.b
        tls_dir = self.log_dir / "tls"
        if self.use_tls:
            tls.make_certs(tls_dir, hosts=[a.ip, b.ip])
        self.spec.host = a.ip
        self.spec.tls_dir = str(tls_dir)
        self.spec.insecure = not self.use_tls
        self.spec.http = False
        launcher = LocalCluster(self.spec)  # only its command lines and TLS: never started
        launcher.log_dir = self.log_dir
        launcher._make_certs()  # keeps the certificates above (valid for a.ip)
        profile = self.spec.resolve_profile()
        port = PORT_BASE
        ncpu = os.cpu_count() or 1
        counts: dict[str, int] = {}
        for role, host in self.placement:
            k = counts[role] = counts.get(role, -1) + 1
            w = Worker(f"{role}-{k}", role, host, port, port + 1, port + 2)
            port += 10
            # up's rule: engine k on core k (all on this one machine's cores)
            cpu = len(self.workers) % ncpu if self.spec.engine == "vllm" else None
            argv = launcher._worker_argv(role, w.port, cpu, w.metrics_port, profile,
                                         host=host.ip, kv_port=w.kv_port)
            w.proc = self._spawn(host, w.name, argv)
            self.workers.append(w)
        addresses: dict[str, list[str]] = {}
        for w in self.workers:
            addresses.setdefault(w.role, []).append(w.address)
        argv = launcher._coordinator_argv(port, port + 1, 0, profile, addresses)
        self._spawn(a, "coordinator", argv)
        self.target = f"{a.ip}:{port}"
        return self.target

    def _spawn(self, host: Host, name: str, argv: list[str]) -> subprocess.Popen:
        env = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), PARENT_ENV: str(os.getpid()),
               **self.env, **self.host_env.get(host.ns, {})}
        return self.hosts.spawn(host, [sys.executable, "-m", "slos_serve.cli", *argv],
                                self.log_dir / f"{name}.log", env)

    def logs(self) -> str:
        """Every process's log's end, for a failing assertion."""
        return log_tails(list(self.log_dir.glob("*.log")))

    def run_client(self, phases: list[dict], on_fault: Callable[[], None] | None = None,
                   timeout_s: float = 300) -> list[list[dict]]:
        """`run_client` against this cluster's coordinator (its stderr: client_stderr)."""
        outcomes, self.client_stderr = run_client(
            self.hosts, self.target, self.log_dir, len(self.workers), phases, on_fault,
            ready_timeout_s=self.spec.start_timeout_s, timeout_s=timeout_s, logs=self.logs)
        return outcomes


def run_client(hosts: Hosts, target: str, log_dir: Path, workers: int, phases: list[dict],
               on_fault: Callable[[], None] | None = None, ready_timeout_s: float = 300,
               timeout_s: float = 300, logs: Callable[[], str] = str
               ) -> tuple[list[list[dict]], str]:
    """tests/netns_client.py in hosts.a against the coordinator at `target`, once it reports
    `workers` healthy workers: the streams of each phase as it saw them, and the client's
    stderr (its timings). `on_fault()` runs when a phase reaches its fault point; `logs()`
    goes into a failure's message."""
    job = log_dir / "job.json"
    out = log_dir / "outcomes.json"
    job.write_text(json.dumps({"workers": workers, "phases": phases,
                               "ready_timeout_s": ready_timeout_s}))
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + str(ROOT / "tests")}
    proc = subprocess.Popen(hosts.a.argv([sys.executable, str(CLIENT), target, str(job),
                                          str(out)]),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    hosts.procs.append(proc)
    assert proc.stdin is not None and proc.stdout is not None
    for line in proc.stdout:
        if line == "fault\n":
            if on_fault is not None:
                on_fault()
            proc.stdin.write("go\n")
            proc.stdin.flush()
        elif line == "done\n":
            break
    code = proc.wait(timeout=timeout_s)
    stderr = proc.stderr.read() if proc.stderr else ""
    assert code == 0, f"client exited {code}: {stderr[-3000:]}\n{logs()}"
    return json.loads(out.read_text()), stderr
