"""plan(snapshot) -> Plan as one sequence of named steps (after Dynamo's planner loop):

1. reserve: every request admitted before holds its workers (queues, tier counts, KV);
2. admit prompts: per prefill-capable worker, the DP over the new requests routed to it;
   the ones it declines move on to their next worker, round after round;
3. admit decodes: the decode side of disaggregated admissions, greedily in deadline order;
4. decline: the rest become best effort or are rejected, by their own `on_reject`;
5. schedule: each worker's predicted batches; a new admission predicted late is declined
   (Moore-Hodgson) and the schedule emitted again;
6. relayout (adaptive layout only): each worker's next role (planner/layout.py).
"""

from __future__ import annotations

from slos_serve.core.planner import layout
from slos_serve.core.planner.context import INF, PlanContext, rotate
from slos_serve.core.planner.dp import BudgetCache, select
from slos_serve.core.planner.load import Placement, QueuedPrompt, WorkerLoad, queued_prompt
from slos_serve.core.planner.records import (
    DecodePlan,
    Plan,
    PlanRequest,
    PlanWorker,
    PrefillSchedule,
    Snapshot,
    Verdict,
    WorkerRole,
)
from slos_serve.core.planner.schedule import (
    Emitted,
    ScheduleEmitter,
    changes_admission,
    deferred_schedule,
)
from slos_serve.core.spec import DecodeConfig


def plan(snap: Snapshot) -> Plan:
    """Decide admission, routing, chunked-prefill order and per-tier decode cadence."""
    p = Planning(snap)
    p.reserve_admitted()
    p.admit_prompts()
    p.admit_decodes()
    p.decline_the_rest()
    p.schedule_workers()
    p.relayout()
    return p.result()


class Planning:
    """The state one plan() call builds up, step by step."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.ctx = PlanContext(snap)
        self.loads = {w.id: WorkerLoad(w, [0] * len(self.ctx.tpots)) for w in snap.workers}
        self.adaptive = snap.adaptive_layout
        self.prefill_ids = [w.id for w in snap.workers if layout.takes_prompts(w)]
        if self.adaptive:
            self.decode_ids = [w.id for w in snap.workers if layout.takes_decodes(w)]
        else:
            dec = [w.id for w in snap.workers if w.role == "decode"]
            self.decode_ids = dec or [w.id for w in snap.workers if w.role == "mixed"]
        self.new = [r for r in snap.requests if r.state == "new"]
        self.new.sort(key=lambda r: (r.ttft_deadline if r.phase == "prefill" else -INF,
                                     r.arrival))
        self.route = {r.id: i + snap.route_start for i, r in enumerate(self.new)}
        self.placed: dict[str, Placement] = {}
        self.why: dict[str, str] = {}
        self.notes: list[Verdict] = []  # reroutes of requests admitted before
        self.verdicts: list[Verdict] = []
        self.prefill_plans: dict[str, PrefillSchedule] = {}
        self.decode_plans: dict[str, DecodePlan] = {}
        self.budgets: BudgetCache = {}  # the prompt DPs' budgets, kept across routing rounds
        self.roles: dict[str, WorkerRole] = {}
        self.rates: dict[str, float] = {}  # adaptive layout: prefill rate by worker
        self.backlog: dict[str, int] = {}  # ... and prompt tokens queued on it, as routed

    # ------------------------------------------------------------ 1. reserve

    def reserve_admitted(self) -> None:
        """Reserve every request admitted (or served best effort) before this plan."""
        ctx = self.ctx
        pre = [w for w in self.snap.workers if w.role != "decode"]
        for r in self.snap.requests:
            if r.state == "new":
                continue
            pw = self.loads.get(r.prefill_worker or "")
            dw = self.loads.get(r.decode_worker or "")
            if r.phase == "prefill" and (pw is None or pw.role == "decode") and pre:
                # its prefill worker is gone: keep the request on the first prefill-capable one
                pw = self.loads[pre[0].id]
                if pw.role == "mixed":
                    dw = pw
                self.notes.append(Verdict(
                    r.id, "admit" if r.state == "admitted" else "best_effort", pw.worker.id,
                    dw.worker.id if dw else None, "rerouted"))
            if r.state == "best_effort":
                if r.phase == "prefill" and pw is not None:
                    pw.queue_best_effort(r)
                elif r.phase == "decode" and dw is not None:
                    dw.queue_best_effort(r)
                continue
            if r.phase == "prefill" and pw is not None:
                pw.keep_prompt(queued_prompt(ctx, r, pw.worker, True, local=pw is dw),
                               reserve_kv=pw is not dw)
            if dw is not None:
                dw.admit_decode(ctx, r, new=False)

    # ------------------------------------------------------------ 2. prompts

    def admit_prompts(self) -> None:
        """Route new prompts to prefill-capable workers; each worker's DP admits a subset."""
        if self.adaptive:
            self.rates = {w: layout.prefill_rate(self.ctx, self.loads[w].worker,
                                                  tuple(self.loads[w].counts))
                           for w in self.prefill_ids}
            self.backlog = {w: sum(it.tokens for it in self.loads[w].queue)
                            for w in self.prefill_ids}
        targets: dict[str, list[tuple[str, bool]]] = {}
        pending: dict[tuple[str, bool], list[PlanRequest]] = {}
        for r in self.new:
            ts = self._prefill_targets(r)
            if ts:
                targets[r.id] = ts
                pending.setdefault(ts[0], []).append(r)
        tried = dict.fromkeys(targets, 0)
        while pending:
            nxt: dict[tuple[str, bool], list[PlanRequest]] = {}
            for (wid, local), reqs in pending.items():
                for r in self._admit_on(self.loads[wid], reqs, local):
                    tried[r.id] += 1
                    if tried[r.id] < len(targets[r.id]):
                        nxt.setdefault(targets[r.id][tried[r.id]], []).append(r)
                    else:
                        self.why[r.id] = "no worker can meet its TTFT and TPOT"
            pending = nxt

    def _prefill_targets(self, r: PlanRequest) -> list[tuple[str, bool]]:
        """The (prefill-capable worker, decodes there too) placements r may try (none: why is
        noted). Fixed layouts: in routing order. Adaptive: the workers that prefill fastest
        now first, each locally before handing off (planner/layout.py)."""
        if r.phase == "decode":
            return []
        if r.ttft_deadline <= self.snap.now:
            self.why[r.id] = "TTFT deadline already passed"
            return []
        ws = [self.loads[w].worker for w in rotate(self.prefill_ids, self.route[r.id])]
        # the decode check only matters where a prompt may hand its KV off
        fits = (self.adaptive or any(w.role == "prefill" for w in ws)) and any(
            self.loads[d].can_admit_decode(self.ctx, r, handed_off=True)
            for d in self.decode_ids)
        if self.adaptive:  # where the prompt is prefilled soonest first; per worker, local first
            ws.sort(key=lambda w: layout.prefill_wait(self.backlog[w.id] + r.prefill_left,
                                                     self.rates[w.id]))
            ts = [(w.id, local) for w in ws for local in (True, False)
                  if (layout.decodes_locally(w) if local else fits and self._hands_off(w))]
            if ts:  # the prompts routed before this one in the plan queue ahead of the next
                self.backlog[ts[0][0]] += r.prefill_left
        else:
            ts = [(w.id, True) for w in ws if w.role == "mixed"]
            ts += [(w.id, False) for w in ws if fits and w.role == "prefill"]
        if not ts:
            self.why[r.id] = ("no decode capacity for its TPOT tier" if self.prefill_ids
                              else "no prefill worker")
        return ts

    def _hands_off(self, w: PlanWorker) -> bool:
        """Under the adaptive layout a prompt on w may hand its KV off to another worker."""
        return any(d != w.id for d in self.decode_ids)

    def _admit_on(self, load: WorkerLoad, reqs: list[PlanRequest],
                  local: bool) -> list[PlanRequest]:
        """Admit the DP's choice among `reqs` on `load` (local: decoding there too);
        returns the ones it declined."""
        cands = [queued_prompt(self.ctx, r, load.worker, False, local) for r in reqs]
        chosen = {id(it) for it in select(self.ctx, load, cands, local, self.budgets)}
        declined = []
        for it in cands:
            if id(it) not in chosen:
                declined.append(it.req)
                continue
            load.admit_prompt(it)
            self.placed[it.req.id] = Placement(load, load if local else None, it)
        return declined

    # ------------------------------------------------------------ 3. decodes

    def admit_decodes(self) -> None:
        """The decode side of disaggregated admissions (and of new requests already decoding),
        on the first decode worker in routing order that can take it."""
        ctx = self.ctx
        for r in self.new:
            p = self.placed.get(r.id)
            if r.phase == "prefill" and (p is None or p.decode is not None):
                continue
            handed_off = r.phase == "prefill"  # its KV moves: the hand-off wait counts
            dl = next((d for d in self._decode_order(r, p)
                       if d.can_admit_decode(ctx, r, handed_off)
                       and layout.keeps_prompts(ctx, d, ctx.tier(r))), None)
            if dl is None:
                if p is not None:
                    p.release(ctx, r)
                    del self.placed[r.id]
                self.why[r.id] = "no decode worker can sustain its TPOT"
                continue
            dl.admit_decode(ctx, r, new=True)
            self.placed[r.id] = Placement(p.prefill if p else None, dl, p.prompt if p else None)

    def _decode_order(self, r: PlanRequest, p: Placement | None) -> list[WorkerLoad]:
        """The decode workers r tries: in routing order (fixed layouts); least decode load
        first, never its own prefill worker, under adaptive layout (a hand-off)."""
        loads = [self.loads[d] for d in rotate(self.decode_ids, self.route[r.id])]
        if not self.adaptive:
            return loads
        own = p.prefill if p is not None else None
        return sorted((d for d in loads if d is not own), key=layout.decode_load)

    # ------------------------------------------------------------ 4. declined

    def decline_the_rest(self) -> None:
        """New requests not placed: rejected, or best effort on their first workers in turn."""
        pre, dec = self.prefill_ids, self.decode_ids
        for r in self.new:
            if r.id in self.placed:
                continue
            if r.on_reject == "reject" or not (pre or dec):
                self.verdicts.append(Verdict(r.id, "reject", None, None, self.why.get(r.id, "")))
                continue
            route = self.route[r.id]
            pl = self.loads[rotate(pre, route)[0]] if pre and r.phase == "prefill" else None
            dl = pl if pl is not None and self._decodes_with(pl) else None
            if dl is None and dec:
                dl = self.loads[rotate(dec, route)[0]]
            if pl is not None:
                pl.best_effort_prompts.append(r)
            elif dl is not None:
                dl.best_effort_decoders.append(r)
            self.verdicts.append(Verdict(r.id, "best_effort", pl.worker.id if pl else None,
                                         dl.worker.id if dl else None, self.why.get(r.id, "")))

    # ------------------------------------------------------------ 5. schedules

    def schedule_workers(self) -> None:
        """Each worker's schedule, prefill-capable workers first (their repairs may move
        requests to best effort before the decode side is emitted)."""
        for w in sorted(self.snap.workers, key=lambda w: w.role == "decode"):
            load = self.loads[w.id]
            if changes_admission(load):
                cfg, out = self._emit_repaired(load)
            else:
                cfg = self.ctx.config(w, tuple(load.counts))
                out = deferred_schedule(self.ctx, load, cfg)
            if w.role != "decode":
                order = [it.req.id for it in sorted(load.queue, key=lambda it: it.deadline)]
                order += [r.id for r in sorted(load.best_effort_prompts,
                                               key=lambda r: r.ttft_deadline)]
                budget = cfg.prefill_tokens if cfg else 0
                self.prefill_plans[w.id] = PrefillSchedule(w.id, budget, order, out.batches)
            if w.role != "prefill":
                self.decode_plans[w.id] = decode_plan(w.id, cfg, out)

    def _emit_repaired(self, load: WorkerLoad) -> tuple[DecodeConfig | None, Emitted]:
        while True:
            cfg = self.ctx.config(load.worker, tuple(load.counts))
            out = ScheduleEmitter(self.ctx, load, cfg).run()
            if not out.late:
                return cfg, out
            victim = moore_hodgson_victim(load, out.late)
            if victim is None:  # only earlier admissions are late: keep them, claim nothing
                load.unprotected.update(it.req.id for it in out.late)
                continue
            self._demote(load, victim.req)

    def _demote(self, load: WorkerLoad, r: PlanRequest) -> None:
        """Decline a new admission predicted to miss its TTFT."""
        self.placed.pop(r.id).release(self.ctx, r)
        why = self.why[r.id] = "predicted to miss its TTFT"
        if r.on_reject == "reject":
            self.verdicts.append(Verdict(r.id, "reject", None, None, why))
            return
        load.best_effort_prompts.append(r)
        w = load.worker
        dw = w.id if self._decodes_with(load) else (rotate(self.decode_ids, self.route[r.id])
                                                    or [None])[0]
        self.verdicts.append(Verdict(r.id, "best_effort", w.id, dw, why))

    def _decodes_with(self, load: WorkerLoad) -> bool:
        """A declined prompt on this worker is served best effort there, start to end."""
        return load.role == "mixed" and load.worker.id in self.decode_ids

    # ------------------------------------------------------------ 6. relayout

    def relayout(self) -> None:
        """Adaptive layout: each worker's next role from the load this plan leaves."""
        if self.adaptive:
            pressed = any(r.id not in self.placed for r in self.new if r.phase == "prefill")
            self.roles = layout.next_roles(self.ctx, self.loads, pressed)

    # ------------------------------------------------------------ result

    def result(self) -> Plan:
        out = self.verdicts
        for r in self.new:
            p = self.placed.get(r.id)
            if p is not None:
                pw, dw = p.worker_ids()
                out.append(Verdict(r.id, "admit", pw, dw, "meets TTFT and TPOT"))
        admitted = [r.id for r in self.snap.requests if r.state == "admitted"]
        admitted += list(self.placed)
        order = {r.id: i for i, r in enumerate(self.snap.requests)}
        out.sort(key=lambda v: order.get(v.request_id, 0))
        return Plan(self.snap.now, self.notes + out, self.prefill_plans, self.decode_plans,
                    admitted, self.roles)


def decode_plan(worker_id: str, cfg: DecodeConfig | None, out: Emitted) -> DecodePlan:
    if cfg is None:
        return DecodePlan(worker_id, 0.0, 0, 0, 0, out.cadences, out.batches, False)
    return DecodePlan(worker_id, cfg.period, cfg.step_tokens, cfg.decode_tokens,
                      cfg.prefill_tokens, out.cadences, out.batches, True)


def moore_hodgson_victim(load: WorkerLoad, late: list[QueuedPrompt]) -> QueuedPrompt | None:
    """The largest new admission due no later than the first late one."""
    first = min(it.deadline for it in late)
    new = [it for it in load.queue if it.req.id in load.new_ids and it.deadline <= first + 1e-9]
    return max(new, key=lambda it: it.tokens) if new else None
