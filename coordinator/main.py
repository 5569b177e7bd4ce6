"""`slos-serve coordinator`: the client-facing server process."""

from __future__ import annotations

import argparse
import asyncio
import logging

from grpc_health.v1.health_pb2 import HealthCheckResponse

from proto import slos_serve_pb2 as pb
from slos_serve.metrics import metrics_port_arg

log = logging.getLogger("slos_serve.coordinator")


def _addresses(value: str) -> list[str]:
    return [a.strip() for a in value.split(",") if a.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=50051, help="gRPC port for clients")
    parser.add_argument("--prefill", type=_addresses, required=True,
                        help="prefill workers, comma-separated host:port")
    parser.add_argument("--decode", type=_addresses, required=True,
                        help="decode workers, comma-separated host:port")
    parser.add_argument("--model", required=True, help="model directory (for its tokenizer)")
    parser.add_argument("--tiers", default=None,
                        help='SLO tier table JSON: '
                             '{"default": N, "tiers": {N: {"ttft_ms": X, "tpot_ms": Y}}}')
    parser.add_argument("--on-reject", choices=("best_effort", "reject"), default="best_effort",
                        help="what happens to requests that cannot be admitted, by default")
    parser.add_argument("--metrics-port", type=metrics_port_arg, default=None,
                        help="Prometheus /metrics HTTP port (default: --port + 1000; 0 = off)")
    parser.add_argument("--scheduler", choices=("slos", "vllm"), default="slos",
                        help="slos: the planner admits and routes (default); vllm: the "
                             "baseline, round-robin routing and everything admitted")
    parser.add_argument("--profile", default=None,
                        help="performance model JSON of the workers' engine (from `slos-serve "
                             "profile`), or a shipped profile name; default: the simulated "
                             "engine's for --engine sim workers, else required with slos")
    parser.add_argument("--kv-output-reserve", type=float, default=0.5,
                        help="fraction of each request's remaining max_tokens the planner "
                             "reserves in KV (1 = its peak; below 1 overcommits)")


async def serve(args: argparse.Namespace) -> None:
    from coordinator.pool import WorkerPool
    from coordinator.server import CoordinatorService
    from coordinator.warmup import warm_up
    from proto import slos_serve_pb2_grpc as pb_grpc
    from slos_serve.core.slo import TierTable
    from slos_serve.grpc_util import bind, create_server, serve_until_signal
    from slos_serve.metrics import REGISTRY, CoordinatorMetrics, serve_metrics
    from slos_serve.tokenizer import load_tokenizer

    tiers = TierTable.load(args.tiers) if args.tiers else TierTable.builtin()
    # Before any gRPC object exists: loading the tokenizer imports libraries that
    # start subprocesses, and a fork after gRPC has started its pollers can kill
    # the process (epoll_wait: Bad file descriptor, seen once in CI).
    tokenizer = load_tokenizer(args.model)
    admission = None
    if args.scheduler == "slos":
        from coordinator.admission import Admission
        from slos_serve.core.perf_model import load_profile

        if not args.profile:
            raise SystemExit(
                "--profile is required with --scheduler slos: measure one with `slos-serve "
                "profile --engine vllm --model DIR --out profile.json` (or name a shipped one, "
                "e.g. sim-engine for simulated workers), or run --scheduler vllm")
        model = load_profile(args.profile)
        log.info("planner on: performance model %s (R^2 %s)", model.name, model.r2)
        admission = Admission(model, kv_output_reserve=args.kv_output_reserve)
    pool = WorkerPool(args.prefill, args.decode)
    service = CoordinatorService(
        pool, tiers, tokenizer, args.model, args.on_reject,
        metrics=CoordinatorMetrics(tiers.tiers, registry=REGISTRY),
        admission=admission,
    )
    server, health = create_server([pb.DESCRIPTOR.services_by_name["SloServe"].full_name])
    pb_grpc.add_SloServeServicer_to_server(service, server)
    port = bind(server, args.host, args.port)
    serve_metrics(args.host, args.metrics_port, port, "coordinator")
    await server.start()
    await health.set("", HealthCheckResponse.NOT_SERVING)
    pool.start()
    service.start()

    warm: set[tuple[str, str]] = set()

    async def track_health() -> None:
        while True:
            await pool.changed.wait()
            pool.changed.clear()
            ready = pool.ready()
            if ready:
                await warm_up(pool, warm)
            await health.set(
                "", HealthCheckResponse.SERVING if ready else HealthCheckResponse.NOT_SERVING
            )
            log.info("cluster %s", "ready" if ready else "not ready")

    tracker = asyncio.get_running_loop().create_task(track_health())
    log.info("coordinator listening on %s:%d", args.host, port)

    async def stop() -> None:
        tracker.cancel()
        await service.stop()
        await pool.close()

    await serve_until_signal(server, health, on_stop=stop)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s coordinator[%(process)d] %(levelname)s %(message)s"
    )
    asyncio.run(serve(args))
    return 0
