"""The one module that subclasses vLLM's scheduler (vLLM 0.32; not a public API).

vLLM runs the scheduler inside its engine-core process, out of the worker's reach: the
worker and this scheduler talk through the side channel (slos_serve/engine/side_channel.py
describes it and is its only codec): the plan file this scheduler polls (plan_poller.py),
the stats file it publishes (stats_publisher.py), the scheduler mode and the performance
model's path, and per request SamplingParams.extra_args["slo"].

In "slos" mode, with the engine's scheduling_policy "priority": requests are prefilled in
EDF order of their TTFT deadline, best effort last and preempted first (the priority set
in add_request); the running list is ordered so that admitted, tighter-TPOT, earlier-due
decoders come first and each step's token budget keeps the tightest admitted TPOT (the
performance model's prediction) and, when the step finishes an admitted prompt, that
prompt's TTFT deadline; loose decoders are held back (plan "pace") while prefill waits and
the KV cache is not short; draft tokens are trimmed to the request's tier cap. The
decisions themselves live in slos_serve/core/policy.py (no vLLM there). In "vllm" mode
every decision is vLLM's (the baseline) and only stats are published.

With a performance model (mode "slos"), every step's composition and measured seconds refit
it online (core/learning.py): the budgets follow the learned model, and the stats carry it
and its live prediction error.

Optional (off unless SLOS_PROFILE_PATH is set): the step recorder (step_recorder.py) for
`slos-serve profile`.

Keep everything that touches vLLM's scheduler internals here, small.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from vllm.v1.core.sched.request_queue import SchedulingPolicy
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import RequestStatus

from slos_serve.core.learning import OnlineModel
from slos_serve.core.perf_model import BatchShape, PerfModel
from slos_serve.core.perf_model import load as load_perf_model
from slos_serve.core.policy import (
    MODES,
    DecodeClock,
    Decoder,
    RequestSlo,
    Running,
    StepItem,
    deadline_budget,
    lag_tokens,
    paced_out,
    prefill_yielding,
    priority,
    recent_step_time,
    running_key,
    slack_ms,
    spec_cap,
    stage_index,
    step_budget,
)
from slos_serve.core.spec_stats import SpecStats, acceptance
from slos_serve.core.worker_plan import WorkerPlan
from slos_serve.engine.base import EngineLoad, learned_fields
from slos_serve.engine.plan_poller import PlanPoller
from slos_serve.engine.side_channel import (
    MODE_ENV,
    PERF_PROFILE_ENV,
    PLAN_PATH_ENV,
    PROFILE_PATH_ENV,
    SLO_KEY,
    STATS_PATH_ENV,
    slo_from_extra_args,
)
from slos_serve.engine.stats_publisher import StatsPublisher
from slos_serve.engine.step_recorder import (
    MAX_PENDING_STEPS,
    StepRecorder,
    batch_composition,
    computed_tokens,
)

log = logging.getLogger(__name__)

__all__ = ["SloScheduler"]


@dataclass(slots=True)
class RequestState:
    """What the scheduler keeps per request."""

    slo: RequestSlo
    ext_id: str  # the worker's request id (the plan file's "stages" keys)
    stage: int = 0
    override: tuple[int, int] | None = None  # (stage index, output tokens when seen)
    clock: DecodeClock | None = None
    cap: int | None = None  # speculative tokens cap last applied
    # handed off: the prompt's KV came from a prefill worker; its decode pace starts when the
    # request reached this engine, so the wait for the KV counts as lag (policy.step_bound_ms)
    pulled_at: float | None = None


@dataclass(frozen=True, slots=True)
class SpecStep:
    """One decoding request of a scheduled step, as its speculation is counted."""

    tier: str
    tpot_ms: float
    drafted: int  # real drafts (vLLM pads with -1)
    scheduled: int  # draft slots scheduled, padding included
    cap: int


def external_id(internal: str) -> str:
    """vLLM appends "-" and 8 random characters to the id it was given."""
    head, sep, tail = internal.rpartition("-")
    return head if sep and len(tail) == 8 else internal


class SloScheduler(Scheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        mode = os.environ.get(MODE_ENV, "slos") or "slos"
        if mode not in MODES:
            log.warning("%s=%r is not one of %s: using 'slos'", MODE_ENV, mode, MODES)
            mode = "slos"
        self._mode = mode
        self._slos = mode == "slos"
        self._publisher = StatsPublisher(os.environ.get(STATS_PATH_ENV))
        self._steps = 0
        self._step_time_total = 0.0
        self._last_step_s = 0.0
        self._recent_step_s = 0.0  # moving average, for pacing
        self._step_started: float | None = None
        path = os.environ.get(PROFILE_PATH_ENV)
        self._recorder = StepRecorder(path) if path else None
        # SLO-aware execution (mode "slos"): the plan, the performance model, request state.
        self._engine_max = self.max_num_scheduled_tokens
        self._max_spec = self.num_spec_tokens
        self._plan = WorkerPlan()
        self._stage_switches: dict[str, int] = {}  # the worker's, by its request id
        self._poller = PlanPoller(os.environ.get(PLAN_PATH_ENV))
        self._model: PerfModel | None = None
        self._learner: OnlineModel | None = None
        self._step_shape: BatchShape | None = None  # of the step running, for the learner
        profile = os.environ.get(PERF_PROFILE_ENV)
        if profile and self._slos:
            try:
                self._model = load_perf_model(profile)
                self._learner = OnlineModel(self._model)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("%s=%s: no performance model (%s); only the plan's budget "
                            "applies", PERF_PROFILE_ENV, profile, exc)
        self._chunked = bool(self.scheduler_config.enable_chunked_prefill)
        if self._max_spec > 0 and self.dynamic_sd_lookup is None:
            # vLLM pads a request's first decode step (its KV came from the prefill worker)
            # with placeholder drafts, for CUDA-graph shapes: that step then samples through
            # the rejection sampler, which draws a seeded request's random numbers unlike the
            # prefill's plain sampler, and the decode engine recomputes a different first
            # token. A constant "dynamic" lookup (K at every batch size) turns the padding off
            # and schedules K drafts as before.
            self.dynamic_sd_lookup = [self._max_spec] * (self.scheduler_config.max_num_seqs + 2)
        self._states: dict[str, RequestState] = {}
        self._spec = SpecStats()
        self._pending_spec: dict[int, tuple[Any, dict[str, SpecStep]]] = {}  # by id(output)
        self._last_budget = self._engine_max
        self._last_held = 0
        if self._slos and self.policy != SchedulingPolicy.PRIORITY:
            log.warning("SloScheduler in mode slos with vLLM's %s policy: requests are not "
                        "queued by deadline (VllmEngine sets scheduling_policy='priority')",
                        self.policy.value)
        log.info("SloScheduler: mode %s, perf model %s, plan %s, speculative tokens %d",
                 mode, profile if self._model else "none", self._poller.path or "none",
                 self._max_spec)
        self._publish(force=True)

    # ------------------------------------------------------------ requests --

    def _state(self, request: Any) -> RequestState:
        st = self._states.get(request.request_id)
        if st is None:
            extra = getattr(request.sampling_params, "extra_args", None) or {}
            try:
                slo, ext = slo_from_extra_args(extra.get(SLO_KEY))
            except (TypeError, ValueError, AttributeError) as exc:
                log.warning("request %s: unusable SLO data (%s): best effort",
                            request.request_id, exc)
                slo, ext = RequestSlo(), ""
            ext = ext or external_id(request.request_id)
            st = self._states[request.request_id] = RequestState(slo, ext)
        return st

    def add_request(self, request: Any) -> None:
        if request.request_id not in self.requests:
            st = self._state(request)
            if (getattr(request, "kv_transfer_params", None) or {}).get("do_remote_prefill"):
                st.pulled_at = request.arrival_time
            if self._slos:  # before it is queued: the priority queue orders by it
                request.priority = priority(st.slo, request.arrival_time)
        super().add_request(request)

    def _advance_stage(self, st: RequestState, output_tokens: int, now: float) -> None:
        if not st.slo.stages:
            return
        forced = self._stage_switches.get(st.ext_id)
        if forced is not None and (st.override is None or st.override[0] != forced):
            st.override = (forced, output_tokens)
        index = stage_index(st.slo, output_tokens, st.override)
        if index != st.stage:
            st.stage = index
            tpot = st.slo.stage_tpot_ms(index)
            st.clock = DecodeClock(now, output_tokens, tpot) if output_tokens else None

    def _cap(self, st: RequestState, output_tokens: int | None = None, now: float = 0.0) -> int:
        """The request's draft cap; given its output tokens so far, with catch-up (spec_cap)."""
        if not self._slos:
            return self._max_spec
        lag = 0.0
        if output_tokens is not None and st.clock is not None:
            lag = lag_tokens(st.clock.next_due(output_tokens), now, st.slo.stage_tpot_ms(st.stage))
        return spec_cap(st.slo, st.stage, self._plan, self._max_spec, lag)

    def _handoff_lag(self, req: Any, view: Running, now: float) -> float:
        """How far a handed-off decoder is behind its pace (0 for the others): the wait for
        its KV, which it catches up with decode-only steps (policy.step_bound_ms)."""
        st = self._states.get(req.request_id)
        if st is None or st.pulled_at is None or st.clock is None:
            return 0.0
        lag = lag_tokens(view.due_unix, now, view.tpot_ms)
        if lag <= 0:
            st.pulled_at = None  # caught up once: from here on paced as any decoder
        return lag

    def _prune(self) -> None:
        if len(self._states) > len(self.requests):
            for rid in [r for r in self._states if r not in self.requests]:
                del self._states[rid]

    # ---------------------------------------------------------------- plan --

    def _poll_plan(self) -> None:
        update = self._poller.poll()
        if update is not None:
            self._plan, self._stage_switches = update

    # ------------------------------------------------------------ schedule --

    def schedule(self, *args: Any, **kwargs: Any):
        if self._slos:
            output = self._schedule_slos(*args, **kwargs)
        else:
            output = super().schedule(*args, **kwargs)
        if output.total_num_scheduled_tokens > 0:
            self._step_started = time.perf_counter()
            if self._learner is not None:
                self._step_shape = BatchShape(**batch_composition(output, self.requests))
            if self._recorder is not None:
                self._recorder.started(output, self.requests)
            self._note_spec(output)
        return output

    def _schedule_slos(self, *args: Any, **kwargs: Any):
        """vLLM's schedule() with the running list in SLO order, a token budget that keeps
        the admitted decoders' TPOT, and (plan "pace") loose decoders held back."""
        self._poll_plan()
        now = time.time()
        views: dict[str, Running] = {}
        for req in self.running:
            st = self._state(req)
            n_out = req.num_output_tokens
            self._advance_stage(st, n_out, now)
            decoding = n_out > 0 and not req.is_prefill_chunk
            due = st.clock.next_due(n_out) if (decoding and st.clock) else now
            views[req.request_id] = Running(
                req.request_id, decoding, st.slo.admitted, st.slo.stage_tpot_ms(st.stage),
                due, req.priority,
            )
        if any(not self._states[r].slo.empty for r in views):
            # (requests without SLO data alone, e.g. an engine used directly: vLLM's order)
            self.running.sort(key=lambda r: running_key(views[r.request_id]))
        prefill_waiting = bool(self.waiting) or any(not v.decoding for v in views.values())
        running = list(views.values())
        # schedulable waiting requests, in queue order (one pass over the queue per step)
        ready = [r for r in self.waiting if r.status == RequestStatus.WAITING]
        kv_total, kv_used = self._kv_blocks()
        held_ids = paced_out(running, now, self._recent_step_s, self._plan, prefill_waiting,
                             kv_used / max(1, kv_total))
        if self._chunked:  # only chunked prompts can be part-way through their prefill
            held_ids |= prefill_yielding(running, [r.priority for r in ready])
        held = [r for r in self.running if r.request_id in held_ids]
        active = [r for r in self.running if r.request_id not in held_ids]
        decoders = [
            Decoder(
                tokens=max(1, r.num_tokens_with_spec - r.num_computed_tokens),
                context_tokens=r.num_computed_tokens,
                tpot_ms=views[r.request_id].tpot_ms,
                admitted=views[r.request_id].admitted,
                drafts=len(r.spec_token_ids),
                slack_ms=slack_ms(views[r.request_id], now),
                lag=self._handoff_lag(r, views[r.request_id], now),
            )
            for r in active
            if views[r.request_id].decoding
        ]
        prefill_next = next((r for r in active if not views[r.request_id].decoding), None)
        budget = step_budget(
            self._model, decoders, self._engine_max, self._plan.step_token_budget,
            prefill_context_tokens=prefill_next.num_computed_tokens if prefill_next else 0,
            plan=self._plan,
        )
        steps = [self._step_item(r, views[r.request_id].decoding) for r in active]
        steps += [self._step_item(r, False) for r in ready]
        budget = deadline_budget(self._model, steps, budget, now)
        if not self._chunked:
            # prompts are never split: the budget must admit the running requests and the
            # next prompt whole, or that prompt would wait forever
            need = sum(max(1, r.num_tokens_with_spec - r.num_computed_tokens) for r in active)
            if ready:
                need += max(1, ready[0].num_tokens - ready[0].num_computed_tokens)
            budget = max(budget, min(self._engine_max, need))
        self._last_budget, self._last_held = budget, len(held)
        saved_active = self.max_num_active_reqs
        if held:  # out of the running list, and their slots stay theirs
            self.running[:] = [r for r in self.running if r.request_id not in held_ids]
            self.max_num_active_reqs = max(0, saved_active - len(held))
        self.max_num_scheduled_tokens = budget
        try:
            return super().schedule(*args, **kwargs)
        finally:
            self.max_num_scheduled_tokens = self._engine_max
            self.max_num_active_reqs = saved_active
            if held:
                self.running.extend(held)

    def _step_item(self, req: Any, decoding: bool) -> StepItem:
        """req as deadline_budget sees it: what it takes of the step, and an admitted
        prompt's TTFT deadline."""
        if decoding:
            return StepItem(max(1, req.num_tokens_with_spec - req.num_computed_tokens),
                            req.num_computed_tokens)
        slo = self._state(req).slo
        return StepItem(max(1, req.num_tokens - req.num_computed_tokens),
                        req.num_computed_tokens, True,
                        slo.ttft_deadline_unix if slo.admitted else 0.0)

    # --------------------------------------------------------- speculation --

    def update_draft_token_ids(self, draft_token_ids: Any) -> None:
        super().update_draft_token_ids(draft_token_ids)
        now = time.time()
        for rid in draft_token_ids.req_ids:
            req = self.requests.get(rid)
            if req is None or req.is_finished():
                continue
            st = self._state(req)
            self._advance_stage(st, req.num_output_tokens, now)
            cap = st.cap = self._cap(st, req.num_output_tokens, now)
            self._spec.set_cap(st.slo.tier_name(st.stage), st.slo.stage_tpot_ms(st.stage), cap)
            if len(req.spec_token_ids) > cap:
                req.spec_token_ids = req.spec_token_ids[:cap]

    # update_draft_token_ids_in_output (async scheduling / batch queue only; never on vLLM's
    # CPU platform) rewrites drafts of a step already scheduled with a fixed token count:
    # trimming there saves no work, so it is left to vLLM.

    def _note_spec(self, output: Any) -> None:
        """Per decoding request of the step: its tier, drafts scheduled, cap in force."""
        if len(self._pending_spec) > MAX_PENDING_STEPS:  # steps that never completed
            self._pending_spec.clear()
        computed = computed_tokens(output)
        spec = output.scheduled_spec_decode_tokens
        entries: dict[str, SpecStep] = {}
        for rid in output.num_scheduled_tokens:
            req = self.requests.get(rid)
            if req is None or computed.get(rid, 0) < req.num_prompt_tokens:
                continue  # a prefill step
            st = self._state(req)
            drafts = spec.get(rid, ())
            real = sum(1 for t in drafts if t >= 0)  # -1: vLLM's padding, not a draft
            cap = st.cap if st.cap is not None else self._cap(st)
            entries[rid] = SpecStep(st.slo.tier_name(st.stage), st.slo.stage_tpot_ms(st.stage),
                                    real, len(drafts), cap)
        self._pending_spec[id(output)] = (output, entries)

    def _count_spec(self, output: Any, runner_output: Any) -> None:
        entry = self._pending_spec.pop(id(output), None)
        if entry is None or entry[0] is not output or runner_output is None:
            return
        index = runner_output.req_id_to_index
        sampled = runner_output.sampled_token_ids or []
        for rid, step in entry[1].items():
            i = index.get(rid)
            if i is None or i >= len(sampled) or not len(sampled[i]):
                continue
            accepted = len(sampled[i]) - 1 if step.scheduled else 0
            self._spec.record(step.tier, step.tpot_ms, step.drafted, accepted, step.cap)

    # -------------------------------------------------------------- output --

    def update_from_output(self, *args: Any, **kwargs: Any):
        output = args[0] if args else kwargs.get("scheduler_output")
        runner_output = args[1] if len(args) > 1 else kwargs.get("model_runner_output")
        if self._recorder is not None:
            self._recorder.finished(output)
        self._count_spec(output, runner_output)  # before finished requests are freed
        if self._step_started is not None:
            step = time.perf_counter() - self._step_started
            self._steps += 1
            self._step_time_total += step
            self._last_step_s = step
            self._recent_step_s = recent_step_time(self._recent_step_s, step)
            self._step_started = None
            if self._learner is not None and self._step_shape is not None:
                self._learner.observe(self._step_shape, step)
                self._model = self._learner.model
        outputs = super().update_from_output(*args, **kwargs)
        if output is not None:
            now = time.time()
            for rid in output.num_scheduled_tokens:
                st = self._states.get(rid)
                req = self.requests.get(rid)
                if st is not None and req is not None and st.clock is None:
                    n_out = req.num_output_tokens
                    if n_out > 0:
                        start = now if st.pulled_at is None else min(now, st.pulled_at)
                        st.clock = DecodeClock(start, n_out, st.slo.stage_tpot_ms(st.stage))
        self._prune()
        self._publish(force=not self.has_requests())
        return outputs

    def finish_requests(self, *args: Any, **kwargs: Any):
        result = super().finish_requests(*args, **kwargs)
        self._prune()
        self._publish(force=True)
        return result

    def _kv_blocks(self) -> tuple[int, int]:
        """(total, in use) KV blocks; block 0 is vLLM's reserved null block."""
        pool = self.kv_cache_manager.block_pool
        total = pool.num_gpu_blocks - 1
        return total, max(0, total - pool.get_num_free_blocks())

    def _publish(self, force: bool = False) -> None:
        if not self._publisher.due(force):
            return
        total, used = self._kv_blocks()
        running, waiting = self.get_request_counts()
        spec = self._spec.snapshot()
        load = EngineLoad(
            running=running,
            waiting=waiting,
            kv_blocks_total=total,
            kv_blocks_used=used,
            steps=self._steps,
            mean_step_ms=1000 * self._step_time_total / self._steps if self._steps else 0.0,
            spec_acceptance=acceptance(spec),
            spec=spec,
            scheduler=self._mode,
            last_step_ms=1000 * self._last_step_s,
            **learned_fields(self._learner),
        )
        self._publisher.publish(load, {
            "max_spec_tokens": self._max_spec,
            "plan_time_unix": self._plan.plan_time_unix,
            "step_token_budget": self._last_budget,
            "paced": self._last_held,
            "profile_error": self._learner.prior_error if self._learner else 0.0,
            "time": time.time(),
        })
