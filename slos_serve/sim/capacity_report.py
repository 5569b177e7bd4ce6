"""Capacity results across seeds: mean and spread per (scenario, system), the best baseline per
scenario, ratios, tables and the JSON record of `slos-serve simulate capacity`.

Every system but the planner's (`slos*`) is a baseline. `vllm-spec` is a family: one search per
fixed speculation length (`vllm-spec1` ... `vllm-spec4`); per scenario and target the length
with the best mean capacity over the seeds is kept and named (`vllm-spec(s=2)`), as a vLLM user
tunes the length once for a workload. Ratios are taken between means.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from slos_serve.sim.baselines import SPEC_LENGTHS

SPEC_FAMILY = "vllm-spec"

# (scenario, system as run, seed) -> one search's {"rate", "probes"} per target (str)
Found = dict[tuple[str, str, int], dict[str, dict]]


def expand(systems: list[str]) -> list[str]:
    """The systems to run: the `vllm-spec` family becomes one system per length."""
    out: list[str] = []
    for s in systems:
        out += [f"{SPEC_FAMILY}{k}" for k in SPEC_LENGTHS] if s == SPEC_FAMILY else [s]
    return out


def is_baseline(system: str) -> bool:
    return not system.startswith("slos")


@dataclass(frozen=True, slots=True)
class Spread:
    """One system's capacity on one scenario over the seeds."""

    mean: float
    min: float
    max: float
    stdev: float
    per_seed: tuple[float, ...]
    label: str  # the system as shown: `vllm-spec(s=2)` names the length that won
    spec_len: int | None = None  # the `vllm-spec` family: that length

    @classmethod
    def of(cls, rates: list[float], label: str, spec_len: int | None = None) -> Spread:
        sd = statistics.stdev(rates) if len(rates) > 1 else 0.0
        return cls(statistics.fmean(rates), min(rates), max(rates), sd, tuple(rates), label,
                   spec_len)

    def cell(self) -> str:
        text = f"{self.mean:.2f}"
        if len(self.per_seed) > 1:
            text += f" [{self.min:.2f}-{self.max:.2f}]"
        return text + (f" s={self.spec_len}" if self.spec_len else "")


def spread(found: Found, scenario: str, system: str, seeds: list[int], target: str) -> Spread:
    """The system's capacity over the seeds; for the `vllm-spec` family, the best length's."""
    def of(run_as: str, label: str, spec_len: int | None = None) -> Spread:
        rates = [found[scenario, run_as, s][target]["rate"] for s in seeds]
        return Spread.of(rates, label, spec_len)

    if system != SPEC_FAMILY:
        return of(system, system)
    options = [of(f"{SPEC_FAMILY}{k}", f"{SPEC_FAMILY}(s={k})", k) for k in SPEC_LENGTHS]
    return max(options, key=lambda sp: sp.mean)  # the shortest length on ties


def geomean(xs: Sequence[float | None]) -> float:
    """Geometric mean of the positive finite values (None, 0 and nan left out); nan if none."""
    xs = [x for x in xs if x is not None and x > 0 and math.isfinite(x)]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else math.nan


def ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


@dataclass(frozen=True, slots=True)
class TargetReport:
    """Capacities at one attainment target: per scenario, each system's spread."""

    target: float
    rows: dict[str, dict[str, Spread]]

    def best_baseline(self, scenario: str) -> str | None:
        """The baseline with the highest mean capacity on the scenario (None: none ran)."""
        row = self.rows[scenario]
        bases = [s for s in row if is_baseline(s)]
        return max(bases, key=lambda s: row[s].mean) if bases else None

    def ratios(self, to: str) -> dict[str, dict[str, float | None]]:
        """Mean capacity over `vllm`'s (to="vllm") or the best baseline's (to="best")."""
        out = {}
        for sc, row in self.rows.items():
            ref = "vllm" if to == "vllm" else self.best_baseline(sc)
            base = row[ref].mean if ref in row else 0.0
            out[sc] = {s: ratio(sp.mean, base) for s, sp in row.items()}
        return out

    def geomeans(self, to: str) -> dict[str, float]:
        ratios = self.ratios(to)
        systems = next(iter(self.rows.values()), {})
        return {s: geomean([r[s] for r in ratios.values() if r[s] is not None]) for s in systems}

    def to_json(self) -> dict:
        best = {sc: self.best_baseline(sc) for sc in self.rows}
        return {
            "capacity": {sc: {s: sp.mean for s, sp in row.items()}
                         for sc, row in self.rows.items()},
            "capacity_spread": {sc: {s: asdict(sp) for s, sp in row.items()}
                                for sc, row in self.rows.items()},
            "best_baseline": {sc: self.rows[sc][b].label if b else None for sc, b in best.items()},
            "vllm_spec_length": {sc: row[SPEC_FAMILY].spec_len for sc, row in self.rows.items()
                                 if SPEC_FAMILY in row},
            "ratio_to_vllm": self.ratios("vllm"),
            "ratio_to_best_baseline": self.ratios("best"),
            "geomean_ratio_to_vllm": self.geomeans("vllm"),
            "geomean_ratio_to_best_baseline": self.geomeans("best"),
        }

    def table(self, seeds: list[int]) -> list[str]:
        """Capacities (mean [min-max] over the seeds) naming the best baseline, then ratios
        of the means to vllm and to that baseline."""
        systems = list(next(iter(self.rows.values()), {}))
        over = f"mean [min-max] over seeds {','.join(map(str, seeds))}" if len(seeds) > 1 \
            else f"seed {seeds[0]}"
        caps = []
        for sc, row in self.rows.items():
            best = self.best_baseline(sc)
            caps.append([sc, *(row[s].cell() for s in systems), row[best].label if best else "-"])
        to_vllm, to_best = self.ratios("vllm"), self.ratios("best")
        ratios = [[sc, *(f"{_x(to_vllm[sc][s])} / {_x(to_best[sc][s])}" for s in systems)]
                  for sc in self.rows]
        gv, gb = self.geomeans("vllm"), self.geomeans("best")
        ratios.append(["geo-mean", *(f"{_x(gv[s])} / {_x(gb[s])}" for s in systems)])
        return [f"\ncapacity (req/s, attainment >= {100 * self.target:g} %; {over})",
                *grid(["scenario", *systems, "best baseline"], caps),
                "", "ratio of means: to vllm / to the best baseline",
                *grid(["scenario", *systems], ratios)]


def grid(head: list[str], rows: list[list[str]]) -> list[str]:
    """Columns as wide as their widest cell; the first left-aligned, the others right."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                      for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in [head, *rows]]


def _x(r: float | None) -> str:
    return "-" if r is None or not math.isfinite(r) else f"{r:.2f}x"


def report(found: Found, scenarios: list[str], systems: list[str], seeds: list[int],
           target: float) -> TargetReport:
    key = str(target)
    rows = {sc: {s: spread(found, sc, s, seeds, key) for s in systems} for sc in scenarios}
    return TargetReport(target, rows)


def record(found: Found, reports: list[TargetReport], seeds: list[int], workers: int) -> dict:
    """The JSON record: the first target's results at the top level (with `capacity_98` etc.
    for the others, as before), every target's under `by_target`, and every probe."""
    first = reports[0].to_json()
    out: dict = dict(first)
    for rep in reports[1:]:
        out[f"capacity_{round(100 * rep.target)}"] = rep.to_json()["capacity"]
    out["by_target"] = {str(rep.target): rep.to_json() for rep in reports}
    out["seeds"] = seeds
    out["per_worker"] = {sc: {s: v / workers for s, v in row.items()}
                         for sc, row in first["capacity"].items()}
    probes: dict = {}
    for (sc, system, seed), res in found.items():
        probes.setdefault(sc, {}).setdefault(system, {})[str(seed)] = {
            t: r["probes"] for t, r in res.items()}
    out["probes"] = probes
    return out
