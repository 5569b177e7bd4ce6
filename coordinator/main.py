"""`slos-serve coordinator`: the client-facing server process.

The coordinator's parts (service, worker pool, admission) are imported in `serve`, so that
`slos-serve --help` (which imports every command module) stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass

from grpc_health.v1.health_pb2 import HealthCheckResponse

from proto import slos_serve_pb2 as pb
from slos_serve.config import API_KEY_ENV, Options, comma_list, option
from slos_serve.core.perf_model import load_profile
from slos_serve.core.slo import TierTable
from slos_serve.grpc_util import add_service, bind, create_server, serve_until_signal, set_health
from slos_serve.metrics import REGISTRY, CoordinatorMetrics, metrics_port_arg, serve_metrics
from slos_serve.tls import CertError, node_tls, server_tls
from slos_serve.tokenizer import load_tokenizer

log = logging.getLogger("slos_serve.coordinator")
LAYOUTS = ("auto", "adaptive", "fixed")


@dataclass(frozen=True, slots=True, kw_only=True)
class CoordinatorConfig(Options):
    """The coordinator process: its flags, and the argv `up` starts it with."""

    host: str = option("127.0.0.1", "address to listen on")
    port: int = option(50051, "gRPC port for clients")
    prefill: list[str] | None = option(None, "prefill workers, comma-separated host:port",
                                       parse=comma_list)
    decode: list[str] | None = option(None, "decode workers, comma-separated host:port",
                                      parse=comma_list)
    mixed: list[str] | None = option(None, "mixed workers (prefill and decode on one engine), "
                                     "comma-separated host:port", parse=comma_list)
    layout: str = option(
        "auto", "adaptive: the planner chooses per request between local serving on a mixed "
        "worker and a KV hand-off, and the roles mixed workers play; fixed: every worker "
        "keeps its role, mixed ones serve locally; auto: adaptive iff there are mixed "
        "workers", choices=LAYOUTS)
    model: str = option(help="model directory (for its tokenizer)")
    tiers: str | None = option(None, 'SLO tier table JSON: '
                                     '{"default": N, "tiers": {N: {"ttft_ms": X, "tpot_ms": Y}}}')
    on_reject: str = option("best_effort", "what happens to requests that cannot be admitted, "
                            "by default", choices=("best_effort", "reject"))
    metrics_port: int | None = option(
        None, "Prometheus /metrics HTTP port (default: --port + 1000; 0 = off)",
        parse=metrics_port_arg)
    scheduler: str = option(
        "slos", "slos: the planner admits and routes (default); vllm: the baseline, "
        "round-robin routing and everything admitted", choices=("slos", "vllm"))
    profile: str | None = option(
        None, "performance model JSON of the workers' engine (from `slos-serve profile`), "
        "or a shipped profile name; default: the simulated engine's for --engine sim "
        "workers, else required with slos")
    http_port: int = option(8000, "OpenAI-compatible HTTP port (/v1/completions, "
                            "/v1/chat/completions, /v1/models, /health, /metrics; 0 = off)")
    served_model_name: str | None = option(
        None, "the model id HTTP clients name (default: --model as given; either is accepted)")
    api_key: str | None = option(
        None, "require 'Authorization: Bearer KEY' on /v1/* and as gRPC metadata on the "
        f"client service (default: ${API_KEY_ENV}, else no key; prefer the variable: "
        "flags show in the process list)")
    request_log: str | None = option(None, "append one JSON line per finished request "
                                     "(id, decision, measured TTFT / TPOT) to this file")
    kv_output_reserve: float = option(
        0.5, "fraction of each request's remaining max_tokens the planner reserves in KV "
        "(1 = its peak; below 1 overcommits)")
    tls_dir: str | None = option(
        None, "mutual TLS to the workers: verify them with DIR/ca.pem, present "
        "DIR/node.pem + node-key.pem (`slos-serve certs DIR`); default plaintext, for "
        "trusted networks only", metavar="DIR")
    client_tls_cert: str | None = option(
        None, "TLS for clients (gRPC and HTTPS) with this certificate chain, e.g. "
        "DIR/server.pem; clients verify it with DIR/ca.pem", metavar="PEM")
    client_tls_key: str | None = option(None, "the key of --client-tls-cert, e.g. "
                                        "DIR/server-key.pem", metavar="PEM")
    join: bool = option(False, "workers join at runtime (the AddWorker RPC: `slos-serve "
                        "scale`, `up --ray`): start with none or some of them")
    drop_after_s: float = option(
        0.0, "remove a worker unreachable this long from the membership (0: never, for a "
        "supervisor that restarts it in place; `up --ray`: 30)")


    def adaptive_layout(self) -> bool:
        """The one rule for `auto`: adaptive when there are mixed workers."""
        return self.layout == "adaptive" or (self.layout == "auto" and bool(self.mixed))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    CoordinatorConfig.add_arguments(parser)


def make_admission(cfg: CoordinatorConfig):
    """The planner's admission for --scheduler slos; None for the vllm baseline."""
    from coordinator.admission import Admission

    if cfg.scheduler != "slos":
        return None
    if not cfg.profile:
        raise SystemExit(
            "--profile is required with --scheduler slos: measure one with `slos-serve "
            "profile --engine vllm --model DIR --out profile.json` (or name a shipped one, "
            "e.g. sim-engine for simulated workers), or run --scheduler vllm")
    model = load_profile(cfg.profile)
    log.info("planner on: performance model %s (R^2 %s)", model.name, model.r2)
    log.info("layout: %s", "adaptive" if cfg.adaptive_layout() else "fixed")
    return Admission(model, kv_output_reserve=cfg.kv_output_reserve,
                     adaptive_layout=cfg.adaptive_layout())


async def serve(cfg: CoordinatorConfig) -> None:
    from coordinator.auth import ApiKey
    from coordinator.frontend import Frontend
    from coordinator.http_front import HttpFront
    from coordinator.pool import WorkerPool
    from coordinator.request_log import RequestLog
    from coordinator.server import CoordinatorService
    from coordinator.warmup import warm_up

    tiers = TierTable.load(cfg.tiers) if cfg.tiers else TierTable.builtin()
    # Before any gRPC object exists: loading the tokenizer imports libraries that
    # start subprocesses, and a fork after gRPC has started its pollers can kill
    # the process (epoll_wait: Bad file descriptor, seen once in CI).
    tokenizer = load_tokenizer(cfg.model)
    admission = make_admission(cfg)
    node = node_tls(cfg.tls_dir, "coordinator")
    client_tls = server_tls(cfg.client_tls_cert, cfg.client_tls_key)
    pool = WorkerPool(cfg.prefill or [], cfg.decode or [], cfg.mixed or [],
                      credentials=node.channel_credentials() if node else None,
                      drop_after_s=cfg.drop_after_s)
    if not cfg.join and (not pool.serving("prefill") or not pool.serving("decode")):
        raise SystemExit("the coordinator needs a worker that prefills and one that decodes "
                         "(--prefill and --decode, or --mixed; or --join: they join later)")
    api_key = ApiKey.configured(cfg.api_key)
    request_log = RequestLog(cfg.request_log) if cfg.request_log else None
    service = Frontend(
        pool, tiers, tokenizer, cfg.model, cfg.on_reject,
        metrics=CoordinatorMetrics(tiers.tiers, registry=REGISTRY),
        admission=admission, request_log=request_log,
    )
    services = [pb.DESCRIPTOR.services_by_name["SloServe"].full_name]
    server, health = create_server(services)
    add_service(server, pb.DESCRIPTOR.services_by_name["SloServe"],
                CoordinatorService(service, api_key), pb)
    port = bind(server, cfg.host, cfg.port,
                client_tls.grpc_credentials() if client_tls else None)
    serve_metrics(cfg.host, cfg.metrics_port, port, "coordinator")
    http = None
    if cfg.http_port:
        names = [cfg.served_model_name or cfg.model, cfg.model]
        http = HttpFront(service, names, api_key, pool.ready)
        http_port = await http.start(cfg.host, cfg.http_port,
                                     client_tls.ssl_context() if client_tls else None)
        log.info("OpenAI-compatible HTTP at http%s://%s:%d/v1 (model %r)%s",
                 "s" if client_tls else "", cfg.host, http_port, names[0],
                 "; API key required" if api_key else "")
    await server.start()
    await set_health(health, services, HealthCheckResponse.NOT_SERVING)
    pool.start()
    service.start()

    warm: set[tuple[str, str]] = set()

    async def track_health() -> None:
        while True:
            await pool.changed.wait()
            pool.changed.clear()
            ready = pool.ready()
            if ready:  # hand-offs between mixed workers: only the planner's adaptive layout
                await warm_up(pool, warm, admission is not None and cfg.adaptive_layout())
            await set_health(health, services, HealthCheckResponse.SERVING if ready
                             else HealthCheckResponse.NOT_SERVING)
            log.info("cluster %s", "ready" if ready else "not ready")

    tracker = asyncio.get_running_loop().create_task(track_health())
    log.info("coordinator listening on %s:%d (%s)", cfg.host, port,
             "TLS" if client_tls else "plaintext")

    async def stop() -> None:
        tracker.cancel()
        if http is not None:
            await http.stop()
        await service.stop()
        await pool.close()
        if request_log is not None:
            request_log.close()

    await serve_until_signal(server, health, on_stop=stop)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s coordinator[%(process)d] %(levelname)s %(message)s"
    )
    try:
        asyncio.run(serve(CoordinatorConfig.from_args(args)))
    except CertError as exc:
        raise SystemExit(str(exc)) from exc
    return 0
