"""A simulated engine of the `slos` systems: it carries out its share of the plan with the
live engines' own decisions, slos_serve.core.policy, called the way
slos_serve/engine/vllm_scheduler.py calls it inside vLLM's scheduler:

- `priority`: prompts wait in EDF order of their TTFT deadline (integer ms), best effort last;
- `running_key`: the running requests (decoders and prompts part-way through their prefill)
  in SLO order: admitted decoders (tightest TPOT, then earliest due), prefills, best effort;
- `paced_out` (mixed workers, plan "pace"): while prefill waits and KV memory is not short,
  loose admitted decoders not due within PACE_STEPS recent step times sit the step out;
- `prefill_yielding`: a part-prefilled prompt yields to a waiting one with an earlier deadline;
- `step_budget`: the step's tokens, so that it is predicted to end within what every admitted
  decoder in it tolerates (`step_bound_ms`), capped by the plan's budget and the engine's
  maximum;
- `deadline_budget`: that budget cut so that a step finishing an admitted prompt is predicted
  to end by the prompt's TTFT deadline;
- `spec_cap`: drafts per verify step, the request's tier cap from the plan.

Then vLLM's own order of filling the step: running requests first, in that order, each taking
what it needs of the budget left (a decoder's drafts are cut to fit; a prompt takes a chunk),
then waiting prompts in priority order. What the simulator adds is the mechanics: KV memory
in tokens with vLLM-like preemption (`allocate`), and when a decoder's next token is due (its
segment's pace: the first token, then TPOT after TPOT).
"""

from __future__ import annotations

from slos_serve.core import policy
from slos_serve.core.worker_plan import WorkerPlan
from slos_serve.sim.core import Batch, Cluster, SimRequest, Worker

MAX_BATCH_TOKENS = 2048  # the engines' max_num_batched_tokens (vLLM's default), as the baselines


def request_slo(r: SimRequest) -> policy.RequestSlo:
    """r's SLO as the engines get it (SamplingParams.extra_args["slo"]) for its current
    segment: its TTFT deadline (of the call the segment belongs to), TPOT and class."""
    key = (r.segment, r.decision)
    cached = r.extra.get("slo")
    if cached is not None and cached[0] == key:
        return cached[1]
    call = r.segment
    while call > 0 and r.req.segments[call].ttft_slo is None:
        call -= 1  # a segment without a prompt continues its call
    ttft = r.req.segments[call].ttft_slo
    slo = policy.RequestSlo(
        ttft_deadline_unix=r.segment_start[call] + ttft if ttft is not None else 0.0,
        tpot_ms=r.cur.tpot_slo * 1000.0, best_effort=r.decision != "admit", tier=r.req.tier)
    r.extra["slo"] = (key, slo, policy.priority(slo, r.segment_start[call]), str(r.id))
    return slo


def _priority(r: SimRequest) -> int:
    request_slo(r)
    return r.extra["slo"][2]


def _rid(r: SimRequest) -> str:
    request_slo(r)
    return r.extra["slo"][3]


def next_due(r: SimRequest) -> float:
    """When r's next token is due: its segment's pace (set by SlosSystem on entering decode)."""
    return r.due0 + r.generated * r.tpot


def prompt_item(r: SimRequest) -> policy.StepItem:
    slo = request_slo(r)
    return policy.StepItem(r.todo_prefill, r.context, True,
                           slo.ttft_deadline_unix if slo.admitted else 0.0)


class WorkerExecutor:
    """One simulated engine: its requests, its plan, and the step it runs next."""

    def __init__(self, w: Worker, cluster: Cluster) -> None:
        self.w = w
        self.c = cluster
        self.prefill: dict[int, SimRequest] = {}  # assigned, waiting for / in prefill
        self.started: set[int] = set()  # prompts with a chunk computed (in vLLM's running list)
        self.decoders: dict[int, SimRequest] = {}  # decoding here (admitted and best effort)
        self.kvwait: list[SimRequest] = []  # prefilled elsewhere, waiting for KV memory
        self.plan = WorkerPlan()  # this worker's share of the last plan, as engines get it
        self.recent_step = 0.0  # moving average of step times (pacing counts in it)
        self.wake_at: float | None = None
        self.changed = True  # work arrived since the worker last went to sleep

    @property
    def queued_tokens(self) -> int:
        return sum(r.todo_prefill for r in self.prefill.values())

    # ------------------------------------------------------------ requests

    def add_prompt(self, r: SimRequest) -> None:
        self.prefill[r.id] = r
        self.started.discard(r.id)
        self.changed = True

    def add_decoder(self, r: SimRequest) -> None:
        self.prefill.pop(r.id, None)
        self.started.discard(r.id)
        self.decoders[r.id] = r
        self.changed = True

    def remove(self, r: SimRequest) -> None:
        self.decoders.pop(r.id, None)
        self.prefill.pop(r.id, None)
        self.started.discard(r.id)

    # ------------------------------------------------------------ memory

    def allocate(self, r: SimRequest, tokens: int) -> bool:
        """Reserve KV for r here. If it does not fit, evict (latest arrival first) best-effort
        requests if r is admitted, then -- only for a decode step, against a memory deadlock
        -- requests of r's own class that arrived after r (vLLM's preemption order). Evicted
        requests recompute later."""
        if self.c.alloc(r, self.w, tokens):
            return True
        rank = r.decision == "admit"
        held = [v for v in list(self.decoders.values()) + list(self.prefill.values())
                if v.kv_alloc > 0 and v is not r and v.worker == self.w.idx]
        held.sort(key=lambda v: (v.decision == "admit", -v.req.arrival))
        for v in held:
            vrank = v.decision == "admit"
            if vrank > rank or (vrank == rank and (r.phase != "decode"
                                                   or v.req.arrival < r.req.arrival)):
                break  # only lower classes, or newer requests of its class for a decode
            self._evict(v)
            if self.c.alloc(r, self.w, tokens):
                return True
        return False

    def _evict(self, v: SimRequest) -> None:
        """Drop a request's KV (preempted: back to waiting); it recomputes here later."""
        self.c.free(v)
        v.todo_prefill += v.context
        v.context = 0
        v.phase = "prefill"
        self.decoders.pop(v.id, None)
        self.add_prompt(v)

    # ------------------------------------------------------------ the step

    def step(self, now: float) -> Batch:
        """The next step, decided as the live engines' scheduler decides it."""
        running = self._running(now)
        waiting = sorted((r for r in self.prefill.values()
                          if r.id not in self.started and r.todo_prefill > 0),
                         key=lambda r: (_priority(r), r.segment_start[r.segment]))
        views = [v for v, _ in running]
        prefill_waiting = bool(waiting) or any(not v.decoding for v in views)
        kv_used = self.w.kv_used / self.w.kv_capacity if self.w.kv_capacity else 0.0
        held = policy.paced_out(views, now, self.recent_step, self.plan, prefill_waiting,
                                kv_used)
        held |= policy.prefill_yielding(views, [_priority(r) for r in waiting])
        active = [(v, r) for v, r in sorted(running, key=lambda x: policy.running_key(x[0]))
                  if v.request_id not in held]
        drafts = {r.id: self._spec_len(r) for v, r in active if v.decoding}
        budget = self._budget(active, drafts, now)
        budget = policy.deadline_budget(self.c.model, self._items(active, drafts, waiting),
                                        budget, now)
        b = Batch()
        left = self._fill_running(b, active, drafts, budget)
        self._fill_waiting(b, waiting, left)
        if b:
            self.recent_step = policy.recent_step_time(self.recent_step,
                                                       self.c.model.predict(b.shape()))
        return b

    def _running(self, now: float) -> list[tuple[policy.Running, SimRequest]]:
        out = []
        for r in self.decoders.values():
            if r.phase == "decode":
                slo = request_slo(r)
                out.append((policy.Running(_rid(r), True, slo.admitted, slo.tpot_ms,
                                           next_due(r), _priority(r)), r))
        for r in self.prefill.values():
            if r.id in self.started and r.todo_prefill > 0:
                slo = request_slo(r)
                out.append((policy.Running(_rid(r), False, slo.admitted, slo.tpot_ms, now,
                                           _priority(r)), r))
        return out

    def _spec_len(self, r: SimRequest) -> int:
        """Drafts of r's next verify step: its cap (with catch-up when r is behind its pace),
        and no more than r still generates."""
        slo = request_slo(r)
        lag = policy.lag_tokens(next_due(r), self.c.now, slo.tpot_ms)
        cap = policy.spec_cap(slo, 0, self.plan, self.c.cfg.max_spec_len, lag)
        return min(cap, max(r.remaining_output - 1, 0))

    def _budget(self, active: list[tuple[policy.Running, SimRequest]],
                drafts: dict[int, int], now: float) -> int:
        decoders = [policy.Decoder(1 + drafts[r.id], r.context, v.tpot_ms, v.admitted,
                                   drafts[r.id], policy.slack_ms(v, now))
                    for v, r in active if v.decoding]
        first_prefill = next((r for v, r in active if not v.decoding), None)
        return policy.step_budget(
            self.c.model, decoders, MAX_BATCH_TOKENS, self.plan.step_token_budget,
            prefill_context_tokens=first_prefill.context if first_prefill else 0,
            plan=self.plan)

    @staticmethod
    def _items(active: list[tuple[policy.Running, SimRequest]], drafts: dict[int, int],
               waiting: list[SimRequest]) -> list[policy.StepItem]:
        """The step's requests in the order they take its budget (deadline_budget)."""
        items = []
        for v, r in active:
            if v.decoding:
                items.append(policy.StepItem(1 + drafts[r.id], r.context))
            else:
                items.append(prompt_item(r))
        return items + [prompt_item(r) for r in waiting]

    def _fill_running(self, b: Batch, active: list[tuple[policy.Running, SimRequest]],
                      drafts: dict[int, int], left: int) -> int:
        for v, r in active:
            if left <= 0:
                break
            if v.decoding:
                if r.phase != "decode":  # preempted by an earlier request of this step
                    continue
                s = min(drafts[r.id], left - 1)
                if self.allocate(r, r.context + 1 + s):
                    b.decode.append((r, s))
                    left -= 1 + s
            elif r.phase == "prefill" and r.id in self.prefill:
                left -= self._chunk(b, r, left)
        return left

    def _fill_waiting(self, b: Batch, waiting: list[SimRequest], left: int) -> None:
        for r in waiting:
            if left <= 0:
                break
            if r.phase == "prefill" and r.id in self.prefill:
                n = self._chunk(b, r, left)
                if n:
                    self.started.add(r.id)
                    left -= n

    def _chunk(self, b: Batch, r: SimRequest, left: int) -> int:
        """A prompt chunk of up to `left` tokens (prefill workers' KV is not a constraint)."""
        n = min(left, r.todo_prefill)
        if n <= 0 or (self.w.role != "prefill" and not self.allocate(r, r.context + n)):
            return 0
        b.prefill.append((r, n))
        return n

    def held_until(self) -> float | None:
        """When the earliest decoder not served now will be due within the pacing horizon."""
        dues = [next_due(r) for r in self.decoders.values() if r.phase == "decode"]
        return min(dues) - policy.PACE_STEPS * self.recent_step if dues else None
