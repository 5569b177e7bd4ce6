"""Prometheus metrics of every process: all metric definitions live here, once.

Pure: prometheus_client only, no gRPC, no vLLM. The coordinator and the workers each build
one `CoordinatorMetrics` / `WorkerMetrics` on the process's default registry and serve it
over HTTP (`serve_metrics`, `--metrics-port`); services built without one (tests, embedding)
get a private registry, so two services in one process never collide.

Units are Prometheus base units (seconds, bytes). Label values are bounded: tiers are the
coordinator's tier names (plus "custom" for explicit SLOs), validation failures are labelled
by a known request field, worker metrics by role and the worker's gRPC address.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

DEFAULT_PORT_OFFSET = 1000  # --metrics-port default: the process's gRPC port + 1000

# 1 ms .. 30 s: TTFT, TPOT and hand-off times.
LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
BLOCK_BUCKETS = tuple(float(2**k) for k in range(0, 15, 2))  # 1 .. 16384 blocks
BYTE_BUCKETS = tuple(float(4**k) for k in range(6, 17))  # 4 KiB .. 4 GiB

DECISIONS = ("admitted", "best_effort", "rejected")
OBJECTIVES = ("ttft", "tpot", "both")
FINISH_REASONS = ("stop", "length", "abort", "error", "cancelled")
CUSTOM_TIER = "custom"  # slo.py's name for a request with explicit ttft_ms / tpot_ms

# Fields a validation error may name (validate.py, slo.py); any other is "other".
INVALID_REASONS = (
    "request_id",
    "stages",
    "prompt",
    "prompt.text",
    "prompt.token_ids",
    "sampling.max_tokens",
    "sampling.temperature",
    "sampling.top_p",
    "sampling.stop",
    "slo.tier",
    "slo.ttft_ms",
    "slo.tpot_ms",
)
_REQUEST_FIELDS = ("request_id", "stages", "prompt", "sampling", "slo", "on_reject")


def invalid_reason(message: str) -> str:
    """The request field a validation message names ("field: problem"), from a bounded set."""
    field = message.split(":", 1)[0].strip()
    if field in INVALID_REASONS:
        return field
    top = field.split(".", 1)[0]
    return top if top in _REQUEST_FIELDS else "other"


class CoordinatorMetrics:
    """Per tier: decisions, SLO verdicts, TTFT / TPOT, requests in flight, finish reasons."""

    def __init__(self, tiers: Iterable[str] = (), registry: CollectorRegistry | None = None):
        registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "slos_requests", "Requests that passed validation, by tier and planner decision",
            ["tier", "decision"], registry=registry,
        )
        self.invalid = Counter(
            "slos_requests_invalid", "Requests refused by validation, by the field at fault",
            ["reason"], registry=registry,
        )
        self.in_flight = Gauge(
            "slos_requests_in_flight", "Requests being served, by tier", ["tier"],
            registry=registry,
        )
        self.finished = Counter(
            "slos_requests_finished", "Served requests by finish reason (error: a worker "
            "failed; cancelled: the client went away)", ["tier", "reason"], registry=registry,
        )
        self.attained = Counter(
            "slos_slo_attained", "Requests whose Final met the objective (both: TTFT and TPOT "
            "and a normal finish)", ["tier", "objective"], registry=registry,
        )
        self.missed = Counter(
            "slos_slo_missed", "Requests whose Final missed the objective",
            ["tier", "objective"], registry=registry,
        )
        self.ttft = Histogram(
            "slos_ttft_seconds", "Time to first token, as reported in Final", ["tier"],
            buckets=LATENCY_BUCKETS_S, registry=registry,
        )
        self.tpot = Histogram(
            "slos_tpot_seconds", "Time per output token after the first, as reported in Final",
            ["tier"], buckets=LATENCY_BUCKETS_S, registry=registry,
        )
        self.stages = Counter(
            "slos_stage_slo", "Stages of multi-stage requests by the stage's tier and verdict "
            "(attained / missed)", ["tier", "result"], registry=registry,
        )
        self.failovers = Counter(
            "slos_worker_failovers", "Worker calls that failed and went on on another worker "
            "(failover: sent again before the first token; resume: a decode resumed after "
            "tokens were sent, recomputed from prompt + tokens)", ["kind"], registry=registry,
        )
        for kind in ("failover", "resume"):
            self.failovers.labels(kind)
        for tier in {*tiers, CUSTOM_TIER}:  # zeros show from the start, not after a first use
            self.in_flight.labels(tier)
            for decision in DECISIONS:
                self.requests.labels(tier, decision)
            for objective in OBJECTIVES:
                self.attained.labels(tier, objective)
                self.missed.labels(tier, objective)
            for reason in FINISH_REASONS:
                self.finished.labels(tier, reason)
        for reason in INVALID_REASONS:
            self.invalid.labels(reason)

    def request_invalid(self, message: str) -> None:
        self.invalid.labels(invalid_reason(message)).inc()

    def request_started(self, tier: str, decision: str) -> None:
        """A request's Started went out; `request_done` must follow exactly once."""
        self.requests.labels(tier, decision).inc()
        self.in_flight.labels(tier).inc()

    def request_rejected(self, tier: str) -> None:
        """The planner rejected the request (it ended with RESOURCE_EXHAUSTED)."""
        self.requests.labels(tier, "rejected").inc()

    def stage_done(self, tier: str, met: bool) -> None:
        self.stages.labels(tier, "attained" if met else "missed").inc()

    def failed_over(self, failovers: int, resumes: int) -> None:
        """A request's failovers and resumes, counted when it ends."""
        self.failovers.labels("failover").inc(failovers)
        self.failovers.labels("resume").inc(resumes)

    def request_done(self, tier: str, final: Any | None, failed: bool) -> None:
        """`final`: the Final sent (a pb.Final), or None when the stream ended without one."""
        self.in_flight.labels(tier).dec()
        if final is None:
            self.finished.labels(tier, "error" if failed else "cancelled").inc()
            return
        reason = final.finish_reason if final.finish_reason in FINISH_REASONS else "other"
        self.finished.labels(tier, reason).inc()
        for objective, met in (
            ("ttft", final.ttft_met), ("tpot", final.tpot_met), ("both", final.slo_met)
        ):
            (self.attained if met else self.missed).labels(tier, objective).inc()
        if final.completion_tokens >= 1:  # else ttft_ms is the E2E time of a failed request
            self.ttft.labels(tier).observe(final.ttft_ms / 1000.0)
        if final.completion_tokens >= 2:
            self.tpot.labels(tier).observe(final.tpot_ms / 1000.0)


HANDOFF_WINDOW = 256  # recent hand-offs the load report's percentiles are over


@dataclass(frozen=True, slots=True)
class WaitSummary:
    """Percentiles of recent waits (0 with count 0: none measured)."""

    count: int = 0
    p50_s: float = 0.0
    p99_s: float = 0.0


class RecentWaits:
    """The last `size` waits (bounded memory), for percentiles that follow the present; the
    histogram keeps the whole history."""

    def __init__(self, size: int = HANDOFF_WINDOW) -> None:
        self._waits: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self._waits.append(seconds)

    def quantile(self, q: float) -> float:
        """Nearest rank (0 while empty)."""
        xs = sorted(self._waits)
        return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))] if xs else 0.0

    def summary(self) -> WaitSummary:
        return WaitSummary(len(self._waits), self.quantile(0.5), self.quantile(0.99))


WARMUP_ID_PREFIX = "warmup-"  # request ids of the coordinator's warm-up hand-offs


class WorkerMetrics:
    """A worker's RPCs and KV hand-offs; with `load`, its engine's load report at each scrape
    (queue, KV blocks, step times, the scheduler in use, and per TPOT tier: the speculative
    tokens cap in force and the drafted / accepted token counts).

    `load` returns an EngineLoad (slos_serve/engine/base.py). `kv_bytes_per_token`, when
    known, turns hand-off blocks into a byte estimate (blocks x block size x bytes/token).
    """

    def __init__(
        self,
        role: str,
        worker: str,
        registry: CollectorRegistry | None = None,
        load: Callable[[], Any] | None = None,
        kv_bytes_per_token: int | None = None,
    ) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.role, self.worker = role, worker
        self.kv_bytes_per_token = kv_bytes_per_token
        labels = ["role", "worker"]
        self.requests = Counter(
            "slos_worker_requests", "Prefill / Decode RPCs served, by outcome "
            "(ok, error, cancelled)", [*labels, "rpc", "outcome"], registry=registry,
        )
        self.handoff_blocks = Histogram(
            "slos_worker_kv_handoff_blocks", "KV blocks a decode pulled per hand-off",
            labels, buckets=BLOCK_BUCKETS, registry=registry,
        )
        self.handoff_bytes = Histogram(
            "slos_worker_kv_handoff_bytes", "Estimated KV bytes a decode pulled per hand-off "
            "(blocks x block size x KV bytes per token; only when that is known)",
            labels, buckets=BYTE_BUCKETS, registry=registry,
        )
        self.handoff_seconds = Histogram(
            "slos_worker_kv_handoff_seconds", "Decode side: from the Decode call to the "
            "engine's first token (KV pull + recompute of the last prompt position)",
            labels, buckets=LATENCY_BUCKETS_S, registry=registry,
        )
        self.handoffs = RecentWaits()
        recent = Gauge(
            "slos_worker_kv_handoff_recent_seconds", f"Decode side: hand-off percentiles over "
            f"the last {HANDOFF_WINDOW} hand-offs (0 until one is measured)",
            [*labels, "quantile"], registry=registry,
        )
        self._labels = (role, worker)
        rpcs = ("prefill", "decode") if role == "mixed" else (role,)
        for rpc in rpcs:
            for outcome in ("ok", "error", "cancelled"):
                self.requests.labels(role, worker, rpc, outcome)
        if "decode" in rpcs:
            for metric in (self.handoff_blocks, self.handoff_seconds):
                metric.labels(role, worker)
            if kv_bytes_per_token:
                self.handoff_bytes.labels(role, worker)
            for q in (0.5, 0.99):
                recent.labels(role, worker, str(q)).set_function(
                    lambda q=q: self.handoffs.quantile(q))
        if load is not None:
            registry.register(EngineLoadCollector(role, worker, load))

    def request_served(self, rpc: str, outcome: str) -> None:
        self.requests.labels(self.role, self.worker, rpc, outcome).inc()

    def handoff(self, blocks: int, block_size: int, seconds: float, request_id: str = "") -> None:
        """One hand-off pulled by this (decode) worker, its first token `seconds` after the call.
        A warm-up hand-off (WARMUP_ID_PREFIX) is the first over its connection, the slow one
        the warm-up exists to pay at start: counted, but kept out of the window the planner
        reads its hand-off delay from."""
        self.handoff_blocks.labels(*self._labels).observe(blocks)
        self.handoff_seconds.labels(*self._labels).observe(seconds)
        if not request_id.startswith(WARMUP_ID_PREFIX):
            self.handoffs.add(seconds)
        if self.kv_bytes_per_token:
            self.handoff_bytes.labels(*self._labels).observe(
                blocks * block_size * self.kv_bytes_per_token
            )


class EngineLoadCollector(Collector):
    """Reads the engine's load report at scrape time (from the HTTP server's thread)."""

    def __init__(self, role: str, worker: str, load: Callable[[], Any]) -> None:
        self._labels = [role, worker]
        self._load = load
        self._last: Any = None

    def collect(self) -> Iterator[Any]:
        try:
            self._last = self._load()
        except Exception:  # a snapshot racing the event loop: serve the previous one
            log.debug("engine load report failed", exc_info=True)
        load = self._last
        if load is None:
            return
        names = ["role", "worker"]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=names)
            family.add_metric(self._labels, value)
            return family

        yield gauge("slos_worker_waiting", "Requests queued in the engine (queue depth)",
                    load.waiting)
        yield gauge("slos_worker_running", "Requests running in the engine", load.running)
        yield gauge("slos_worker_kv_blocks_used", "KV cache blocks in use", load.kv_blocks_used)
        yield gauge("slos_worker_kv_blocks_total", "KV cache blocks", load.kv_blocks_total)
        yield gauge("slos_worker_kv_usage_ratio", "KV cache blocks in use / total",
                    load.kv_usage)
        yield gauge("slos_worker_mean_step_seconds", "Mean engine step time",
                    load.mean_step_ms / 1000.0)
        yield gauge("slos_worker_spec_acceptance_ratio",
                    "Speculative tokens accepted / proposed (0 until known)",
                    load.spec_acceptance)
        steps = CounterMetricFamily("slos_worker_engine_steps", "Engine steps", labels=names)
        steps.add_metric(self._labels, load.steps)
        yield steps
        yield gauge("slos_worker_last_step_seconds", "The engine's last step time",
                    load.last_step_ms / 1000.0)
        yield gauge("slos_worker_model_error_ratio", "Live relative error of the engine's "
                    "performance model on its recent steps (0: none measured)",
                    getattr(load, "model_error", 0.0))
        scheduler = load.scheduler
        if scheduler:
            info = GaugeMetricFamily(
                "slos_worker_scheduler", "The engine's scheduler (1 for the one in use): slos "
                "carries out the coordinator's plan, vllm is vLLM's own (the baseline)",
                labels=[*names, "scheduler"])
            info.add_metric([*self._labels, scheduler], 1)
            yield info
        yield from self._spec_families(load.spec)

    def _spec_families(self, spec: Iterable[Any]) -> Iterator[Any]:
        """Per-tier speculation (entries of one tier name with different TPOTs are summed;
        the cap is the largest in force)."""
        by_tier: dict[str, list[int]] = {}
        for t in spec:
            row = by_tier.setdefault(t.tier, [0, 0, 0, 0])
            row[0] += t.steps
            row[1] += t.drafted
            row[2] += t.accepted
            row[3] = max(row[3], t.spec_tokens)
        labels = ["role", "worker", "tier"]
        cap = GaugeMetricFamily("slos_worker_spec_tokens", "Speculative tokens a verify step "
                                "of the tier may carry (the cap in force)", labels=labels)
        families = [
            CounterMetricFamily(name, doc, labels=labels) for name, doc in (
                ("slos_worker_spec_steps", "Decode or verify steps of the tier's requests"),
                ("slos_worker_spec_drafted_tokens", "Draft tokens scheduled for verification"),
                ("slos_worker_spec_accepted_tokens", "Draft tokens accepted"),
            )
        ]
        for tier, row in sorted(by_tier.items()):
            for family, value in zip(families, row, strict=False):
                family.add_metric([*self._labels, tier], value)
            cap.add_metric([*self._labels, tier], row[3])
        yield cap
        yield from families


def kv_bytes_per_token(model_dir: str | None, dtype_bytes: int) -> int | None:
    """KV bytes per token of a Hugging Face model directory (K and V, every layer), or None.

    2 x layers x KV heads x head dim x bytes per element, from config.json; None when the
    directory or a field is missing (the hand-off is then measured in blocks only).
    """
    if not model_dir:
        return None
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
        layers = int(config["num_hidden_layers"])
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def serve_metrics(host: str, port: int | None, grpc_port: int, what: str) -> int | None:
    """Serves the default registry at http://host:port/metrics; returns the port, or None.

    `port` None is the default: the gRPC port + 1000 (a free port if that is out of range),
    and a port already taken there is logged, not fatal. 0 turns metrics off. An explicit
    port that cannot be bound raises OSError.
    """
    if port == 0:
        return None
    disable_created_metrics()  # no *_created series: plain Prometheus text, as scraped
    explicit = port is not None
    if port is None:
        port = grpc_port + DEFAULT_PORT_OFFSET
        if not 0 < port < 65536:
            port = 0  # let the OS pick
    try:
        server, _ = start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:
        if explicit:
            raise OSError(f"--metrics-port {port}: cannot listen on {host}: {exc}") from exc
        log.warning("%s: no metrics: cannot listen on %s:%d (%s); pass --metrics-port",
                    what, host, port, exc)
        return None
    bound = server.server_port
    log.info("%s metrics at http://%s:%d/metrics", what, host, bound)
    return bound


def metrics_port_arg(value: str) -> int:
    """argparse type of --metrics-port: a port number, 0 = off."""
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port < 65536:
        raise argparse.ArgumentTypeError(f"not a port number (0 = off): {value!r}")
    return port
