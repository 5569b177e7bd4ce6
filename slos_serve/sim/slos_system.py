"""`slos`, `slos-pd` and `slos-colocated`: the SLOs-Serve planner (slos_serve/core/planner)
driving the simulated cluster through the same records the live coordinator uses (Snapshot ->
Plan), and simulated engines that carry out each worker's share of the plan
(planner.engine_plan, the record the live workers get) with the live engines' own policy
(slos_worker.py).

Layouts (LAYOUTS): "adaptive" (`slos`): every worker starts mixed and the planner chooses, per
request, local prefill + decode or a KV hand-off to another worker, and each worker's role
(planner/layout.py; a worker changing role drains first); "pd" (`slos-pd`): fixed prefill
and decode pools; "colocated" (`slos-colocated`): every request prefilled and decoded on one
mixed worker. The simulated workers keep their physical role (a planner-prefill worker under
the adaptive layout still holds its prompts' KV until they are handed off).

The planner decides admission (admit / best effort / reject) and routing for new requests;
this module turns the simulated requests into PlanRequests (planner.plan_request, as the
coordinator does), applies the decisions, moves prompts to their workers and KV to decode
workers, and fixes each decoding segment's pace (first token, then TPOT after TPOT).

Re-planning (the paper re-plans on arrivals, completions and every 0.1 s): when a new request
arrives and a prefill-capable worker is idle; when a worker starts a batch while requests wait
for a decision (at most every NEW_GAP s on decode workers); otherwise every PERIOD s while
anything changed (decode cadences and speculative lengths). The planner is told the true
remaining output length of each request (it sizes KV reservations with it) -- an oracle the
baselines do not need.

Knobs (module constants): KV_OVERCOMMIT scales the KV capacity the planner may reserve (1.0:
none); KV_OUTPUT_RESERVE is the fraction of each request's remaining output the planner
reserves in KV on top of its current context (1.0: its peak; 0.5: its average over a linear
growth -- an overcommit that the engines' preemption covers); PREFILL_BATCH_TOKENS is a
prefill worker's batch size as the planner sees it; ON_REJECT is what a declined request asks
for by default ("best_effort" or "reject"; SimConfig.on_reject and `--on-reject` override it).
"""

from __future__ import annotations

import time
from typing import NamedTuple

from slos_serve.core.planner import (
    Layout,
    Plan,
    PlanRequest,
    PlanWorker,
    Snapshot,
    engine_plan,
    plan,
    plan_request,
)
from slos_serve.core.planner.layout import takes_decodes, takes_prompts
from slos_serve.sim.acceptance import AcceptanceCounter
from slos_serve.sim.core import Batch, Cluster, SimRequest, Worker
from slos_serve.sim.shards import Shard, make_shards, pick
from slos_serve.sim.slos_worker import MAX_BATCH_TOKENS, WorkerExecutor

BLOCK = 16  # KV block size the planner counts in
KV_OVERCOMMIT = 1.0
KV_OUTPUT_RESERVE = 0.5  # planner reserves context + this fraction of the remaining output
PREFILL_BATCH_TOKENS = 2048
ON_REJECT = "best_effort"
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


class PlanTime(NamedTuple):
    """One plan's cost: snapshot, plan() and each worker's share, timed as a whole."""

    at: float  # simulated time
    wall: float  # s
    cpu: float  # s (this thread)
    decided: int  # new requests it decided
    shard: int
    requests: int  # in its snapshot
    workers: int  # in its snapshot


LAYOUTS: dict[str, Layout] = {"slos": "adaptive", "slos-pd": "pd",
                              "slos-colocated": "colocated"}


class SlosSystem:
    def __init__(self, name: str = "slos", on_reject: str | None = None) -> None:
        self.name = name
        self.layout = LAYOUTS[name]
        self.colocated = self.layout == "colocated"
        self.on_reject = on_reject  # None: SimConfig.on_reject
        # one per plan: the planner's own cost (simulate planner-scale; ~1 us a plan)
        self.plan_times: list[PlanTime] = []
        self.turn = 0  # round robin among equally loaded shards

    # ------------------------------------------------------------ setup and events

    def setup(self, cluster: Cluster) -> None:
        self.c = cluster
        self.on_reject = self.on_reject or cluster.cfg.on_reject or ON_REJECT
        self.ex = [WorkerExecutor(w, cluster) for w in cluster.workers]
        cap = int(cluster.workers[0].kv_capacity * KV_OVERCOMMIT) // BLOCK
        self.pworkers = [
            PlanWorker(w.name, w.role, cluster.model, cap, BLOCK,
                       PREFILL_BATCH_TOKENS if w.role == "prefill" else MAX_BATCH_TOKENS)
            for w in cluster.workers
        ]
        self.by_name = {w.name: w.idx for w in cluster.workers}
        self.names = [w.name for w in cluster.workers]
        self.acceptance = AcceptanceCounter()  # what the planner's spec_alpha comes from
        self.shards = make_shards(self.pworkers, cluster.cfg.plan_shard, cluster.model)
        self.shard_of = [s.index for s in self.shards for _ in s.workers]

    def _shard(self, r: SimRequest) -> Shard:
        """r's shard (given on arrival; one built by hand, as in tests: the first)."""
        return self.shards[r.extra.get("shard", 0)]

    def role(self, e: WorkerExecutor) -> str:
        """e's role as the planner sees it (under the adaptive layout it follows the load)."""
        return self.pworkers[e.w.idx].role

    def on_arrival(self, r: SimRequest) -> None:
        s = pick(self.shards, self.turn)
        self.turn += 1
        r.extra["shard"] = s.index
        s.live[r.id] = r
        s.undecided[r.id] = r
        for st in r.req.segments:  # its later calls' TTFTs too: they will arrive
            if st.ttft_slo is not None:
                s.ttft.observe(self.c.now, st.ttft_slo, st.prompt_tokens)
        if any(self.ex[i].w.batch is None and self.role(self.ex[i]) != "decode"
               for i in s.workers):
            self._replan(s)

    def on_segment_start(self, r: SimRequest) -> None:
        """A later segment (tool result) needs a prefill: keep r's decision. Fixed layouts:
        prefill where it decodes if that worker takes prompts. Adaptive, and where its own
        worker takes no prompts: on the prompt-taking worker with the least queued, its own
        on a tie (then it hands its KV back, or to a decode worker if its own no longer
        decodes): a returning prompt's TTFT is the tightest, and under a changed layout the
        worker holding every decoder would otherwise take every returning prompt too."""
        s = self._shard(r)
        s.live[r.id] = r
        d = r.pinned_decode
        if d is not None and not takes_decodes(self.pworkers[d]):
            d = r.pinned_decode = None
        if d is not None and takes_prompts(self.pworkers[d]) and self.layout != "adaptive":
            idx = d
        else:  # adaptive: the least queued, its own decode worker on a tie (no KV moves)
            pre = [self.ex[i] for i in s.workers if takes_prompts(self.pworkers[i])]
            idx = min(pre, key=lambda e: (e.queued_tokens, e.w.idx != d, e.w.idx)).w.idx
        r.pinned_prefill = idx
        self.ex[idx].add_prompt(r)
        s.dirty = True

    def on_prefill_done(self, r: SimRequest, w: Worker) -> None:
        e = self.ex[w.idx]
        s = self._shard(r)
        s.dirty = True
        d = r.pinned_decode
        if d == w.idx or (d is None and self.role(e) != "prefill"):
            # local: a mixed worker, or a decode worker recomputing evicted KV
            r.phase = "decode"
            _set_pace(r)
            e.add_decoder(r)
            return
        e.remove(r)
        r.phase = "kvwait"
        r.extra["kv_tokens"] = r.cur.prompt_tokens
        if r.pinned_decode is None:
            dec = [self.ex[i] for i in s.workers
                   if i != w.idx and takes_decodes(self.pworkers[i])]
            r.pinned_decode = min(dec, key=lambda x: (len(x.decoders), x.w.idx)).w.idx
        d = self.ex[r.pinned_decode]
        d.kvwait.append(r)
        self._pull(d)

    def on_kv_arrived(self, r: SimRequest, w: Worker) -> None:
        _set_pace(r)
        self.ex[w.idx].add_decoder(r)

    def on_segment_switch(self, r: SimRequest) -> None:
        _set_pace(r)
        self._shard(r).dirty = True

    def on_leave(self, r: SimRequest, w: Worker | None) -> None:
        s = self._shard(r)
        for i in s.workers:  # a request only ever runs on its shard's workers
            self.ex[i].remove(r)
        s.live.pop(r.id, None)  # done, or paused until its next segment starts
        s.dirty = True

    def _pull(self, e: WorkerExecutor) -> None:
        """Start KV transfers to decode worker e for requests whose memory is available."""
        keep = []
        for r in sorted(e.kvwait, key=lambda r: r.decision != "admit"):
            if e.allocate(r, r.context):
                self.c.start_transfer(r, e.w, r.extra.get("kv_tokens", r.context))
            else:
                keep.append(r)
        e.kvwait = keep

    # ------------------------------------------------------------ planning

    def _plan_request(self, r: SimRequest, s: Shard) -> PlanRequest:
        st = r.cur
        tail = r.extra.get("tail")
        if tail is None or tail[0] != r.segment:
            rest = r.req.segments[r.segment + 1:]
            tail = r.extra["tail"] = (r.segment,
                                      sum(s.prompt_tokens + s.output_tokens for s in rest))
        prefilling = r.todo_prefill > 0 and r.phase == "prefill"
        if r.id in s.undecided:
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

    def _replan(self, s: Shard) -> None:
        """Snapshot -> plan() -> each worker's share, for shard s: what the coordinator does
        per plan (Admission.replan + worker_plans), timed as a whole into plan_times."""
        wall, cpu = time.perf_counter(), time.thread_time()
        c = self.c
        now = c.now
        for i in s.workers:
            w = c.workers[i]
            self.pworkers[i].busy_until = w.busy_until if w.batch is not None else 0.0
        # best-effort requests still queued for prefill reserve nothing and the executor fills
        # leftover room with them: leaving them out keeps a long best-effort backlog from
        # making every plan slower (admission decisions do not depend on them)
        live = [r for r in s.live.values() if r.phase not in ("done", "gap") and not (
            r.decision == "best_effort" and r.phase == "prefill" and r.context == 0
            and r.id not in s.undecided)]
        alpha, default = self.acceptance.alphas()
        snap = Snapshot(
            now=now,
            requests=[self._plan_request(r, s) for r in live],
            workers=s.pworkers,
            spec_alpha=alpha,
            default_alpha=default,
            max_spec_len=c.cfg.max_spec_len,
            route_start=s.route,
            kv_output_reserve=KV_OUTPUT_RESERVE,
            ttft_outlook=s.ttft.outlook(now),
            adaptive_layout=self.layout == "adaptive",
        )
        s.route += len(s.undecided)
        p = plan(snap)
        s.last_plan = now
        s.dirty = False
        decided = len(s.undecided)
        self._apply(p, s)
        self.plan_times.append(PlanTime(now, time.perf_counter() - wall,
                                        time.thread_time() - cpu, decided, s.index,
                                        len(snap.requests), len(snap.workers)))

    def _apply(self, p: Plan, s: Shard) -> None:
        new = {str(r.id): r for r in s.undecided.values()}
        s.undecided = {}
        for d in p.verdicts:
            r = new.pop(d.request_id, None)
            if r is None:
                continue
            if d.action == "reject":
                s.live.pop(r.id, None)
                self.c.reject(r)
                continue
            r.decision = "admit" if d.action == "admit" else "best_effort"
            if d.decode_worker is not None:
                r.pinned_decode = self.by_name[d.decode_worker]
            pw = d.prefill_worker
            if pw is None:
                pre = [self.ex[i] for i in s.workers if takes_prompts(self.pworkers[i])]
                idx = min(pre, key=lambda e: (e.queued_tokens, e.w.idx)).w.idx
            else:
                idx = self.by_name[pw]
            r.pinned_prefill = idx
            if self.colocated:
                r.pinned_decode = idx
            self.ex[idx].add_prompt(r)
        for r in new.values():  # no decision (should not happen): ask again
            s.undecided[r.id] = r
        for pw in s.pworkers:
            change = p.roles.get(pw.id)
            if change is not None:
                pw.role, pw.target_role = change.role, change.target
        for i in s.workers:
            e = self.ex[i]
            e.plan = engine_plan(p, e.w.name, self.role(e), p.now)

    # ------------------------------------------------------------ batches

    def next_batch(self, w: Worker) -> Batch | None:
        now = self.c.now
        self.acceptance.finished(w.idx)
        s = self.shards[self.shard_of[w.idx]]
        if s.undecided and (now - s.last_plan >= NEW_GAP
                            or self.pworkers[w.idx].role != "decode"):
            self._replan(s)
        elif s.dirty and now - s.last_plan >= PERIOD:
            self._replan(s)
        e = self.ex[w.idx]
        if not e.changed and e.wake_at is not None and now < e.wake_at:
            return None
        if e.kvwait:
            self._pull(e)
        b = e.step(now)
        if not b:
            self._sleep(e)
            return None
        self.acceptance.started(w.idx, b)
        return b

    def _sleep(self, e: WorkerExecutor) -> None:
        """Nothing to run: wake up when the earliest decoder's token enters the pacing
        horizon (a worker blocked on memory is woken by the event that frees it)."""
        e.changed = False
        t = e.held_until()
        if t is None or t <= self.c.now:
            if not self.shards[self.shard_of[e.w.idx]].undecided:
                return
            t = self.c.now + NEW_GAP
        if e.wake_at is not None and self.c.now < e.wake_at <= t:
            return
        e.wake_at = t
        self.c.call_at(t, lambda: None)
