"""Speculation chosen for the whole SLO: the TTFT bound on the batch period, the acceptance
lower bound the planner plans on, and catch-up drafts for requests behind their pace."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from slos_serve.core.perf_model import BatchShape, load_profile
from slos_serve.core.policy import RequestSlo, lag_tokens, spec_cap
from slos_serve.core.spec import (
    TTFT_MISS_BUDGET,
    TierLoad,
    choose_config,
    prompt_overhead,
    ttft_miss,
)
from slos_serve.core.spec_stats import (
    PRIOR_ALPHA,
    PRIOR_TRIALS,
    acceptance_bound,
    planning_alphas,
)
from slos_serve.core.ttft_window import TtftOutlook, TtftWindow
from slos_serve.core.worker_plan import TierSpec, WorkerPlan
from slos_serve.sim.acceptance import AcceptanceCounter
from slos_serve.sim.core import Batch

M = load_profile("opt-13b-a100")
# the tool scenario's decoding load: its first calls at 50 ms, its second calls at 100 ms
TOOL = [TierLoad(0.05, 20, 0.7, 20 * 1000), TierLoad(0.1, 20, 0.7, 20 * 1000)]


def returning_call_slack(prompt_tokens: int) -> float:
    """A tool call's second turn: TTFT 3x the zero-load prefill of its prompt, less that."""
    own = M.predict(BatchShape(prefill_tokens=prompt_tokens, num_requests=1))
    return 3 * (7.21e-5 * prompt_tokens + 0.0317) - own


# ------------------------------------------------------------------ TTFT bound


def test_a_period_longer_than_a_returning_ttft_allows_is_not_chosen() -> None:
    free = choose_config(M, TOOL, 4, 2048)
    assert free is not None and free.spec[0] == 4 and free.period > 0.13  # best prefill rate
    slack = returning_call_slack(150)  # ~0.085 s
    busy = TtftOutlook((slack,) * 10, prompt_tokens_per_s=1e6)  # batches always full
    cfg = choose_config(M, TOOL, 4, 2048, busy)
    assert cfg is not None
    assert ttft_miss(M, free, busy) > TTFT_MISS_BUDGET
    assert ttft_miss(M, cfg, busy) <= TTFT_MISS_BUDGET
    # a prompt arriving just after a batch starts: that batch, then its own, within the TTFT
    assert cfg.batch_time + prompt_overhead(M, cfg.base) <= slack / (1 - TTFT_MISS_BUDGET)
    assert cfg.period < free.period
    # still the most prefill within the bound: better than no speculation at all
    plain = choose_config(M, TOOL, 0, 2048, busy)
    assert plain is not None and cfg.prefill_rate > plain.prefill_rate
    # every tier keeps its pace at the shorter period
    for t, s, e in zip(TOOL, cfg.spec, cfg.every, strict=True):
        assert (1 - 0.7 ** (s + 1)) / 0.3 * t.tpot >= e * cfg.period - 1e-9


def test_the_bound_follows_how_often_batches_run_full() -> None:
    slack = returning_call_slack(150)
    quiet = TtftOutlook((slack,) * 10, prompt_tokens_per_s=50.0)  # prompts rarely arrive
    free = choose_config(M, TOOL, 4, 2048)
    assert choose_config(M, TOOL, 4, 2048, quiet).period == pytest.approx(free.period)
    roomy = TtftOutlook((1.0,) * 10, prompt_tokens_per_s=1e6)  # loose TTFTs only
    assert ttft_miss(M, free, roomy) == 0.0
    assert choose_config(M, TOOL, 4, 2048, roomy).period == pytest.approx(free.period)
    # the share of arrivals late grows with the period
    busy = TtftOutlook((slack,) * 10, prompt_tokens_per_s=1e6)
    short = choose_config(M, TOOL, 1, 2048)
    assert ttft_miss(M, short, busy) < ttft_miss(M, free, busy)


def test_ttft_window_keeps_recent_arrivals_and_their_prompt_rate() -> None:
    w = TtftWindow(M, window_s=10.0)
    assert w.outlook(0.0) is None
    w.observe(0.0, 0.1, 150)  # tight
    for t in range(1, 10):
        w.observe(float(t), 2.0, 1000)
    out = w.outlook(9.0)
    assert out is not None and out.slacks[0] < 0.06 and out.slacks[-1] > 1.8
    assert list(out.slacks) == sorted(out.slacks)
    assert out.prompt_tokens_per_s == pytest.approx((150 + 9000) / 9.0, rel=0.11)
    late = w.outlook(10.5)  # the tight arrival left the window
    assert late is not None and late.slacks[0] > 1.8


# --------------------------------------------------------- acceptance to plan on


def test_acceptance_bound_is_below_the_estimate_and_tightens_with_counts() -> None:
    assert acceptance_bound(0, 0) < PRIOR_ALPHA  # the prior, conservatively
    few = acceptance_bound(70, 100)
    many = acceptance_bound(7000, 10_000)
    assert few < many < 0.7
    assert many == pytest.approx(0.7, abs=0.01)
    assert acceptance_bound(100, 100) < 1.0


def test_planning_alphas_per_tier_and_pooled() -> None:
    alpha, default = planning_alphas([(0.05, 700, 1000), (0.05, 700, 1000), (0.1, 30, 100),
                                      (0.2, 0, 0)])
    assert set(alpha) == {0.05, 0.1}  # a tier never drafted takes the default
    pooled = (1430 + PRIOR_ALPHA * PRIOR_TRIALS) / (2100 + PRIOR_TRIALS)
    assert alpha[0.05] == pytest.approx(acceptance_bound(1400, 2000, prior=pooled))
    assert default == pytest.approx(acceptance_bound(1430, 2100))
    assert alpha[0.1] < 0.3 < alpha[0.05] < 0.7
    assert default < 0.7


def test_the_simulator_counts_the_trials_of_each_verify_step() -> None:
    seg = SimpleNamespace(output_tokens=100, tpot_slo=0.05)
    r1 = SimpleNamespace(segment=0, generated=10, req=SimpleNamespace(segments=[seg]))
    r2 = SimpleNamespace(segment=0, generated=20, req=SimpleNamespace(segments=[seg]))
    c = AcceptanceCounter()
    c.started(0, Batch(decode=[(r1, 3), (r2, 3)]))
    r1.generated += 1 + 3  # all three drafts accepted: three trials
    r2.generated += 1 + 1  # one accepted, then one rejected: two trials
    c.finished(0)
    c.finished(0)  # idempotent
    assert c.counts == {0.05: [4, 5]}


# ------------------------------------------------------------------- catch-up

PLAN = WorkerPlan(tiers=(TierSpec(50.0, 2, 109.5),))  # E(2) = 2.19 tokens per 109.5 ms


def slo(**kw) -> RequestSlo:
    return RequestSlo(**{"tpot_ms": 50.0, "best_effort": False, "tier": "t", **kw})


def test_lag_tokens_counts_tokens_overdue() -> None:
    assert lag_tokens(10.0, 9.0, 50.0) == 0.0  # ahead
    assert lag_tokens(10.0, 10.1, 50.0) == pytest.approx(2.0)
    assert lag_tokens(10.0, 11.0, 0.0) == 0.0  # no TPOT


def test_a_request_behind_its_pace_gets_one_more_draft() -> None:
    assert spec_cap(slo(), 0, PLAN, 4) == 2
    # between its verify steps a request on pace is up to one step's tokens short
    assert spec_cap(slo(), 0, PLAN, 4, lag_tokens=2.0) == 2
    assert spec_cap(slo(), 0, PLAN, 4, lag_tokens=3.5) == 3  # behind: catch up
    assert spec_cap(slo(), 0, PLAN, 2, lag_tokens=9.0) == 2  # never above the engine's K
    assert spec_cap(slo(best_effort=True), 0, PLAN, 4, lag_tokens=9.0) == 2
