"""`slos-serve up`: a local cluster of processes (coordinator + P prefill + D decode + M mixed
workers; a mixed worker prefills and decodes on one engine and serves requests locally).

Every process leads its own process group (in the launcher's session: see
`supervise.spawn_options`) so that stopping it also stops whatever it spawned (vLLM's
engine-core processes); stop() escalates from SIGTERM to SIGKILL, and nothing it started
outlives it. Once started, the cluster is supervised (`ClusterSpec.restart`): a process that
exits is restarted on the same ports with backoff (slos_serve/supervise.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from coordinator.main import LAYOUTS, CoordinatorConfig
from proto import slos_serve_pb2 as pb
from proto import slos_serve_pb2_grpc as pb_grpc
from slos_serve import tls
from slos_serve.client.channel import TlsConfig
from slos_serve.config import API_KEY_ENV, Options, option
from slos_serve.grpc_util import check_health, open_channel
from slos_serve.profile import DEFAULT_OUT, ensure_profile
from slos_serve.supervise import Child, Supervisor, signal_group, spawn_options, stop_groups
from slos_serve.worker.main import WorkerConfig

__all__ = ["ClusterSpec", "LocalCluster", "coordinator_argv", "free_port", "signal_group",
           "spawn_options", "stop_groups", "worker_argv"]  # (process-group helpers: the bench's)


# Ports for the cluster come from below Linux's default ephemeral range
# (32768-60999): vLLM binds its own internal ZMQ ports there at random, and a
# NIXL side-channel port chosen there could be taken before the engine binds it.
_PORT_RANGE = (20000, 32000)
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now, outside the ephemeral range, not handed out before."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(*_PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise OSError(f"no free port in {_PORT_RANGE} on {host}")


@dataclass
class ClusterSpec(Options):
    """A local cluster: `slos-serve up`'s flags, and what a library caller starts."""

    model: str | None = option(help="model directory (required for vllm)", cli_default=None)
    prefill: int | None = option(None, "prefill workers (default 1; 0 with --mixed)")
    decode: int | None = option(None, "decode workers (default 1; 0 with --mixed)")
    mixed: int = option(0, "mixed workers: prefill and decode on one engine, a request served "
                        "locally or (adaptive layout) handed off; any mix with --prefill and "
                        "--decode")
    layout: str = option(
        "auto", "adaptive: the planner chooses per request between local serving and a KV "
        "hand-off, and changes the roles mixed workers play with the load; fixed: every "
        "worker keeps its role, mixed ones serve locally; auto (default): adaptive when "
        "there are mixed workers", choices=LAYOUTS)
    engine: str = option("vllm", "worker engine: vllm, or sim (SIMULATED, for tests and "
                         "overhead)", choices=("vllm", "sim"))
    host: str = option("127.0.0.1")
    port: int = option(0, "coordinator port", cli_default=50051)  # 0: pick a free port
    http_port: int = option(0, "coordinator's OpenAI-compatible HTTP port", cli_default=8000)
    http: bool = option(True, "no HTTP front (gRPC only)", flag="--no-http")
    api_key: str | None = option(
        None, "API key clients must send (HTTP 'Authorization: Bearer', gRPC metadata); "
        f"default ${API_KEY_ENV}; passed to the coordinator in its environment")
    request_log: str | None = option(None, "the coordinator's per-request JSON lines file")
    kv_cache_gib: float = option(1.0, "KV cache per engine")
    spec_tokens: int = option(0, "ngram speculation (0 = off)")
    bind_cpus: bool = option(True, "do not pin each engine to its own core",
                             flag="--no-cpu-bind")
    tiers: str | None = option(None, "SLO tier table JSON for the coordinator")
    log_dir: str | None = option(None, "where process logs go")
    sim_slowdown: float = option(
        1.0, "sim engine: every step takes this many times longer (a SIMULATION KNOB: "
        "a slower machine, many requests in flight at once)")
    extra_worker_args: list[str] = field(default_factory=list)
    scheduler: str = option(
        "slos", "slos: planner admission/routing + SLO-aware engine scheduling (default); "
        "vllm: round-robin + vLLM's own scheduling (baseline)", choices=("slos", "vllm"))
    # None: the simulated engine's for engine "sim", else this machine's (measured once)
    profile: str | None = option(
        None, "performance model JSON (default: measured once on this machine and cached "
        "in .cache/profile-cpu.json; sim: the sim engine's)")
    on_reject: str | None = option(None, "default for requests the planner cannot admit",
                                   choices=("best_effort", "reject"))
    start_timeout_s: float = option(600.0, "start-up timeout (s)", flag="--timeout")
    tls_dir: str | None = option(
        None, "the cluster's CA and certificates (made there with `slos-serve certs`'s code "
        "unless valid ones exist; default LOG_DIR/tls)", metavar="DIR")
    insecure: bool = option(False, "PLAINTEXT between coordinator and workers (default: "
                            "mutual TLS); for trusted networks only")
    client_tls: bool = option(False, "serve clients over TLS too (gRPC and HTTPS) with "
                              "TLS_DIR/server.pem; clients verify it with TLS_DIR/ca.pem")
    restart: bool = option(True, "do not restart a process that exits once the cluster "
                           "is up: stop the cluster instead", flag="--no-restart")
    ray: str | None = option(
        None, "run every process as a Ray actor, placed by resources (needs the `ray` "
        "extra): auto (the running Ray cluster), local (a Ray started for this run), or a "
        "Ray address; no restarts in place (`slos-serve scale` replaces)", metavar="ADDRESS")

    def counts(self) -> dict[str, int]:
        """Workers per role: --prefill / --decode default to 1 each, or 0 with --mixed."""
        default = 0 if self.mixed else 1
        counts = {"prefill": default if self.prefill is None else self.prefill,
                  "decode": default if self.decode is None else self.decode,
                  "mixed": self.mixed}
        if min(counts.values()) < 0 or not (counts["prefill"] + self.mixed
                                            and counts["decode"] + self.mixed):
            raise ValueError(f"workers {counts}: a cluster needs a worker that prefills and "
                             "one that decodes (a mixed one does both)")
        return counts

    def resolve_profile(self) -> str | None:
        """The profile to use: given, shipped (sim), or measured here once and cached."""
        if self.profile or self.scheduler != "slos":
            return self.profile
        if self.engine == "sim":
            return "sim-engine"

        if not self.model:
            raise ValueError("a model is needed to measure a profile")
        return str(ensure_profile(self.model, DEFAULT_OUT, quick=True).resolve())


def worker_argv(spec: ClusterSpec, role: str, *, host: str, port: int, kv_port: int,
                cpu: int | None, metrics_port: int, profile: str | None,
                tls_dir: str | None) -> list[str]:
    """A worker's command line (after `slos-serve`): LocalCluster's and `up --ray`'s
    actors' (on their node's address, with ports free there)."""
    cfg = WorkerConfig(
        host=host, port=port, engine=spec.engine, model=spec.model, kv_port=kv_port,
        kv_cache_gib=spec.kv_cache_gib, cpus=None if cpu is None else str(cpu),
        spec_tokens=spec.spec_tokens, scheduler=spec.scheduler, metrics_port=metrics_port,
        profile=profile if spec.engine == "vllm" else None, tls_dir=tls_dir,
        sim_slowdown=spec.sim_slowdown,
    )
    return [f"{role}-worker", *cfg.to_argv(), *spec.extra_worker_args]


def coordinator_argv(spec: ClusterSpec, *, host: str, port: int, metrics_port: int,
                     http_port: int, profile: str | None, workers: dict[str, list[str]],
                     tls_dir: str | None, mutual: bool, join: bool = False,
                     drop_after_s: float = 0.0) -> list[str]:
    """The coordinator's command line: mutual TLS to the workers with TLS_DIR's node pair
    (`mutual`), TLS to clients with its server pair (spec.client_tls); `join`: workers
    register at runtime (AddWorker), `drop_after_s`: an unreachable one leaves then."""
    assert spec.model  # start() checked
    policy = {"on_reject": spec.on_reject} if spec.on_reject else {}  # else the coordinator's
    tls_flags = {"tls_dir": tls_dir} if mutual and tls_dir else {}
    if spec.client_tls and tls_dir:
        tls_flags["client_tls_cert"] = str(Path(tls_dir) / tls.SERVER_CERT)
        tls_flags["client_tls_key"] = str(Path(tls_dir) / tls.SERVER_KEY)
    cfg = CoordinatorConfig(
        host=host, port=port, metrics_port=metrics_port, http_port=http_port,
        request_log=spec.request_log, prefill=workers.get("prefill") or None,
        decode=workers.get("decode") or None,
        mixed=workers.get("mixed") or None, layout=spec.layout, model=spec.model,
        tiers=spec.tiers, scheduler=spec.scheduler, profile=profile, join=join,
        drop_after_s=drop_after_s, **policy, **tls_flags,
    )
    return ["coordinator", *cfg.to_argv()]


class LocalCluster:
    """Starts, watches and stops a local cluster. Use as a context manager."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.procs: list[Child] = []
        self.log_dir = Path(spec.log_dir or tempfile.mkdtemp(prefix="slos-cluster-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.target = ""
        self.http_url = ""  # http(s)://host:port of the OpenAI-compatible front ("" = off)
        self.tls_dir: Path | None = None  # the certificates' directory (None: no TLS at all)
        self._node: tls.NodeTls | None = None  # mutual TLS between coordinator and workers
        self.supervisor: Supervisor | None = None  # once started, with spec.restart

    # ------------------------------------------------------------ start --
    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        proc = Child(name, argv, self.log_dir / f"{name}.log", env or {})
        proc.launch()
        self.procs.append(proc)
        return proc

    def _worker_argv(self, role: str, port: int, cpu: int | None, metrics_port: int,
                     profile: str | None, host: str | None = None,
                     kv_port: int | None = None) -> list[str]:
        """A worker's command line; `host` (default the spec's) is the address it listens
        on and advertises, its NIXL side channel's too (tests/netns_cluster.py places
        workers on other hosts)."""
        return worker_argv(self.spec, role, host=host or self.spec.host, port=port,
                           kv_port=kv_port or free_port(), cpu=cpu, metrics_port=metrics_port,
                           profile=profile, tls_dir=str(self.tls_dir) if self._node else None)

    def _coordinator_argv(self, port: int, metrics_port: int, http_port: int,
                          profile: str | None, workers: dict[str, list[str]]) -> list[str]:
        return coordinator_argv(self.spec, host=self.spec.host, port=port,
                                metrics_port=metrics_port, http_port=http_port,
                                profile=profile, workers=workers,
                                tls_dir=str(self.tls_dir) if self.tls_dir else None,
                                mutual=self._node is not None)

    def _make_certs(self) -> None:
        """Certificates for mutual TLS (unless --insecure) and client TLS (if asked), made
        with `slos-serve certs`'s code, or reused if valid ones are in --tls-dir."""
        s = self.spec
        if s.insecure and not s.client_tls:
            return
        self.tls_dir = Path(s.tls_dir or self.log_dir / "tls").resolve()
        tls.make_certs(self.tls_dir, hosts=self._cert_hosts())
        self._node = None if s.insecure else tls.NodeTls.load(self.tls_dir)

    def _cert_hosts(self) -> list[str]:
        """The addresses clients may dial the coordinator at (the certificates name them)."""
        return [self.spec.host]

    def internal_credentials(self) -> grpc.ChannelCredentials | None:
        """What a process of the cluster dials a worker with (None: plaintext, --insecure)."""
        return self._node.channel_credentials() if self._node else None

    def client_tls(self) -> TlsConfig | None:
        """The SDK's TLS settings for this cluster's client-facing side (None: plaintext)."""
        if not (self.spec.client_tls and self.tls_dir):
            return None
        return TlsConfig.from_files(root_certificates=self.tls_dir / tls.CA_CERT)

    def client_credentials(self) -> grpc.ChannelCredentials | None:
        """gRPC channel credentials of a client of this cluster (None: plaintext)."""
        config = self.client_tls()
        return config.credentials() if config else None

    def channel(self, name: str) -> grpc.Channel:
        """A blocking channel to the process `name` ("decode-0", "coordinator", ...) as its
        peers dial it: a worker with the cluster's mutual-TLS pair, the coordinator as a
        client does (for tests and tools that talk to one process directly)."""
        address = next(p.address for p in self.procs if p.name == name)
        if name == "coordinator":
            creds, options = self.client_credentials(), None
        else:
            creds, options = self.internal_credentials(), tls.NODE_OPTIONS
        return (grpc.secure_channel(address, creds, options) if creds is not None
                else grpc.insecure_channel(address))

    def start(self, timeout_s: float | None = None, progress: bool = True) -> str:
        """Starts every process and waits until the coordinator reports SERVING (within
        `timeout_s`, default the spec's `start_timeout_s`)."""
        s = self.spec
        if not s.model:
            raise ValueError("ClusterSpec.model: the coordinator needs a model directory "
                             "(for its tokenizer)")
        counts = s.counts()
        profile = s.resolve_profile()
        self._make_certs()
        ncpu = os.cpu_count() or 1
        addresses: dict[str, list[str]] = {role: [] for role in counts}
        roles = [role for role, n in counts.items() for _ in range(n)]
        for k, role in enumerate(roles):  # engine k on core k (mod the cores)
            port, metrics_port = free_port(s.host), free_port(s.host)
            cpu = k % ncpu if (s.bind_cpus and s.engine == "vllm") else None
            proc = self._spawn(f"{role}-{len(addresses[role])}",
                               self._worker_argv(role, port, cpu, metrics_port, profile))
            proc.address, proc.metrics_port = f"{s.host}:{port}", metrics_port
            addresses[role].append(proc.address)
        coord_port, coord_metrics_port = s.port or free_port(s.host), free_port(s.host)
        http_port = (s.http_port or free_port(s.host)) if s.http else 0
        key = self.api_key()
        coordinator = self._spawn("coordinator", self._coordinator_argv(
            coord_port, coord_metrics_port, http_port, profile, addresses),
            env={API_KEY_ENV: key} if key else None)  # not in argv: `ps` shows argv
        coordinator.address = self.target = f"{s.host}:{coord_port}"
        scheme = "https" if s.client_tls else "http"
        self.http_url = f"{scheme}://{s.host}:{http_port}" if http_port else ""
        coordinator.metrics_port = coord_metrics_port
        try:
            asyncio.run(self._wait_ready(timeout_s or s.start_timeout_s, progress))
        except BaseException:
            self.stop()
            raise
        if s.restart:  # a death during start is a start failure; from now on, a restart
            self.supervisor = Supervisor(self.procs)
            self.supervisor.start()
        return self.target

    async def _wait_ready(self, timeout_s: float, progress: bool) -> None:
        started = time.monotonic()
        last_print = 0.0
        while True:
            if dead := self.exited():
                raise RuntimeError(f"{dead} during start")
            healthy = await asyncio.gather(*(
                check_health(p.address, credentials=self.client_credentials())
                if p.name == "coordinator" else
                check_health(p.address, credentials=self.internal_credentials(),
                             options=tls.NODE_OPTIONS) for p in self.procs))
            elapsed = time.monotonic() - started
            if all(healthy) and await self._coordinator_sees_all_workers():
                if progress:
                    print(f"cluster ready in {elapsed:.0f} s: coordinator at {self.target}",
                          file=sys.stderr)
                return
            if elapsed > timeout_s:
                waiting = [p.name for p, ok in zip(self.procs, healthy, strict=True) if not ok]
                raise TimeoutError(f"not ready after {timeout_s:.0f} s: {', '.join(waiting)}")
            if progress and elapsed - last_print >= 5:
                last_print = elapsed
                print(f"  starting: {sum(healthy)}/{len(healthy)} processes healthy "
                      f"({elapsed:.0f} s; logs in {self.log_dir})", file=sys.stderr)
            await asyncio.sleep(0.5)

    async def _coordinator_sees_all_workers(self) -> bool:
        """Ready means routable: the coordinator itself reports every worker healthy."""
        async with open_channel(self.target, self.client_credentials()) as channel:
            try:
                info = await pb_grpc.SloServeStub(channel).ClusterInfo(
                    pb.ClusterInfoRequest(), timeout=2.0, metadata=self.auth_metadata()
                )
            except grpc.RpcError:
                return False
        expected = sum(self.spec.counts().values())
        return sum(w.healthy for w in info.workers) == expected

    def api_key(self) -> str:
        return self.spec.api_key or os.environ.get(API_KEY_ENV, "")

    def auth_metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata of a client of this cluster (the API key, if one is set)."""
        key = self.api_key()
        return (("authorization", f"Bearer {key}"),) if key else ()

    def metrics_urls(self) -> dict[str, str]:
        """Each process's Prometheus endpoint, by process name (coordinator, prefill-0, ...)."""
        return {p.name: f"http://{self.spec.host}:{p.metrics_port}/metrics" for p in self.procs}

    def restarts(self) -> dict[str, int]:
        """How often each process was restarted since the cluster started (by name)."""
        sup = self.supervisor
        return dict(sup.restarts) if sup else {p.name: 0 for p in self.procs}

    def exited(self) -> str:
        """'' while every process runs; else which one exited, its code and its log's end
        (unsupervised: what stops the cluster; supervised, a restart is under way)."""
        for proc in self.procs:
            if proc.popen is not None and (code := proc.popen.poll()) is not None:
                return (f"{proc.name} exited with code {code}; its log ({proc.log_path}) "
                        f"ends with:\n{proc.tail()}")
        return ""

    # ------------------------------------------------------------- stop --
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        """SIGTERM every process group, then SIGKILL what is left after a grace period.
        The supervisor first: nothing is restarted once stopping began."""
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None
        # The coordinator (started last) first, so no new work reaches the workers.
        stop_groups([proc.popen for proc in reversed(self.procs) if proc.popen is not None])
        self.procs.clear()

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    ClusterSpec.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if not args.model:
        print("slos-serve up: --model is required (the coordinator loads its tokenizer; "
              "vllm engines the model)", file=sys.stderr)
        return 2
    spec = ClusterSpec.from_args(args)
    if spec.ray:
        from slos_serve.ray_cluster import RayCluster  # imports Ray when it runs

        cluster: LocalCluster = RayCluster(spec, spec.ray)
    else:
        cluster = LocalCluster(spec)
    if cluster.spec.insecure:
        print(f"slos-serve up: --insecure: {tls.PLAINTEXT_WARNING}", file=sys.stderr)
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, request_stop)
    try:
        cluster.start()
        signal.signal(signal.SIGTERM, request_stop)  # again: ray.init installs its own
        print(f"serving at {cluster.target} (logs in {cluster.log_dir}); Ctrl-C to stop",
              flush=True)
        if cluster.http_url:
            print(f"OpenAI-compatible HTTP: {cluster.http_url}/v1", flush=True)
        if cluster.tls_dir:
            inside = "plaintext" if cluster.spec.insecure else "mutual TLS"
            outside = (f"TLS (clients verify with {cluster.tls_dir / tls.CA_CERT})"
                       if cluster.spec.client_tls else "plaintext")
            print(f"internal channels: {inside}; clients: {outside}; certificates in "
                  f"{cluster.tls_dir}", flush=True)
        print("metrics: " + " ".join(f"{n}={u}" for n, u in cluster.metrics_urls().items()),
              flush=True)
        if cluster.supervisor is not None:
            print("a process that exits is restarted (--no-restart: stop instead)", flush=True)
        while True:  # supervised: the supervisor's thread restarts; this loop just waits
            if cluster.supervisor is None and (dead := cluster.exited()):
                print(f"{dead}\nstopping the cluster (--no-restart)", file=sys.stderr)
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping cluster", file=sys.stderr)
        return 0
    except (RuntimeError, TimeoutError, ValueError) as exc:  # tls.CertError is a ValueError
        print(f"slos-serve up: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish stopping undisturbed
        cluster.stop()
