"""`slos-serve simulate`: attainment at one rate, capacity search, planner overhead.

  slos-serve simulate --scenario chatbot --system slos,vllm --rate 12
  slos-serve simulate capacity --scenarios all --systems slos,vllm,sarathi,distserve \
      --profile opt-13b-a100 --out capacity.json
  slos-serve simulate overhead
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict

from slos_serve.sim.workloads import SCENARIOS, TraceOptions, WorkloadSpec

SYSTEM_NAMES = ("vllm", "sarathi", "distserve", "slos", "slos-colocated")
# rough capacities (req/s, 2 OPT-13B replicas) the searches start from; any start works
START = {"chatbot": 12.0, "coding": 24.0, "summarization": 6.0, "mixed": 10.0, "tool": 6.0,
         "reasoning": 1.0}


def add_workload_arguments(p: argparse.ArgumentParser, max_context: int | None) -> None:
    """Arrival and length options shared by `simulate` and `bench` (the same workloads)."""
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--burstiness", type=float, default=1.0,
                   help="gamma shape of inter-arrival times (1 = Poisson, < 1 burstier)")
    p.add_argument("--trace", default=None,
                   help="Azure trace CSV (TIMESTAMP,ContextTokens,GeneratedTokens): replaces "
                        "the scenario's arrivals and lengths")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="multiply trace timestamps (0.5 = twice the rate)")
    p.add_argument("--max-context", type=int, default=max_context,
                   help="clip prompt + output to this many tokens"
                        + (f" (default {max_context})" if max_context else ""))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="opt-13b-a100",
                   help="performance model: a shipped profile name or a JSON file")
    p.add_argument("--workers", type=int, default=2, help="engines per system (default 2)")
    p.add_argument("--pd-ratio", default=None,
                   help="P:D split for disaggregated systems, e.g. 1:1 (default: best of "
                        "1:1, 2:1, 1:2)")
    add_workload_arguments(p, max_context=None)
    p.add_argument("--length-scale", type=float, default=1.0,
                   help="multiply trace lengths before clipping")
    p.add_argument("--spec-alpha", type=float, default=0.7,
                   help="draft-token acceptance rate (systems with speculative decoding)")
    p.add_argument("--max-spec-len", type=int, default=8)
    p.add_argument("--kv-bandwidth", type=float, default=100.0, help="GB/s prefill->decode")
    p.add_argument("--on-decline", choices=("best_effort", "reject"), default="best_effort",
                   help="planner systems: serve declined requests best effort, or reject them")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--scenario", default="chatbot", choices=sorted(SCENARIOS))
    parser.add_argument("--system", default="slos,vllm",
                        help=f"comma-separated, from {', '.join(SYSTEM_NAMES)}")
    parser.add_argument("--rate", type=float, default=8.0, help="requests per second")
    parser.add_argument("--num-requests", type=int, default=None,
                        help="default: 60 s of arrivals (at least 200)")
    parser.add_argument("--json", default=None, help="write the summaries to this file")
    sub = parser.add_subparsers(dest="action", metavar="{capacity,overhead}")
    cap = sub.add_parser("capacity", help="largest rate with attainment >= 90 %% (and 98 %%)")
    _common(cap)
    cap.add_argument("--scenarios", default="all", help="comma-separated or 'all'")
    cap.add_argument("--systems", default="slos,vllm,sarathi,distserve")
    cap.add_argument("--out", default=None, help="write JSON here")
    cap.add_argument("--targets", default="0.9,0.98", help="attainment targets")
    cap.add_argument("--window", type=float, default=60.0, help="s of arrivals per probe")
    cap.add_argument("--min-requests", type=int, default=200)
    cap.add_argument("--max-requests", type=int, default=1500)
    cap.add_argument("--rel-tol", type=float, default=0.05, help="search precision")
    cap.add_argument("--jobs", type=int, default=2, help="parallel processes")
    ov = sub.add_parser("overhead", help="planner wall time against live requests")
    from slos_serve.sim import overhead

    overhead.add_arguments(ov)


def _cfg(args: argparse.Namespace):
    from slos_serve.sim.core import SimConfig

    ratio = None
    if args.pd_ratio:
        p, d = (int(x) for x in args.pd_ratio.split(":"))
        ratio = (p, d)
    return SimConfig(workers=args.workers, pd_ratio=ratio, seed=args.seed,
                     spec_alpha=args.spec_alpha, max_spec_len=args.max_spec_len,
                     kv_bandwidth=args.kv_bandwidth * 1e9, on_reject=args.on_decline)


def _spec(args: argparse.Namespace, scenario: str, rate: float, n: int) -> WorkloadSpec:
    topts = TraceOptions(time_scale=args.time_scale, max_context=args.max_context,
                         length_scale=args.length_scale)
    return WorkloadSpec(scenario, rate, n, seed=args.seed, burstiness=args.burstiness,
                        trace=args.trace, trace_opts=topts, max_context=args.max_context)


def _systems(text: str) -> list[str]:
    out = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in out if s not in SYSTEM_NAMES]
    if bad:
        raise SystemExit(f"unknown system(s) {bad}; choose from {', '.join(SYSTEM_NAMES)}")
    return out


def _ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{1e3 * x:.0f}"


def run_once(args: argparse.Namespace) -> int:
    from slos_serve.core.perf_model import load_profile
    from slos_serve.sim.simulator import simulate
    from slos_serve.sim.workloads import build_workload

    n = args.num_requests or max(200, int(args.rate * 60))
    reqs = build_workload(_spec(args, args.scenario, args.rate, n))
    model = load_profile(args.profile)
    out = {}
    print(f"scenario {args.scenario}, {len(reqs)} requests at {args.rate:g} req/s, "
          f"{args.workers} workers, profile {args.profile}")
    for system in _systems(args.system):
        t = time.perf_counter()
        res = simulate(reqs, system, _cfg(args), model, args.profile)
        s = res.summary
        print(f"\n{system} ({res.split}): attainment {100 * s.attainment:.1f} %, goodput "
              f"{s.goodput:.2f} req/s, rejected {s.rejected}, unfinished {s.unfinished} "
              f"[{time.perf_counter() - t:.1f} s]")
        print(f"  {'tier':<10} {'sent':>5} {'met':>5} {'rej':>4}  TTFT ms p50/p90/p99"
              f"      TPOT ms p50/p90/p99")
        for tr in s.tiers:
            print(f"  {tr.tier:<10} {tr.sent:>5} {tr.attained:>5} {tr.rejected:>4}  "
                  f"{_ms(tr.ttft_p50):>6}/{_ms(tr.ttft_p90):>6}/{_ms(tr.ttft_p99):>6}   "
                  f"{_ms(tr.tpot_p50):>6}/{_ms(tr.tpot_p90):>6}/{_ms(tr.tpot_p99):>6}")
        out[system] = {"split": res.split, **asdict(s)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


def _capacity_job(args: argparse.Namespace, scenario: str, system: str,
                  targets: list[float]) -> tuple[str, str, dict]:
    from slos_serve.core.perf_model import load_profile
    from slos_serve.sim.capacity import SearchOptions, system_capacity

    model = load_profile(args.profile)
    spec = _spec(args, scenario, 1.0, args.min_requests)
    found: dict = {}
    start = START.get(scenario, 4.0)
    for target in targets:
        opts = SearchOptions(target=target, start=start, rel_tol=args.rel_tol,
                             window_s=args.window, min_requests=args.min_requests,
                             max_requests=args.max_requests)
        res = system_capacity(system, spec, _cfg(args), model, args.profile, opts)
        found[str(target)] = {"rate": res.rate, "probes": res.probes}
        if res.rate > 0:
            start = res.rate  # a stricter target's capacity is at most this
    return scenario, system, found


def _geomean(xs: list[float]) -> float:
    xs = [x for x in xs if x > 0 and math.isfinite(x)]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else math.nan


def _table(cap: dict[str, dict[str, float]], systems: list[str], title: str) -> list[str]:
    lines = [title]
    head = f"{'scenario':<14}" + "".join(f"{s:>16}" for s in systems)
    lines.append(head)
    ratios: dict[str, list[float]] = {s: [] for s in systems}
    for sc, row in cap.items():
        base = row.get("vllm", 0.0)
        cells = []
        for s in systems:
            v = row.get(s, math.nan)
            r = v / base if base > 0 else math.nan
            ratios[s].append(r)
            cells.append(f"{v:>8.2f} ({r:>4.2f}x)" if base > 0 else f"{v:>16.2f}")
        lines.append(f"{sc:<14}" + "".join(f"{c:>16}" for c in cells))
    lines.append(f"{'geo-mean':<14}" + "".join(
        f"{_geomean(ratios[s]):>15.2f}x" for s in systems))
    best = [max(row.get("vllm", 0), row.get("sarathi", 0)) for row in cap.values()]
    for s in systems:
        if s.startswith("slos") and all(b > 0 for b in best):
            g = _geomean([row.get(s, 0) / b for row, b in zip(cap.values(), best, strict=True)])
            lines.append(f"{s} vs best of vllm/sarathi: geo-mean {g:.2f}x")
    return lines


def run_capacity(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    scenarios = list(SCENARIOS) if args.scenarios == "all" else args.scenarios.split(",")
    for sc in scenarios:
        if sc not in SCENARIOS:
            raise SystemExit(f"unknown scenario {sc!r}; choose from {', '.join(SCENARIOS)}")
    systems = _systems(args.systems)
    targets = [float(t) for t in args.targets.split(",")]
    jobs = [(sc, s) for sc in scenarios for s in systems]
    # the slowest (planner-driven) systems first, so parallel workers finish together
    jobs.sort(key=lambda j: (not j[1].startswith("slos"), j[0] != "reasoning"))
    found: dict[str, dict[str, dict]] = {sc: {} for sc in scenarios}
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), desc="capacity", unit="search", file=sys.stderr)
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futs = [pool.submit(_capacity_job, args, sc, s, targets) for sc, s in jobs]
        for fut in as_completed(futs):
            sc, s, res = fut.result()
            found[sc][s] = res
            bar.set_postfix_str(f"{sc}/{s}: {res[str(targets[0])]['rate']:.2f} req/s")
            bar.update()
    bar.close()
    elapsed = time.perf_counter() - t0
    out: dict = {}
    lines: list[str] = []
    for k, target in enumerate(targets):
        key = "capacity" if k == 0 else f"capacity_{round(100 * target)}"
        cap = {sc: {s: found[sc][s][str(target)]["rate"] for s in systems} for sc in scenarios}
        out[key] = cap
        lines += _table(cap, systems, f"\ncapacity (req/s, attainment >= {100 * target:g} %; "
                                      f"ratio to vllm)")
    cap = out["capacity"]
    out["ratio_to_vllm"] = {
        sc: {s: (cap[sc][s] / cap[sc]["vllm"] if cap[sc].get("vllm") else None)
             for s in systems} for sc in scenarios}
    out["geomean_ratio_to_vllm"] = {
        s: _geomean([cap[sc][s] / cap[sc]["vllm"] for sc in scenarios if cap[sc].get("vllm")])
        for s in systems}
    out["per_worker"] = {sc: {s: v / args.workers for s, v in row.items()}
                         for sc, row in cap.items()}
    out["probes"] = {sc: {s: {t: found[sc][s][t]["probes"] for t in found[sc][s]}
                          for s in systems} for sc in scenarios}
    out["config"] = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    out["elapsed_s"] = elapsed
    print("\n".join(lines))
    print(f"\n{len(jobs)} searches in {elapsed:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2, default=str)
        print(f"wrote {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "capacity":
        return run_capacity(args)
    if args.action == "overhead":
        from slos_serve.sim import overhead

        return overhead.run(args)
    return run_once(args)
