"""The one module that subclasses vLLM's scheduler (vLLM 0.32; not a public API).

vLLM runs the scheduler inside its engine-core process, out of the worker's
reach. The worker and this scheduler talk through files and environment
variables set before the engine starts:

* SLOS_ENGINE_STATS_PATH: this scheduler publishes a load snapshot there (queue, KV
  blocks, step times, per-tier speculation, "scheduler": "slos"|"vllm"), because vLLM
  emits scheduler statistics only with outputs: once a request is aborted and the engine
  falls idle, the freed KV blocks would otherwise never be reported.
* SLOS_SCHEDULER_MODE: "slos" (default) carries out the coordinator's plan; "vllm" leaves
  every decision to vLLM (the baseline: fcfs, no caps, no budget) and only publishes stats.
* SLOS_ENGINE_PLAN_PATH: the coordinator's plan for this engine, a JSON file the worker
  replaces atomically and this scheduler polls (one stat() per ~20 ms at most):
  {"plan_time_unix", "step_token_budget", "tiers": [{"tpot_ms", "spec_tokens",
  "interval_ms"}], "pace", "stages": {request_id: stage_index}}.
* SLOS_PERF_PROFILE: a performance model (slos_serve.core.perf_model JSON) for step budgets.

Per-request SLO data arrives in SamplingParams.extra_args["slo"]: ttft_deadline_unix,
tpot_ms, best_effort, spec_tokens, tier, stages [{"tpot_ms", "max_tokens", "until"}] and
request_id (the worker's id). In "slos" mode, with the engine's scheduling_policy
"priority": requests are prefilled in EDF order of their TTFT deadline, best effort last
and preempted first (the priority set in add_request); the running list is ordered so that
admitted, tighter-TPOT, earlier-due decoders come first and each step's token budget keeps
the tightest admitted TPOT (the performance model's prediction); draft tokens are trimmed
to the request's tier cap. The decisions themselves live in slos_serve/core/policy.py
(no vLLM there).

Optional (off unless SLOS_PROFILE_PATH is set): a sample recorder that appends one
JSON line per executed step, the batch's composition and its seconds (wall; the
model worker's CPU and core-wait seconds), for `slos-serve profile` to fit the
performance model on.

Keep everything that touches vLLM's scheduler internals here, small.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from vllm.v1.core.sched.request_queue import SchedulingPolicy
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import RequestStatus

from slos_serve.core.perf_model import PerfModel
from slos_serve.core.perf_model import load as load_perf_model
from slos_serve.core.policy import (
    MODE_ENV,
    MODES,
    PERF_PROFILE_ENV,
    PLAN_PATH_ENV,
    STATS_PATH_ENV,
    DecodeClock,
    Decoder,
    Plan,
    RequestSlo,
    Running,
    SpecStats,
    acceptance,
    paced_out,
    parse_plan,
    prefill_yielding,
    priority,
    running_key,
    spec_cap,
    stage_index,
    step_budget,
)

log = logging.getLogger(__name__)

PROFILE_PATH_ENV = "SLOS_PROFILE_PATH"
_PUBLISH_INTERVAL_S = 0.05
_PLAN_POLL_S = 0.02

__all__ = [
    "MODE_ENV", "PERF_PROFILE_ENV", "PLAN_PATH_ENV", "PROFILE_PATH_ENV", "STATS_PATH_ENV",
    "SloScheduler", "batch_composition",
]


def batch_composition(output: Any, requests: Any) -> dict[str, int]:
    """A step's batch, read from a SchedulerOutput (token counts as before the step):
    prefill (prompt or recomputed tokens), decode (one per plain decode request), verify
    (draft + 1 per request with scheduled_spec_decode_tokens), KV context tokens (sum of
    the scheduled requests' num_computed_tokens) and spec_steps (longest draft)."""
    done = {r.req_id: r.num_computed_tokens for r in output.scheduled_new_reqs}
    cached = output.scheduled_cached_reqs
    done.update(zip(cached.req_ids, cached.num_computed_tokens, strict=False))
    keys = ("prefill_tokens", "decode_tokens", "verify_tokens", "context_tokens", "spec_steps")
    shape = dict.fromkeys(keys, 0)
    for req_id, n in output.num_scheduled_tokens.items():
        computed = done.get(req_id, 0)
        spec = len(output.scheduled_spec_decode_tokens.get(req_id, ()))
        req = requests.get(req_id)
        if req is not None and computed < req.num_prompt_tokens:
            shape["prefill_tokens"] += n
        else:
            shape["verify_tokens" if spec else "decode_tokens"] += n
        shape["context_tokens"] += computed
        shape["spec_steps"] = max(shape["spec_steps"], spec)
    shape["num_requests"] = len(output.num_scheduled_tokens)
    return shape


def _child_pids() -> list[int]:
    """This process's children: vLLM's model workers (its CPU build always runs them in
    processes of their own). Empty where /proc does not tell."""
    pids: list[int] = []
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
    except OSError:
        return []
    return pids


def _sched_ns(pids: list[int]) -> list[tuple[int, int]]:
    """(on-CPU ns, runnable-but-waiting ns) of each pid's main thread (/proc schedstat)."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                fields = f.read().split()
            out.append((int(fields[0]), int(fields[1])))
        except (OSError, ValueError, IndexError):
            out.append((0, 0))
    return out


class _StepRecorder:
    """Times each executed step from the end of schedule() to update_from_output():
    wall seconds, and the model workers' CPU seconds and seconds spent waiting for a
    core (other processes holding it), which stretch wall time on a shared machine."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._workers: list[int] | None = None
        self._pending: dict[int, tuple[Any, dict[str, int], float, list]] = {}  # id(output)

    def started(self, output: Any, requests: Any) -> None:
        if len(self._pending) > 64:  # steps that never completed: forget them
            self._pending.clear()
        if self._workers is None:
            self._workers = _child_pids()
        shape = batch_composition(output, requests)
        ns = _sched_ns(self._workers)
        self._pending[id(output)] = (output, shape, time.perf_counter(), ns)

    def finished(self, output: Any) -> None:
        entry = self._pending.pop(id(output), None)
        if entry is None or entry[0] is not output:
            return
        sample: dict[str, Any] = {**entry[1], "seconds": time.perf_counter() - entry[2]}
        if self._workers:  # the slowest worker bounds the step
            deltas = [(max(0, r1 - r0), max(0, w1 - w0)) for (r0, w0), (r1, w1)
                      in zip(entry[3], _sched_ns(self._workers), strict=True)]
            sample["cpu_seconds"] = max(d[0] for d in deltas) / 1e9
            sample["wait_seconds"] = max(d[1] for d in deltas) / 1e9
        with open(self.path, "a") as f:
            f.write(json.dumps(sample) + "\n")


@dataclass
class _State:
    """What the scheduler keeps per request."""

    slo: RequestSlo
    ext_id: str  # the worker's request id (the plan's "stages" keys)
    stage: int = 0
    override: tuple[int, int] | None = None  # (stage index, output tokens when seen)
    clock: DecodeClock | None = None
    cap: int | None = None  # speculative tokens cap last applied


def _external_id(internal: str) -> str:
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
        self._stats_path = os.environ.get(STATS_PATH_ENV)
        self._steps = 0
        self._step_time_total = 0.0
        self._last_step_s = 0.0
        self._recent_step_s = 0.0  # moving average, for pacing
        self._step_started: float | None = None
        self._last_publish = 0.0
        path = os.environ.get(PROFILE_PATH_ENV)
        self._recorder = _StepRecorder(path) if path else None
        # SLO-aware execution (mode "slos"): the plan, the performance model, request state.
        self._engine_max = self.max_num_scheduled_tokens
        self._max_spec = self.num_spec_tokens
        self._plan = Plan()
        self._plan_path = os.environ.get(PLAN_PATH_ENV) or None
        self._plan_sig: tuple[int, int, int] | None = None
        self._plan_checked = 0.0
        self._model: PerfModel | None = None
        profile = os.environ.get(PERF_PROFILE_ENV)
        if profile and self._slos:
            try:
                self._model = load_perf_model(profile)
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
        self._states: dict[str, _State] = {}
        self._spec = SpecStats()
        self._pending_spec: dict[int, tuple[Any, dict[str, tuple]]] = {}
        self._last_budget = self._engine_max
        self._last_held = 0
        if self._slos and self.policy != SchedulingPolicy.PRIORITY:
            log.warning("SloScheduler in mode slos with vLLM's %s policy: requests are not "
                        "queued by deadline (VllmEngine sets scheduling_policy='priority')",
                        self.policy.value)
        log.info("SloScheduler: mode %s, perf model %s, plan %s, speculative tokens %d",
                 mode, profile if self._model else "none", self._plan_path or "none",
                 self._max_spec)
        self._publish(force=True)

    # ------------------------------------------------------------ requests --

    def _state(self, request: Any) -> _State:
        st = self._states.get(request.request_id)
        if st is None:
            extra = getattr(request.sampling_params, "extra_args", None) or {}
            try:
                slo = RequestSlo.from_dict(extra.get("slo"))
            except (TypeError, ValueError, AttributeError) as exc:
                log.warning("request %s: unusable SLO data (%s): best effort",
                            request.request_id, exc)
                slo = RequestSlo()
            ext = slo.request_id or _external_id(request.request_id)
            st = self._states[request.request_id] = _State(slo, ext)
        return st

    def add_request(self, request: Any) -> None:
        if request.request_id not in self.requests:
            st = self._state(request)
            if self._slos:  # before it is queued: the priority queue orders by it
                request.priority = priority(st.slo, request.arrival_time)
        super().add_request(request)

    def _advance_stage(self, st: _State, output_tokens: int, now: float) -> None:
        if not st.slo.stages:
            return
        forced = self._plan.stages.get(st.ext_id)
        if forced is not None and (st.override is None or st.override[0] != forced):
            st.override = (forced, output_tokens)
        index = stage_index(st.slo, output_tokens, st.override)
        if index != st.stage:
            st.stage = index
            tpot = st.slo.stage_tpot_ms(index)
            st.clock = DecodeClock(now, output_tokens, tpot) if output_tokens else None

    def _cap(self, st: _State) -> int:
        if not self._slos:
            return self._max_spec
        return spec_cap(st.slo, st.stage, self._plan, self._max_spec)

    def _prune(self) -> None:
        if len(self._states) > len(self.requests):
            for rid in [r for r in self._states if r not in self.requests]:
                del self._states[rid]

    # ---------------------------------------------------------------- plan --

    def _poll_plan(self) -> None:
        """Re-reads the plan file when it changed (one stat() per ~20 ms at most)."""
        if not self._plan_path:
            return
        now = time.monotonic()
        if now - self._plan_checked < _PLAN_POLL_S:
            return
        self._plan_checked = now
        try:
            st = os.stat(self._plan_path)
        except OSError:
            return
        sig = (st.st_mtime_ns, st.st_ino, st.st_size)
        if sig == self._plan_sig:
            return
        self._plan_sig = sig
        try:
            with open(self._plan_path) as f:
                self._plan = parse_plan(json.load(f))
        except (OSError, ValueError) as exc:
            log.warning("plan file %s unusable, keeping the previous plan: %s",
                        self._plan_path, exc)

    # ------------------------------------------------------------ schedule --

    def schedule(self, *args: Any, **kwargs: Any):
        if self._slos:
            output = self._schedule_slos(*args, **kwargs)
        else:
            output = super().schedule(*args, **kwargs)
        if output.total_num_scheduled_tokens > 0:
            self._step_started = time.perf_counter()
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
        held_ids = paced_out(running, now, self._recent_step_s, self._plan, prefill_waiting)
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
            )
            for r in active
            if views[r.request_id].decoding
        ]
        prefill_next = next((r for r in active if not views[r.request_id].decoding), None)
        budget = step_budget(
            self._model, decoders, self._engine_max, self._plan.step_token_budget,
            prefill_context_tokens=prefill_next.num_computed_tokens if prefill_next else 0,
        )
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
            cap = st.cap = self._cap(st)
            self._spec.set_cap(st.slo.tier_name(st.stage), st.slo.stage_tpot_ms(st.stage), cap)
            if len(req.spec_token_ids) > cap:
                req.spec_token_ids = req.spec_token_ids[:cap]

    # update_draft_token_ids_in_output (async scheduling / batch queue only; never on vLLM's
    # CPU platform) rewrites drafts of a step already scheduled with a fixed token count:
    # trimming there saves no work, so it is left to vLLM.

    def _note_spec(self, output: Any) -> None:
        """Per decoding request of the step: its tier, drafts scheduled, cap in force."""
        if len(self._pending_spec) > 64:  # steps that never completed
            self._pending_spec.clear()
        computed = {r.req_id: r.num_computed_tokens for r in output.scheduled_new_reqs}
        cached = output.scheduled_cached_reqs
        computed.update(zip(cached.req_ids, cached.num_computed_tokens, strict=False))
        spec = output.scheduled_spec_decode_tokens
        entries: dict[str, tuple] = {}
        for rid in output.num_scheduled_tokens:
            req = self.requests.get(rid)
            if req is None or computed.get(rid, 0) < req.num_prompt_tokens:
                continue  # a prefill step
            st = self._state(req)
            drafts = spec.get(rid, ())
            real = sum(1 for t in drafts if t >= 0)  # -1: vLLM's padding, not a draft
            cap = st.cap if st.cap is not None else self._cap(st)
            entries[rid] = (st.slo.tier_name(st.stage), st.slo.stage_tpot_ms(st.stage),
                            real, len(drafts), cap)
        self._pending_spec[id(output)] = (output, entries)

    def _count_spec(self, output: Any, runner_output: Any) -> None:
        entry = self._pending_spec.pop(id(output), None)
        if entry is None or entry[0] is not output or runner_output is None:
            return
        index = runner_output.req_id_to_index
        sampled = runner_output.sampled_token_ids or []
        for rid, (tier, tpot, drafted, scheduled, cap) in entry[1].items():
            i = index.get(rid)
            if i is None or i >= len(sampled) or not len(sampled[i]):
                continue
            accepted = len(sampled[i]) - 1 if scheduled else 0
            self._spec.record(tier, tpot, drafted, accepted, cap)

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
            self._recent_step_s = (step if not self._recent_step_s
                                   else 0.7 * self._recent_step_s + 0.3 * step)
            self._step_started = None
        outputs = super().update_from_output(*args, **kwargs)
        if output is not None:
            now = time.time()
            for rid in output.num_scheduled_tokens:
                st = self._states.get(rid)
                req = self.requests.get(rid)
                if st is not None and req is not None and st.clock is None:
                    n_out = req.num_output_tokens
                    if n_out > 0:
                        st.clock = DecodeClock(now, n_out, st.slo.stage_tpot_ms(st.stage))
        self._prune()
        self._publish(force=not self.has_requests())
        return outputs

    def finish_requests(self, *args: Any, **kwargs: Any):
        result = super().finish_requests(*args, **kwargs)
        self._prune()
        self._publish(force=True)
        return result

    def _publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._stats_path or (not force and now - self._last_publish < _PUBLISH_INTERVAL_S):
            return
        self._last_publish = now
        pool = self.kv_cache_manager.block_pool
        total = pool.num_gpu_blocks - 1  # block 0 is vLLM's reserved null block
        running, waiting = self.get_request_counts()
        spec = self._spec.snapshot()
        stats = {
            "running": running,
            "waiting": waiting,
            "kv_blocks_total": total,
            "kv_blocks_used": max(0, total - pool.get_num_free_blocks()),
            "steps": self._steps,
            "mean_step_ms": 1000 * self._step_time_total / self._steps if self._steps else 0.0,
            "last_step_ms": 1000 * self._last_step_s,
            "scheduler": self._mode,
            "spec": spec,
            "spec_acceptance": acceptance(spec),
            "max_spec_tokens": self._max_spec,
            "plan_time_unix": self._plan.plan_time_unix,
            "step_token_budget": self._last_budget,
            "paced": self._last_held,
            "time": time.time(),
        }
        tmp = f"{self._stats_path}.tmp"
        with open(tmp, "w") as f:
            json.dump(stats, f)
        os.replace(tmp, self._stats_path)
