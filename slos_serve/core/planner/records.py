"""The planner's input and output records: what a snapshot holds and what a plan says.

Times are absolute, in seconds (the caller's clock: unix time live, simulated time in the
simulator). Inputs: `Snapshot` (requests and workers); outputs: `Plan` (a `Verdict` per new
request, a `PrefillSchedule` per prefill-capable worker, a `DecodePlan` per decode-capable one).
`plan_request` is the one rule that turns a caller's view of a request into a `PlanRequest`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from slos_serve.core.perf_model import PerfModel
from slos_serve.core.ttft_window import TtftOutlook

Phase = Literal["prefill", "decode"]
Role = Literal["prefill", "decode", "mixed"]
Layout = Literal["adaptive", "pd", "colocated"]  # how a caller lays out its workers
Action = Literal["admit", "best_effort", "reject"]
State = Literal["new", "admitted", "best_effort"]
OnReject = Literal["best_effort", "reject"]


@dataclass
class PlanRequest:
    """One live request as the planner sees it (times absolute, in seconds)."""

    id: str
    phase: Phase  # "prefill" until its prompt is computed, then "decode"
    arrival: float
    ttft_deadline: float  # first token due (used while phase == "prefill")
    tpot: float  # TPOT SLO of the current (or next) decode stage
    prompt_tokens: int
    remaining_prefill: int | None = None  # None: all prompt tokens still to prefill
    generated: int = 0
    expected_output: int = 0  # tokens still to generate (may be an estimate)
    kv_blocks: int | None = None  # peak KV blocks on the decode side; None: from tokens
    is_new: bool = True
    state: State = "new"
    on_reject: OnReject = "best_effort"  # what a request the planner declines asks for
    prefill_worker: str | None = None
    decode_worker: str | None = None
    token_deadline: float | None = None  # next token due while decoding; None: now + tpot

    @property
    def prefill_left(self) -> int:
        """Prompt tokens still to prefill."""
        return self.prompt_tokens if self.remaining_prefill is None else self.remaining_prefill


def plan_request(
    request_id: str,
    *,
    prefilling: bool,
    arrival: float,
    ttft_deadline: float,
    tpot: float,
    prompt_tokens: int,
    prefill_left: int,
    generated: int,
    expected_output: int,
    state: State,
    on_reject: OnReject,
    prefill_worker: str | None,
    decode_worker: str | None,
    pace_anchor: float | None,
) -> PlanRequest:
    """A request as the planner sees it, from what its owner (the live coordinator or the
    simulator) knows. While decoding, its next token is due at pace_anchor + generated * TPOT
    (the stage's pace: TPOT after TPOT from its origin; None: not known, the planner assumes
    now + TPOT); while prefilling, only its TTFT deadline counts."""
    return PlanRequest(
        id=request_id,
        phase="prefill" if prefilling else "decode",
        arrival=arrival,
        ttft_deadline=ttft_deadline,
        tpot=tpot,
        prompt_tokens=prompt_tokens,
        remaining_prefill=prefill_left if prefilling else 0,
        generated=generated,
        expected_output=max(expected_output, 0),
        is_new=state == "new",
        state=state,
        on_reject=on_reject,
        prefill_worker=prefill_worker,
        decode_worker=decode_worker,
        token_deadline=None if prefilling or pace_anchor is None
        else pace_anchor + generated * tpot,
    )


@dataclass
class PlanWorker:
    """One engine. kv_capacity_blocks is what planned requests may reserve in total:
    the planner reserves each assigned admitted request's blocks against it (its peak, or
    less: Snapshot.kv_output_reserve)."""

    id: str
    role: Role
    model: PerfModel
    kv_capacity_blocks: int
    block_size: int = 16
    max_batch_tokens: int = 2048
    busy_until: float = 0.0  # the batch running now ends at this time (0: idle)
    # the role it is changing to (None: none): it drains first, taking no new work of the
    # kind its next role does not do (Snapshot.adaptive_layout; see planner/layout.py)
    target_role: Role | None = None


@dataclass
class Snapshot:
    now: float
    requests: list[PlanRequest]
    workers: list[PlanWorker]
    # TPOT tier -> the acceptance to plan on (a lower bound: spec_stats.planning_alphas)
    spec_alpha: dict[float, float] = field(default_factory=dict)
    default_alpha: float = 0.0
    max_spec_len: int = 0  # 0 disables speculative decoding
    route_start: int = 0  # routing offset: new request i first tries worker (start+i) mod R
    decode_horizon: int = 4  # decode batches to emit per worker (0: cadence only, cheaper)
    # fraction of each request's expected remaining output reserved in KV (1: its peak;
    # 0.5: its average over a linear growth, an overcommit the workers' eviction covers)
    kv_output_reserve: float = 1.0
    # the TTFTs arriving prompts have had lately (TtftWindow.outlook; None: no bound): no
    # batch period may make more than a few of them late (spec.ttft_miss)
    ttft_outlook: TtftOutlook | None = None
    # conditional disaggregation: a request may prefill on one worker and decode on another
    # (KV hand-off), and the workers' roles follow the load (planner/layout.py)
    adaptive_layout: bool = False
    # seconds a handed-off request waits for its KV before its first decode step (live: the
    # decode workers' measured hand-off p99); its decode must absorb the wait within its TPOT
    # (PlanContext.absorbs_handoff). 0: hand-offs are free
    handoff_delay: float = 0.0


@dataclass
class Verdict:
    """What the planner decided for one request, and where it goes."""

    request_id: str
    action: Action
    prefill_worker: str | None
    decode_worker: str | None
    reason: str = ""


@dataclass
class PlannedBatch:
    """One predicted engine step. deadline is the earliest deadline the batch claims to meet
    (inf if none): it is predicted to end no later than that."""

    start: float
    end: float
    prefill: list[tuple[str, int]]  # (request id, prompt tokens in this chunk)
    decode: list[tuple[str, int]]  # (request id, tokens verified: 1 + spec length)
    deadline: float = float("inf")
    decode_reserved: int = 0  # beyond the decode horizon: decode tokens held in aggregate


@dataclass
class PrefillSchedule:
    """Chunked prefill in EDF order: admitted first, best-effort in what is left."""

    worker_id: str
    token_budget: int  # prefill tokens per batch
    order: list[str]
    batches: list[PlannedBatch]


@dataclass
class TierCadence:
    """How one TPOT tier is decoded: every request of the tier gets a verify step of
    1 + spec_len tokens at least every `interval` seconds, yielding `expected_tokens`."""

    tpot: float
    spec_len: int
    alpha: float
    expected_tokens: float
    interval: float  # expected_tokens * tpot
    every: int  # served in one batch out of `every` (1 = every batch)
    num_requests: int


@dataclass
class DecodePlan:
    worker_id: str
    step_time: float  # batch period u
    step_token_budget: int  # tokens a batch of step_time may hold
    decode_tokens_per_step: int  # reserved for admitted decoding (worst batch)
    prefill_budget_per_step: int  # left for prefill (mixed) or best effort
    tiers: list[TierCadence]
    batches: list[PlannedBatch]  # the next few batches of the EDF cadence
    feasible: bool = True  # False: even the admitted set cannot be sustained


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """A worker's role after a plan, and the role it is draining towards (None: none)."""

    role: Role
    target: Role | None = None


@dataclass
class Plan:
    now: float
    verdicts: list[Verdict]
    prefill: dict[str, PrefillSchedule]  # by worker id (prefill and mixed workers)
    decode: dict[str, DecodePlan]  # by worker id (decode and mixed workers)
    admitted: list[str]  # every admitted request after this plan (old and new)
    roles: dict[str, WorkerRole] = field(default_factory=dict)  # adaptive layout only

    def verdict(self, request_id: str) -> Verdict | None:
        for v in self.verdicts:
            if v.request_id == request_id:
                return v
        return None
