"""A comparison run (systems one after the other, same arrivals) and a live capacity run.

Each system is started, measured at zero load (requests one at a time: two warm-ups, then
the 10th, 50th and 90th percentile prompt lengths of the workload twice each, 16 output
tokens; the fastest of each length counts), driven with every rate of the run, and stopped
before the next one starts. The SLO scale,
unless given, comes from the first system's zero-load measurement (`workload.auto_slo_scale`)
and holds for every system of the run, so all are judged against the same SLOs.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import statistics
import sys
import time
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from slos_serve.bench import signals
from slos_serve.bench.capacity import (
    capacity_json,
    capacity_search,
    capacity_table,
    live_search_options,
)
from slos_serve.bench.corpus import load_corpus
from slos_serve.bench.loadgen import run_load
from slos_serve.bench.records import CallResult, write_records
from slos_serve.bench.report import render
from slos_serve.bench.systems import OpenAIServer, make_system
from slos_serve.bench.workload import (
    WorkloadOptions,
    auto_slo_scale,
    cut_prompt,
    loose_stage,
    mean_rate,
    to_bench_requests,
    workload_requests,
)

T = TypeVar("T")
ZERO_LOAD_OUTPUT = 16


@dataclass
class BenchConfig:
    systems: list[str]
    model: str
    out_dir: Path
    workload: WorkloadOptions
    rates: list[float | None]  # None: a trace at its own (time-scaled) rate
    engine: str = "vllm"
    spec_tokens: int = 0
    slo_scale: float | None = None  # None: auto (zero-load on the first system)
    request_timeout_s: float = 300.0
    drain_s: float = 120.0
    progress: bool = True
    plots: bool = True
    meta: dict[str, Any] = field(default_factory=dict)
    # --backend openai: servers already running; `systems` is then their one name
    base_urls: list[str] = field(default_factory=list)
    api_key: str | None = None
    served_model_name: str | None = None

    def system(self, name: str) -> Any:
        """The system of that name, not started."""
        if self.base_urls:
            return OpenAIServer(self.base_urls, self.served_model_name or self.model,
                                self.api_key)
        return make_system(name, self.model, self.engine, self.spec_tokens,
                           self.out_dir / "logs" / name)


class LiveSession:
    """One started system, one event loop and one driver; stops everything on exit."""

    def __init__(self, system: Any, timeout_s: float) -> None:
        self.system = system
        self.timeout_s = timeout_s
        self.loop = asyncio.new_event_loop()
        self.driver: Any = None

    def __enter__(self) -> LiveSession:
        try:
            self.system.start()

            async def make() -> Any:
                return self.system.driver(self.timeout_s)

            self.driver = self.run(make())
        except BaseException:
            self.__exit__()
            raise
        return self

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def __exit__(self, *exc: object) -> None:
        with signals.stopping():
            try:
                # after Ctrl-C the interrupted run's tasks are still pending: end them first
                pending = asyncio.all_tasks(self.loop)
                for task in pending:
                    task.cancel()
                if pending:
                    self.run(asyncio.wait(pending, timeout=10))
                if self.driver is not None:
                    self.run(self.driver.close())
                self.run(self.loop.shutdown_asyncgens())
            except BaseException:  # noqa: BLE001 - stopping the system matters more
                pass
            finally:
                self.loop.close()
                self.system.stop()


async def zero_load(driver: Any, corpus: Sequence[int], prompt_lengths: Sequence[int],
                    warmup: int = 2, repeat: int = 2) -> list[tuple[int, float, float]]:
    """(prompt tokens, TTFT s, TPOT s) per prompt length, requests sent one at a time.

    `warmup` requests first (2: one per `vllm serve` instance, which the driver alternates);
    then each length `repeat` times, keeping the fastest TTFT and TPOT: zero load is the
    best case, and one request descheduled by other work must not set the SLOs."""
    loose = (loose_stage(ZERO_LOAD_OUTPUT),)
    t0 = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - t0

    lengths = [prompt_lengths[0]] * warmup + [n for n in prompt_lengths for _ in range(repeat)]
    best: dict[int, tuple[float, float]] = {}
    for k, n in enumerate(lengths):
        res = CallResult(sent=clock())
        await driver.call(list(cut_prompt(corpus, n, 10_000 + k)), loose, res, clock)
        times = res.token_times
        if k >= warmup and times:
            ttft = times[0] - res.sent
            tpot = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 0.0
            a, b = best.get(n, (math.inf, math.inf))
            best[n] = (min(a, ttft), min(b, tpot))
    return [(n, a, b) for n, (a, b) in best.items()]


def probe_lengths(requests: Sequence[Any]) -> list[int]:
    """10th, 50th and 90th percentile first-call prompt lengths of a workload."""
    lengths = [r.segments[0].prompt_tokens for r in requests] or [128]
    return [int(np.percentile(lengths, q)) for q in (10, 50, 90)]


def _label(rate: float | None, requests: Sequence[Any]) -> float:
    if rate is not None:
        return rate
    r = mean_rate([q.arrival for q in requests])
    return float(f"{r:.3g}") if math.isfinite(r) else 0.0


class _Scale:
    """The run's SLO scale: given, or fixed by the first zero-load measurement."""

    def __init__(self, value: float | None) -> None:
        self.value = value
        self.source = "given" if value is not None else "auto"

    def settle(self, system: str, samples: list[tuple[int, float, float]]) -> float:
        if self.value is None:
            self.value = auto_slo_scale(samples)
            self.source = f"auto: zero-load on {system}"
            print(f"SLO scale {self.value:g} (from zero-load on {system}: "
                  + ", ".join(f"{n} tok TTFT {1e3 * a:.0f} ms TPOT {1e3 * b:.1f} ms"
                              for n, a, b in samples) + ")", file=sys.stderr)
        return self.value


def _zero_load_meta(samples: list[tuple[int, float, float]]) -> dict[str, Any]:
    return {"samples": [{"prompt_tokens": n, "ttft_ms": 1e3 * a, "tpot_ms": 1e3 * b}
                        for n, a, b in samples],
            "ttft_ms_median": 1e3 * statistics.median(a for _, a, _ in samples),
            "tpot_ms_median": 1e3 * statistics.median(b for _, _, b in samples)}


async def handoff_latency(system: Any) -> dict[str, Any]:
    """The system's recent hand-off waits, where its workers report them ({}: none)."""
    report = getattr(system, "handoffs", None)
    if report is None:
        return {}
    try:
        found = await report()
    except Exception as exc:  # noqa: BLE001 - a figure for the report, not the run's result
        print(f"{system.name}: no hand-off figures ({exc})", file=sys.stderr)
        return {}
    if found:
        print(f"{system.name}: hand-off p50 {found['p50_ms']:.1f} ms, p99 "
              f"{found['p99_ms']:.1f} ms (recent hand-offs)", file=sys.stderr)
    return found


def _write_meta(cfg: BenchConfig, meta: dict[str, Any]) -> None:
    (cfg.out_dir / "meta.json").write_text(json.dumps(meta, indent=2, default=str))


def _base_meta(cfg: BenchConfig) -> dict[str, Any]:
    return {**cfg.meta, "systems": cfg.systems, "model": cfg.model, "engine": cfg.engine,
            "spec_tokens": cfg.spec_tokens, "workload": asdict(cfg.workload),
            "started_unix": time.time(), "zero_load": {}, "system_config": {}}


def _sessions(cfg: BenchConfig, corpus: Sequence[int], lengths: Sequence[int],
              scale: _Scale, meta: dict[str, Any]) -> Iterator[tuple[LiveSession, float]]:
    """Each system of the run in turn: started, measured at zero load (which settles the
    run's SLO scale), yielded with that scale, stopped when the caller moves on (or closes
    this generator: use it under `contextlib.closing`), and recorded in meta.json."""
    for name in cfg.systems:
        system = cfg.system(name)
        with LiveSession(system, cfg.request_timeout_s) as s:
            samples = s.run(zero_load(s.driver, corpus, lengths))
            meta["zero_load"][name] = _zero_load_meta(samples)
            meta["system_config"][name] = system.describe()
            yield s, scale.settle(name, samples)
            meta.setdefault("handoff", {})[name] = s.run(handoff_latency(system))
        meta["slo_scale"], meta["slo_scale_source"] = scale.value, scale.source
        _write_meta(cfg, meta)


def run_compare(cfg: BenchConfig) -> Path:
    """Every system at every rate; writes records.jsonl, summary.json, meta.json, plots."""
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    records_path = cfg.out_dir / "records.jsonl"
    records_path.unlink(missing_ok=True)
    corpus = load_corpus(cfg.model)
    runs = [(rate, workload_requests(cfg.workload, rate)) for rate in cfg.rates]
    scale = _Scale(cfg.slo_scale)
    meta = _base_meta(cfg)
    lengths = probe_lengths(runs[0][1])
    with closing(_sessions(cfg, corpus, lengths, scale, meta)) as sessions:
        for s, value in sessions:
            name, system = s.system.name, s.system
            for rate, reqs in runs:
                label = _label(rate, reqs)
                requests = to_bench_requests(reqs, corpus, value)
                res = s.run(run_load(
                    requests, s.driver, system=name, scenario=cfg.workload.scenario, rate=label,
                    max_context=cfg.workload.max_context,
                    request_timeout_s=cfg.request_timeout_s, drain_s=cfg.drain_s,
                    progress=cfg.progress, extra={"slo_scale": value}))
                write_records(records_path, res.records)
                att = sum(r["attained"] for r in res.records) / max(1, len(res.records))
                print(f"{name} @ {label:g} req/s: {len(requests)} requests, attainment "
                      f"{100 * att:.1f} %, {res.wall_s:.0f} s", file=sys.stderr)
                s.run(system.wait_idle())
    meta["finished_unix"] = time.time()
    _write_meta(cfg, meta)
    render(cfg.out_dir, plots=cfg.plots)
    return cfg.out_dir


@dataclass
class CapacityConfig:
    scenarios: list[str]
    target: float = 0.9
    start_rate: float = 1.0
    max_probes: int = 6
    rel_tol: float = 0.25
    window_s: float = 15.0  # arrivals per probe
    min_requests: int = 20
    max_requests: int = 600


def _probe(s: LiveSession, cfg: BenchConfig, cap: CapacityConfig, corpus: Sequence[int],
           scenario: str, scale: float, records_path: Path, rate: float) -> float:
    """One capacity probe: a short run at `rate` that stops once the target is out of reach."""
    name = s.system.name
    n = int(min(cap.max_requests, max(cap.min_requests, math.ceil(rate * cap.window_s))))
    wl = replace(cfg.workload, scenario=scenario, requests=n, duration_s=None)
    requests = to_bench_requests(workload_requests(wl, rate), corpus, scale)
    budget = int(math.floor((1 - cap.target) * len(requests)))
    res = s.run(run_load(
        requests, s.driver, system=name, scenario=scenario, rate=rate, max_context=wl.max_context,
        request_timeout_s=cfg.request_timeout_s, drain_s=cfg.drain_s, miss_budget=budget,
        progress=cfg.progress, extra={"slo_scale": scale, "probe": True}))
    for r in res.records:
        r["stopped_early"] = res.stopped_early
    write_records(records_path, res.records)
    s.run(s.system.wait_idle())
    att = sum(r["attained"] for r in res.records) / len(res.records)
    print(f"{name} {scenario} @ {rate:.3g} req/s: attainment {100 * att:.0f} %"
          + (" (stopped early)" if res.stopped_early else ""), file=sys.stderr)
    return att


def run_capacity(cfg: BenchConfig, cap: CapacityConfig) -> dict[str, Any]:
    """Per system (started once) and scenario: the largest rate with attainment >= target."""
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    records_path = cfg.out_dir / "records.jsonl"
    records_path.unlink(missing_ok=True)
    corpus = load_corpus(cfg.model)
    opts = live_search_options(cap.target, cap.start_rate, cap.max_probes, cap.rel_tol)
    scale = _Scale(cfg.slo_scale)
    meta = _base_meta(cfg)
    meta["capacity"] = asdict(cap)
    pooled = [r for sc in cap.scenarios for r in workload_requests(
        replace(cfg.workload, scenario=sc, requests=cap.max_requests), 1.0)]
    lengths = probe_lengths(pooled)
    found: dict[str, dict[str, Any]] = {sc: {} for sc in cap.scenarios}
    t0 = time.perf_counter()
    with closing(_sessions(cfg, corpus, lengths, scale, meta)) as sessions:
        for s, value in sessions:
            for sc in cap.scenarios:
                probe = functools.partial(_probe, s, cfg, cap, corpus, sc, value, records_path)
                found[sc][s.system.name] = capacity_search(probe, opts)
    data = capacity_json(found, cfg.systems, cap.target, config=meta,
                         elapsed_s=time.perf_counter() - t0)
    (cfg.out_dir / "capacity.json").write_text(json.dumps(data, indent=2, default=str))
    print(capacity_table(data))
    return data
