"""One worker's share of the cluster plan: what its engine's scheduler carries out. Pure.

The coordinator's admission derives one `WorkerPlan` per worker from the planner's plan;
it travels as proto `WorkerPlan` (slos_serve/wire.py) and, inside a vLLM worker, through
the engine-core side channel (slos_serve/engine/side_channel.py) to the scheduler. Every
way in builds it here, so every way in is checked alike: ValueError naming the field
("tiers[1].tpot_ms: ...").
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _check(name: str, value: float, *, positive: bool = False) -> None:
    ok = math.isfinite(value) and (value > 0 if positive else value >= 0)
    if not ok:
        raise ValueError(f"{name}: must be {'>' if positive else '>='} 0, not {value!r}")


@dataclass(frozen=True, slots=True)
class TierSpec:
    """Per TPOT tier: the draft tokens a verify step may carry, and how often a request of
    the tier must get a step."""

    tpot_ms: float
    spec_tokens: int
    interval_ms: float = 0.0

    def check(self, prefix: str = "") -> None:
        _check(f"{prefix}tpot_ms", self.tpot_ms, positive=True)
        _check(f"{prefix}spec_tokens", self.spec_tokens)
        _check(f"{prefix}interval_ms", self.interval_ms)


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    plan_time_unix: float = 0.0  # when the coordinator sent it (0: not sent yet)
    step_token_budget: int = 0  # 0 = the engine's own maximum
    tiers: tuple[TierSpec, ...] = ()
    pace: bool = False  # hold decoders of loose tiers back until their token is due

    def __post_init__(self) -> None:
        _check("plan_time_unix", self.plan_time_unix)
        _check("step_token_budget", self.step_token_budget)
        for i, tier in enumerate(self.tiers):
            tier.check(f"tiers[{i}].")
