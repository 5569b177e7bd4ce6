"""The predicted schedule of one worker: its next batches under the plan's admissions.

Admitted decoders by EDF token deadline, then committed prefill chunks in EDF order, then
best-effort decode and prefill in what is left. Decode cadence: a decoder is served when it
cannot wait for the next batch (due within PACE_STEPS periods), and its next verify step is
due one interval (E(spec) * TPOT) after the previous due time (token-bucket pacing). Batches
are paced at the period u while nothing waits for prefill, back to back otherwise. A batch
that finishes a committed prompt is capped so that it is predicted to end by that prompt's
deadline (the partial batch the DP's budget counts on).

Only a worker with a prompt newly admitted to its queue can have a decision revised by its
schedule (a new admission predicted late is declined); the batches of every other worker are
emitted when first read (`deferred_schedule`): the simulator and the coordinator read only
budgets and cadences, so at 64 workers most schedules are never emitted at all.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, overload

from slos_serve.core.perf_model import BatchShape
from slos_serve.core.planner.context import INF, PlanContext
from slos_serve.core.planner.load import QueuedPrompt, WorkerLoad
from slos_serve.core.planner.records import PlannedBatch, PlanRequest, TierCadence
from slos_serve.core.policy import PACE_STEPS
from slos_serve.core.spec import DecodeConfig, decode_shape

PREFILL_HORIZON = 128  # batches emitted per prefill schedule
EPS = 1e-9


class DueDecoder(NamedTuple):
    """A decoder in the EDF heap (ordered by due time, then by insertion)."""

    due: float
    seq: int
    req: PlanRequest
    tier: int


@dataclass(slots=True)
class PromptProgress:
    """A committed prompt as the emitted batches advance it."""

    prompt: QueuedPrompt
    left: int  # tokens still to prefill
    computed: int  # prompt tokens whose KV exists (the context of its next chunk)


@dataclass(slots=True)
class BatchDraft:
    """One batch being filled: its chunks, decodes and the shape the model times."""

    start: float
    claim: float = INF  # the earliest deadline it is predicted to meet
    decode: list[tuple[str, int]] = field(default_factory=list)
    prefill: list[tuple[str, int]] = field(default_factory=list)
    served: list[DueDecoder] = field(default_factory=list)  # admitted decoders it serves
    finished: list[QueuedPrompt] = field(default_factory=list)  # committed prompts it ends
    admitted: BatchShape = BatchShape()  # the admitted decoders' part
    reserved: int = 0  # decode tokens held in aggregate (beyond the decode horizon)
    # what the rest adds: prompt chunks (tokens, their KV context), best-effort decodes
    prefill_tokens: int = 0
    chunk_context: int = 0
    best_effort: int = 0
    chunks: int = 0

    def shape(self, *, prefill_tokens: int = 0, more_requests: int = 0,
              more_context: int = 0) -> BatchShape:
        a = self.admitted
        return BatchShape(prefill_tokens, a.decode_tokens + self.best_effort, a.verify_tokens,
                          a.num_requests + self.best_effort + self.chunks + more_requests,
                          a.context_tokens + self.chunk_context + more_context, a.spec_steps)

    def empty(self) -> bool:
        return not self.prefill and not self.decode and not self.reserved


@dataclass(slots=True)
class Emitted:
    batches: Sequence[PlannedBatch]
    cadences: list[TierCadence]
    late: list[QueuedPrompt]  # committed prompts predicted to miss their deadline


class PredictedBatches(Sequence[PlannedBatch]):
    """A worker's predicted batches, emitted on first read (then kept). Copies and pickles
    are plain lists."""

    __slots__ = ("_emit", "_batches")

    def __init__(self, emit: Callable[[], list[PlannedBatch]]) -> None:
        self._emit: Callable[[], list[PlannedBatch]] | None = emit
        self._batches: list[PlannedBatch] | None = None

    def _list(self) -> list[PlannedBatch]:
        if self._batches is None:
            assert self._emit is not None
            self._batches, self._emit = self._emit(), None
        return self._batches

    @overload
    def __getitem__(self, i: int) -> PlannedBatch: ...
    @overload
    def __getitem__(self, i: slice) -> list[PlannedBatch]: ...
    def __getitem__(self, i: int | slice) -> PlannedBatch | list[PlannedBatch]:
        return self._list()[i]

    def __len__(self) -> int:
        return len(self._list())

    def __iter__(self) -> Iterator[PlannedBatch]:
        return iter(self._list())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and self._list() == list(other)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the list it stands for

    def __repr__(self) -> str:
        return repr(self._list())

    def __reduce__(self) -> tuple:
        return (list, (self._list(),))


def changes_admission(load: WorkerLoad) -> bool:
    """Whether the worker's schedule can revise this plan's decisions: only a prompt newly
    admitted to its queue can be declined for a predicted miss."""
    return any(it.req.id in load.new_ids for it in load.queue)


def deferred_schedule(
    ctx: PlanContext, load: WorkerLoad, cfg: DecodeConfig | None
) -> Emitted:
    """The schedule of a worker no decision depends on (not changes_admission), its batches
    emitted when first read. Prompts admitted before and already predicted late are claimed
    by no batch, as on every worker (emitted again without them)."""
    t0 = max(ctx.now, load.worker.busy_until)  # as of this plan, whenever read

    def emit() -> list[PlannedBatch]:
        while True:
            out = ScheduleEmitter(ctx, load, cfg, t0).run()
            if not out.late:
                return out.batches
            load.unprotected.update(it.req.id for it in out.late)

    plain = cfg if cfg is not None else fallback_config(ctx, load)
    return Emitted(PredictedBatches(emit), cadences(ctx, load, plain), [])


def fallback_config(ctx: PlanContext, load: WorkerLoad) -> DecodeConfig:
    """Plain decoding at the tightest TPOT: the admitted decode load is no longer sustainable,
    so the schedule claims no deadlines."""
    u = min(ctx.tpots) if ctx.tpots else 0.05
    k = len(ctx.tpots)
    return DecodeConfig(u, (0,) * k, (1,) * k, (1.0,) * k, 0, load.worker.max_batch_tokens, 0)


def cadences(ctx: PlanContext, load: WorkerLoad, cfg: DecodeConfig) -> list[TierCadence]:
    out: list[TierCadence] = []
    if load.role == "prefill":
        return out
    for k, n in enumerate(load.counts):
        if n > 0 and k < len(cfg.spec):
            e = cfg.expected[k]
            out.append(TierCadence(ctx.tpots[k], cfg.spec[k], ctx.alphas[k], e,
                                   e * ctx.tpots[k], cfg.every[k], n))
    return out


class ScheduleEmitter:
    """Predicts a worker's next batches (see the module docstring)."""

    def __init__(self, ctx: PlanContext, load: WorkerLoad, cfg: DecodeConfig | None,
                 t0: float | None = None) -> None:
        self.ctx, self.load = ctx, load
        self.model = load.worker.model
        self.feasible = cfg is not None
        self.cfg = cfg if cfg is not None else fallback_config(ctx, load)
        self.u = self.cfg.period
        self.horizon = ctx.snap.decode_horizon
        self.prefills = load.role != "decode"
        self.t0 = max(ctx.now, load.worker.busy_until) if t0 is None else t0
        self.seq = 0
        self.heap = self._admitted_decoders()
        self.be_heap = [DueDecoder(r.token_deadline or self.t0, i, r, ctx.tier(r))
                        for i, r in enumerate(load.best_effort_decoders)]
        heapq.heapify(self.be_heap)
        self.prompts = [PromptProgress(it, it.tokens, it.req.prompt_tokens - it.tokens)
                        for it in load.queue]
        self.prompts.sort(key=lambda q: q.prompt.deadline)
        self.be_prompts = sorted(load.best_effort_prompts, key=lambda r: r.ttft_deadline)
        self.be_left = [r.prefill_left for r in self.be_prompts]
        self.qi = self.bi = 0
        self.agg: BatchShape | None = None
        self.batches: list[PlannedBatch] = []
        self.late: list[QueuedPrompt] = []

    def _admitted_decoders(self) -> list[DueDecoder]:
        """The EDF heap; a decoder of unknown pace is staggered over its tier's cadence."""
        heap: list[DueDecoder] = []
        per_tier = [0] * len(self.ctx.tpots)
        for r in self.load.decoders:
            k = self.ctx.tier(r)
            if r.token_deadline is not None:
                d = r.token_deadline
            else:
                m = self.cfg.every[k] if k < len(self.cfg.every) else 1
                d = self.t0 + self.u * (1 + per_tier[k] % m)
                per_tier[k] += 1
            heap.append(DueDecoder(d, self.seq, r, k))
            self.seq += 1
        heapq.heapify(heap)
        return heap

    def prefill_waiting(self) -> bool:
        return self.prefills and (self.qi < len(self.prompts) or self.bi < len(self.be_prompts))

    def _more(self) -> bool:
        if not self.prefill_waiting() and not (self.heap and len(self.batches) < self.horizon):
            return False
        committed_left = self.prefills and self.qi < len(self.prompts)
        # committed prompts are followed to the end; best effort only briefly
        return len(self.batches) < (PREFILL_HORIZON if committed_left else self.horizon)

    def run(self) -> Emitted:
        s = self.t0
        while self._more():
            b = BatchDraft(s)
            self._decode_admitted(b)
            room = self._prefill_room(b)
            room = self._prefill_committed(b, room)
            room = self._decode_best_effort(b, room)
            self._prefill_best_effort(b, room)
            end = s + self.model.predict(b.shape(prefill_tokens=b.prefill_tokens))
            self._settle(b, end)
            if b.empty():
                heap = self.heap  # idle until a token is due
                s = max(s + self.u, heap[0].due - self.u) if heap else s + self.u
                continue
            self.batches.append(PlannedBatch(s, end, b.prefill, b.decode, b.claim, b.reserved))
            # decoders pace batches at the period; waiting prefill runs back to back
            paced = self.heap and not self.prefill_waiting()
            s = max(end, s + self.u) if paced else end
        return Emitted(self.batches, cadences(self.ctx, self.load, self.cfg), self.late)

    def _decode_admitted(self, b: BatchDraft) -> None:
        """Admitted decoders that cannot wait for the next batch, earliest due first (past
        the decode horizon: the worst-case decode part in aggregate)."""
        cfg, s, u = self.cfg, b.start, self.u
        if self.heap and len(self.batches) >= self.horizon:
            if self.agg is None:
                self.agg = decode_shape(self.ctx.tier_loads(self.load.counts), cfg.spec,
                                        cfg.every)
            b.admitted = self.agg  # (no prefill part)
            b.reserved = self.agg.decode_tokens + self.agg.verify_tokens
            return
        heap, spec, pop = self.heap, cfg.spec, heapq.heappop
        horizon, claim_from = s + PACE_STEPS * u, s + u - EPS
        decode, served = b.decode, b.served
        dec = ver = nreq = ctxt = steps = 0
        claim = INF
        while heap and heap[0].due < horizon and dec + ver < cfg.step_tokens:
            e = pop(heap)
            due, _, r, k = e
            sp = spec[k] if k < len(spec) else 0
            decode.append((r.id, 1 + sp))
            if sp > 0:
                ver += 1 + sp
                steps = max(steps, sp)
            else:
                dec += 1
            nreq += 1
            ctxt += r.prompt_tokens + r.generated
            if self.feasible and due >= claim_from:
                claim = min(claim, due)
            served.append(e)
        b.admitted = BatchShape(0, dec, ver, nreq, ctxt, steps)
        b.claim = claim

    def _prefill_room(self, b: BatchDraft) -> int:
        if not self.prefills:
            return 0
        room = (self.load.worker.max_batch_tokens - b.admitted.decode_tokens
                - b.admitted.verify_tokens)
        if self.load.role == "mixed":
            room = min(room, self.model.prefill_capacity(self.u, b.shape()))
        return room

    def _prefill_committed(self, b: BatchDraft, room: int) -> int:
        """Committed chunks in EDF order; the batch must end by the deadline of each prompt
        it finishes (a smaller chunk rather than an earlier finisher made late)."""
        limit = INF
        while room > 0 and self.qi < len(self.prompts):
            q = self.prompts[self.qi]
            n = min(room, q.left)
            fin = n == q.left and q.prompt.req.id not in self.load.unprotected
            lim = min(limit, q.prompt.deadline) if fin else limit
            if lim < INF:  # the most prefill tokens that still end by lim
                shape = b.shape(more_requests=1, more_context=q.computed)
                cap = self.model.prefill_capacity(lim - b.start, shape) - b.prefill_tokens
                if cap >= n:
                    limit = lim
                    room = min(room, cap)
                elif limit < INF:
                    n = cap
                    if n <= 0:
                        break
            b.prefill.append((q.prompt.req.id, n))
            b.chunk_context += q.computed
            q.left -= n
            q.computed += n
            room -= n
            b.prefill_tokens += n
            b.chunks += 1
            if q.left == 0:
                b.finished.append(q.prompt)
                self.qi += 1
        return room

    def _decode_best_effort(self, b: BatchDraft, room: int) -> int:
        u, be = self.u, self.be_heap
        while not b.reserved and be and be[0].due < b.start + PACE_STEPS * u and room > 0:
            e = heapq.heappop(be)
            b.decode.append((e.req.id, 1))
            b.best_effort += 1
            room -= 1
        return room

    def _prefill_best_effort(self, b: BatchDraft, room: int) -> None:
        while room > 0 and self.bi < len(self.be_prompts):
            n = min(room, self.be_left[self.bi])
            b.prefill.append((self.be_prompts[self.bi].id, n))
            self.be_left[self.bi] -= n
            room -= n
            b.prefill_tokens += n
            b.chunks += 1
            if self.be_left[self.bi] == 0:
                self.bi += 1

    def _settle(self, b: BatchDraft, end: float) -> None:
        """Deadlines the batch claims, committed prompts it ends late, and the next due time
        of each decoder it served (one interval after this one was due)."""
        for it in b.finished:
            if it.req.id in self.load.unprotected:
                continue
            b.claim = min(b.claim, it.deadline)
            if end > it.deadline + EPS:
                self.late.append(it)
        heap, push, seq = self.heap, heapq.heappush, self.seq
        expected, tpots = self.cfg.expected, self.ctx.tpots
        for due, _, r, k in b.served:
            push(heap, DueDecoder(max(due, end) + expected[k] * tpots[k], seq, r, k))
            seq += 1
        self.seq = seq
