"""Run one workload through one system on a simulated cluster; the systems by name.

Every system gets the same number of workers (`SimConfig.workers`). Disaggregated systems
split them into prefill and decode pools; unless a P:D split is given they are run with each
of the splits the ratios 1:1, 2:1 and 1:2 give for that worker count and the best result is
kept (DistServe's own evaluation does the same). `slos` starts every worker mixed and lets
the planner lay them out (slos_serve/core/planner/layout.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from slos_serve.core.perf_model import PerfModel, load_profile
from slos_serve.sim.baselines import SPEC_LENGTHS, ColocatedFcfs, DistServe, vllm_spec, vllm_v0
from slos_serve.sim.core import Cluster, SimConfig, System
from slos_serve.sim.metrics import RequestResult, Summary, result, summarize
from slos_serve.sim.slos_system import SlosSystem
from slos_serve.sim.workloads import Request

DISAGGREGATED = {"distserve", "slos-pd"}
PD_RATIOS = ((1, 1), (2, 1), (1, 2))


SYSTEMS: dict[str, Callable[[], System]] = {
    "vllm": lambda: ColocatedFcfs("vllm"),
    "sarathi": lambda: ColocatedFcfs("sarathi", budget=None),
    "vllm-v0": vllm_v0,
    **{f"vllm-spec{s}": partial(vllm_spec, s) for s in SPEC_LENGTHS},
    "distserve": DistServe,
    "slos": lambda: SlosSystem("slos"),
    "slos-pd": lambda: SlosSystem("slos-pd"),
    "slos-colocated": lambda: SlosSystem("slos-colocated"),
}


@dataclass
class SimResult:
    system: str
    roles: list[str]
    results: list[RequestResult]
    summary: Summary
    stopped_early: bool

    @property
    def split(self) -> str:
        p = self.roles.count("prefill")
        d = self.roles.count("decode")
        return f"{p}P{d}D" if p else f"{len(self.roles)}M"


def pd_splits(workers: int) -> list[tuple[int, int]]:
    """Distinct (P, D) splits of `workers` closest to the ratios 1:1, 2:1 and 1:2."""
    if workers < 2:
        raise ValueError("a disaggregated system needs at least 2 workers")
    out: list[tuple[int, int]] = []
    for p, d in PD_RATIOS:
        n_p = min(workers - 1, max(1, round(workers * p / (p + d))))
        if (n_p, workers - n_p) not in out:
            out.append((n_p, workers - n_p))
    return out


def roles_for(system: str, workers: int, split: tuple[int, int] | None) -> list[str]:
    if system not in DISAGGREGATED:
        return ["mixed"] * workers
    n_p, n_d = split or pd_splits(workers)[0]
    if n_p + n_d != workers:
        raise ValueError(f"split {n_p}:{n_d} does not use {workers} workers")
    return ["prefill"] * n_p + ["decode"] * n_d


def _duration(requests: list[Request]) -> float:
    if len(requests) < 2:
        return 1.0
    return max(requests[-1].arrival - requests[0].arrival, 1e-9) * len(requests) / (
        len(requests) - 1
    )


def simulate_split(
    requests: list[Request],
    system: str,
    cfg: SimConfig,
    model: PerfModel,
    profile: str = "",
    split: tuple[int, int] | None = None,
) -> SimResult:
    """One run with a fixed P:D split (ignored by colocated systems)."""
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")
    roles = roles_for(system, cfg.workers, split)
    cluster = Cluster(cfg, model, roles, SYSTEMS[system](), profile=profile)
    sim = cluster.run(requests)
    results = [result(r) for r in sim]
    return SimResult(system, roles, results, summarize(results, _duration(requests)),
                     cluster._stop)


def simulate(
    requests: list[Request],
    system: str,
    cfg: SimConfig | None = None,
    model: PerfModel | None = None,
    profile: str = "opt-13b-a100",
) -> SimResult:
    """Run `requests` through `system`; disaggregated systems: best attainment over splits."""
    cfg = cfg or SimConfig()
    model = model or load_profile(profile)
    if system not in DISAGGREGATED:
        return simulate_split(requests, system, cfg, model, profile)
    splits = [cfg.pd_ratio] if cfg.pd_ratio else pd_splits(cfg.workers)
    runs = [simulate_split(requests, system, cfg, model, profile, s) for s in splits]
    return max(runs, key=lambda r: r.summary.attained)
