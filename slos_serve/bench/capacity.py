"""Live capacity: the largest rate with attainment >= a target, per system and scenario. Pure.

The search is the simulator's (`slos_serve.sim.capacity.search`: expand geometrically
from a start rate until one rate passes and one fails, then bisect geometrically) over a
probe function that, here, runs a short live load; live probes cost tens of seconds, so
the options default to a few probes and a coarse precision. The JSON written has the
simulator's layout (`{"capacity": {scenario: {system: rps}}, ...}`) with ratios to the best
baseline per scenario (every system but `slos*`: the vLLM baselines that ran) and their
geometric mean, by the simulator's own rule (`slos_serve.sim.capacity_report`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from slos_serve.sim.capacity import CapacityResult, SearchOptions, search
from slos_serve.sim.capacity_report import Spread, TargetReport
from slos_serve.sim.capacity_report import geomean as sim_geomean


def live_search_options(
    target: float = 0.9, start: float = 1.0, max_probes: int = 5, rel_tol: float = 0.25,
    min_rate: float = 0.05,
) -> SearchOptions:
    """Search options sized for live probes (few, coarse)."""
    return SearchOptions(target=target, start=start, rel_tol=rel_tol, max_probes=max_probes,
                         min_rate=min_rate)


def capacity_search(probe: Callable[[float], float], opts: SearchOptions) -> CapacityResult:
    """Largest passing rate of `probe` (rate -> attainment), with every probe made."""
    return search(probe, opts)


def geomean(xs: Sequence[float | None]) -> float | None:
    """The simulator's geometric mean, None (JSON null) where it has no value."""
    g = sim_geomean(xs)
    return None if math.isnan(g) else g


def capacity_json(
    found: dict[str, dict[str, CapacityResult]], systems: Sequence[str], target: float,
    config: dict[str, Any] | None = None, elapsed_s: float | None = None,
) -> dict[str, Any]:
    """The simulator's capacity format, from {scenario: {system: result}}; ratios against
    the best baseline of each scenario (TargetReport.best_baseline: one seed here)."""
    report = TargetReport(target, {
        sc: {s: Spread.of([row[s].rate], s) for s in systems if s in row}
        for sc, row in found.items()})
    ratios = report.ratios("best")
    return {
        "capacity": {sc: {s: sp.mean for s, sp in row.items()}
                     for sc, row in report.rows.items()},
        "target": target,
        "best_baseline": {sc: report.best_baseline(sc) for sc in report.rows},
        "ratio_to_best_baseline": ratios,
        "geomean_ratio_to_best_baseline": {
            s: geomean([ratios[sc].get(s) for sc in ratios]) for s in systems},
        # False: no probe failed, so the capacity is only a lower bound (the probes ran out)
        "bracketed": {sc: {s: any(a < target for _, a in row[s].probes) for s in row}
                      for sc, row in found.items()},
        "probes": {sc: {s: [list(p) for p in row[s].probes] for s in row}
                   for sc, row in found.items()},
        "config": config or {},
        "elapsed_s": elapsed_s,
    }


def capacity_table(data: dict[str, Any]) -> str:
    """Capacity (req/s) per scenario and system, ratio to the scenario's best baseline
    (named in the last column), geo-mean."""
    cap, best = data["capacity"], data["best_baseline"]
    systems = list(data["geomean_ratio_to_best_baseline"])
    lines = [f"capacity (req/s at attainment >= {100 * data['target']:g} %; ratio to the "
             "best baseline of the scenario)",
             f"{'scenario':<14}" + "".join(f"{s:>20}" for s in systems) + f"{'best baseline':>22}"]
    # ">=": no probe of that search failed, the rate is a lower bound
    for sc, row in cap.items():
        cells = []
        for s in systems:
            v, r = row.get(s), data["ratio_to_best_baseline"][sc].get(s)
            low = "" if data["bracketed"][sc].get(s, True) else ">="
            cells.append("-" if v is None else f"{low}{v:.2f}" + (f" ({r:.2f}x)" if r else ""))
        lines.append(f"{sc:<14}" + "".join(f"{c:>20}" for c in cells)
                     + f"{best.get(sc) or '-':>22}")
    gm = data["geomean_ratio_to_best_baseline"]
    lines.append(f"{'geo-mean':<14}" + "".join(
        f"{(f'{gm[s]:.2f}x' if gm[s] else '-'):>20}" for s in systems))
    return "\n".join(lines)
