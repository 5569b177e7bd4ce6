"""SLO-aware scheduling decisions, free of vLLM: what the engine's scheduler does with a plan.

The coordinator plans; each engine's scheduler (vllm_scheduler.SloScheduler) carries its
`WorkerPlan` out step by step. Everything that decides, without needing vLLM's objects,
lives here so that it is unit-tested in milliseconds (tests/test_slo_policy.py):

* `RequestSlo`: one request's SLO as the engine sees it (EngineRequest.slo).
* `priority`: EDF on the TTFT deadline, admitted requests before best-effort ones (vLLM's
  priority queue pops the smallest value first, and its priority preemption evicts the
  largest first, so best effort goes first).
* `stage_index` / `RequestSlo.stage_tpot_ms`: the TPOT in force for a multi-stage request
  (the boundary rule is core/stages.StageTracker's).
* `spec_cap`: speculative tokens a request's verify step may carry (its tier's cap).
* `step_budget`: the step's token budget from the performance model, so that the predicted
  step time stays within what every admitted decoder in the batch tolerates (`step_bound_ms`).
* `deadline_budget`: that budget cut so that a step finishing an admitted prompt ends by
  its TTFT deadline.
* `running_key`, `paced_out`: order of the running requests, and which loose decoders to
  hold back (pacing) while prefill waits.

Per-tier speculation statistics and the acceptance planned on: core/spec_stats.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from slos_serve.core.perf_model import BatchShape, PerfModel
from slos_serve.core.stages import StageSpec, StageTracker
from slos_serve.core.worker_plan import TierSpec, WorkerPlan

MODES = ("slos", "vllm")  # SLO-aware execution; vLLM's own decisions (the baseline)

# Added to a best-effort request's deadline (ms): every admitted deadline sorts first.
BEST_EFFORT_OFFSET_MS = 10**15
BEST_EFFORT_TIER = "best_effort"
NO_SLO_TIER = "none"  # requests without SLO data (e.g. an engine used directly)
# Pacing holds a decoder back only if its next token is not due within this many recent steps.
PACE_STEPS = 2.0
# ... and only while the KV cache is at most this full (held decoders keep their memory).
PACE_KV_FRACTION = 0.7


# ------------------------------------------------------------ request SLO --


@dataclass(frozen=True, slots=True)
class RequestSlo:
    """One request's SLO as its engine's scheduler acts on it. Empty: no objective (the
    request is served as best effort, first come first served among its kind). Stages:
    their tpot_ms, max_tokens and until (tier and ttft_ms are the coordinator's)."""

    ttft_deadline_unix: float = 0.0
    tpot_ms: float = 0.0
    best_effort: bool = True
    spec_tokens: int = 0
    tier: str = ""
    stages: tuple[StageSpec, ...] = ()

    @property
    def admitted(self) -> bool:
        return not self.best_effort

    @property
    def empty(self) -> bool:
        """No SLO data at all (a request not sent by the coordinator)."""
        return self.best_effort and not (self.tier or self.tpot_ms or self.ttft_deadline_unix)

    def stage_tpot_ms(self, index: int) -> float:
        """TPOT of stage `index` (the request's own TPOT when it has no stages)."""
        if self.stages:
            tpot = self.stages[min(max(index, 0), len(self.stages) - 1)].tpot_ms
            if tpot is not None and tpot > 0:
                return tpot
        return self.tpot_ms

    def tier_name(self, index: int = 0) -> str:
        """A bounded label: the tier's name; stages after the first with another TPOT
        are named "<tier>/stage<i>"."""
        if self.best_effort:
            return NO_SLO_TIER if self.empty else BEST_EFFORT_TIER
        name = self.tier or "custom"
        if index > 0 and self.stage_tpot_ms(index) != self.tpot_ms:
            return f"{name}/stage{index}"
        return name


def priority(slo: RequestSlo, arrival_unix: float) -> int:
    """vLLM priority (smaller runs first, larger is preempted first): the TTFT deadline in
    integer ms, best effort after every admitted request. No deadline: the arrival time."""
    deadline = slo.ttft_deadline_unix if slo.ttft_deadline_unix > 0 else arrival_unix
    key = int(round(deadline * 1000.0))
    return key + BEST_EFFORT_OFFSET_MS if slo.best_effort else key


def stage_index(
    slo: RequestSlo, output_tokens: int, override: tuple[int, int] | None = None
) -> int:
    """The stage a request is in after `output_tokens` output tokens, by token count (the
    engine sees no text). `override` (index, output tokens when the switch was seen): a
    stage the worker switched to (its `until` string), counted from there."""
    if not slo.stages:
        return 0
    tracker = StageTracker(slo.stages)
    if override is None:
        tracker.add(output_tokens)
    else:
        tracker.force(override[0])
        tracker.add(output_tokens - override[1])
    return tracker.index


# ------------------------------------------------------------ speculation --


def tier_for(plan: WorkerPlan, tpot_ms: float) -> TierSpec | None:
    """The plan's tier closest to `tpot_ms` (None: no plan tiers)."""
    if not plan.tiers:
        return None
    return min(plan.tiers, key=lambda t: (abs(t.tpot_ms - tpot_ms), t.tpot_ms))


def spec_cap(slo: RequestSlo, stage: int, plan: WorkerPlan | None, max_spec: int,
             lag_tokens: float = 0.0) -> int:
    """Draft tokens the request's next verify step may carry, 0..max_spec.

    The request's own cap (slo spec_tokens > 0; it was chosen for the request's TPOT, so it
    holds while the current stage has that TPOT), else the plan's tier closest to the
    current TPOT, else (no plan yet) max_spec. Best effort: the loosest tier's cap.
    Catch-up (`behind`): an admitted request behind its pace gets one more draft."""
    if max_spec <= 0:
        return 0
    cap = planned_cap(slo, stage, plan, max_spec)
    if behind(slo, stage, plan, lag_tokens):
        cap = min(max_spec, cap + 1)
    return cap


def behind(slo: RequestSlo, stage: int, plan: WorkerPlan | None, lag_tokens: float) -> bool:
    """Admitted and lagging (`lag_tokens`) by a token more than its tier's planned step
    yields (interval / TPOT: a request on pace is that short between its steps). Acceptance
    is random, so some requests of a tier paced on its average fall behind."""
    if not slo.admitted or lag_tokens < 1.0:
        return False
    tpot = slo.stage_tpot_ms(stage)
    tier = tier_for(plan, tpot) if plan is not None and tpot > 0 else None
    step_tokens = tier.interval_ms / tpot if tier is not None and tier.interval_ms > 0 else 1.0
    return lag_tokens >= max(step_tokens, 1.0) + 1.0


def planned_cap(slo: RequestSlo, stage: int, plan: WorkerPlan | None, max_spec: int) -> int:
    """The cap the plan gives the request's tier (spec_cap without catch-up)."""
    tpot = slo.stage_tpot_ms(stage)
    if slo.admitted and slo.spec_tokens > 0 and tpot == slo.tpot_ms:
        return min(slo.spec_tokens, max_spec)
    if plan is None or not plan.tiers:
        return max_spec
    if slo.best_effort or tpot <= 0:
        tier = max(plan.tiers, key=lambda t: t.tpot_ms)
    else:
        tier = tier_for(plan, tpot)
    assert tier is not None
    return max(0, min(tier.spec_tokens, max_spec))


CATCH_UP_LAG = 0.0  # tokens a handed-off decoder may lag before it gets decode-only steps


def lag_tokens(due_unix: float, now_unix: float, tpot_ms: float) -> float:
    """How many tokens a decoder whose next token was due at `due_unix` is behind its pace
    (0: on or ahead of it, or no TPOT)."""
    if tpot_ms <= 0 or not math.isfinite(due_unix) or due_unix >= now_unix:
        return 0.0
    return (now_unix - due_unix) * 1000.0 / tpot_ms


# ----------------------------------------------------------------- budget --


@dataclass(frozen=True, slots=True)
class Decoder:
    """A running decoder as the budget sees it, before the step."""

    tokens: int  # tokens it needs this step: 1 + its drafts
    context_tokens: int  # KV tokens already computed
    tpot_ms: float  # in force now (0: no TPOT objective)
    admitted: bool = True
    drafts: int = 0
    slack_ms: float = 0.0  # until its next token is due (ahead of its pace; 0: not known)
    # tokens a handed-off decoder is behind its pace (the wait for its KV; 0: on or ahead
    # of it, or not handed off: steady lags of a token or two cost less than catching up)
    lag: float = 0.0


def decoders_shape(decoders: Iterable[Decoder]) -> BatchShape:
    dec = ver = reqs = ctx = steps = 0
    for d in decoders:
        reqs += 1
        ctx += d.context_tokens
        if d.drafts > 0:
            ver += d.tokens
            steps = max(steps, d.drafts)
        else:
            dec += d.tokens
    return BatchShape(0, dec, ver, reqs, ctx, steps)


def planned_period_ms(plan: WorkerPlan | None) -> float:
    """The batch period the plan counts on for this worker: its tightest tier's interval
    (0: no plan, or no intervals)."""
    intervals = [t.interval_ms for t in plan.tiers if t.interval_ms > 0] if plan else []
    return min(intervals, default=0.0)


def step_bound_ms(decoder: Decoder, plan: WorkerPlan | None) -> float:
    """The longest step an admitted decoder tolerates: its TPOT, or with drafts in the step
    its tier's planned interval (expected tokens per step x TPOT): a verify step yields more
    than one token on average, and the planner sized the tier's steps by that (one rule for
    planner and engines: a TPOT bound here starved prefill whenever a verify batch alone
    took longer than the TPOT). A decoder ahead of its pace tolerates more, up to the plan's
    period: a step that ends by its next token's due time keeps it on time (without this, one
    decoder with no drafts this step -- its last token, or none proposed -- cut the step to
    its TPOT, below the period the plan's prefill budget counts on), and the cap keeps a
    decoder far ahead of its pace from letting one step take a whole long prompt. A decoder
    handed off and behind its pace (its wait for the KV) bounds the step at 0: decode-only
    steps until it is back on pace, once
    (the planner counts on that when it hands a request off: PlanContext.absorbs_handoff)."""
    bound = decoder.tpot_ms
    if decoder.drafts > 0 and plan is not None:
        tier = tier_for(plan, decoder.tpot_ms)
        if tier is not None and tier.interval_ms > decoder.tpot_ms:
            bound = tier.interval_ms
    bound = max(bound, min(decoder.slack_ms, planned_period_ms(plan)))
    if decoder.lag > CATCH_UP_LAG:
        return 0.0
    return bound


def step_budget(
    model: PerfModel | None,
    decoders: Sequence[Decoder],
    engine_max: int,
    plan_budget: int = 0,
    prefill_context_tokens: int = 0,
    plan: WorkerPlan | None = None,
) -> int:
    """Tokens the step may schedule.

    With a model and admitted decoders having a TPOT: the admitted decoders' own tokens plus
    the most prefill tokens the model says still end the step within the tightest of their
    step bounds (`step_bound_ms`; other tokens are timed as prefill tokens: an estimate;
    `prefill_context_tokens`: KV already computed of the prefill next in line, a chunked
    prompt's earlier chunks). Capped by the plan's budget (> 0) and the engine's maximum,
    never below the admitted decoders' tokens (they are scheduled first) and never below 1."""
    bound = [d for d in decoders if d.admitted and d.tpot_ms > 0]
    own = sum(d.tokens for d in bound)
    budget = engine_max
    if model is not None and bound:
        tightest = min(step_bound_ms(d, plan) for d in bound) / 1000.0
        base = decoders_shape(bound)
        # the extra tokens are one more request (a prompt chunk) in the batch
        base = BatchShape(base.prefill_tokens, base.decode_tokens, base.verify_tokens,
                          base.num_requests + 1,
                          base.context_tokens + prefill_context_tokens, base.spec_steps)
        extra = model.prefill_capacity(tightest, base)
        budget = min(budget, own + max(extra, 0))
    if plan_budget > 0:
        budget = min(budget, plan_budget)
    return max(1, min(engine_max, max(budget, own)))


@dataclass(frozen=True, slots=True)
class StepItem:
    """A request as the step fills its budget: running requests in their order, then the
    waiting prompts in theirs (the order vLLM schedules them in)."""

    tokens: int  # tokens it takes if the budget allows: 1 + drafts, or the prompt left
    context_tokens: int  # KV tokens already computed
    prompt: bool = False
    deadline_unix: float = 0.0  # an admitted prompt's TTFT deadline (0: none)


def deadline_budget(
    model: PerfModel | None, items: Sequence[StepItem], budget: int, now_unix: float
) -> int:
    """`budget` cut so that a step that finishes an admitted prompt is predicted to end by
    that prompt's TTFT deadline (the planner's schedule caps such a step the same way: the
    partial step its prefill budget counts on; a full step would miss the deadline it was
    admitted with). The items take the budget in order; once a finishing prompt has set a
    deadline, what follows takes only what still ends by it. A prompt that cannot finish by
    its own deadline anyway sets none. Never below 1."""
    if model is None:
        return budget
    left, used, limit = budget, 0, math.inf
    dec = ver = reqs = ctx = steps = prefill = 0
    for it in items:
        if left <= 0:
            break
        n = min(it.tokens, left)
        if it.prompt:
            finishes = n == it.tokens and it.deadline_unix > 0
            end = min(limit, it.deadline_unix) if finishes else limit
            if end < math.inf:
                base = BatchShape(0, dec, ver, reqs + 1, ctx + it.context_tokens, steps)
                room = model.prefill_capacity(end - now_unix, base) - prefill
                if room >= n:
                    limit, left = end, min(left, room)
                elif limit < math.inf:  # it would make an earlier finisher late
                    return max(1, used + max(room, 0))
            prefill += n
        else:
            verify = n > 1
            if limit < math.inf:
                shape = BatchShape(prefill, dec + (0 if verify else n), ver + (n if verify else 0),
                                   reqs + 1, ctx + it.context_tokens, max(steps, n - 1))
                if model.predict(shape) > limit - now_unix:
                    return max(1, used)
            if verify:
                ver += n
                steps = max(steps, n - 1)
            else:
                dec += n
        reqs += 1
        ctx += it.context_tokens
        used += n
        left -= n
    return budget if limit == math.inf else max(1, used + left)


# ------------------------------------------------------- order and pacing --


@dataclass(slots=True)
class DecodeClock:
    """When a decoder's next token is due: TPOT after TPOT from an anchor (the first output
    token seen, or the start of the current stage), so that a request ahead of its average
    TPOT (e.g. after accepted drafts) is not due yet and one behind it is overdue."""

    anchor_unix: float
    anchor_tokens: int
    tpot_ms: float

    def next_due(self, output_tokens: int) -> float:
        if self.tpot_ms <= 0:
            return math.inf
        return self.anchor_unix + (output_tokens - self.anchor_tokens + 1) * self.tpot_ms / 1e3


@dataclass(frozen=True, slots=True)
class Running:
    """A running request as the ordering sees it."""

    request_id: str
    decoding: bool
    admitted: bool
    tpot_ms: float
    due_unix: float  # next token due (decoders), inf if unknown
    priority: int


def slack_ms(r: Running, now_unix: float) -> float:
    """How far a decoder is ahead of its pace: until its next token is due (0: due or late,
    or not known)."""
    if not math.isfinite(r.due_unix):
        return 0.0
    return max(0.0, (r.due_unix - now_unix) * 1000.0)


def running_key(r: Running) -> tuple:
    """Sort key of vLLM's running list (scheduled in order until the budget binds):
    admitted decoders with a TPOT (tightest, then earliest due), then prefills still in
    progress (EDF), then decoders without a TPOT objective (best effort)."""
    if r.decoding and r.admitted and r.tpot_ms > 0:
        return (0, r.tpot_ms, r.due_unix, r.priority)
    if not r.decoding:
        return (1, r.priority, 0.0, 0)
    return (2, r.priority, r.due_unix, 0)


def paced_out(
    running: Sequence[Running], now_unix: float, step_s: float, plan: WorkerPlan | None,
    prefill_waiting: bool, kv_used_fraction: float = 0.0,
) -> set[str]:
    """Decoders to hold out of this step (plan "pace", meant for mixed workers): while prefill
    waits, admitted decoders of tiers looser than the tightest running one whose next token
    is not due within PACE_STEPS recent step times. Nobody while the KV cache is fuller than
    PACE_KV_FRACTION: a decoder held back keeps its KV longer, and when memory is short that
    costs more (prompts wait for memory, requests are preempted and recompute) than the
    prefill room its skipped steps leave."""
    if plan is None or not plan.pace or not prefill_waiting or step_s <= 0:
        return set()
    if kv_used_fraction > PACE_KV_FRACTION:
        return set()
    tpots = [r.tpot_ms for r in running if r.decoding and r.admitted and r.tpot_ms > 0]
    if not tpots:
        return set()
    tightest = min(tpots)
    horizon = now_unix + PACE_STEPS * step_s
    return {
        r.request_id for r in running
        if r.decoding and r.admitted and r.tpot_ms > tightest and r.due_unix > horizon
    }


def recent_step_time(previous_s: float, step_s: float) -> float:
    """The step time pacing counts in (`paced_out`'s step_s): a moving average of the steps
    run, 0.3 weight on the newest."""
    return step_s if not previous_s else 0.7 * previous_s + 0.3 * step_s


def prefill_yielding(running: Sequence[Running], waiting_priorities: Sequence[int]) -> set[str]:
    """Prompts being prefilled in chunks that yield this step to a waiting prompt with an
    earlier deadline (EDF at chunk granularity: vLLM schedules running chunks before waiting
    requests, so without this a long loose prompt admitted first holds the engine for its
    remaining chunks while a tight prompt waits). They keep their KV blocks and resume as
    soon as no earlier deadline waits."""
    if not waiting_priorities:
        return set()
    first = min(waiting_priorities)
    return {r.request_id for r in running if not r.decoding and r.priority > first}
