"""SLO tiers and per-request SLO resolution. Pure: no gRPC, no vLLM.

A request names a tier of the coordinator's tier table, or gives explicit
ttft_ms / tpot_ms, or both when they agree. Missing values come from the
default tier. Contradictions are errors, not silent overrides, because a
client that believes it asked for 50 ms must not be served at 200 ms.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Tier:
    name: str
    ttft_ms: float
    tpot_ms: float


# Sized for the tiny CPU model of `make run` (zero-load TTFT ~50-150 ms through
# the cluster, TPOT ~10-25 ms); on GPUs pass a tier table with --tiers.
DEFAULT_TIERS: dict[str, Tier] = {
    "tight": Tier("tight", ttft_ms=1000.0, tpot_ms=60.0),
    "loose": Tier("loose", ttft_ms=4000.0, tpot_ms=200.0),
}
DEFAULT_TIER = "loose"

# The range an SLO value may take, in ms. Below 1 µs no engine step fits (and values
# near zero, e.g. denormals, overflow the planner's 1/tpot arithmetic); above 1e7 ms
# (~2.8 h) an objective means nothing. Checked here, the one place SLOs are resolved.
MIN_SLO_MS = 0.001
MAX_SLO_MS = 1e7


class SloError(ValueError):
    """An SLO that cannot be honoured as asked; `field` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class TierTable:
    tiers: dict[str, Tier]
    default: str

    def __post_init__(self) -> None:
        if self.default not in self.tiers:
            raise ValueError(f"default tier {self.default!r} is not in the table")

    @classmethod
    def builtin(cls) -> TierTable:
        return cls(dict(DEFAULT_TIERS), DEFAULT_TIER)

    @classmethod
    def load(cls, path: str | Path) -> TierTable:
        """Reads {"default": NAME, "tiers": {NAME: {"ttft_ms": X, "tpot_ms": Y}}}."""
        data = json.loads(Path(path).read_text())
        tiers = {
            name: Tier(name, float(v["ttft_ms"]), float(v["tpot_ms"]))
            for name, v in data["tiers"].items()
        }
        for t in tiers.values():
            for name, value in (("ttft_ms", t.ttft_ms), ("tpot_ms", t.tpot_ms)):
                if not _in_range(value):
                    raise ValueError(f"tier {t.name!r}: {name} must be in "
                                     f"[{MIN_SLO_MS:g}, {MAX_SLO_MS:g}] ms, got {value}")
        return cls(tiers, data.get("default", next(iter(tiers))))

    def resolve(
        self, tier: str = "", ttft_ms: float | None = None, tpot_ms: float | None = None
    ) -> Tier:
        """The request's effective objectives, or SloError naming the bad field."""
        for field, value in (("slo.ttft_ms", ttft_ms), ("slo.tpot_ms", tpot_ms)):
            if value is not None and not _in_range(value):
                raise SloError(field, f"must be a number of milliseconds in [{MIN_SLO_MS:g}, "
                               f"{MAX_SLO_MS:g}], got {value}")
        if tier:
            if tier not in self.tiers:
                known = ", ".join(sorted(self.tiers))
                shown = tier if len(tier) <= 64 else tier[:64] + "..."
                raise SloError("slo.tier", f"unknown tier {shown!r} (known: {known})")
            named = self.tiers[tier]
            for field, value, expected in (
                ("slo.ttft_ms", ttft_ms, named.ttft_ms),
                ("slo.tpot_ms", tpot_ms, named.tpot_ms),
            ):
                if value is not None and not math.isclose(value, expected):
                    raise SloError(
                        field, f"{value:g} contradicts tier {tier!r} ({expected:g} ms)"
                    )
            return named
        base = self.tiers[self.default]
        if ttft_ms is None and tpot_ms is None:
            return base
        return Tier(
            "custom",
            ttft_ms if ttft_ms is not None else base.ttft_ms,
            tpot_ms if tpot_ms is not None else base.tpot_ms,
        )


def _in_range(value: float) -> bool:
    """Finite and within [MIN_SLO_MS, MAX_SLO_MS] (NaN fails every comparison)."""
    return math.isfinite(value) and MIN_SLO_MS <= value <= MAX_SLO_MS
