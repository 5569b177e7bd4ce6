"""`slos-serve simulate`: attainment at one rate, capacity search, planner overhead.

  slos-serve simulate --scenario chatbot --system slos,vllm --rate 12
  slos-serve simulate capacity --scenarios all --systems slos,vllm,sarathi,distserve \
      --profile opt-13b-a100 --out capacity.json
  slos-serve simulate overhead

The simulator and the capacity search are imported where used, so that `slos-serve --help`
(which imports every command module) stays fast.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from tqdm import tqdm

from slos_serve.config import Options, option
from slos_serve.core.perf_model import load_profile
from slos_serve.sim import overhead
from slos_serve.sim.workloads import SCENARIOS, TraceOptions, WorkloadSpec, build_workload

if TYPE_CHECKING:
    from slos_serve.sim.core import SimConfig

SYSTEM_NAMES = ("vllm", "sarathi", "distserve", "slos", "slos-pd", "slos-colocated")
# rough capacities (req/s, 2 OPT-13B replicas) the searches start from; any start works
START = {"chatbot": 12.0, "coding": 24.0, "summarization": 6.0, "mixed": 10.0, "tool": 6.0,
         "reasoning": 1.0}


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadArgs(Options):
    """Arrival and length options shared by `simulate` and `bench` (the same workloads)."""

    seed: int = option(0)
    burstiness: float = option(1.0, "gamma shape of inter-arrival times (1 = Poisson, < 1 "
                                    "burstier)")
    trace: str | None = option(None, "Azure trace CSV (TIMESTAMP,ContextTokens,"
                               "GeneratedTokens): replaces the scenario's arrivals and lengths")
    time_scale: float = option(1.0, "multiply trace timestamps (0.5 = twice the rate)")
    max_context: int | None = option(None, "clip prompt + output to this many tokens "
                                           "(default %(default)s)")


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulatedCluster(Options):
    """The simulated systems' hardware, performance model and policy (`SimConfig`)."""

    profile: str = option("opt-13b-a100", "performance model: a shipped profile name or a "
                                          "JSON file")
    workers: int = option(2, "engines per system (default 2)")
    pd_ratio: str | None = option(None, "P:D split for disaggregated systems, e.g. 1:1 "
                                        "(default: best of 1:1, 2:1, 1:2)")
    length_scale: float = option(1.0, "multiply trace lengths before clipping")
    spec_alpha: float = option(0.7, "draft-token acceptance rate (systems with speculative "
                                    "decoding)")
    max_spec_len: int = option(8)
    kv_bandwidth: float = option(100.0, "GB/s prefill->decode")
    on_reject: str = option("best_effort", "planner systems: serve declined requests best "
                             "effort, or reject them", choices=("best_effort", "reject"))

    def sim_config(self, seed: int) -> SimConfig:
        from slos_serve.sim.core import SimConfig

        ratio = None
        if self.pd_ratio:
            p, d = (int(x) for x in self.pd_ratio.split(":"))
            ratio = (p, d)
        return SimConfig(workers=self.workers, pd_ratio=ratio, seed=seed,
                         spec_alpha=self.spec_alpha, max_spec_len=self.max_spec_len,
                         kv_bandwidth=self.kv_bandwidth * 1e9, on_reject=self.on_reject)

    def workload(self, wl: WorkloadArgs, scenario: str, rate: float, n: int) -> WorkloadSpec:
        topts = TraceOptions(time_scale=wl.time_scale, max_context=wl.max_context,
                             length_scale=self.length_scale)
        return WorkloadSpec(scenario, rate, n, seed=wl.seed, burstiness=wl.burstiness,
                            trace=wl.trace, trace_opts=topts, max_context=wl.max_context)


@dataclass(frozen=True, slots=True, kw_only=True)
class AttainmentRun(Options):
    """`simulate`: attainment of each system at one rate."""

    scenario: str = option("chatbot", choices=sorted(SCENARIOS))
    system: str = option("slos,vllm", f"comma-separated, from {', '.join(SYSTEM_NAMES)}")
    rate: float = option(8.0, "requests per second")
    num_requests: int | None = option(None, "default: 60 s of arrivals (at least 200)")
    json: str | None = option(None, "write the summaries to this file")


@dataclass(frozen=True, slots=True, kw_only=True)
class CapacityRun(Options):
    """`simulate capacity`: the largest rate each system serves at the targets."""

    scenarios: str = option("all", "comma-separated or 'all'")
    systems: str = option("slos,vllm,sarathi,distserve")
    out: str | None = option(None, "write JSON here")
    targets: str = option("0.9,0.98", "attainment targets")
    window: float = option(60.0, "s of arrivals per probe")
    min_requests: int = option(200)
    max_requests: int = option(1500)
    rel_tol: float = option(0.05, "search precision")
    jobs: int = option(2, "parallel processes")


@dataclass(frozen=True, slots=True)
class Simulation:
    """What one `simulate` invocation configures: the systems and their workload."""

    cluster: SimulatedCluster
    workload: WorkloadArgs

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Simulation:
        return cls(SimulatedCluster.from_args(args), WorkloadArgs.from_args(args))

    def spec(self, scenario: str, rate: float, n: int) -> WorkloadSpec:
        return self.cluster.workload(self.workload, scenario, rate, n)

    def sim_config(self) -> SimConfig:
        return self.cluster.sim_config(self.workload.seed)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The systems' and workload's options are declared once, on `simulate`; `capacity`
    accepts them too (`simulate --max-spec-len 1 capacity` = `simulate capacity
    --max-spec-len 1`)."""
    SimulatedCluster.add_arguments(parser)
    WorkloadArgs.add_arguments(parser)
    AttainmentRun.add_arguments(parser)
    sub = parser.add_subparsers(dest="action", metavar="{capacity,overhead}")
    cap = sub.add_parser("capacity", help="largest rate with attainment >= 90 %% (and 98 %%)")
    SimulatedCluster.add_arguments(cap, shared=True)
    WorkloadArgs.add_arguments(cap, shared=True)
    CapacityRun.add_arguments(cap)
    ov = sub.add_parser("overhead", help="planner wall time against live requests")
    overhead.add_arguments(ov)


def _systems(text: str) -> list[str]:
    out = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in out if s not in SYSTEM_NAMES]
    if bad:
        raise SystemExit(f"unknown system(s) {bad}; choose from {', '.join(SYSTEM_NAMES)}")
    return out


def _ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{1e3 * x:.0f}"


def run_once(args: argparse.Namespace) -> int:
    from slos_serve.sim.simulator import simulate

    sim, run = Simulation.from_args(args), AttainmentRun.from_args(args)
    profile = sim.cluster.profile
    n = run.num_requests or max(200, int(run.rate * 60))
    reqs = build_workload(sim.spec(run.scenario, run.rate, n))
    model = load_profile(profile)
    out = {}
    print(f"scenario {run.scenario}, {len(reqs)} requests at {run.rate:g} req/s, "
          f"{sim.cluster.workers} workers, profile {profile}")
    for system in _systems(run.system):
        t = time.perf_counter()
        res = simulate(reqs, system, sim.sim_config(), model, profile)
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
    if run.json:
        with open(run.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


def _capacity_job(sim: Simulation, cap: CapacityRun, scenario: str, system: str,
                  targets: list[float]) -> tuple[str, str, dict]:
    from slos_serve.sim.capacity import SearchOptions, system_capacity

    profile = sim.cluster.profile
    model = load_profile(profile)
    spec = sim.spec(scenario, 1.0, cap.min_requests)
    found: dict = {}
    start = START.get(scenario, 4.0)
    for target in targets:
        opts = SearchOptions(target=target, start=start, rel_tol=cap.rel_tol,
                             window_s=cap.window, min_requests=cap.min_requests,
                             max_requests=cap.max_requests)
        res = system_capacity(system, spec, sim.sim_config(), model, profile, opts)
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
    sim, search = Simulation.from_args(args), CapacityRun.from_args(args)
    scenarios = list(SCENARIOS) if search.scenarios == "all" else search.scenarios.split(",")
    for sc in scenarios:
        if sc not in SCENARIOS:
            raise SystemExit(f"unknown scenario {sc!r}; choose from {', '.join(SCENARIOS)}")
    systems = _systems(search.systems)
    targets = [float(t) for t in search.targets.split(",")]
    jobs = [(sc, s) for sc in scenarios for s in systems]
    # the slowest (planner-driven) systems first, so parallel workers finish together
    jobs.sort(key=lambda j: (not j[1].startswith("slos"), j[0] != "reasoning"))
    found: dict[str, dict[str, dict]] = {sc: {} for sc in scenarios}
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), desc="capacity", unit="search", file=sys.stderr)
    with ProcessPoolExecutor(max_workers=max(1, search.jobs)) as pool:
        futs = [pool.submit(_capacity_job, sim, search, sc, s, targets) for sc, s in jobs]
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
    out["per_worker"] = {sc: {s: v / sim.cluster.workers for s, v in row.items()}
                         for sc, row in cap.items()}
    out["probes"] = {sc: {s: {t: found[sc][s][t]["probes"] for t in found[sc][s]}
                          for s in systems} for sc in scenarios}
    out["config"] = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    out["elapsed_s"] = elapsed
    print("\n".join(lines))
    print(f"\n{len(jobs)} searches in {elapsed:.0f} s")
    if search.out:
        with open(search.out, "w") as f:
            json.dump(out, f, indent=2, default=str)
        print(f"wrote {search.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "capacity":
        return run_capacity(args)
    if args.action == "overhead":
        return overhead.run(args)
    return run_once(args)
