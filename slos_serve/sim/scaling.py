"""`simulate scaling`: capacity per worker as the cluster grows (2, 4, 8, 16, 64 workers).

The capacity search of sim/capacity.py at each cluster size (`SimConfig.workers` = N),
requests routed across the replicas by each system's own router (the planner: new request i
tries worker (route_start + i) mod R first, then the next; vLLM: join-shortest-queue). A
probe's request counts (`--min-requests`, `--max-requests`) are given for 2 workers and grow
in proportion to N, so that a probe of a large cluster is as long in time as one of a small
cluster and reaches steady state. The paper reports super-linear scaling; the target here is
capacity per worker at 8 workers >= at 2.

  slos-serve simulate scaling --scenarios chatbot,coding --systems slos-colocated,vllm \
      --sizes 2 4 8 16 64 --out scaling.json
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

from slos_serve.core.perf_model import load_profile
from slos_serve.sim.workloads import SCENARIOS

if TYPE_CHECKING:  # the simulator is imported where used: `slos-serve --help` stays fast
    from slos_serve.sim.capacity import SearchOptions
    from slos_serve.sim.cli import Simulation

BASE_WORKERS = 2  # the cluster size the request counts and start rates are given for


@dataclass(frozen=True, slots=True)
class ScalingOptions:
    sizes: tuple[int, ...] = (2, 4, 8, 16, 64)
    target: float = 0.90
    window_s: float = 60.0
    min_requests: int = 200  # at BASE_WORKERS; scaled with the cluster size
    max_requests: int = 1500  # at BASE_WORKERS; scaled with the cluster size
    rel_tol: float = 0.05


@dataclass(frozen=True, slots=True)
class ScalingPoint:
    """Capacity of one system on one scenario at one cluster size."""

    workers: int
    capacity: float  # req/s at attainment >= target
    per_worker: float
    probes: list[tuple[float, float]]  # (rate, attainment)
    seconds: float  # wall time of the search


def search_options(workers: int, opts: ScalingOptions, start: float) -> SearchOptions:
    """The capacity search at `workers`: probe sizes in proportion to the cluster."""
    from slos_serve.sim.capacity import SearchOptions

    scale = workers / BASE_WORKERS
    return SearchOptions(target=opts.target, start=start, rel_tol=opts.rel_tol,
                         window_s=opts.window_s,
                         min_requests=math.ceil(opts.min_requests * scale),
                         max_requests=math.ceil(opts.max_requests * scale))


def scale_series(
    sim: Simulation, scenario: str, system: str, opts: ScalingOptions, start: float
) -> tuple[str, str, list[ScalingPoint]]:
    """Capacity at each size, smallest first; each search starts from the previous size's
    capacity per worker times the new size (`start`: req/s at BASE_WORKERS)."""
    from slos_serve.sim.capacity import system_capacity

    profile = sim.cluster.profile
    model = load_profile(profile)
    spec = sim.spec(scenario, 1.0, opts.min_requests)
    per_worker = start / BASE_WORKERS
    points: list[ScalingPoint] = []
    for n in sorted(opts.sizes):
        cfg = replace(sim.sim_config(), workers=n)
        t = time.perf_counter()
        res = system_capacity(system, spec, cfg, model, profile,
                              search_options(n, opts, per_worker * n))
        points.append(ScalingPoint(n, res.rate, res.rate / n, res.probes,
                                   time.perf_counter() - t))
        if res.rate > 0:
            per_worker = res.rate / n
    return scenario, system, points


def table(found: dict[str, dict[str, list[ScalingPoint]]], sizes: list[int]) -> list[str]:
    """Capacity (and per worker) by size, one row per scenario and system."""
    lines = [f"{'scenario':<14}{'system':<16}" + "".join(f"{f'{n} workers':>20}"
                                                         for n in sizes)]
    for sc, by_system in found.items():
        for system, points in by_system.items():
            at = {p.workers: p for p in points}
            cells = [f"{at[n].capacity:8.2f} ({at[n].per_worker:5.2f}/w)" for n in sizes]
            lines.append(f"{sc:<14}{system:<16}" + "".join(f"{c:>20}" for c in cells))
            base = at[sizes[0]].per_worker
            if base > 0:
                rel = " ".join(f"{at[n].per_worker / base:.2f}x" for n in sizes)
                lines.append(f"{'':<14}{'':<16}per worker vs {sizes[0]} workers: {rel}")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenarios", default="chatbot,coding", help="comma-separated or 'all'")
    parser.add_argument("--systems", default="slos-colocated,vllm", help="comma-separated")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8, 16, 64],
                        help="cluster sizes (workers)")
    parser.add_argument("--target", type=float, default=0.90, help="attainment target")
    parser.add_argument("--window", type=float, default=60.0, help="s of arrivals per probe")
    parser.add_argument("--min-requests", type=int, default=200,
                        help=f"per probe at {BASE_WORKERS} workers (scaled with the size)")
    parser.add_argument("--max-requests", type=int, default=1500,
                        help=f"per probe at {BASE_WORKERS} workers (scaled with the size)")
    parser.add_argument("--rel-tol", type=float, default=0.05, help="search precision")
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes")
    parser.add_argument("--out", default=None, help="write JSON here")


def run(args: argparse.Namespace, sim: Simulation, starts: dict[str, float]) -> int:
    """`starts`: rough capacities (req/s at BASE_WORKERS) per scenario to search from."""
    scenarios = list(SCENARIOS) if args.scenarios == "all" else args.scenarios.split(",")
    unknown = [sc for sc in scenarios if sc not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    from slos_serve.sim.simulator import SYSTEMS

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if any(s not in SYSTEMS for s in systems):
        raise SystemExit(f"unknown system in {systems}; choose from {', '.join(SYSTEMS)}")
    opts = ScalingOptions(tuple(sorted(set(args.sizes))), args.target, args.window,
                          args.min_requests, args.max_requests, args.rel_tol)
    found: dict[str, dict[str, list[ScalingPoint]]] = {sc: {} for sc in scenarios}
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futs = [pool.submit(scale_series, sim, sc, s, opts, starts.get(sc, 4.0))
                for sc in scenarios for s in systems]
        for fut in as_completed(futs):
            sc, s, points = fut.result()
            found[sc][s] = points
            print(f"{sc}/{s}: " + ", ".join(
                f"{p.workers}w {p.capacity:.2f} req/s [{p.seconds:.0f} s]" for p in points),
                file=sys.stderr, flush=True)
    found = {sc: {s: found[sc][s] for s in systems} for sc in scenarios}
    sizes = list(opts.sizes)
    print(f"\ncapacity (req/s, attainment >= {100 * opts.target:g} %) and per worker")
    print("\n".join(table(found, sizes)))
    elapsed = time.perf_counter() - t0
    print(f"\n{len(futs)} series in {elapsed:.0f} s")
    if args.out:
        out = {"scaling": {sc: {s: [asdict(p) for p in pts] for s, pts in row.items()}
                           for sc, row in found.items()},
               "options": asdict(opts), "elapsed_s": elapsed,
               "config": {k: v for k, v in vars(args).items() if not k.startswith("_")}}
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2, default=str)
        print(f"wrote {args.out}")
    return 0
