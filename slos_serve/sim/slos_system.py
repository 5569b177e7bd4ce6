"""`slos` and `slos-colocated`: the SLOs-Serve planner (slos_serve/core/planner.py) driving the
simulated cluster through the same records the live coordinator uses (Snapshot -> Plan).

The planner decides admission (admit / best effort / reject) and routing for new requests and
publishes per-worker schedules; the workers here execute them as the live workers' schedulers
do between plans:
- prefill chunks in earliest-TTFT-deadline order (the plan's order; a tool call's second segment
  that started since the last plan takes its place by deadline), admitted before best effort,
  within the plan's per-batch token budget (on mixed workers, what the batch period leaves
  after the decodes);
- decodes by earliest next-token deadline (the segment's first token + k * TPOT) with the
  speculative length the plan chose for the request's TPOT tier. On a mixed worker with prefill
  waiting and KV memory not short (use below HOLD_KV_FRACTION), a decoder is held back until
  its token is due within two periods (the paper's EDF cadence, which frees room for
  prefill); otherwise every decoder runs every batch, since running ahead of the TPOT pace
  costs nothing and frees KV memory sooner (when memory is short this trades some of the
  prefill room a loose tier's skipped batches would leave for memory freed sooner);
- best-effort decodes and prefills fill what is left. KV is reserved as tokens are computed
  (as the baselines do); when memory runs out, best-effort requests are evicted first, then,
  for a decode step only, requests of the same class that arrived later (vLLM's order); an
  evicted request recomputes its KV later.

Re-planning (the paper re-plans on arrivals, completions and every 0.1 s): when a new request
arrives and a prefill-capable worker is idle; when a worker starts a batch while requests wait
for a decision (at most every NEW_GAP s on decode workers); otherwise every PERIOD s while
anything changed (decode cadences and speculative lengths). The planner is told the true
remaining output length of each request (it sizes KV reservations with it) -- an oracle the
baselines do not need.

A batch that finishes an admitted prompt is capped so that it is predicted to end by that
prompt's TTFT deadline (as the plan's own schedule is): smaller, faster batches rather than a
full period when a deadline is near.

Knobs (module constants): KV_OVERCOMMIT scales the KV capacity the planner may reserve (1.0:
none); KV_OUTPUT_RESERVE is the fraction of each request's remaining output the planner
reserves in KV on top of its current context (1.0: its peak; 0.5: its average over a linear
growth -- an overcommit that the eviction above covers); PREFILL_BATCH_TOKENS is a prefill
worker's batch size as the planner sees it (the planner's budgets count partial batches, so
short prompts with a TTFT shorter than one full batch are no longer declined for it);
ON_REJECT is what a declined request asks for by default ("best_effort" or "reject";
SimConfig.on_reject and `--on-decline` override it).
"""

from __future__ import annotations

from dataclasses import replace

from slos_serve.core import policy
from slos_serve.core.planner import (
    Plan,
    PlanRequest,
    PlanWorker,
    Snapshot,
    engine_plan,
    plan,
    plan_request,
)
from slos_serve.sim.core import Batch, Cluster, SimRequest, Worker

BLOCK = 16  # KV block size the planner counts in
KV_OVERCOMMIT = 1.0
KV_OUTPUT_RESERVE = 0.5  # planner reserves context + this fraction of the remaining output
MAX_BATCH_TOKENS = 2048  # vLLM's default chunked-prefill budget, as the baselines
PREFILL_BATCH_TOKENS = 2048
ON_REJECT = "best_effort"
HOLD_KV_FRACTION = 0.7  # mixed workers hold decoders back only below this KV use
NEW_GAP = 0.02  # s between plans while new requests wait for a decision
PERIOD = 0.5  # s between plans otherwise (if anything changed): decode cadences


def _set_pace(r: SimRequest) -> None:
    """Fix r's token schedule for its segment: token k after the segment's first is due at
    first + k * TPOT (a segment without a prompt: its start + (k + 1) * TPOT), which keeps the
    segment's average TPOT within the SLO."""
    st = r.cur
    first = r.first_token[r.segment]
    r.tpot = st.tpot_slo
    if st.prompt_tokens > 0 and first is not None:
        r.due0 = first
    else:
        r.due0 = r.segment_start[r.segment] + st.tpot_slo


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
    r.extra["slo"] = (key, slo)
    return slo


def _due(r: SimRequest) -> float:
    """When r's next token is due (see _set_pace)."""
    return r.due0 + r.generated * r.tpot


class _Exec:
    """One worker's executor state."""

    def __init__(self, w: Worker) -> None:
        self.w = w
        self.prefill: dict[int, SimRequest] = {}  # assigned, waiting for / in prefill
        self.decoders: dict[int, SimRequest] = {}  # decoding here (admitted and best effort)
        self.kvwait: list[SimRequest] = []  # prefilled elsewhere, waiting for KV memory
        self.budget = MAX_BATCH_TOKENS
        self.period = 0.05
        self.step_tokens = MAX_BATCH_TOKENS
        self.plan = policy.Plan()  # this worker's share of the last plan, as engines get it
        self.wake_at: float | None = None
        self.changed = True  # work arrived since the worker last went to sleep

    @property
    def queued_tokens(self) -> int:
        return sum(r.todo_prefill for r in self.prefill.values())


class SlosSystem:
    def __init__(self, colocated: bool = False, on_reject: str | None = None) -> None:
        self.name = "slos-colocated" if colocated else "slos"
        self.colocated = colocated
        self.on_reject = on_reject  # None: SimConfig.on_reject
        self.undecided: dict[int, SimRequest] = {}
        self.last_plan = -1.0
        self.dirty = False
        self.route = 0

    # ------------------------------------------------------------ setup and events

    def setup(self, cluster: Cluster) -> None:
        self.c = cluster
        self.on_reject = self.on_reject or cluster.cfg.on_reject or ON_REJECT
        self.ex = [_Exec(w) for w in cluster.workers]
        cap = int(cluster.workers[0].kv_capacity * KV_OVERCOMMIT) // BLOCK
        self.pworkers = [
            PlanWorker(w.name, w.role, cluster.model, cap, BLOCK,
                       PREFILL_BATCH_TOKENS if w.role == "prefill" else MAX_BATCH_TOKENS)
            for w in cluster.workers
        ]
        self.by_name = {w.name: w.idx for w in cluster.workers}
        self.names = [w.name for w in cluster.workers]
        self.live: dict[int, SimRequest] = {}

    def on_arrival(self, r: SimRequest) -> None:
        self.live[r.id] = r
        self.undecided[r.id] = r
        if any(e.w.batch is None and e.w.role != "decode" for e in self.ex):
            self._replan()

    def on_segment_start(self, r: SimRequest) -> None:
        """A later segment (tool result) needs a prefill: keep r's decision and decode worker."""
        self.live[r.id] = r
        if self.colocated:
            idx = r.pinned_prefill
        else:
            pre = [e for e in self.ex if e.w.role == "prefill"]
            idx = min(pre, key=lambda e: (e.queued_tokens, e.w.idx)).w.idx
            r.pinned_prefill = idx
        self.ex[idx].prefill[r.id] = r
        self.ex[idx].changed = True
        self.dirty = True

    def on_prefill_done(self, r: SimRequest, w: Worker) -> None:
        e = self.ex[w.idx]
        e.prefill.pop(r.id, None)
        self.dirty = True
        if w.role != "prefill":  # mixed worker, or a decode worker recomputing evicted KV
            r.phase = "decode"
            _set_pace(r)
            e.decoders[r.id] = r
            e.changed = True
            return
        r.phase = "kvwait"
        r.extra["kv_tokens"] = r.cur.prompt_tokens
        if r.pinned_decode is None:
            dec = [x for x in self.ex if x.w.role == "decode"]
            r.pinned_decode = min(dec, key=lambda x: (len(x.decoders), x.w.idx)).w.idx
        d = self.ex[r.pinned_decode]
        d.kvwait.append(r)
        self._pull(d)

    def on_kv_arrived(self, r: SimRequest, w: Worker) -> None:
        _set_pace(r)
        self.ex[w.idx].decoders[r.id] = r
        self.ex[w.idx].changed = True

    def on_segment_switch(self, r: SimRequest) -> None:
        _set_pace(r)
        self.dirty = True

    def on_leave(self, r: SimRequest, w: Worker | None) -> None:
        for e in self.ex:
            e.decoders.pop(r.id, None)
            e.prefill.pop(r.id, None)
        self.live.pop(r.id, None)  # done, or paused until its next segment starts
        self.dirty = True

    # ------------------------------------------------------------ memory

    def _alloc(self, r: SimRequest, e: _Exec, tokens: int) -> bool:
        """Reserve KV for r on e. If it does not fit, evict (latest arrival first) best-effort
        requests if r is admitted, then -- only for a decode step, against a memory deadlock
        -- requests of r's own class that arrived after r (vLLM's preemption order). Evicted
        requests recompute later."""
        if self.c.alloc(r, e.w, tokens):
            return True
        rank = r.decision == "admit"
        held = [v for v in list(e.decoders.values()) + list(e.prefill.values())
                if v.kv_alloc > 0 and v is not r and v.worker == e.w.idx]
        held.sort(key=lambda v: (v.decision == "admit", -v.req.arrival))
        for v in held:
            vrank = v.decision == "admit"
            if vrank > rank or (vrank == rank and (r.phase != "decode"
                                                   or v.req.arrival < r.req.arrival)):
                break  # only lower classes, or newer requests of its class for a decode
            self._evict(v, e)
            if self.c.alloc(r, e.w, tokens):
                return True
        return False

    def _evict(self, v: SimRequest, e: _Exec) -> None:
        """Drop a best-effort request's KV; it recomputes on this worker later."""
        e.decoders.pop(v.id, None)
        self.c.free(v)
        v.todo_prefill += v.context
        v.context = 0
        v.phase = "prefill"
        e.prefill[v.id] = v
        e.changed = True

    def _pull(self, e: _Exec) -> None:
        """Start KV transfers to decode worker e for requests whose memory is available."""
        keep = []
        for r in sorted(e.kvwait, key=lambda r: r.decision != "admit"):
            if self._alloc(r, e, r.context):
                self.c.start_transfer(r, e.w, r.extra.get("kv_tokens", r.context))
            else:
                keep.append(r)
        e.kvwait = keep

    # ------------------------------------------------------------ planning

    def _plan_request(self, r: SimRequest) -> PlanRequest:
        st = r.cur
        tail = r.extra.get("tail")
        if tail is None or tail[0] != r.segment:
            rest = r.req.segments[r.segment + 1:]
            tail = r.extra["tail"] = (r.segment,
                                      sum(s.prompt_tokens + s.output_tokens for s in rest))
        prefilling = r.todo_prefill > 0 and r.phase == "prefill"
        if r.id in self.undecided:
            state = "new"
        else:
            state = "admitted" if r.decision == "admit" else "best_effort"
        computed = r.context if prefilling else r.context - r.generated
        pp, pd = r.pinned_prefill, r.pinned_decode
        return plan_request(
            str(r.id),
            prefilling=prefilling,
            arrival=r.req.arrival,
            ttft_deadline=r.segment_start[r.segment] + (st.ttft_slo if st.ttft_slo is not None
                                                    else 1e9),
            tpot=st.tpot_slo,
            prompt_tokens=computed + r.todo_prefill if prefilling else max(computed, 1),
            prefill_left=r.todo_prefill,
            generated=r.generated,
            expected_output=st.output_tokens - r.generated + tail[1],
            state=state,
            on_reject=self.on_reject,
            prefill_worker=None if pp is None else self.names[pp],
            decode_worker=None if pd is None else self.names[pd],
            pace_anchor=r.due0 if r.phase == "decode" else None,
        )

    def _replan(self) -> None:
        c = self.c
        now = c.now
        for pw, w in zip(self.pworkers, c.workers, strict=True):
            pw.busy_until = w.busy_until if w.batch is not None else 0.0
        # best-effort requests still queued for prefill reserve nothing and the executor fills
        # leftover room with them: leaving them out keeps a long best-effort backlog from
        # making every plan slower (admission decisions do not depend on them)
        live = [r for r in self.live.values() if r.phase not in ("done", "gap") and not (
            r.decision == "best_effort" and r.phase == "prefill" and r.context == 0
            and r.id not in self.undecided)]
        snap = Snapshot(
            now=now,
            requests=[self._plan_request(r) for r in live],
            workers=self.pworkers,
            spec_alpha={},
            default_alpha=c.cfg.spec_alpha,
            max_spec_len=c.cfg.max_spec_len,
            route_start=self.route,
            kv_output_reserve=KV_OUTPUT_RESERVE,
        )
        self.route += len(self.undecided)
        p = plan(snap)
        self.last_plan = now
        self.dirty = False
        self._apply(p)

    def _apply(self, p: Plan) -> None:
        new = {str(r.id): r for r in self.undecided.values()}
        self.undecided = {}
        for d in p.verdicts:
            r = new.pop(d.request_id, None)
            if r is None:
                continue
            if d.action == "reject":
                self.live.pop(r.id, None)
                self.c.reject(r)
                continue
            r.decision = "admit" if d.action == "admit" else "best_effort"
            if d.decode_worker is not None:
                r.pinned_decode = self.by_name[d.decode_worker]
            pw = d.prefill_worker
            if pw is None:
                pre = [e for e in self.ex if e.w.role != "decode"]
                idx = min(pre, key=lambda e: (e.queued_tokens, e.w.idx)).w.idx
            else:
                idx = self.by_name[pw]
            r.pinned_prefill = idx
            if self.colocated:
                r.pinned_decode = idx
            self.ex[idx].prefill[r.id] = r
            self.ex[idx].changed = True
        for r in new.values():  # no decision (should not happen): ask again
            self.undecided[r.id] = r
        for name, sched in p.prefill.items():
            e = self.ex[self.by_name[name]]
            if e.w.role == "prefill":
                e.budget = max(sched.token_budget, 1)
        for name, dp in p.decode.items():
            e = self.ex[self.by_name[name]]
            if dp.step_time > 0:
                e.period = dp.step_time
                e.step_tokens = dp.step_token_budget
        for e in self.ex:
            e.plan = engine_plan(p, e.w.name, e.w.role, p.now)

    # ------------------------------------------------------------ batches

    def next_batch(self, w: Worker) -> Batch | None:
        now = self.c.now
        if self.undecided and (now - self.last_plan >= NEW_GAP or w.role != "decode"):
            self._replan()
        elif self.dirty and now - self.last_plan >= PERIOD:
            self._replan()
        e = self.ex[w.idx]
        if not e.changed and e.wake_at is not None and now < e.wake_at:
            return None
        if e.kvwait:
            self._pull(e)
        b = Batch()
        room = MAX_BATCH_TOKENS
        if w.role != "prefill" and e.decoders:
            room = self._decodes(e, b)
        if e.prefill:  # on a decode worker: requests recomputing evicted KV
            self._prefills(e, b, room)
        if not b:
            self._sleep(e)
            return None
        return b

    def _decodes(self, e: _Exec, b: Batch) -> int:
        """Admitted decoders by earliest next-token deadline, then best effort; returns the
        prefill room left in the batch. A decoder is only held back (until its token is due
        within two periods) when prefill work on this worker could use the room: serving
        ahead of the TPOT pace is free otherwise and frees KV memory sooner."""
        now, u = self.c.now, e.period
        # holding decoders back keeps their KV longer: not when memory is short
        kv_short = e.w.kv_used > HOLD_KV_FRACTION * e.w.kv_capacity
        hold = e.w.role == "mixed" and bool(e.prefill) and not kv_short
        horizon = now + 2 * u if hold else float("inf")
        adm, be = [], []
        for r in e.decoders.values():
            if r.phase != "decode":
                continue
            (adm if r.decision == "admit" else be).append((r.due0 + r.generated * r.tpot, r))
        adm.sort(key=lambda x: x[0])
        tokens = 0
        for d, r in adm:
            if d >= horizon or tokens >= e.step_tokens:
                break
            if r.phase != "decode":  # evicted by an earlier request of this batch
                continue
            s = self._spec_len(r, e)
            if not self._alloc(r, e, r.context + 1 + s):
                continue
            b.decode.append((r, s))
            tokens += 1 + s
        room = MAX_BATCH_TOKENS - tokens
        if e.w.role == "mixed":
            room = min(room, max(self.c.model.prefill_capacity(u, b.shape()), 0))
        be.sort(key=lambda x: x[0])
        for d, r in be:
            if room <= 0 or d >= horizon:
                break
            s = min(self._spec_len(r, e), max(room - 1, 0))
            if r.phase == "decode" and self._alloc(r, e, r.context + 1 + s):
                b.decode.append((r, s))
                room -= 1 + s
        return room

    def _spec_len(self, r: SimRequest, e: _Exec) -> int:
        """Drafts of r's next verify step: the engines' cap (policy.spec_cap), and no more
        than the tokens r still has to generate."""
        cap = policy.spec_cap(request_slo(r), 0, e.plan, self.c.cfg.max_spec_len)
        return min(cap, max(r.remaining_output - 1, 0))

    def _prefills(self, e: _Exec, b: Batch, room: int) -> None:
        if e.w.role == "prefill":
            room = min(room, e.budget)
        if room <= 0 or not e.prefill:
            return
        # admitted first, earliest TTFT deadline first (the plan's order; a later segment that
        # started since the last plan takes its place by deadline), then best effort
        todo = sorted(
            e.prefill.values(),
            key=lambda r: (r.decision != "admit",
                           r.segment_start[r.segment] + (r.cur.ttft_slo or 1e9)),
        )
        now, model = self.c.now, self.c.model
        limit = float("inf")  # the batch ends by the TTFT deadline of each prompt it finishes
        for r in todo:
            if room <= 0:
                break
            if r.todo_prefill <= 0:
                continue
            n = min(room, r.todo_prefill)
            due = r.segment_start[r.segment] + (r.cur.ttft_slo or 1e9)
            lim = min(limit, due) if n == r.todo_prefill and r.decision == "admit" else limit
            if lim < limit or (limit < float("inf") and n > 0):
                sh = b.shape()
                sh = replace(sh, prefill_tokens=0, num_requests=sh.num_requests + 1,
                             context_tokens=sh.context_tokens + r.context)
                cap = model.prefill_capacity(lim - now, sh) - sum(k for _, k in b.prefill)
                if cap >= n:
                    limit = lim
                    room = min(room, cap)
                elif limit < float("inf"):  # keep an earlier finisher on time
                    n = cap
                    if n <= 0:
                        break
            if e.w.role != "prefill" and not self._alloc(r, e, r.context + n):
                continue
            b.prefill.append((r, n))
            room -= n

    def _sleep(self, e: _Exec) -> None:
        """Nothing to run: wake up when the earliest held-back decoder's token enters the
        horizon (a worker blocked on memory is woken by the event that frees it)."""
        e.changed = False
        dues = [_due(r) for r in e.decoders.values() if r.phase == "decode"]
        t = min(dues) - 2 * e.period if dues else None
        if t is None or t <= self.c.now:
            if not self.undecided:
                return
            t = self.c.now + NEW_GAP
        if e.wake_at is not None and self.c.now < e.wake_at <= t:
            return
        e.wake_at = t
        self.c.call_at(t, lambda: None)
