"""A Ray cluster over the two namespaces of tests/netns.py, started as a user starts one on
two machines: `ray start --head` on A, `ray start --address A:PORT` on B, each node with its
own address (`--node-ip-address`) and the role resources that place the project's processes
(slos_serve/ray_cluster.py's ROLE_RESOURCE), then `slos-serve up --ray A:PORT` run on A
(the head node) exactly as documented; its load generator is tests/netns_client.py on A.

Auth: Ray 2.60 turns token auth on for a cluster `ray start --head` creates, with a token
it generates into ~/.ray/auth_token unless one is given; a node joining must present the
same token. Here one token is made per cluster and given to every Ray process and driver
(RAY_AUTH_MODE=token, RAY_AUTH_TOKEN), as a user's nodes share theirs.

Every process runs in a process group of its own (Hosts.spawn); `RayNodes.stop` stops the
nodes (`ray start --block` stops what it started when signalled) and Hosts.destroy kills
whatever is left. Ports: GCS_PORT for the GCS, the rest Ray's defaults (in namespaces of
our own, nothing else binds there). Ray's temporary directories are per node (/tmp/ray-NS:
Unix socket paths must stay short), removed by stop().
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from netns import PREFIX, Host, Hosts, log_tails, owner_alive, pids_in

from slos_serve.supervise import PARENT_ENV

ROOT = Path(__file__).resolve().parent.parent
GCS_PORT = 53900
TEMP_ROOT = Path("/tmp")  # Ray's temporary directory per node: TEMP_ROOT/ray-NAMESPACE
OBJECT_STORE = 128 * 1024**2  # per node: nothing big goes through it (Ray's default: 30 % of RAM)
RAY = str(Path(sys.executable).with_name("ray"))

# A driver on A: the alive nodes (waiting up to a timeout for `want` of them), and what is
# left of the project on the cluster: named actors, live actors (Ray's GCS table: no
# dashboard needed), placement groups not removed.
PROBE = """
import json, sys, time
import ray
from ray._private import state
ray.init(address=sys.argv[1], log_to_driver=False)
want, deadline = int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while True:
    nodes = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])
    if len(nodes) >= want or time.monotonic() > deadline:
        break
    time.sleep(0.5)
actors = [a["Name"] or a["ActorClassName"] for a in state.actors().values()
          if a["State"] != "DEAD"]
groups = [g["name"] for g in ray.util.placement_group_table().values()
          if g["state"] != "REMOVED"]
print(json.dumps({"nodes": nodes, "named": ray.util.list_named_actors(all_namespaces=True),
                  "actors": actors, "groups": groups}))
"""


@dataclass
class RayNodes:
    """A Ray head node on hosts.a and a worker node on hosts.b."""

    hosts: Hosts
    log_dir: Path
    resources: dict[str, dict[str, float]]  # each node's custom resources, by namespace
    cpus: dict[str, int]  # each node's logical CPUs, by namespace
    env: dict[str, dict[str, str]] = field(default_factory=dict)  # more, by namespace
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.hosts.a.ip}:{GCS_PORT}"

    def auth_env(self) -> dict[str, str]:
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def _temp_dir(self, host: Host) -> Path:
        return TEMP_ROOT / f"ray-{host.ns}"

    def start(self, timeout_s: float = 180) -> None:
        """The head, then the worker node; returns once both are alive in the cluster."""
        head = ["--head", f"--port={GCS_PORT}", "--include-dashboard=false"]
        for want, (host, role) in enumerate(((self.hosts.a, head),
                                             (self.hosts.b, [f"--address={self.address}"])),
                                            start=1):
            host.route_default()
            cmd = [RAY, "start", "--block", *role, f"--node-ip-address={host.ip}",
                   f"--temp-dir={self._temp_dir(host)}", "--disable-usage-stats",
                   f"--num-cpus={self.cpus[host.ns]}", f"--object-store-memory={OBJECT_STORE}",
                   f"--resources={json.dumps(self.resources[host.ns])}"]
            self.procs[host.ns] = self.hosts.spawn(
                host, cmd, self.log_dir / f"ray-{host.ns[-1]}.log",
                {**self.auth_env(), **self.env.get(host.ns, {})})
            nodes = self.probe(want, timeout_s, self.procs[host.ns])["nodes"]
            assert host.ip in nodes, f"{host.ip} not a Ray node: {nodes}\n{self.logs()}"

    def probe(self, want_nodes: int = 0, timeout_s: float = 0,
              node: subprocess.Popen | None = None) -> dict:
        """PROBE's answer (a driver on A), after waiting up to `timeout_s` for the cluster
        to have `want_nodes` alive nodes (failing at once if `node`, a `ray start`, exits)."""
        probe = subprocess.Popen(
            self.hosts.a.argv([sys.executable, "-c", PROBE, self.address, str(want_nodes),
                               str(timeout_s)]), env={**os.environ, **self.auth_env()},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout_s + 120
        while probe.poll() is None:
            if (node is not None and node.poll() is not None) or time.monotonic() > deadline:
                probe.kill()
                probe.wait()
                raise AssertionError(f"the Ray node exited, or the probe hangs\n{self.logs()}")
            time.sleep(0.2)
        out, err = probe.communicate()
        assert probe.returncode == 0, f"probe: {err[-3000:]}\n{self.logs()}"
        return json.loads(out.strip().splitlines()[-1])

    def status(self) -> str:
        """`ray status` on A (what a user runs to see the cluster's resource usage)."""
        done = self.hosts.a.run([RAY, "status", f"--address={self.address}"],
                                env={**os.environ, **self.auth_env()}, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    def logs(self) -> str:
        return log_tails(list(self.log_dir.glob("ray-*.log")))

    def stop(self) -> None:
        """SIGTERM each `ray start --block` (it stops its node's processes), then removes
        the temporary directories; Hosts.destroy kills what would be left."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        for host in (self.hosts.a, self.hosts.b):
            shutil.rmtree(self._temp_dir(host), ignore_errors=True)


@dataclass
class RayUp:
    """`slos-serve up --ray ADDRESS ARGS` on hosts.a, as a user runs it on the head node."""

    nodes: RayNodes
    args: list[str]
    proc: subprocess.Popen | None = None
    target: str = ""

    @property
    def log(self) -> Path:
        return self.nodes.log_dir / "up.log"

    def start(self, timeout_s: float = 600) -> str:
        """The coordinator's address, once `up` says it serves (every worker registered)."""
        env = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), PARENT_ENV: str(os.getpid()),
               **self.nodes.auth_env()}
        self.proc = self.nodes.hosts.spawn(
            self.nodes.hosts.a, [sys.executable, "-m", "slos_serve.cli", "up", "--ray",
                                 self.nodes.address, *self.args], self.log, env)
        deadline = time.monotonic() + timeout_s
        while not (found := re.search(r"^serving at (\S+)", self.log.read_text(), re.M)):
            assert self.proc.poll() is None, f"up exited {self.proc.returncode}:\n{self.tail()}"
            assert time.monotonic() < deadline, f"up not serving after {timeout_s} s\n{self.tail()}"
            time.sleep(0.5)
        self.target = found.group(1)
        return self.target

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self, timeout_s: float = 180) -> int:
        """Ctrl-C, as a user stops it; its exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=timeout_s)


def project_processes(ns: str) -> list[str]:
    """The project's processes left in namespace `ns` (its entry points, the actors that
    host them, vLLM's engine processes): their command lines."""
    out = []
    for pid in pids_in(ns):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(mark in cmd for mark in ("slos_serve", "ServeProcess", "VLLM", "netns_client")):
            out.append(f"{pid}: {cmd.strip()}")
    return out


def remove_stale_temp_dirs() -> None:
    """Ray's temporary directories that a run no longer running left (a killed pytest)."""
    for path in TEMP_ROOT.glob(f"ray-{PREFIX}*"):
        if not owner_alive(path.name.removeprefix("ray-")):
            shutil.rmtree(path, ignore_errors=True)
