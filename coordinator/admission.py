"""Admission and routing for the live coordinator: the planner over the requests in flight.

Pure (no gRPC): the coordinator reports what happens to each request (arrival, first token,
tokens, stage switch, end) and what the workers report (KV capacity, speculative acceptance
per tier); each arrival is answered with the planner's decision, and the latest plan is kept
as one WorkerPlan per worker for the workers' schedulers (`worker_plans`).

Clock: unix seconds (time.time()), the clock the workers' TTFT deadlines are given in.

Layouts: fixed (the default) keeps every worker in its role, a mixed worker serving its
requests locally (prefill and decode on it); adaptive (`adaptive_layout`, Snapshot's) lets
the planner choose per request between local serving and a KV hand-off, and change the
planned role of mixed workers with the load (planner/layout.py; Plan.roles, applied as the
simulator does). A worker's planned role is kept across re-plans; its physical role (what
it accepts) never changes: a mixed worker accepts both kinds, the plan decides what it gets.

What the coordinator cannot see, it assumes conservatively: a prompt counts as wholly
unprefilled until its prefill worker answers; a request may generate up to its max_tokens
(KV is reserved for `kv_output_reserve` of what remains, an overcommit the engines' own
preemption covers, best effort first).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from slos_serve.core.perf_model import PerfModel
from slos_serve.core.planner import (
    Plan,
    PlanRequest,
    PlanWorker,
    Snapshot,
    Verdict,
    WorkerRole,
    engine_plan,
    plan,
    plan_request,
)
from slos_serve.core.spec_stats import TierStats, planning_alphas
from slos_serve.core.ttft_window import TtftWindow
from slos_serve.core.worker_plan import WorkerPlan


@dataclass
class WorkerView:
    """What the planner needs to know of one worker, from its info and load reports."""

    id: str
    role: str
    kv_blocks_total: int
    block_size: int = 16
    max_spec_tokens: int = 0
    # per tier: drafted and accepted tokens measured since the engine started
    spec: list[TierStats] = field(default_factory=list)
    model: PerfModel | None = None  # the model its engine learned (None: the profile's)
    handoff_p99_s: float = 0.0  # its recent hand-off waits' p99 (decode side; 0: none)


@dataclass
class Tracked:
    """A request in flight, as the planner needs to see it."""

    id: str
    arrival: float
    ttft_deadline: float
    tpot: float  # seconds, of the current stage
    prompt_tokens: int
    max_tokens: int
    on_reject: str
    state: str = "new"  # "admitted" | "best_effort"
    prefill_worker: str | None = None
    decode_worker: str | None = None
    stage: str = "prefill"  # "prefill" | "decode"
    generated: int = 0
    due0: float = 0.0  # when the first token after the current stage's start was due


class Admission:
    def __init__(
        self,
        model: PerfModel,
        *,
        kv_output_reserve: float = 0.5,
        max_batch_tokens: int = 2048,
        adaptive_layout: bool = False,
    ) -> None:
        self.model = model
        self.kv_output_reserve = kv_output_reserve
        self.max_batch_tokens = max_batch_tokens
        self.adaptive_layout = adaptive_layout
        self.planned: dict[str, WorkerRole] = {}  # mixed workers' planned roles, by id
        self.requests: dict[str, Tracked] = {}
        self.workers: list[PlanWorker] = []
        self.views: list[WorkerView] = []
        self.route = 0
        self.last: Plan | None = None
        self.ttft = TtftWindow(model)  # the TTFTs arriving: what bounds the batch period

    # ------------------------------------------------------------ workers

    def set_workers(self, views: list[WorkerView]) -> None:
        """The healthy workers with a known KV capacity (others receive no new work)."""
        self.views = [v for v in views if v.kv_blocks_total > 0]
        self.workers = []
        for v in self.views:
            planned = self.planned.get(v.id) if v.role == "mixed" else None
            self.workers.append(PlanWorker(
                v.id, planned.role if planned else v.role, v.model or self.model,
                v.kv_blocks_total,
                v.block_size, self.max_batch_tokens,
                target_role=planned.target if planned else None))

    def apply_roles(self, p: Plan) -> None:
        """The plan's role changes, for mixed workers (the only ones that can take any)."""
        physical = {v.id: v.role for v in self.views}
        for w in self.workers:
            change = p.roles.get(w.id)
            if change is not None and physical.get(w.id) == "mixed":
                self.planned[w.id] = change
                w.role, w.target_role = change.role, change.target

    def _alphas(self) -> tuple[dict[float, float], float]:
        """The acceptance to plan on, per TPOT tier, from what the workers measured."""
        return planning_alphas((s.tpot_ms / 1000.0, s.accepted, s.drafted)
                               for v in self.views for s in v.spec)

    # ------------------------------------------------------------ requests

    def admit(
        self,
        request_id: str,
        now: float,
        ttft_deadline: float,
        tpot: float,
        prompt_tokens: int,
        max_tokens: int,
        on_reject: str,
    ) -> Verdict:
        """The planner's decision for a new request; it is tracked unless rejected."""
        r = Tracked(request_id, now, ttft_deadline, tpot, prompt_tokens, max_tokens, on_reject)
        self.ttft.observe(now, ttft_deadline - now, prompt_tokens)
        p = self.replan(now, new=r)
        d = p.verdict(request_id) if p is not None else None
        if d is None:
            d = Verdict(request_id, "reject" if on_reject == "reject" else "best_effort",
                         None, None, "no worker is ready")
        if d.action != "reject":
            r.state = "admitted" if d.action == "admit" else "best_effort"
            r.prefill_worker, r.decode_worker = d.prefill_worker, d.decode_worker
            self.requests[request_id] = r
        return d

    def route_to(self, request_id: str, prefill: str | None, decode: str | None) -> None:
        """Where the request actually went (a fallback or failover may differ from the plan)."""
        r = self.requests.get(request_id)
        if r is not None:
            r.prefill_worker = prefill or r.prefill_worker
            r.decode_worker = decode or r.decode_worker

    def first_token(self, request_id: str, now: float) -> None:
        r = self.requests.get(request_id)
        if r is not None:
            r.stage, r.generated, r.due0 = "decode", 1, now

    def progress(self, request_id: str, generated: int) -> None:
        r = self.requests.get(request_id)
        if r is not None:
            r.generated = generated

    def switch_stage(self, request_id: str, tpot: float, now: float) -> None:
        """A multi-stage request moved on: its pace restarts under the new TPOT."""
        r = self.requests.get(request_id)
        if r is not None:
            r.tpot, r.due0 = tpot, now - r.generated * tpot

    def finish(self, request_id: str) -> None:
        self.requests.pop(request_id, None)

    # ------------------------------------------------------------ planning

    def _plan_request(self, r: Tracked) -> PlanRequest:
        # a prompt counts as wholly unprefilled until its prefill worker answers
        return plan_request(
            r.id,
            prefilling=r.stage == "prefill",
            arrival=r.arrival,
            ttft_deadline=r.ttft_deadline,
            tpot=r.tpot,
            prompt_tokens=r.prompt_tokens,
            prefill_left=r.prompt_tokens,
            generated=r.generated,
            expected_output=r.max_tokens - r.generated,
            state=r.state,  # type: ignore[arg-type]
            on_reject=r.on_reject,  # type: ignore[arg-type]
            prefill_worker=r.prefill_worker,
            decode_worker=r.decode_worker,
            pace_anchor=r.due0,
        )

    def replan(self, now: float, new: Tracked | None = None) -> Plan | None:
        """Plans over every tracked request (and `new`); None while no worker is ready."""
        if not self.workers:
            return None
        # Best-effort prompts still queued reserve nothing: leaving them out keeps a long
        # best-effort backlog from slowing every plan (as the simulator does).
        live = [r for r in self.requests.values()
                if not (r.state == "best_effort" and r.stage == "prefill")]
        if new is not None:
            live.append(new)
        alpha, default = self._alphas()
        snap = Snapshot(
            now=now,
            requests=[self._plan_request(r) for r in live],
            workers=self.workers,
            spec_alpha=alpha,
            default_alpha=default,
            max_spec_len=max((v.max_spec_tokens for v in self.views), default=0),
            route_start=self.route,
            decode_horizon=0,
            kv_output_reserve=self.kv_output_reserve,
            ttft_outlook=self.ttft.outlook(now),
            # Not the measured p99 (WorkerView.handoff_p99_s, reported): one flat figure over
            # every hand-off declined every tight request of tests/test_slo_live.py's burst
            # (loose pulls queued behind a loaded decode engine set it; a tight one, pulled
            # first under EDF, waits about one prefill step). Per-priority waits: not yet.
            handoff_delay=0.0,
            adaptive_layout=self.adaptive_layout,
        )
        self.route += 1 if new is not None else 0
        self.last = plan(snap)
        self.apply_roles(self.last)
        for d in self.last.verdicts:  # reroutes of admitted requests whose worker left
            r = self.requests.get(d.request_id)
            if r is not None and d.reason == "rerouted":
                r.prefill_worker, r.decode_worker = d.prefill_worker, d.decode_worker
        return self.last

    def worker_plans(self) -> dict[str, WorkerPlan]:
        """The last plan, per worker, for the workers' schedulers (plan_time_unix 0: the
        coordinator stamps it when it sends it)."""
        if self.last is None:
            return {}
        roles = {w.id: w.role for w in self.workers}
        return {wid: engine_plan(self.last, wid, roles.get(wid, "decode"))
                for wid in {*self.last.prefill, *self.last.decode}}
