"""`simulate planner-scale`: the planner's own cost as the cluster grows, whole or sharded.

One run per cluster size N and planner shard size k (0: one plan over the whole cluster, as
the live coordinator plans), at `--per-worker` req/s per worker (the capacity per worker that
`simulate scaling` finds) for `--window` s of arrivals. The simulated SLOs-Serve system times
every plan it makes (SlosSystem.plan_times: snapshot, plan(), each worker's share: what the
coordinator does per plan, with the same planner code); counted are the plans of the second
half of the arrival window (past the ramp-up; the requests in flight keep growing for tens of
seconds on chatbot, so a short window undercounts a plan's steady work: docs/scale.md):

- requests per plan: the mean size of a plan's snapshot, the work a plan does (machine-free);
- ms per admission: a plan's CPU time over the new requests it decided (p50, p99 over plans
  that decided any; mean: every plan's CPU, periodic re-plans too, over all decisions);
- cores: planner CPU seconds per simulated second, all shards together (one process planning
  every shard) and the busiest shard (one process per shard).

  slos-serve simulate planner-scale --sizes 8 64 256 --shards 0 8 --window 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slos_serve.core.perf_model import PerfModel
    from slos_serve.sim.cli import Simulation
    from slos_serve.sim.core import SimConfig, SimRequest
    from slos_serve.sim.slos_system import SlosSystem
    from slos_serve.sim.workloads import Request


@dataclass(frozen=True, slots=True)
class PlannerPoint:
    """The planner's cost in one run of N workers planned in shards of k."""

    workers: int
    shard: int  # workers per planner shard (0: one plan over the cluster)
    rate: float  # req/s offered
    requests: int
    attainment: float
    plans: int  # counted (second half of the arrival window)
    plan_requests: float  # requests in a plan's snapshot, mean
    adm_ms_p50: float
    adm_ms_p99: float
    adm_ms_mean: float
    cores: float  # planner CPU s per simulated s, every shard
    shard_cores: float  # ... of the busiest shard
    seconds: float  # wall time of the run


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


@dataclass(frozen=True, slots=True)
class Cost:
    plans: int
    plan_requests: float  # requests in a plan's snapshot, mean: its work, machine-free
    adm_ms_p50: float
    adm_ms_p99: float
    adm_ms_mean: float
    cores: float
    shard_cores: float


def planner_cost(system: SlosSystem, start: float, end: float) -> Cost:
    """The cost figures of the plans `system` made between sim times start and end."""
    rows = [x for x in system.plan_times if start <= x.at <= end]
    span = max(end - start, 1e-9)
    per_adm = [x.cpu / x.decided for x in rows if x.decided > 0]
    cpu = sum(x.cpu for x in rows)
    by_shard: dict[int, float] = {}
    for x in rows:
        by_shard[x.shard] = by_shard.get(x.shard, 0.0) + x.cpu
    decided = sum(x.decided for x in rows)
    size = sum(x.requests for x in rows) / len(rows) if rows else 0.0
    return Cost(len(rows), size, 1e3 * quantile(per_adm, 0.5), 1e3 * quantile(per_adm, 0.99),
                1e3 * cpu / decided if decided else float("nan"), cpu / span,
                max(by_shard.values(), default=0.0) / span)


def timed_run(requests: list[Request], system: str, cfg: SimConfig, model: PerfModel,
              profile: str) -> tuple[SlosSystem, list[SimRequest]]:
    """Run `requests` through the planner system `system`; the system keeps its plans' cost
    (SlosSystem.plan_times)."""
    from slos_serve.sim.core import Cluster
    from slos_serve.sim.simulator import roles_for
    from slos_serve.sim.slos_system import SlosSystem

    slos = SlosSystem(system)
    cluster = Cluster(cfg, model, roles_for(system, cfg.workers, None), slos, profile=profile)
    return slos, cluster.run(requests)


def measure(sim: Simulation, scenario: str, system: str, workers: int, shard: int,
            per_worker: float, window_s: float) -> PlannerPoint:
    """One run of `workers` at per_worker * workers req/s for window_s s of arrivals."""
    from slos_serve.core.perf_model import load_profile
    from slos_serve.sim.metrics import result, summarize
    from slos_serve.sim.workloads import build_workload

    rate = per_worker * workers
    reqs = build_workload(sim.spec(scenario, rate, max(2, round(rate * window_s))))
    cfg = replace(sim.sim_config(), workers=workers, plan_shard=shard)
    model = load_profile(sim.cluster.profile)
    t = time.perf_counter()
    slos, done = timed_run(reqs, system, cfg, model, sim.cluster.profile)
    seconds = time.perf_counter() - t
    end = reqs[-1].arrival
    att = summarize([result(r) for r in done], window_s).attainment
    c = planner_cost(slos, reqs[0].arrival + (end - reqs[0].arrival) / 2, end)
    return PlannerPoint(workers, shard, rate, len(reqs), att, c.plans, c.plan_requests,
                        c.adm_ms_p50,
                        c.adm_ms_p99, c.adm_ms_mean, c.cores, c.shard_cores, seconds)


def table(points: list[PlannerPoint]) -> list[str]:
    """One row per run; `vs min N`: its p50 over the smallest cluster's with that shard."""
    base: dict[int, PlannerPoint] = {}
    for p in points:
        if p.shard not in base or p.workers < base[p.shard].workers:
            base[p.shard] = p
    lines = [f"{'workers':>7} {'shard':>5} {'req/s':>7} {'attain':>6} {'plans':>6} "
             f"{'req/plan':>8} {'ms/adm p50':>10} {'p99':>6} {'mean':>6} {'vs min N':>8} "
             f"{'cores':>6} {'/shard':>6} {'wall s':>6}"]
    for p in sorted(points, key=lambda p: (p.shard, p.workers)):
        ratio = p.adm_ms_p50 / base[p.shard].adm_ms_p50 if base[p.shard].adm_ms_p50 else 0
        lines.append(f"{p.workers:>7} {p.shard or '-':>5} {p.rate:>7.0f} {p.attainment:>6.3f} "
                     f"{p.plans:>6} {p.plan_requests:>8.0f} {p.adm_ms_p50:>10.2f} "
                     f"{p.adm_ms_p99:>6.2f} {p.adm_ms_mean:>6.2f} {ratio:>7.2f}x {p.cores:>6.2f} "
                     f"{p.shard_cores:>6.2f} {p.seconds:>6.0f}")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", default="chatbot")
    parser.add_argument("--system", default="slos-colocated",
                        choices=("slos", "slos-pd", "slos-colocated"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 64, 256])
    parser.add_argument("--shards", type=int, nargs="+", default=[0, 8],
                        help="workers per planner shard (0: one plan over the cluster)")
    parser.add_argument("--per-worker", type=float, default=10.0,
                        help="req/s per worker (capacity per worker from `simulate scaling`)")
    parser.add_argument("--window", type=float, default=4.0, help="s of arrivals per run")
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes")
    parser.add_argument("--out", default=None, help="write JSON here")


def run(args: argparse.Namespace, sim: Simulation) -> int:
    runs = [(n, k) for k in args.shards for n in sorted(args.sizes)]
    points: list[PlannerPoint] = []
    # a fresh process per run: no run plans with caches another one warmed
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), max_tasks_per_child=1) as pool:
        futs = [pool.submit(measure, sim, args.scenario, args.system, n, k, args.per_worker,
                            args.window) for n, k in reversed(runs)]  # the longest first
        for fut in futs:
            p = fut.result()
            points.append(p)
            print(f"{p.workers} workers, shard {p.shard}: {p.adm_ms_p50:.2f} ms/admission, "
                  f"{p.cores:.2f} cores [{p.seconds:.0f} s]", file=sys.stderr, flush=True)
    print(f"\nplanner cost, {args.scenario}/{args.system} at {args.per_worker:g} req/s per "
          f"worker, {args.window:g} s of arrivals (CPU, second half)")
    print("\n".join(table(points)))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"points": [asdict(p) for p in points], "config": {
                k: v for k, v in vars(args).items() if not k.startswith("_")}}, f, indent=2,
                default=str)
        print(f"wrote {args.out}")
    return 0
