"""`slos-serve simulate`: attainment at one rate, capacity search, planner overhead, traces.

  slos-serve simulate --scenario chatbot --system slos,vllm --rate 12
  slos-serve simulate capacity --scenarios all --systems slos,vllm,vllm-spec,vllm-v0,sarathi,\
      distserve --profile opt-13b-a100 --seeds 0,1,2 --out capacity.json
  slos-serve simulate overhead
  slos-serve simulate make-trace --out bursty.csv --scenario chatbot --rate 5 --burstiness 0.3
  slos-serve simulate scaling --scenarios chatbot,coding --systems slos-colocated,vllm
  slos-serve simulate planner-scale --sizes 8 64 256 --shards 0 8

`vllm-spec` names a family: at one rate it runs with `--baseline-spec-len` drafts (default 2);
the capacity search runs every length 1-4 and reports the best per scenario (`capacity_report`).

The capacity search is imported where used (in the worker processes).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from tqdm import tqdm

from slos_serve.config import Options, option
from slos_serve.core.perf_model import load_profile
from slos_serve.sim import overhead, planner_scale, scaling, traces
from slos_serve.sim.baselines import SPEC_LENGTHS
from slos_serve.sim.capacity_report import SPEC_FAMILY, Found, expand, record, report
from slos_serve.sim.simulator import SYSTEMS, simulate
from slos_serve.sim.workloads import SCENARIOS, TraceOptions, WorkloadSpec, build_workload

if TYPE_CHECKING:
    from slos_serve.sim.core import SimConfig

SYSTEM_NAMES = (*SYSTEMS, SPEC_FAMILY)
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
                               "GeneratedTokens), or a shipped one by name ("
                               f"{', '.join(traces.SHIPPED)}): replaces the scenario's arrivals "
                               "and lengths")
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
    plan_shard: int = option(0, "planner systems: plan each group of this many workers "
                                "alone (0: one plan over the cluster; docs/scale.md)")

    def sim_config(self, seed: int) -> SimConfig:
        from slos_serve.sim.core import SimConfig

        ratio = None
        if self.pd_ratio:
            p, d = (int(x) for x in self.pd_ratio.split(":"))
            ratio = (p, d)
        return SimConfig(workers=self.workers, pd_ratio=ratio, seed=seed,
                         spec_alpha=self.spec_alpha, max_spec_len=self.max_spec_len,
                         kv_bandwidth=self.kv_bandwidth * 1e9, on_reject=self.on_reject,
                         plan_shard=self.plan_shard)

    def workload(self, wl: WorkloadArgs, scenario: str, rate: float, n: int) -> WorkloadSpec:
        topts = TraceOptions(time_scale=wl.time_scale, max_context=wl.max_context,
                             length_scale=self.length_scale)
        trace = traces.resolve(wl.trace) if wl.trace else None
        return WorkloadSpec(scenario, rate, n, seed=wl.seed, burstiness=wl.burstiness,
                            trace=trace, trace_opts=topts, max_context=wl.max_context)


@dataclass(frozen=True, slots=True, kw_only=True)
class AttainmentRun(Options):
    """`simulate`: attainment of each system at one rate."""

    scenario: str = option("chatbot", choices=sorted(SCENARIOS))
    system: str = option("slos,vllm", f"comma-separated, from {', '.join(SYSTEM_NAMES)}")
    rate: float = option(8.0, "requests per second")
    num_requests: int | None = option(None, "default: 60 s of arrivals (at least 200)")
    baseline_spec_len: int = option(2, "vllm-spec's fixed draft length at one rate (1-4; the "
                                       "capacity search tries each)")
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
    seeds: str | None = option(None, "comma-separated seeds, e.g. 0,1,2 (default: --seed); "
                                     "capacity is their mean, with min-max")


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceRun(Options):
    """`simulate make-trace`: a synthetic Azure-format trace (`traces`) of `--scenario`'s
    lengths at `--rate`, `--burstiness` and `--seed` (the options `simulate` takes)."""

    out: str = option(help="CSV file to write")
    duration: float = option(60.0, "seconds of arrivals")


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

    def with_seed(self, seed: int) -> Simulation:
        """The same simulation with another seed (arrivals, lengths and acceptance draws)."""
        return replace(self, workload=replace(self.workload, seed=seed))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The systems' and workload's options are declared once, on `simulate`; `capacity`
    accepts them too (`simulate --max-spec-len 1 capacity` = `simulate capacity
    --max-spec-len 1`)."""
    SimulatedCluster.add_arguments(parser)
    WorkloadArgs.add_arguments(parser)
    AttainmentRun.add_arguments(parser)
    sub = parser.add_subparsers(dest="action",
                                metavar="{capacity,overhead,make-trace,scaling,planner-scale}")
    cap = sub.add_parser("capacity", help="largest rate with attainment >= 90 %% (and 98 %%)")
    SimulatedCluster.add_arguments(cap, shared=True)
    WorkloadArgs.add_arguments(cap, shared=True)
    CapacityRun.add_arguments(cap)
    ov = sub.add_parser("overhead", help="planner wall time against live requests")
    overhead.add_arguments(ov)
    mk = sub.add_parser("make-trace", help="write a synthetic Azure-format trace with bursts")
    TraceRun.add_arguments(mk)
    WorkloadArgs.add_arguments(mk, shared=True, only={"seed", "burstiness"})
    AttainmentRun.add_arguments(mk, shared=True, only={"scenario", "rate"})
    sc = sub.add_parser("scaling", help="capacity per worker at 2 to 64 workers")
    SimulatedCluster.add_arguments(sc, shared=True)
    WorkloadArgs.add_arguments(sc, shared=True)
    scaling.add_arguments(sc)
    ps = sub.add_parser("planner-scale", help="planner CPU per admission and per simulated "
                                              "second at 8 to 256 workers, whole or sharded")
    SimulatedCluster.add_arguments(ps, shared=True, only={"profile", "spec_alpha",
                                                          "max_spec_len", "on_reject"})
    WorkloadArgs.add_arguments(ps, shared=True, only={"seed"})
    planner_scale.add_arguments(ps)


def _systems(text: str) -> list[str]:
    out = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in out if s not in SYSTEM_NAMES]
    if bad:
        raise SystemExit(f"unknown system(s) {bad}; choose from {', '.join(SYSTEM_NAMES)}")
    return out


def _ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{1e3 * x:.0f}"


def run_once(args: argparse.Namespace) -> int:
    sim, run = Simulation.from_args(args), AttainmentRun.from_args(args)
    profile = sim.cluster.profile
    n = run.num_requests or max(200, int(run.rate * 60))
    reqs = build_workload(sim.spec(run.scenario, run.rate, n))
    model = load_profile(profile)
    out = {}
    print(f"scenario {run.scenario}, {len(reqs)} requests at {run.rate:g} req/s, "
          f"{sim.cluster.workers} workers, profile {profile}")
    if run.baseline_spec_len not in SPEC_LENGTHS:
        raise SystemExit(f"--baseline-spec-len: choose from {SPEC_LENGTHS}")
    for system in _systems(run.system):
        t = time.perf_counter()
        run_as, label = system, system
        if system == SPEC_FAMILY:
            run_as = f"{SPEC_FAMILY}{run.baseline_spec_len}"
            label = f"{SPEC_FAMILY}(s={run.baseline_spec_len})"
        res = simulate(reqs, run_as, sim.sim_config(), model, profile)
        s = res.summary
        print(f"\n{label} ({res.split}): attainment {100 * s.attainment:.1f} %, goodput "
              f"{s.goodput:.2f} req/s, rejected {s.rejected}, unfinished {s.unfinished} "
              f"[{time.perf_counter() - t:.1f} s]")
        print(f"  {'tier':<10} {'sent':>5} {'met':>5} {'rej':>4}  TTFT ms p50/p90/p99"
              f"      TPOT ms p50/p90/p99")
        for tr in s.tiers:
            print(f"  {tr.tier:<10} {tr.sent:>5} {tr.attained:>5} {tr.rejected:>4}  "
                  f"{_ms(tr.ttft_p50):>6}/{_ms(tr.ttft_p90):>6}/{_ms(tr.ttft_p99):>6}   "
                  f"{_ms(tr.tpot_p50):>6}/{_ms(tr.tpot_p90):>6}/{_ms(tr.tpot_p99):>6}")
        out[system] = {"split": res.split, "run_as": run_as, **asdict(s)}
    if run.json:
        with open(run.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


def _capacity_job(sim: Simulation, cap: CapacityRun, scenario: str, system: str, seed: int,
                  targets: list[float]) -> tuple[tuple[str, str, int], dict]:
    """One system's capacity on one scenario with one seed, at each target."""
    from slos_serve.sim.capacity import SearchOptions, system_capacity

    sim = sim.with_seed(seed)
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
    return (scenario, system, seed), found


def _search_all(sim: Simulation, search: CapacityRun, jobs: list[tuple[str, str, int]],
                targets: list[float]) -> Found:
    """Run the searches in parallel processes, with a progress bar."""
    # the slowest (planner-driven) systems first, so parallel workers finish together
    jobs = sorted(jobs, key=lambda j: (not j[1].startswith("slos"), j[0] != "reasoning"))
    found: Found = {}
    bar = tqdm(total=len(jobs), desc="capacity", unit="search", file=sys.stderr)
    with ProcessPoolExecutor(max_workers=max(1, search.jobs)) as pool:
        futs = [pool.submit(_capacity_job, sim, search, *job, targets) for job in jobs]
        for fut in as_completed(futs):
            key, res = fut.result()
            found[key] = res
            sc, s, seed = key
            bar.set_postfix_str(f"{sc}/{s}/seed {seed}: {res[str(targets[0])]['rate']:.2f} req/s")
            bar.update()
    bar.close()
    return found


def run_capacity(args: argparse.Namespace) -> int:
    sim, search = Simulation.from_args(args), CapacityRun.from_args(args)
    scenarios = list(SCENARIOS) if search.scenarios == "all" else search.scenarios.split(",")
    for sc in scenarios:
        if sc not in SCENARIOS:
            raise SystemExit(f"unknown scenario {sc!r}; choose from {', '.join(SCENARIOS)}")
    systems = _systems(search.systems)
    targets = [float(t) for t in search.targets.split(",")]
    seeds = [int(x) for x in search.seeds.split(",")] if search.seeds else [sim.workload.seed]
    jobs = [(sc, s, seed) for sc in scenarios for s in expand(systems) for seed in seeds]
    t0 = time.perf_counter()
    found = _search_all(sim, search, jobs, targets)
    elapsed = time.perf_counter() - t0
    reports = [report(found, scenarios, systems, seeds, t) for t in targets]
    out = record(found, reports, seeds, sim.cluster.workers)
    out["config"] = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    out["elapsed_s"] = elapsed
    for rep in reports:
        print("\n".join(rep.table(seeds)))
    print(f"\n{len(jobs)} searches in {elapsed:.0f} s")
    if search.out:
        with open(search.out, "w") as f:
            json.dump(out, f, indent=2, default=str)
        print(f"wrote {search.out}")
    return 0


def run_make_trace(args: argparse.Namespace) -> int:
    mk, wl = TraceRun.from_args(args), WorkloadArgs.from_args(args)
    at = AttainmentRun.from_args(args)
    rows = traces.make_trace(at.scenario, at.rate, wl.burstiness, mk.duration, wl.seed)
    traces.write_trace(rows, mk.out)
    print(f"wrote {mk.out}: {len(rows)} requests over {mk.duration:g} s, inter-arrival CV "
          f"{traces.inter_arrival_cv(rows):.2f}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "capacity":
        return run_capacity(args)
    if args.action == "overhead":
        return overhead.run(args)
    if args.action == "make-trace":
        return run_make_trace(args)
    if args.action == "scaling":
        return scaling.run(args, Simulation.from_args(args), START)
    if args.action == "planner-scale":
        return planner_scale.run(args, Simulation.from_args(args))
    return run_once(args)
