"""Command line of a worker process (`slos-serve prefill-worker|decode-worker|mixed-worker`).

`run` is `slos-serve mixed-worker`'s: a colocated worker, prefill and decode on one engine,
serving whole requests locally (no KV hand-off) or, under the adaptive layout, either side
of a hand-off; the coordinator's plan decides what it gets. The prefill and decode workers'
commands are their packages' (`prefill_worker.main`, `decode_worker.main`).

The worker's gRPC service is imported in `serve`, so that `slos-serve --help` (which imports
every command module) stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from dataclasses import dataclass

from grpc_health.v1.health_pb2 import HealthCheckResponse

from kv_transfer.config import ENV_SIDE_CHANNEL_HOST, engine_env
from proto import slos_serve_pb2 as pb
from slos_serve.config import Options, option
from slos_serve.core.perf_model import load as load_perf_model
from slos_serve.engine import create_engine
from slos_serve.engine.lifeline import LIFELINE_ENV
from slos_serve.grpc_util import add_service, bind, create_server, serve_until_signal, set_health
from slos_serve.metrics import (
    REGISTRY,
    WorkerMetrics,
    kv_bytes_per_token,
    metrics_port_arg,
    serve_metrics,
)
from slos_serve.tls import CertError, node_tls
from slos_serve.tokenizer import load_detokenizer
from slos_serve.worker.lifecycle import ENGINE_DEAD_EXIT, WatchedHealth, watch_engine

log = logging.getLogger("slos_serve.worker")
SERVING = HealthCheckResponse.SERVING


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConfig(Options):
    """A prefill, decode or mixed worker process: its flags, and the argv `up` starts it with."""

    host: str = option("127.0.0.1", "address to listen on")
    port: int = option(help="gRPC port")
    engine: str = option("vllm", "vllm (default) or sim: a SIMULATED engine, no model runs",
                         choices=("vllm", "sim"))
    model: str | None = option(None, "model directory (required for vllm)")
    max_model_len: int = option(2048)
    kv_port: int = option(5600, "NIXL side-channel port of this engine (unique per engine)")
    kv_cache_gib: float = option(1.0, "KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE)")
    cpus: str | None = option(None, "CPU cores for this engine's threads, e.g. '0' or '0-1' "
                                    "(VLLM_CPU_OMP_THREADS_BIND); default: vLLM's choice")
    spec_tokens: int = option(0, "max ngram speculative tokens per step (0 = off); the "
                                 "coordinator's plan caps them per TPOT tier")
    scheduler: str = option(
        "slos", "slos (default): carry out the coordinator's plan in the engine (EDF "
        "prefill, best effort last, per-step token budgets for the tightest TPOT, "
        "speculation capped per tier); vllm: vLLM's own fcfs scheduling, the baseline "
        "(plans are accepted but ignored)", choices=("slos", "vllm"))
    profile: str | None = option(
        None, "performance model JSON (slos-serve profile's output) the engine's scheduler "
        "sizes step token budgets with; without it only the plan's step_token_budget "
        "applies", metavar="PATH")
    sim_kv_blocks: int = option(4096, "simulated engine: KV blocks")
    sim_slowdown: float = option(
        1.0, "simulated engine: every step takes this many times longer (slower token "
        "streams, e.g. many requests in flight at once for the fault tests)")
    metrics_port: int | None = option(
        None, "Prometheus /metrics HTTP port (default: --port + 1000; 0 = off)",
        parse=metrics_port_arg)
    tls_dir: str | None = option(
        None, "mutual TLS: serve with DIR/node.pem + node-key.pem and refuse any peer "
        "without a certificate from DIR/ca.pem (`slos-serve certs DIR`); default plaintext, "
        "for trusted networks only", metavar="DIR")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    WorkerConfig.add_arguments(parser)


def configure_environment(cfg: WorkerConfig) -> None:
    """vLLM reads these at import and in the processes it spawns: set them first.

    The side channel's host is the one peers connect to: --host, unless the environment
    already names one (a worker listening on a wildcard address must). The simulated
    engine moves no KV and reads none of them.
    """
    if cfg.engine != "vllm":
        return
    try:
        env = engine_env(
            cfg.kv_port,
            host=os.environ.get(ENV_SIDE_CHANNEL_HOST, cfg.host),
            kv_cache_gib=max(1, round(cfg.kv_cache_gib)),
            cpu_bind=cfg.cpus or None,
        )
    except ValueError as exc:
        raise SystemExit(f"NIXL side channel: {exc} (set --host or {ENV_SIDE_CHANNEL_HOST})"
                         ) from exc
    os.environ.update(env)


def build_engine(cfg: WorkerConfig):
    profile = None
    if cfg.profile:
        try:  # fail here, not silently inside vLLM's engine core
            load_perf_model(cfg.profile)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"--profile {cfg.profile}: not a performance model: {exc}") from exc
        profile = os.path.abspath(cfg.profile)
    if cfg.engine == "vllm":
        if not cfg.model:
            raise SystemExit("--model is required with --engine vllm")
        return create_engine(
            "vllm",
            model=cfg.model,
            max_model_len=cfg.max_model_len,
            speculative_tokens=cfg.spec_tokens,
            scheduler=cfg.scheduler,
            perf_profile=profile,
        )
    detokenize = None
    if cfg.model:
        detokenize = load_detokenizer(cfg.model)
    if not cfg.sim_slowdown > 0:
        raise SystemExit(f"--sim-slowdown: must be > 0, not {cfg.sim_slowdown}")
    engine = create_engine(
        "sim",
        model=cfg.model or "sim",
        max_model_len=cfg.max_model_len,
        kv_blocks=cfg.sim_kv_blocks,
        detokenize=detokenize,
        scheduler=cfg.scheduler,
    )
    engine.slowdown = cfg.sim_slowdown  # type: ignore[attr-defined]  (a SimEngine)
    return engine


async def serve(role: str, cfg: WorkerConfig) -> int:
    """Serves until stopped; the exit code (ENGINE_DEAD_EXIT: the engine died)."""
    from slos_serve.worker.service import WorkerService

    node = node_tls(cfg.tls_dir, f"{role} worker")  # before the engine: a bad dir fails fast
    engine = build_engine(cfg)
    # The engine starts first: vLLM spawns its engine-core process, and a fork
    # after gRPC has started its pollers can kill this process. Until the port
    # is open, the launcher's health checks simply see "not yet".
    log.info("%s worker: starting %s engine", role, cfg.engine)
    await engine.start()
    names = [pb.DESCRIPTOR.services_by_name["Worker"].full_name]
    health = WatchedHealth()
    server, health = create_server(names, health=health)
    port = bind(server, cfg.host, cfg.port, node.server_credentials() if node else None)
    # The simulated engine moves no KV: its hand-offs are measured in blocks only.
    # vLLM's KV cache has the engine's dtype, float32 here (VllmEngine's default).
    bytes_per_token = kv_bytes_per_token(cfg.model, 4) if cfg.engine == "vllm" else None
    metrics = WorkerMetrics(role, f"{cfg.host}:{port}", registry=REGISTRY, load=engine.load,
                            kv_bytes_per_token=bytes_per_token)
    service = WorkerService(role, engine, metrics)
    health.on_unwatched = lambda: service.held.release_all("no coordinator watches this worker")
    add_service(server, pb.DESCRIPTOR.services_by_name["Worker"], service, pb)
    serve_metrics(cfg.host, cfg.metrics_port, port, f"{role} worker")
    await server.start()
    await set_health(health, names, SERVING)
    log.info("%s worker ready on %s:%d (engine %s%s)", role, cfg.host, port, cfg.engine,
             ", mutual TLS" if node else "")
    stop = asyncio.Event()
    engine_watch = asyncio.get_running_loop().create_task(
        watch_engine(engine, health, ["", *names], stop))
    await serve_until_signal(server, health, on_stop=engine.shutdown, stop=stop)
    if engine_watch.done() and engine_watch.result():
        return ENGINE_DEAD_EXIT
    engine_watch.cancel()
    return 0


def run_role(role: str, args: argparse.Namespace) -> int:
    cfg = WorkerConfig.from_args(args)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {role}[%(process)d] %(levelname)s %(message)s"
    )
    configure_environment(cfg)
    os.environ[LIFELINE_ENV] = str(os.getpid())  # vLLM's processes die with this one
    try:
        return asyncio.run(serve(role, cfg))
    except CertError as exc:
        raise SystemExit(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    """`slos-serve mixed-worker`."""
    return run_role("mixed", args)
