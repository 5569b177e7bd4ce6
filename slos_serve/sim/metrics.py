"""Per-request metrics and summaries, with the project's definitions (reference/slos-serve.md).

TTFT = first token - arrival. TPOT = (E2E - TTFT) / (output tokens - 1), vLLM's `bench serve`
definition, over the whole request. A segment attains iff its TTFT (from the segment's start) is
within its SLO and its own TPOT (tokens after the segment's first one; for a segment without a
prompt, from the previous segment's last token) is within its SLO; a request attains iff every
segment does. Attainment = attained / all sent (rejected and unfinished count as missed);
goodput = attained requests per second of the arrival window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from slos_serve.sim.request import SimRequest

EPS = 1e-9


@dataclass(frozen=True)
class RequestResult:
    id: int
    tier: str
    scenario: str
    decision: str
    finished: bool
    ttft: float | None
    tpot: float | None
    e2e: float | None
    segment_ttft: tuple[float | None, ...]
    segment_tpot: tuple[float | None, ...]
    segment_ok: tuple[bool, ...]
    attained: bool


def _segment_times(r: SimRequest, i: int) -> tuple[float | None, float | None]:
    """(TTFT, TPOT) of segment i, None where not reached."""
    if i >= len(r.segment_start):
        return None, None
    st = r.req.segments[i]
    start, first, end = r.segment_start[i], r.first_token[i], r.segment_end[i]
    ttft = None if first is None else first - start
    if end is None:
        return ttft, None
    if st.prompt_tokens > 0:
        tpot = (end - first) / (st.output_tokens - 1) if st.output_tokens > 1 else 0.0
    else:
        tpot = (end - start) / st.output_tokens
    return ttft, tpot


def _segment_ok(r: SimRequest, i: int) -> bool:
    st = r.req.segments[i]
    ttft, tpot = _segment_times(r, i)
    if tpot is None:
        return False
    if st.ttft_slo is not None and (ttft is None or ttft > st.ttft_slo + EPS):
        return False
    return tpot <= st.tpot_slo + EPS


def attained(r: SimRequest) -> bool:
    """Every segment of r met its SLO (rejected requests never do)."""
    if r.decision == "reject" or r.phase != "done":
        return False
    return all(_segment_ok(r, i) for i in range(len(r.req.segments)))


def result(r: SimRequest) -> RequestResult:
    n = len(r.req.segments)
    times = [_segment_times(r, i) for i in range(n)]
    finished = r.phase == "done" and r.decision != "reject"
    ttft = times[0][0]
    e2e = (r.segment_end[-1] - r.req.arrival) if finished and r.segment_end else None
    tpot = None
    if finished and ttft is not None:
        out = r.req.output_tokens
        tpot = (e2e - ttft) / (out - 1) if out > 1 else 0.0
    return RequestResult(
        id=r.id,
        tier=r.req.tier,
        scenario=r.req.scenario,
        decision=r.decision,
        finished=finished,
        ttft=ttft,
        tpot=tpot,
        e2e=e2e,
        segment_ttft=tuple(t for t, _ in times),
        segment_tpot=tuple(p for _, p in times),
        segment_ok=tuple(_segment_ok(r, i) for i in range(n)),
        attained=attained(r),
    )


@dataclass(frozen=True)
class TierSummary:
    tier: str
    sent: int
    attained: int
    rejected: int
    ttft_p50: float
    ttft_p90: float
    ttft_p99: float
    tpot_p50: float
    tpot_p90: float
    tpot_p99: float


@dataclass(frozen=True)
class Summary:
    sent: int
    attained: int
    rejected: int
    unfinished: int
    duration: float
    attainment: float
    goodput: float
    tiers: tuple[TierSummary, ...]


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else math.nan


def _tier(name: str, rs: list[RequestResult]) -> TierSummary:
    ttft = [r.ttft for r in rs if r.ttft is not None and r.finished]
    tpot = [r.tpot for r in rs if r.tpot is not None]
    return TierSummary(
        tier=name,
        sent=len(rs),
        attained=sum(r.attained for r in rs),
        rejected=sum(r.decision == "reject" for r in rs),
        ttft_p50=_pct(ttft, 50),
        ttft_p90=_pct(ttft, 90),
        ttft_p99=_pct(ttft, 99),
        tpot_p50=_pct(tpot, 50),
        tpot_p90=_pct(tpot, 90),
        tpot_p99=_pct(tpot, 99),
    )


def summarize(results: list[RequestResult], duration: float) -> Summary:
    """Totals and per-tier percentiles; duration is the arrival window in seconds."""
    tiers = sorted({r.tier for r in results})
    att = sum(r.attained for r in results)
    n = len(results)
    return Summary(
        sent=n,
        attained=att,
        rejected=sum(r.decision == "reject" for r in results),
        unfinished=sum(not r.finished and r.decision != "reject" for r in results),
        duration=duration,
        attainment=att / n if n else 0.0,
        goodput=att / duration if duration > 0 else 0.0,
        tiers=tuple(_tier(t, [r for r in results if r.tier == t]) for t in tiers),
    )
