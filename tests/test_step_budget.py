"""The engine scheduler's step budget (slos_serve/core/policy.py): the tokens a step may
schedule so that its admitted decoders keep their TPOT and a prompt it finishes its TTFT."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_slo_policy import CPU_LIKE_PROFILE

from slos_serve.core.perf_model import BatchShape, PerfModel, Piece
from slos_serve.core.perf_model import load as load_perf_model
from slos_serve.core.policy import (
    Decoder,
    Running,
    StepItem,
    deadline_budget,
    decoders_shape,
    slack_ms,
    step_bound_ms,
    step_budget,
)
from slos_serve.core.worker_plan import TierSpec, WorkerPlan

NOW = 1_800_000_000.0
PROFILE = Path(__file__).resolve().parent.parent / ".cache" / "profile-cpu.json"
def cpu_profile() -> PerfModel:
    """The measured CPU profile if built here, else its copy."""
    return load_perf_model(PROFILE) if PROFILE.exists() else PerfModel.from_dict(CPU_LIKE_PROFILE)


def toy_model() -> PerfModel:
    # 2 ms + 0.1 ms per prefill token + 1 ms per decode token + 1.5 ms per verify token
    return PerfModel([Piece((1e-4, 1e-3, 1.5e-3, 0.0, 0.0, 0.0), 2e-3)])


def test_deadline_budget_ends_a_step_that_finishes_a_prompt_by_its_deadline() -> None:
    model = toy_model()  # 2 ms + 0.1 ms per prefill token + 1 ms per decode token
    decoder = StepItem(1, 100)
    # a 300-token prompt due in 40 ms finishes in this step: the step must end by then, so
    # it holds 37 ms of prefill next to the decoder: the prompt's 300 tokens and ~70 more
    due = StepItem(300, 0, prompt=True, deadline_unix=NOW + 0.040)
    later = StepItem(2000, 0, prompt=True, deadline_unix=NOW + 10.0)
    assert 1 + 369 <= deadline_budget(model, [decoder, due, later], 4096, NOW) <= 1 + 370
    # nothing finishes: the budget stands (a long prompt in chunks, or no deadline)
    assert deadline_budget(model, [decoder, later], 2048, NOW) == 2048
    best_effort = StepItem(300, 0, prompt=True)
    assert deadline_budget(model, [decoder, best_effort, later], 4096, NOW) == 4096
    # a prompt that cannot make its own deadline sets none (it is late either way)
    lost = StepItem(300, 0, prompt=True, deadline_unix=NOW + 0.010)
    assert deadline_budget(model, [decoder, lost, later], 4096, NOW) == 4096
    # a decoder after the finisher that would make it late is left out (3 + 30 + 1 ms > 33.5)
    tight = StepItem(300, 0, prompt=True, deadline_unix=NOW + 0.0335)
    assert deadline_budget(model, [decoder, tight, StepItem(1, 100)], 4096, NOW) == 301
    assert deadline_budget(None, [decoder, due, later], 4096, NOW) == 4096


def test_budget_fills_the_tightest_tpot_with_the_model() -> None:
    decs = [Decoder(1, 100, 20.0), Decoder(1, 100, 50.0), Decoder(3, 100, 40.0, drafts=2)]
    # tightest 20 ms: 2 ms + 2 decode (2 ms) + 3 verify (4.5 ms) = 8.5 ms; 11.5 ms left
    assert 5 + 114 <= step_budget(toy_model(), decs, 4096) <= 5 + 115  # (rounded down)
    assert decoders_shape(decs) == BatchShape(0, 2, 3, 3, 300, 2)


def test_a_decoder_ahead_of_its_pace_tolerates_a_step_until_its_next_token_is_due() -> None:
    """Up to the plan's period (its tightest tier's interval), never beyond it."""
    plan = WorkerPlan(tiers=(TierSpec(20.0, 2, 60.0), TierSpec(100.0, 0, 100.0)))
    on_pace = [Decoder(1, 0, 20.0), Decoder(1, 0, 100.0, slack_ms=50.0)]
    ahead = [Decoder(1, 0, 20.0, slack_ms=50.0), Decoder(1, 0, 100.0, slack_ms=50.0)]
    # 20 ms - 2 ms - 2 decode tokens (2 ms) = 16 ms: 160 prefill tokens; 50 ms: 460
    assert step_budget(toy_model(), on_pace, 4096, plan=plan) in (2 + 159, 2 + 160)
    assert step_budget(toy_model(), ahead, 4096, plan=plan) in (2 + 459, 2 + 460)
    # no drafts this step (its last token): its slack, not its TPOT, bounds the step...
    assert step_bound_ms(Decoder(1, 0, 20.0, slack_ms=35.0), plan) == 35.0
    assert step_bound_ms(Decoder(1, 0, 20.0, slack_ms=5.0), plan) == 20.0
    # ...but never beyond the plan's period, and not at all without a plan
    assert step_bound_ms(Decoder(1, 0, 20.0, slack_ms=500.0), plan) == 60.0
    assert step_bound_ms(Decoder(1, 0, 20.0, slack_ms=35.0), None) == 20.0
    due = Running("r", True, True, 20.0, NOW + 0.035, 0)
    assert slack_ms(due, NOW) == pytest.approx(35.0, abs=1e-3)
    assert slack_ms(due, NOW + 1.0) == 0.0


def test_budget_never_below_the_admitted_decoders_own_tokens() -> None:
    decs = [Decoder(5, 0, 5.0, drafts=4)] * 3  # 15 verify tokens alone take 24.5 ms > 5 ms
    assert step_budget(toy_model(), decs, 4096) == 15
    assert step_budget(toy_model(), decs, 4096, plan_budget=4) == 15
    assert step_budget(None, decs, 10) == 10  # the engine's own maximum is a hard cap


def test_budget_ignores_best_effort_and_decoders_without_tpot() -> None:
    decs = [Decoder(1, 0, 20.0, admitted=False), Decoder(1, 0, 0.0)]
    assert step_budget(toy_model(), decs, 2048) == 2048
    assert step_budget(toy_model(), [], 2048, plan_budget=512) == 512
    assert step_budget(None, [Decoder(1, 0, 20.0)], 2048) == 2048
    assert step_budget(None, [Decoder(1, 0, 20.0)], 2048, plan_budget=300) == 300


@pytest.mark.parametrize("tpot_ms", [10.0, 30.0, 100.0])
def test_budget_with_the_measured_cpu_profile_keeps_the_predicted_step_within_tpot(
    tpot_ms: float,
) -> None:
    model = cpu_profile()
    decs = [Decoder(5, 300, tpot_ms, drafts=4), Decoder(1, 200, 300.0), Decoder(1, 50, tpot_ms)]
    budget = step_budget(model, decs, 2048)
    own = sum(d.tokens for d in decs)
    assert own <= budget <= 2048
    base = decoders_shape(decs)
    extra = budget - own
    shape = BatchShape(extra, base.decode_tokens, base.verify_tokens, base.num_requests + 1,
                       base.context_tokens, base.spec_steps)
    assert model.predict(shape) <= tpot_ms / 1000 + 1e-9 or extra == 0
    more = BatchShape(extra + 2, *list(shape.features())[1:])
    assert budget == 2048 or model.predict(more) > tpot_ms / 1000


def test_budget_counts_the_context_of_a_chunked_prompts_earlier_chunks() -> None:
    model = PerfModel([Piece((1e-4, 1e-3, 0.0, 0.0, 1e-6, 0.0), 2e-3)])
    decs = [Decoder(1, 0, 20.0)]
    # 20 ms - 2 ms - 1 ms = 17 ms: 170 tokens; with 1000 tokens of context, 1 ms less
    assert step_budget(model, decs, 4096) in (170, 171)
    assert step_budget(model, decs, 4096, prefill_context_tokens=1000) in (160, 161)


def test_a_handed_off_decoder_behind_its_pace_gets_decode_only_steps() -> None:
    """Its wait for the KV is caught up at once (PlanContext.absorbs_handoff counts on it)."""
    from slos_serve.core.perf_model import load_profile
    from slos_serve.core.policy import Decoder, step_budget

    model = load_profile("opt-13b-a100")
    on_pace = [Decoder(1, 500, 100.0), Decoder(1, 500, 100.0)]
    behind = [Decoder(1, 500, 100.0), Decoder(1, 500, 100.0, lag=0.5)]
    assert step_budget(model, on_pace, 2048) > 100  # room for a prompt chunk
    assert step_budget(model, behind, 2048) == 2  # the decoders' own tokens only
