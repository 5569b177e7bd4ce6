"""`slos-serve bench`: live benchmark of slos-serve against vLLM baselines, side by side.

  slos-serve bench --systems slos-mixed,vllm-serve,vllm-serve-priority --scenario coding
  slos-serve bench --trace trace.csv --time-scale 0.5 --max-context 1024
  slos-serve bench report bench-results/20261124-0415
  slos-serve bench capacity --systems slos-mixed,slos,vllm-serve,vllm-serve-priority \
      --scenarios coding,chatbot      # ratios against the best vLLM baseline per scenario
  slos-serve bench --backend openai --base-url http://host:8000 --model MODEL_DIR \
      --served-model-name NAME      # any OpenAI-compatible server already running
  slos-serve bench vllm-bench --systems slos-mixed,vllm-serve --request-rate 2 \
      --goodput ttft:500 tpot:50      # vLLM's own `bench serve` against each system
  slos-serve bench loadgen-check      # SIMULATED engine: the load generator's own limits
  slos-serve bench overhead           # SIMULATED engine: what the coordinator adds
  slos-serve bench http-overhead      # SIMULATED engine: what the HTTP front adds over gRPC
  slos-serve bench soak --streams 1000 --minutes 10   # SIMULATED engine: RSS, accounting

The runner, the systems and the overhead measurements (the SDK, the load generator) are
imported where used, so that `slos-serve --help` (which imports every command module) stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slos_serve.bench import signals
from slos_serve.bench.report import render
from slos_serve.bench.workload import WorkloadOptions
from slos_serve.config import Options, option
from slos_serve.sim.cli import WorkloadArgs
from slos_serve.sim.workloads import SCENARIOS

if TYPE_CHECKING:
    from slos_serve.bench.runner import BenchConfig, CapacityConfig

DEFAULT_MODEL = ".cache/tiny-llama"
DEFAULT_SYSTEMS = "slos-mixed,vllm-serve,vllm-serve-priority"
DEFAULT_RATES = "4,10"  # chatbot: about vllm-pd's capacity here, and beyond it
DEFAULT_DURATION_S = 20.0
OPENAI_API_KEY_ENV = "OPENAI_API_KEY"


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchSetup(Options):
    """The systems under test and how a run is driven (every action but `report`)."""

    model: str = option(DEFAULT_MODEL, "model directory (tokenizer, engines)")
    systems: str = option(DEFAULT_SYSTEMS, "comma-separated, run one after the other: "
                          "slos-mixed (2 mixed workers, planner, every request local), slos "
                          "(2 mixed workers, the layout the planner picks), slos-pd (1P+1D, "
                          "planner), vllm-pd (1P+1D, vLLM scheduling + round-robin), "
                          "vllm-serve (two `vllm serve` with vLLM's defaults, one per core), "
                          "vllm-serve-priority (the same, priority scheduling by tier)")
    engine: str = option("vllm", "engine of the slos-serve clusters; sim = SIMULATED (no "
                         "model runs; the vllm-serve systems are then left out)",
                         choices=("vllm", "sim"))
    spec_tokens: int = option(0, "ngram speculation for every system (0 = off)")
    slo_scale: str = option("auto", "multiply the workload's (A100-sized) SLOs; auto: "
                            "measured zero-load TTFT / TPOT on the first system over the "
                            "reference ones")
    out: str | None = option(None, "results folder (default bench-results/<time>)")
    request_timeout: float = option(300.0, "s per request")
    drain: float = option(120.0, "s to wait for requests in flight after the last send")
    progress: bool = option(True, "no progress bar", flag="--no-progress")
    plots: bool = option(True, "no PNG plots", flag="--no-plots")
    backend: str = option("local", "local: start each of --systems in turn; openai: drive "
                          "the OpenAI-compatible server(s) at --base-url, already running "
                          "(vLLM's, SGLang's, a slos-serve front): nothing is started",
                          choices=("local", "openai"))
    base_url: str | None = option(None, "--backend openai: base URL(s), comma-separated "
                                  "(calls go round-robin), e.g. http://127.0.0.1:8000")
    served_model_name: str | None = option(None, "--backend openai: the model id sent "
                                           "(default: --model, which stays the tokenizer)")
    api_key: str | None = option(None, f"--backend openai: sent as Authorization: Bearer "
                                 f"(default ${OPENAI_API_KEY_ENV})")


@dataclass(frozen=True, slots=True, kw_only=True)
class CompareRun(Options):
    """`bench`: the systems side by side at some rates."""

    scenario: str = option("chatbot", choices=sorted(SCENARIOS))
    rates: str | None = option(None, f"req/s, comma-separated (default {DEFAULT_RATES}; with "
                               "--trace: the trace's own rate after --time-scale)")
    requests: int = option(200, "requests per rate (at most)")
    duration: float | None = option(None, "s of arrivals per rate (at most; default "
                                    f"{DEFAULT_DURATION_S:g}, with --trace: the whole trace)")


@dataclass(frozen=True, slots=True, kw_only=True)
class CapacityRun(Options):
    """`bench capacity`: the largest rate with attainment >= target, per system."""

    scenarios: str = option("coding", "comma-separated or 'all'")
    target: float = option(0.9)
    start_rate: float = option(2.0)
    max_probes: int = option(6, "probes per search")
    rel_tol: float = option(0.25, "search precision")
    window: float = option(15.0, "s of arrivals per probe")
    min_requests: int = option(20)
    max_requests: int = option(600, "cap on a probe's requests (a lower cap turns fast probes "
                                    "into bursts shorter than --window)")

    def config(self, scenarios: list[str]) -> CapacityConfig:
        from slos_serve.bench.runner import CapacityConfig

        return CapacityConfig(
            scenarios=scenarios, target=self.target, start_rate=self.start_rate,
            max_probes=self.max_probes, rel_tol=self.rel_tol, window_s=self.window,
            min_requests=self.min_requests, max_requests=self.max_requests)


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadgenCheck(Options):
    """`bench loadgen-check`: the load generator against a SIMULATED-engine cluster."""

    rates: str = option("20,50", "req/s (10x the live benchmark's)")
    seconds: float = option(6.0, "s of arrivals per rate")
    scenario: str = option("coding", choices=sorted(SCENARIOS))
    max_output: int = option(16, "clip outputs (tokens)")
    json: str | None = option(None, "write the rows here")


@dataclass(frozen=True, slots=True, kw_only=True)
class CoordinatorOverhead(Options):
    """`bench overhead`: coordinator vs direct worker calls, SIMULATED engine."""

    prompt_tokens: int = option(64)
    output_tokens: int = option(64)
    requests: int = option(20, "sequential requests per path")
    concurrency: int = option(32)
    seconds: float = option(5.0, "per throughput measurement")
    scheduler: str = option("slos", choices=("slos", "vllm"))
    json: str | None = option(None)


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpOverhead(Options):
    """`bench http-overhead`: the HTTP front vs the gRPC path, SIMULATED engine."""

    shapes: str = option("mixed1-slos,mixed1-vllm,pd-slos", "clusters, comma-separated, "
                         "one after the other: mixed1-slos (1 mixed worker, planner; the "
                         "default config), mixed1-vllm (1 mixed worker, round-robin, no "
                         "planner), pd-slos, pd-vllm (1P+1D); TTFT is measured on the first")
    prompt_tokens: int = option(8)
    ttft_output: int = option(8, "max_tokens of the TTFT requests")
    requests: int = option(300, "sequential TTFT requests per path")
    short_output: int = option(2, "max_tokens of the throughput requests")
    concurrency: int = option(64, "closed-loop clients")
    seconds: float = option(5.0, "per throughput measurement (after 1 s of warm-up)")
    client_alone: bool = option(True, "skip the stub-server run", flag="--no-client-alone")
    json: str | None = option(None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Soak(Options):
    """`bench soak`: closed-loop streams for minutes, SIMULATED engine: RSS and accounting."""

    streams: int = option(1000, "concurrent closed-loop streams")
    minutes: float = option(10.0, "length of the run")
    warmup: float | None = option(None, "s of warm-up before the first RSS figure "
                                  "(default: a fifth of the run, at most 60)")
    progress: float = option(30.0, "s between progress lines")
    shape: str = option("pd", "cluster: pd (1 prefill + 1 decode: every request hands its "
                        "KV off), mixed (1 mixed worker, local), pd2 (2 + 2)",
                        choices=("pd", "mixed", "pd2"))
    prompt_tokens: str = option("8,512", "MIN,MAX prompt tokens (uniform)")
    output_tokens: str = option("1,64", "MIN,MAX output tokens (uniform, EOS ignored)")
    drain: float = option(60.0, "s to wait for the requests in flight at the end")
    seed: int = option(0)
    json: str | None = option(None, "write the figures here")


def _pair(text: str, name: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise SystemExit(f"--{name} {text!r}: MIN,MAX expected, e.g. 8,512") from None
    if not 1 <= lo <= hi:
        raise SystemExit(f"--{name} {text!r}: 1 <= MIN <= MAX expected")
    return lo, hi


@dataclass(frozen=True, slots=True, kw_only=True)
class VllmBench(Options):
    """`bench vllm-bench`: vLLM's own `bench serve` (random dataset) against each system."""

    api: str = option("openai", "vLLM's --backend: openai (/v1/completions) or openai-chat "
                      "(/v1/chat/completions)", choices=("openai", "openai-chat"))
    request_rate: float = option(2.0, "req/s (Poisson)")
    num_prompts: int = option(100)
    input_len: int = option(1024, "random prompt tokens (vLLM's default)")
    output_len: int = option(128, "output tokens, EOS ignored (vLLM's default)")
    goodput: list[str] | None = option(None, "vLLM's goodput SLOs, e.g. ttft:500 tpot:50 (ms)",
                                       nargs="+", metavar="KEY:MS")
    seed: int = option(0, "vLLM's dataset seed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with a subcommand are declared once, on `bench`, and accepted after
    the subcommand too (`bench --engine sim capacity` = `bench capacity --engine sim`)."""
    BenchSetup.add_arguments(parser)
    WorkloadArgs.add_arguments(parser, defaults={"max_context": 2048})
    CompareRun.add_arguments(parser)
    sub = parser.add_subparsers(
        dest="action",
        metavar="{report,capacity,fidelity,vllm-bench,loadgen-check,overhead,http-overhead,soak}")
    rep = sub.add_parser("report", help="table, summary.json and plots from DIR/records.jsonl")
    rep.add_argument("dir")
    BenchSetup.add_arguments(rep, shared=True, only={"plots"})
    fid = sub.add_parser("fidelity", help="a comparison run in DIR replayed through the "
                         "simulator: live vs simulated attainment per system and rate")
    fid.add_argument("dir")
    fid.add_argument("--profile", default=None, help="performance model JSON (default: the "
                     "run's, else .cache/profile-cpu.json)")
    cap = sub.add_parser("capacity", help="largest rate with attainment >= target, per system")
    BenchSetup.add_arguments(cap, shared=True)
    WorkloadArgs.add_arguments(cap, shared=True)
    CapacityRun.add_arguments(cap)
    vb = sub.add_parser("vllm-bench", help="vLLM's own `bench serve` against each system in "
                        "turn (its HTTP API); one table")
    BenchSetup.add_arguments(vb, shared=True, only={
        "model", "systems", "engine", "spec_tokens", "out", "backend", "base_url",
        "served_model_name", "api_key", "request_timeout"})
    VllmBench.add_arguments(vb)
    lg = sub.add_parser("loadgen-check", help="load generator vs a SIMULATED-engine cluster")
    BenchSetup.add_arguments(lg, shared=True, only={"model"})
    LoadgenCheck.add_arguments(lg)
    ov = sub.add_parser("overhead", help="coordinator vs direct worker calls, SIMULATED engine")
    BenchSetup.add_arguments(ov, shared=True, only={"model"})
    CoordinatorOverhead.add_arguments(ov)
    ho = sub.add_parser("http-overhead", help="HTTP front vs gRPC: TTFT added, requests/s; "
                        "SIMULATED engine")
    BenchSetup.add_arguments(ho, shared=True, only={"model"})
    HttpOverhead.add_arguments(ho)
    sk = sub.add_parser("soak", help="closed-loop streams for minutes: RSS growth, every "
                        "request accounted for; SIMULATED engine")
    BenchSetup.add_arguments(sk, shared=True, only={"model"})
    Soak.add_arguments(sk)


def _base_urls(setup: BenchSetup) -> list[str]:
    """--backend openai: the servers' base URLs (none with the local backend)."""
    urls = [u.strip() for u in (setup.base_url or "").split(",") if u.strip()]
    if setup.backend == "local":
        if urls:
            raise SystemExit("--base-url needs --backend openai")
        return []
    if not urls:
        raise SystemExit("--backend openai needs --base-url URL[,URL2]")
    return urls


def _systems(setup: BenchSetup) -> list[str]:
    from slos_serve.bench.systems import SYSTEMS, VLLM_SERVE, OpenAIServer

    if urls := _base_urls(setup):
        return [OpenAIServer(urls, setup.model).name]
    names = [s.strip() for s in setup.systems.split(",") if s.strip()]
    bad = [s for s in names if s not in SYSTEMS]
    if bad:
        raise SystemExit(f"unknown system(s) {bad}; choose from {', '.join(SYSTEMS)}")
    if setup.engine == "sim" and set(names) & set(VLLM_SERVE):
        print(f"--engine sim: leaving out {', '.join(s for s in names if s in VLLM_SERVE)} "
              "(it runs vLLM itself)", file=sys.stderr)
        names = [s for s in names if s not in VLLM_SERVE]
    if not names:
        raise SystemExit("no system to run")
    return names


def _redacted(argv: list[str]) -> list[str]:
    """The command line as meta.json keeps it: an API key never is."""
    out = []
    for k, a in enumerate(argv):
        if k and argv[k - 1] == "--api-key":
            a = "***"
        out.append("--api-key=***" if a.startswith("--api-key=") else a)
    return out


def _config(args: argparse.Namespace, scenario: str, rates: list[float | None]) -> BenchConfig:
    from slos_serve.bench.runner import BenchConfig

    setup, wa, run = (BenchSetup.from_args(args), WorkloadArgs.from_args(args),
                      CompareRun.from_args(args))
    out = Path(setup.out or f"bench-results/{time.strftime('%Y%m%d-%H%M%S')}")
    duration = run.duration
    if duration is None and not wa.trace:
        duration = DEFAULT_DURATION_S
    wl = WorkloadOptions(scenario=scenario, requests=run.requests, duration_s=duration,
                         seed=wa.seed, burstiness=wa.burstiness, trace=wa.trace,
                         time_scale=wa.time_scale, max_context=wa.max_context)
    scale = None if setup.slo_scale == "auto" else float(setup.slo_scale)
    return BenchConfig(
        systems=_systems(setup), model=setup.model, out_dir=out, workload=wl, rates=rates,
        engine=setup.engine, spec_tokens=setup.spec_tokens, slo_scale=scale,
        request_timeout_s=setup.request_timeout, drain_s=setup.drain,
        progress=setup.progress, plots=setup.plots, meta={"argv": _redacted(sys.argv[1:])},
        base_urls=_base_urls(setup), served_model_name=setup.served_model_name,
        api_key=setup.api_key or os.environ.get(OPENAI_API_KEY_ENV) or None)


def _check_model(model: str) -> None:
    if not Path(model, "config.json").exists():
        raise SystemExit(f"--model {model}: no model there (make model builds the tiny one)")


def run(args: argparse.Namespace) -> int:
    if args.action == "report":
        render(Path(args.dir), plots=args.plots)
        return 0
    if args.action == "fidelity":
        from slos_serve.bench.fidelity import compare, fidelity_table

        print(fidelity_table(compare(args.dir, args.profile)))
        return 0
    _check_model(args.model)
    signals.install()  # SIGTERM stops every started process, as Ctrl-C does
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    finally:
        signals.restore()


def _show(table: str, data: Any, json_path: str | None) -> int:
    """Print a measurement's table; write its data as JSON if asked."""
    print(table)
    if json_path:
        Path(json_path).write_text(json.dumps(data, indent=2))
    return 0


def _loadgen_check(args: argparse.Namespace) -> int:
    from slos_serve.bench.overhead import loadgen_check, loadgen_table

    lg = LoadgenCheck.from_args(args)
    rows = loadgen_check(args.model, _floats(lg.rates), lg.seconds, lg.scenario, lg.max_output)
    return _show(loadgen_table(rows), rows, lg.json)


def _overhead(args: argparse.Namespace) -> int:
    from slos_serve.bench.overhead import coordinator_overhead, overhead_table

    ov = CoordinatorOverhead.from_args(args)
    res = coordinator_overhead(args.model, ov.prompt_tokens, ov.output_tokens, ov.requests,
                               ov.concurrency, ov.seconds, scheduler=ov.scheduler)
    return _show(overhead_table(res), res, ov.json)


def _http_overhead(args: argparse.Namespace) -> int:
    from slos_serve.bench.http_overhead import Settings, http_overhead, http_overhead_table

    ho = HttpOverhead.from_args(args)
    cfg = Settings(prompt_tokens=ho.prompt_tokens, ttft_output=ho.ttft_output,
                   requests=ho.requests, short_output=ho.short_output,
                   concurrency=ho.concurrency, seconds=ho.seconds)
    shapes = [s.strip() for s in ho.shapes.split(",") if s.strip()]
    res = http_overhead(args.model, shapes, cfg, client_alone=ho.client_alone)
    return _show(http_overhead_table(res), res, ho.json)


def _soak(args: argparse.Namespace) -> int:
    from slos_serve.bench.soak import SoakSettings, soak, soak_table

    sk = Soak.from_args(args)
    if sk.streams < 1 or sk.minutes <= 0:
        raise SystemExit("--streams >= 1 and --minutes > 0 expected")
    settings = SoakSettings(
        streams=sk.streams, seconds=60.0 * sk.minutes, warmup_s=sk.warmup,
        progress_s=sk.progress, shape=sk.shape, drain_s=sk.drain, seed=sk.seed,
        prompt_tokens=_pair(sk.prompt_tokens, "prompt-tokens"),
        output_tokens=_pair(sk.output_tokens, "output-tokens"))
    try:
        res = soak(args.model, settings)
    except ValueError as exc:
        raise SystemExit(f"bench soak: {exc}") from None
    _show(soak_table(res), res, sk.json)
    return 0 if res["pass"]["all"] else 1


def _capacity(args: argparse.Namespace) -> int:
    from slos_serve.bench.runner import run_capacity

    search = CapacityRun.from_args(args)
    scenarios = (list(SCENARIOS) if search.scenarios == "all"
                 else [s.strip() for s in search.scenarios.split(",") if s.strip()])
    bad = [s for s in scenarios if s not in SCENARIOS]
    if bad:
        raise SystemExit(f"unknown scenario(s) {bad}; choose from {', '.join(SCENARIOS)}")
    cfg = _config(args, scenarios[0], [])
    run_capacity(cfg, search.config(scenarios))
    print(f"wrote {cfg.out_dir / 'capacity.json'}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from slos_serve.bench.runner import run_compare

    run = CompareRun.from_args(args)
    rates: list[float | None]
    if run.rates:
        rates = list(_floats(run.rates))
    else:
        rates = [None] if args.trace else list(_floats(DEFAULT_RATES))
    run_compare(_config(args, run.scenario, rates))
    return 0


def _vllm_bench(args: argparse.Namespace) -> int:
    from slos_serve.bench.vllm_bench import VllmBenchRun, run_systems, table

    vb = VllmBench.from_args(args)
    cfg = _config(args, "chatbot", [])
    template = VllmBenchRun(
        base_url="", model=cfg.model, result_file=cfg.out_dir / "result.json", backend=vb.api,
        served_model_name=cfg.served_model_name, num_prompts=vb.num_prompts,
        request_rate=vb.request_rate, input_len=vb.input_len, output_len=vb.output_len,
        goodput=tuple(vb.goodput or ()), seed=vb.seed, api_key=cfg.api_key)
    systems = [cfg.system(name) for name in cfg.systems]
    rows = run_systems(systems, template, cfg.out_dir, timeout_s=cfg.request_timeout_s
                       + 2 * vb.num_prompts / vb.request_rate + 120)
    print(table(rows))
    print(f"vLLM's results: {cfg.out_dir}/<system>/vllm-bench-*.json")
    return 0


ACTIONS = {"vllm-bench": _vllm_bench, "loadgen-check": _loadgen_check,
           "overhead": _overhead, "http-overhead": _http_overhead, "capacity": _capacity,
           "soak": _soak,
           None: _compare}


def _dispatch(args: argparse.Namespace) -> int:
    return ACTIONS[args.action](args)
