"""Per-tier speculation statistics and the acceptance the planner plans on.

* `TierStats` / `SpecStats`: drafted and accepted tokens per TPOT tier, as an engine counts
  them (its scheduler) and reports them (the load report).
* `planning_alphas`: the acceptance to plan on per tier from them, a lower confidence bound
  (`acceptance_bound`): planning on a measured mean admits requests whose drafts then fall
  short half the time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

# Acceptance before any is measured (ngram on text), worth as many trials; the LCB's z.
PRIOR_ALPHA = 0.5
PRIOR_TRIALS = 20
ALPHA_LCB_Z = 1.645



@dataclass(slots=True)
class TierStats:
    """Speculative decoding of one TPOT tier since the engine started."""

    tier: str
    tpot_ms: float
    steps: int = 0  # decode or verify steps of the tier's requests
    drafted: int = 0  # draft tokens scheduled
    accepted: int = 0  # draft tokens accepted
    spec_tokens: int = 0  # the cap in force (last applied)


class SpecStats:
    """Per-tier speculation counters since the engine started, keyed by (name, TPOT)."""

    def __init__(self) -> None:
        self._tiers: dict[tuple[str, float], TierStats] = {}

    def _get(self, tier: str, tpot_ms: float, cap: int) -> TierStats:
        key = (tier, float(tpot_ms))
        s = self._tiers.get(key)
        if s is None:
            s = self._tiers[key] = TierStats(tier, float(tpot_ms), spec_tokens=cap)
        return s

    def set_cap(self, tier: str, tpot_ms: float, cap: int) -> None:
        self._get(tier, tpot_ms, cap).spec_tokens = cap

    def record(self, tier: str, tpot_ms: float, drafted: int, accepted: int, cap: int) -> None:
        """One decode (drafted 0) or verify step of one request."""
        s = self._get(tier, tpot_ms, cap)
        s.steps += 1
        s.drafted += max(0, drafted)
        s.accepted += max(0, min(accepted, drafted))

    def snapshot(self) -> list[TierStats]:
        """Copies, tightest tier first."""
        return [
            TierStats(s.tier, s.tpot_ms, s.steps, s.drafted, s.accepted, s.spec_tokens)
            for s in sorted(self._tiers.values(), key=lambda s: (s.tpot_ms, s.tier))
        ]


def acceptance(spec: Iterable[TierStats]) -> float:
    """Accepted / drafted over every tier (0 when nothing was drafted)."""
    drafted = accepted = 0
    for s in spec:
        drafted += s.drafted
        accepted += s.accepted
    return accepted / drafted if drafted else 0.0


def acceptance_bound(accepted: int, trials: int, prior: float = PRIOR_ALPHA,
                     prior_trials: int = PRIOR_TRIALS, z: float = ALPHA_LCB_Z) -> float:
    """Lower confidence bound of the per-token acceptance: `accepted` of `trials` examined
    drafts, from `prior` (worth `prior_trials`). Pacing on the point estimate leaves a tier
    behind whenever it is high; a tier measured little is planned on little speculation."""
    n = max(trials, 0) + prior_trials
    if n <= 0:
        return prior
    mean = (min(max(accepted, 0), max(trials, 0)) + prior * prior_trials) / n
    return max(0.0, mean - z * math.sqrt(mean * (1.0 - mean) / n))


def planning_alphas(
    counts: Iterable[tuple[float, int, int]],
) -> tuple[dict[float, float], float]:
    """(Snapshot.spec_alpha, Snapshot.default_alpha) from (TPOT s, accepted, trials) counts.
    Trials: drafts examined (the accepted ones and the rejected one ending a step); live
    engines report all drafted tokens (TierStats.drafted), more, so their bound errs low."""
    per: dict[float, list[int]] = {}
    for tpot, acc, trials in counts:
        c = per.setdefault(tpot, [0, 0])
        c[0] += acc
        c[1] += trials
    acc = sum(a for a, _ in per.values())
    trials = sum(n for _, n in per.values())
    # a tier measured little leans on every tier's mean, not on the prior alone
    pooled = (acc + PRIOR_ALPHA * PRIOR_TRIALS) / (trials + PRIOR_TRIALS)
    alpha = {t: acceptance_bound(a, n, prior=pooled) for t, (a, n) in per.items() if n > 0}
    return alpha, acceptance_bound(acc, trials)
