"""Command line of a worker process (`slos-serve prefill-worker|decode-worker`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from grpc_health.v1.health_pb2 import HealthCheckResponse

from proto import slos_serve_pb2 as pb
from slos_serve.grpc_util import bind, create_server, serve_until_signal
from slos_serve.metrics import metrics_port_arg

log = logging.getLogger("slos_serve.worker")
SERVING = HealthCheckResponse.SERVING


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, required=True, help="gRPC port")
    parser.add_argument("--engine", choices=("vllm", "sim"), default="vllm",
                        help="vllm (default) or sim: a SIMULATED engine, no model runs")
    parser.add_argument("--model", default=None, help="model directory (required for vllm)")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--kv-port", type=int, default=5600,
                        help="NIXL side-channel port of this engine (unique per engine)")
    parser.add_argument("--kv-cache-gib", type=float, default=1.0,
                        help="KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE)")
    parser.add_argument("--cpus", default=None,
                        help="CPU cores for this engine's threads, e.g. '0' or '0-1' "
                             "(VLLM_CPU_OMP_THREADS_BIND); default: vLLM's choice")
    parser.add_argument("--spec-tokens", type=int, default=0,
                        help="max ngram speculative tokens per step (0 = off); the "
                             "coordinator's plan caps them per TPOT tier")
    parser.add_argument("--scheduler", choices=("slos", "vllm"), default="slos",
                        help="slos (default): carry out the coordinator's plan in the engine "
                             "(EDF prefill, best effort last, per-step token budgets for the "
                             "tightest TPOT, speculation capped per tier); vllm: vLLM's own "
                             "fcfs scheduling, the baseline (plans are accepted but ignored)")
    parser.add_argument("--profile", default=None, metavar="PATH",
                        help="performance model JSON (slos-serve profile's output) the "
                             "engine's scheduler sizes step token budgets with; without it "
                             "only the plan's step_token_budget applies")
    parser.add_argument("--sim-kv-blocks", type=int, default=4096,
                        help="simulated engine: KV blocks")
    parser.add_argument("--metrics-port", type=metrics_port_arg, default=None,
                        help="Prometheus /metrics HTTP port (default: --port + 1000; 0 = off)")


def configure_environment(args: argparse.Namespace) -> None:
    """vLLM reads these at import and in the processes it spawns: set them first."""
    os.environ["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(args.kv_port)
    os.environ.setdefault("VLLM_NIXL_SIDE_CHANNEL_HOST", args.host)
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(args.kv_cache_gib)))
    if args.cpus:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = args.cpus


def build_engine(args: argparse.Namespace):
    from slos_serve.engine import create_engine

    profile = None
    if args.profile:
        from slos_serve.core.perf_model import load

        try:  # fail here, not silently inside vLLM's engine core
            load(args.profile)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"--profile {args.profile}: not a performance model: {exc}") from exc
        profile = os.path.abspath(args.profile)
    if args.engine == "vllm":
        if not args.model:
            raise SystemExit("--model is required with --engine vllm")
        return create_engine(
            "vllm",
            model=args.model,
            max_model_len=args.max_model_len,
            speculative_tokens=args.spec_tokens,
            scheduler=args.scheduler,
            perf_profile=profile,
        )
    detokenize = None
    if args.model:
        from slos_serve.tokenizer import load_detokenizer

        detokenize = load_detokenizer(args.model)
    return create_engine(
        "sim",
        model=args.model or "sim",
        max_model_len=args.max_model_len,
        kv_blocks=args.sim_kv_blocks,
        detokenize=detokenize,
        scheduler=args.scheduler,
    )


async def serve(role: str, args: argparse.Namespace) -> None:
    from proto import slos_serve_pb2_grpc as pb_grpc
    from slos_serve.metrics import REGISTRY, WorkerMetrics, kv_bytes_per_token, serve_metrics
    from slos_serve.worker.service import WorkerService

    engine = build_engine(args)
    # The engine starts first: vLLM spawns its engine-core process, and a fork
    # after gRPC has started its pollers can kill this process. Until the port
    # is open, the launcher's health checks simply see "not yet".
    log.info("%s worker: starting %s engine", role, args.engine)
    await engine.start()
    server, health = create_server([pb.DESCRIPTOR.services_by_name["Worker"].full_name])
    port = bind(server, args.host, args.port)
    # The simulated engine moves no KV: its hand-offs are measured in blocks only.
    # vLLM's KV cache has the engine's dtype, float32 here (VllmEngine's default).
    bytes_per_token = kv_bytes_per_token(args.model, 4) if args.engine == "vllm" else None
    metrics = WorkerMetrics(role, f"{args.host}:{port}", registry=REGISTRY, load=engine.load,
                            kv_bytes_per_token=bytes_per_token)
    service = WorkerService(role, engine, metrics)
    pb_grpc.add_WorkerServicer_to_server(service, server)
    serve_metrics(args.host, args.metrics_port, port, f"{role} worker")
    await server.start()
    await health.set("", SERVING)
    log.info("%s worker ready on %s:%d (engine %s)", role, args.host, port, args.engine)
    await serve_until_signal(server, health, on_stop=engine.shutdown)


def run_role(role: str, args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {role}[%(process)d] %(levelname)s %(message)s"
    )
    configure_environment(args)
    asyncio.run(serve(role, args))
    return 0
