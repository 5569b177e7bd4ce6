"""`slos-serve bench`: live benchmark of slos-serve against vLLM baselines, side by side.

  slos-serve bench --systems slos,vllm-pd,vllm-serve --scenario coding --rates 1,3
  slos-serve bench --trace trace.csv --time-scale 0.5 --max-context 1024
  slos-serve bench report bench-results/20261124-0415
  slos-serve bench capacity --systems slos,vllm-serve --scenarios coding,chatbot
  slos-serve bench loadgen-check      # SIMULATED engine: the load generator's own limits
  slos-serve bench overhead           # SIMULATED engine: what the coordinator adds
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from slos_serve.sim.cli import add_workload_arguments
from slos_serve.sim.workloads import SCENARIOS

DEFAULT_MODEL = ".cache/tiny-llama"
DEFAULT_SYSTEMS = "slos,vllm-pd,vllm-serve"
DEFAULT_RATES = "4,10"  # chatbot: about vllm-pd's capacity here, and beyond it
DEFAULT_DURATION_S = 20.0


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="model directory (tokenizer, engines)")
    p.add_argument("--systems", default=DEFAULT_SYSTEMS,
                   help="comma-separated, run one after the other: slos (planner), vllm-pd "
                        "(same 1P+1D cluster, vLLM scheduling + round-robin), vllm-serve "
                        "(two `vllm serve`, one per core)")
    p.add_argument("--engine", choices=("vllm", "sim"), default="vllm",
                   help="engine of the slos / vllm-pd clusters; sim = SIMULATED (no model "
                        "runs; vllm-serve is then left out)")
    p.add_argument("--spec-tokens", type=int, default=0,
                   help="ngram speculation for every system (0 = off)")
    add_workload_arguments(p, max_context=2048)
    p.add_argument("--slo-scale", default="auto",
                   help="multiply the workload's (A100-sized) SLOs; auto: measured zero-load "
                        "TTFT / TPOT on the first system over the reference ones")
    p.add_argument("--out", default=None, help="results folder (default bench-results/<time>)")
    p.add_argument("--request-timeout", type=float, default=300.0, help="s per request")
    p.add_argument("--drain", type=float, default=120.0,
                   help="s to wait for requests in flight after the last send")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plots", action="store_true", help="no PNG plots")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--scenario", default="chatbot", choices=sorted(SCENARIOS))
    parser.add_argument("--rates", default=None,
                        help=f"req/s, comma-separated (default {DEFAULT_RATES}; with --trace: "
                             "the trace's own rate after --time-scale)")
    parser.add_argument("--requests", type=int, default=200, help="requests per rate (at most)")
    parser.add_argument("--duration", type=float, default=None,
                        help=f"s of arrivals per rate (at most; default {DEFAULT_DURATION_S:g}, "
                             "with --trace: the whole trace)")
    sub = parser.add_subparsers(dest="action", metavar="{report,capacity,loadgen-check,overhead}")
    rep = sub.add_parser("report", help="table, summary.json and plots from DIR/records.jsonl")
    rep.add_argument("dir")
    rep.add_argument("--no-plots", action="store_true")
    cap = sub.add_parser("capacity", help="largest rate with attainment >= target, per system")
    _common(cap)
    cap.add_argument("--scenarios", default="coding", help="comma-separated or 'all'")
    cap.add_argument("--target", type=float, default=0.9)
    cap.add_argument("--start-rate", type=float, default=2.0)
    cap.add_argument("--max-probes", type=int, default=6, help="probes per search")
    cap.add_argument("--rel-tol", type=float, default=0.25, help="search precision")
    cap.add_argument("--window", type=float, default=15.0, help="s of arrivals per probe")
    cap.add_argument("--min-requests", type=int, default=20)
    cap.add_argument("--max-requests", type=int, default=600,
                     help="cap on a probe's requests (a lower cap turns fast probes into "
                          "bursts shorter than --window)")
    lg = sub.add_parser("loadgen-check", help="load generator vs a SIMULATED-engine cluster")
    lg.add_argument("--model", default=DEFAULT_MODEL)
    lg.add_argument("--rates", default="20,50", help="req/s (10x the live benchmark's)")
    lg.add_argument("--seconds", type=float, default=6.0, help="s of arrivals per rate")
    lg.add_argument("--scenario", default="coding", choices=sorted(SCENARIOS))
    lg.add_argument("--max-output", type=int, default=16, help="clip outputs (tokens)")
    lg.add_argument("--json", default=None, help="write the rows here")
    ov = sub.add_parser("overhead", help="coordinator vs direct worker calls, SIMULATED engine")
    ov.add_argument("--model", default=DEFAULT_MODEL)
    ov.add_argument("--prompt-tokens", type=int, default=64)
    ov.add_argument("--output-tokens", type=int, default=64)
    ov.add_argument("--requests", type=int, default=20, help="sequential requests per path")
    ov.add_argument("--concurrency", type=int, default=32)
    ov.add_argument("--seconds", type=float, default=5.0, help="per throughput measurement")
    ov.add_argument("--scheduler", choices=("slos", "vllm"), default="slos")
    ov.add_argument("--json", default=None)


def _systems(args: argparse.Namespace) -> list[str]:
    from slos_serve.bench.systems import SYSTEMS

    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = [s for s in names if s not in SYSTEMS]
    if bad:
        raise SystemExit(f"unknown system(s) {bad}; choose from {', '.join(SYSTEMS)}")
    if args.engine == "sim" and "vllm-serve" in names:
        print("--engine sim: leaving out vllm-serve (it runs vLLM itself)", file=sys.stderr)
        names.remove("vllm-serve")
    if not names:
        raise SystemExit("no system to run")
    return names


def _config(args: argparse.Namespace, scenario: str, rates: list[float | None]):
    from slos_serve.bench.runner import BenchConfig
    from slos_serve.bench.workload import WorkloadOptions

    out = Path(args.out or f"bench-results/{time.strftime('%Y%m%d-%H%M%S')}")
    duration = getattr(args, "duration", None)
    if duration is None and not args.trace:
        duration = DEFAULT_DURATION_S
    wl = WorkloadOptions(scenario=scenario, requests=getattr(args, "requests", 40),
                         duration_s=duration, seed=args.seed,
                         burstiness=args.burstiness, trace=args.trace,
                         time_scale=args.time_scale, max_context=args.max_context)
    scale = None if args.slo_scale == "auto" else float(args.slo_scale)
    return BenchConfig(
        systems=_systems(args), model=args.model, out_dir=out, workload=wl, rates=rates,
        engine=args.engine, spec_tokens=args.spec_tokens, slo_scale=scale,
        request_timeout_s=args.request_timeout, drain_s=args.drain,
        progress=not args.no_progress, plots=not args.no_plots,
        meta={"argv": sys.argv[1:]})


def _check_model(model: str) -> None:
    if not Path(model, "config.json").exists():
        raise SystemExit(f"--model {model}: no model there (make model builds the tiny one)")


def run(args: argparse.Namespace) -> int:
    if args.action == "report":
        from slos_serve.bench.report import render

        render(Path(args.dir), plots=not args.no_plots)
        return 0
    _check_model(args.model)
    from slos_serve.bench import signals

    signals.install()  # SIGTERM stops every started process, as Ctrl-C does
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    finally:
        signals.restore()


def _dispatch(args: argparse.Namespace) -> int:
    if args.action == "loadgen-check":
        from slos_serve.bench.overhead import loadgen_check, loadgen_table

        rows = loadgen_check(args.model, _floats(args.rates), args.seconds, args.scenario,
                             args.max_output)
        print(loadgen_table(rows))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
        return 0
    if args.action == "overhead":
        from slos_serve.bench.overhead import coordinator_overhead, overhead_table

        res = coordinator_overhead(args.model, args.prompt_tokens, args.output_tokens,
                                   args.requests, args.concurrency, args.seconds,
                                   scheduler=args.scheduler)
        print(overhead_table(res))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))
        return 0
    if args.action == "capacity":
        from slos_serve.bench.runner import CapacityConfig, run_capacity

        scenarios = (list(SCENARIOS) if args.scenarios == "all"
                     else [s.strip() for s in args.scenarios.split(",") if s.strip()])
        bad = [s for s in scenarios if s not in SCENARIOS]
        if bad:
            raise SystemExit(f"unknown scenario(s) {bad}; choose from {', '.join(SCENARIOS)}")
        cfg = _config(args, scenarios[0], [])
        run_capacity(cfg, CapacityConfig(
            scenarios=scenarios, target=args.target, start_rate=args.start_rate,
            max_probes=args.max_probes, rel_tol=args.rel_tol, window_s=args.window,
            min_requests=args.min_requests, max_requests=args.max_requests))
        print(f"wrote {cfg.out_dir / 'capacity.json'}")
        return 0
    from slos_serve.bench.runner import run_compare

    rates: list[float | None]
    if args.rates:
        rates = list(_floats(args.rates))
    else:
        rates = [None] if args.trace else list(_floats(DEFAULT_RATES))
    run_compare(_config(args, args.scenario, rates))
    return 0
