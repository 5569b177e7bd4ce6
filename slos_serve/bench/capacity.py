"""Live capacity: the largest rate with attainment >= a target, per system and scenario. Pure.

The search is the simulator's (`slos_serve.sim.capacity.search`: expand geometrically
from a start rate until one rate passes and one fails, then bisect geometrically) over a
probe function that, here, runs a short live load; live probes cost tens of seconds, so
the options default to a few probes and a coarse precision. The JSON written has the
simulator's layout (`{"capacity": {scenario: {system: rps}}, ...}`) with ratios to a
baseline system (vllm-serve, else vllm-pd) and their geometric mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from slos_serve.sim.capacity import CapacityResult, SearchOptions, search
from slos_serve.sim.capacity_report import geomean as sim_geomean

BASELINES = ("vllm-serve", "vllm-pd")


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


def baseline_of(systems: Sequence[str]) -> str | None:
    """The baseline the ratios are against: vllm-serve, else vllm-pd, else none."""
    return next((b for b in BASELINES if b in systems), None)


def geomean(xs: Sequence[float | None]) -> float | None:
    """The simulator's geometric mean, None (JSON null) where it has no value."""
    g = sim_geomean(xs)
    return None if math.isnan(g) else g


def capacity_json(
    found: dict[str, dict[str, CapacityResult]], systems: Sequence[str], target: float,
    config: dict[str, Any] | None = None, elapsed_s: float | None = None,
) -> dict[str, Any]:
    """The simulator's capacity format, from {scenario: {system: result}}."""
    base = baseline_of(systems)
    cap = {sc: {s: row[s].rate for s in systems if s in row} for sc, row in found.items()}
    ratios: dict[str, dict[str, float | None]] = {}
    for sc, row in cap.items():
        b = row.get(base) if base else None
        ratios[sc] = {s: (v / b if b else None) for s, v in row.items()}
    return {
        "capacity": cap,
        "target": target,
        "baseline": base,
        "ratio_to_baseline": ratios,
        "geomean_ratio_to_baseline": {
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
    """Capacity (req/s) per scenario and system, ratio to the baseline, geo-mean."""
    cap, base = data["capacity"], data["baseline"]
    systems = list(data["geomean_ratio_to_baseline"])
    lines = [f"capacity (req/s at attainment >= {100 * data['target']:g} %"
             + (f"; ratio to {base})" if base else ")"),
             f"{'scenario':<14}" + "".join(f"{s:>20}" for s in systems)]
    # ">=": no probe of that search failed, the rate is a lower bound
    for sc, row in cap.items():
        cells = []
        for s in systems:
            v, r = row.get(s), data["ratio_to_baseline"][sc].get(s)
            low = "" if data["bracketed"][sc].get(s, True) else ">="
            cells.append("-" if v is None else f"{low}{v:.2f}" + (f" ({r:.2f}x)" if r else ""))
        lines.append(f"{sc:<14}" + "".join(f"{c:>20}" for c in cells))
    gm = data["geomean_ratio_to_baseline"]
    lines.append(f"{'geo-mean':<14}" + "".join(
        f"{(f'{gm[s]:.2f}x' if gm[s] else '-'):>20}" for s in systems))
    return "\n".join(lines)
