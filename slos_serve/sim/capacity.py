"""Capacity: the largest request rate at which a system keeps SLO attainment >= a target.

The paper's definition (reference/slos-serve.md): the largest rate with < 10 % of requests
missing their SLO (target 0.90; the 98 % variant is reported too). Every system is probed
with the same arrival seed, so at a given rate all systems see the very same requests (the
workload module keeps request i identical across rates, only its arrival time scales).

Search: expand geometrically from a start rate until one rate passes and one fails, then
bisect geometrically until the bracket is within `rel_tol`. A probe's request count grows
with its rate (`window_s` of arrivals, clamped), so that every probe reaches steady state;
a probe stops early once more requests have missed than the target allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from slos_serve.core.perf_model import PerfModel
from slos_serve.sim.core import SimConfig
from slos_serve.sim.simulator import simulate
from slos_serve.sim.workloads import Request, WorkloadSpec, build_workload


@dataclass
class SearchOptions:
    target: float = 0.90
    start: float = 4.0  # req/s
    rel_tol: float = 0.05
    window_s: float = 60.0  # arrival window of a probe
    min_requests: int = 200
    max_requests: int = 2000
    max_probes: int = 14
    min_rate: float = 0.05


@dataclass
class CapacityResult:
    rate: float  # largest passing rate (0: none)
    probes: list[tuple[float, float]] = field(default_factory=list)  # (rate, attainment)


def search(
    attain: Callable[[float], float], opts: SearchOptions
) -> CapacityResult:
    """Largest rate r with attain(r) >= opts.target, assuming attainment falls with rate."""
    res = CapacityResult(0.0)

    def ok(rate: float) -> bool:
        a = attain(rate)
        res.probes.append((rate, a))
        return a >= opts.target

    lo, hi = 0.0, math.inf
    r = opts.start
    while len(res.probes) < opts.max_probes:
        if ok(r):
            lo = r
            if hi < math.inf:
                break
            r *= 2
        else:
            hi = r
            if lo > 0:
                break
            r /= 2
            if r < opts.min_rate:
                return res
    while lo > 0 and hi / lo > 1 + opts.rel_tol and len(res.probes) < opts.max_probes:
        mid = math.sqrt(lo * hi)
        if ok(mid):
            lo = mid
        else:
            hi = mid
    res.rate = lo
    return res


def probe_requests(spec: WorkloadSpec, rate: float, opts: SearchOptions) -> list[Request]:
    """The requests of one probe: the scenario at `rate`, window-sized request count."""
    n = int(min(opts.max_requests, max(opts.min_requests, math.ceil(rate * opts.window_s))))
    if spec.trace:  # replay the trace compressed or stretched to this mean rate
        spec = replace(spec, trace_opts=replace(spec.trace_opts, rate=rate, limit=n))
    return build_workload(replace(spec, rate=rate, num_requests=n))


def system_capacity(
    system: str,
    spec: WorkloadSpec,
    cfg: SimConfig,
    model: PerfModel,
    profile: str,
    opts: SearchOptions,
    on_probe: Callable[[float, float], None] | None = None,
) -> CapacityResult:
    """Capacity of one system on one workload (spec.rate is ignored: the search sets it)."""

    def attain(rate: float) -> float:
        reqs = probe_requests(spec, rate, opts)
        budget = int(math.floor((1 - opts.target) * len(reqs)))
        run = simulate(reqs, system, replace(cfg, miss_budget=budget), model, profile)
        a = run.summary.attainment
        if on_probe:
            on_probe(rate, a)
        return a

    return search(attain, opts)
