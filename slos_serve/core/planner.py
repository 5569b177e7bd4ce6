"""Multi-SLO planner: SLOs-Serve's soft-admission DP, extended to disaggregated pools.

One pure function, plan(Snapshot) -> Plan, used by the simulator, the live coordinator and
the workers' schedulers alike.

Formulation. Objective: the number of requests that meet their SLOs (profit 1 each). A new
request is admitted iff, by the performance model, it and every request admitted before meet
their TTFT and TPOT: (a) its prefill worker can finish its prompt before its TTFT deadline in
earliest-deadline-first order, (b) its decode worker can sustain every admitted request's TPOT
tier forever after (a decode configuration exists, see slos_serve/core/spec.py), (c) the KV blocks
of the admitted requests fit. Admitted requests are never dropped (soft admission control);
declined ones become best effort (leftover budget only) or are rejected, by their own policy.

DP, per prefill-capable worker (as the paper): candidates and already-admitted prompts sorted
by deadline; states keyed by admitted counts per TPOT tier, each a Pareto set of (prefill
tokens so far, KV blocks). Admitting request n needs tokens <= budget(deadline_n | counts),
where, with (u, p) the batch period and prefill tokens per batch of the decode configuration
for those counts and b <= u the predicted time of such a batch (shorter than u when the
batch token limit binds; batches run back to back while prefill waits), budget = k * p +
(the most prefill tokens that one more batch carrying the worst-case decode part ends within
the time left), k = floor((deadline - start) / b): a deadline shorter than a batch still
gets a smaller, faster batch (slos_serve/core/spec.py, prefill_within). On a prefill worker the
budget does not depend on decoding (u = b = time of a max_batch_tokens batch, p =
max_batch_tokens), so states collapse to the admitted count. Mixed workers (colocated mode)
keep the tier vector. KV: each request reserves its context plus a fraction
(Snapshot.kv_output_reserve; 1 = its peak) of the output it still expects.

Where it departs from the paper, and why:
- Disaggregation: a request needs a prefill (or mixed) worker and a decode (or mixed) worker.
  The prefill DP runs first; the decode side is then assigned greedily in deadline order
  (try decode worker (start + i) mod D, then the next). A decode pool has no deadline
  ordering to exploit, only the sustained-TPOT and KV checks, so a greedy pass suffices.
- Routing: each new request i first tries worker (route_start + i) mod R. Rather than one DP
  per request and try, each worker runs one DP over all requests routed to it this round;
  requests it declines move on to their next worker; earlier rounds' admissions stay fixed.
  At most R rounds; the DP still chooses the best subset on each worker.
- Budgets assume every admitted request on a mixed worker decodes from now on, in every
  batch at its worst (conservative). To match the partial batch of the budget, the emitted
  schedule caps a batch that finishes a committed prompt so it is predicted to end by that
  prompt's deadline, and runs batches back to back while prefill waits (decoders pace batches
  at u only when none does). The budget ignores the cost of such cuts before the last one
  (one batch's fixed cost each); the repair below catches the rare resulting misses.
- KV: reserving less than the peak (kv_output_reserve < 1) is an overcommit, not a guarantee:
  the workers evict best-effort requests first when memory runs out.
- Admitted prompts already predicted late are kept, their lateness is not charged to new
  requests (the DP allows them the excess they already had) and no batch claims them.
- The emitted schedule is checked: if a newly admitted prompt is predicted late (the model's
  per-batch features differ from the DP's budget), the largest new admission due no later is
  declined (Moore-Hodgson) and the schedule emitted again.
- Decode cadence: EDF with token-bucket pacing: a request's next verify step is due one
  interval (E(spec) * TPOT) after its previous due time; batches are paced at the period u
  (back to back while prefill waits); a request is served when it cannot wait for the next
  batch, so loose tiers skip batches.
- Best-effort requests are not re-considered for admission in later plans.
- KV transfer time is not on the TTFT path (the prefill worker emits the first token).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Literal

from slos_serve.core.perf_model import BatchShape, PerfModel
from slos_serve.core.spec import (
    DecodeConfig,
    TierLoad,
    choose_config,
    decode_shape,
    prefill_only,
    prefill_within,
)

Stage = Literal["prefill", "decode"]
Role = Literal["prefill", "decode", "mixed"]
Action = Literal["admit", "best_effort", "reject"]
State = Literal["new", "admitted", "best_effort"]
Policy = Literal["best_effort", "reject"]


@dataclass
class PlanRequest:
    """One live request as the planner sees it (times absolute, in seconds)."""

    id: str
    stage: Stage
    arrival: float
    ttft_deadline: float  # first token due (used while stage == "prefill")
    tpot: float  # TPOT SLO of the current (or next) decode stage
    prompt_tokens: int
    remaining_prefill: int | None = None  # None: all prompt tokens still to prefill
    generated: int = 0
    expected_output: int = 0  # tokens still to generate (may be an estimate)
    kv_blocks: int | None = None  # peak KV blocks on the decode side; None: from tokens
    is_new: bool = True
    state: State = "new"
    on_decline: Policy = "best_effort"
    prefill_worker: str | None = None
    decode_worker: str | None = None
    token_deadline: float | None = None  # next token due while decoding; None: now + tpot


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


@dataclass
class Snapshot:
    now: float
    requests: list[PlanRequest]
    workers: list[PlanWorker]
    spec_alpha: dict[float, float] = field(default_factory=dict)  # TPOT tier -> acceptance
    default_alpha: float = 0.0
    max_spec_len: int = 0  # 0 disables speculative decoding
    route_start: int = 0  # routing offset: new request i first tries worker (start+i) mod R
    kv_transfer_time: float = 0.0  # informational: not on the TTFT path, unused by plan()
    decode_horizon: int = 4  # decode batches to emit per worker (0: cadence only, cheaper)
    # fraction of each request's expected remaining output reserved in KV (1: its peak;
    # 0.5: its average over a linear growth, an overcommit the workers' eviction covers)
    kv_output_reserve: float = 1.0


@dataclass
class Decision:
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


@dataclass
class Plan:
    now: float
    decisions: list[Decision]
    prefill: dict[str, PrefillSchedule]  # by worker id (prefill and mixed workers)
    decode: dict[str, DecodePlan]  # by worker id (decode and mixed workers)
    admitted: list[str]  # every admitted request after this plan (old and new)

    def decision(self, request_id: str) -> Decision | None:
        for d in self.decisions:
            if d.request_id == request_id:
                return d
        return None


# ---------------------------------------------------------------- algorithm

INF = float("inf")
PREFILL_HORIZON = 128  # batches emitted per prefill schedule
_CONFIGS: dict[tuple, DecodeConfig | None] = {}  # decode configurations, across plans


@dataclass
class _Item:
    """A request in a prefill-capable worker's queue."""

    req: PlanRequest
    deadline: float
    tokens: int
    kv: int  # blocks reserved on this worker
    tier: int
    forced: bool  # admitted before this plan: never dropped


@dataclass
class _Load:
    """What a worker already carries (admitted work is reserved, best effort is not)."""

    worker: PlanWorker
    counts: list[int]  # admitted decoding load per tier (including requests still prefilling)
    kv_used: int = 0
    queue: list[_Item] = field(default_factory=list)  # admitted, waiting for prefill
    be_prefill: list[PlanRequest] = field(default_factory=list)
    decoders: list[PlanRequest] = field(default_factory=list)  # admitted, decoding
    be_decoders: list[PlanRequest] = field(default_factory=list)
    new_ids: set[str] = field(default_factory=set)  # admitted by this plan
    unprotected: set[str] = field(default_factory=set)  # admitted but already late


class _Ctx:
    """Per-plan constants and caches."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.now = snap.now
        self.kv_frac = min(max(snap.kv_output_reserve, 0.0), 1.0)
        tpots = sorted({r.tpot for r in snap.requests})
        self.tpots = tpots
        self.tier_of = {t: i for i, t in enumerate(tpots)}
        self.alphas = [snap.spec_alpha.get(t, snap.default_alpha) for t in tpots]
        ctx = [0] * len(tpots)
        num = [0] * len(tpots)
        for r in snap.requests:
            k = self.tier_of[r.tpot]
            ctx[k] += r.prompt_tokens + r.generated
            num[k] += 1
        self.avg_ctx = [c // n if n else 0 for c, n in zip(ctx, num, strict=True)]
        self._model_keys: dict[int, tuple] = {}

    def _model_key(self, w: PlanWorker) -> tuple:
        """What a configuration depends on besides the counts (context only if it costs)."""
        key = self._model_keys.get(id(w))
        if key is None:
            pieces = tuple((p.weights, p.bias) for p in w.model.pieces)
            uses_ctx = any(p.weights[4] for p in w.model.pieces)
            key = (pieces, w.role == "prefill", w.max_batch_tokens, self.snap.max_spec_len,
                   tuple(self.tpots), tuple(self.alphas),
                   tuple(self.avg_ctx) if uses_ctx else ())
            self._model_keys[id(w)] = key
        return key

    def config(self, w: PlanWorker, counts: tuple[int, ...]) -> DecodeConfig | None:
        """Decode configuration of worker w under admitted tier counts. Cached across plans:
        consecutive snapshots mostly revisit the same counts."""
        key = (self._model_key(w), counts)
        if key in _CONFIGS:
            return _CONFIGS[key]
        if len(_CONFIGS) > 100_000:
            _CONFIGS.clear()
        if w.role == "prefill":
            cfg = prefill_only(w.model, w.max_batch_tokens)
        else:
            cfg = choose_config(
                w.model, self.tier_loads(counts), self.snap.max_spec_len, w.max_batch_tokens
            )
        _CONFIGS[key] = cfg
        return cfg

    def tier_loads(self, counts: list[int] | tuple[int, ...]) -> list[TierLoad]:
        per = zip(self.tpots, counts, self.alphas, self.avg_ctx, strict=True)
        return [TierLoad(t, n, a, n * c) for t, n, a, c in per]


def _blocks(tokens: int, block_size: int) -> int:
    return -(-max(tokens, 0) // max(block_size, 1))


def _kv_blocks(r: PlanRequest, w: PlanWorker, frac: float) -> int:
    """KV blocks reserved for r on its decode side: its context now plus `frac` of the
    output still expected (frac = 1: its peak; r.kv_blocks overrides)."""
    if r.kv_blocks is not None:
        return r.kv_blocks
    rest = math.ceil(r.expected_output * frac)
    return _blocks(r.prompt_tokens + r.generated + rest, w.block_size)


def _remaining(r: PlanRequest) -> int:
    return r.prompt_tokens if r.remaining_prefill is None else r.remaining_prefill


def _item(r: PlanRequest, w: PlanWorker, tier: int, forced: bool, frac: float) -> _Item:
    kv = _kv_blocks(r, w, frac) if w.role == "mixed" else _blocks(r.prompt_tokens, w.block_size)
    return _Item(r, r.ttft_deadline, _remaining(r), kv, tier, forced)


def _add(counts: list[int] | tuple[int, ...], k: int, n: int = 1) -> tuple[int, ...]:
    out = list(counts)
    out[k] += n
    return tuple(out)


def _load_state(ctx: _Ctx, loads: dict[str, _Load]) -> tuple[list[PlanRequest], list[Decision]]:
    """Reserve every admitted request on its workers; returns the new requests."""
    new: list[PlanRequest] = []
    notes: list[Decision] = []
    pre = [w for w in ctx.snap.workers if w.role != "decode"]
    for r in ctx.snap.requests:
        if r.state == "new":
            new.append(r)
            continue
        k = ctx.tier_of[r.tpot]
        pw = loads.get(r.prefill_worker or "")
        dw = loads.get(r.decode_worker or "")
        if r.stage == "prefill" and (pw is None or pw.worker.role == "decode") and pre:
            # its prefill worker is gone: keep the request on the first prefill-capable one
            pw = loads[pre[0].id]
            if pw.worker.role == "mixed":
                dw = pw
            notes.append(Decision(r.id, "admit" if r.state == "admitted" else "best_effort",
                                  pw.worker.id, dw.worker.id if dw else None, "rerouted"))
        if r.state == "best_effort":
            if r.stage == "prefill" and pw is not None:
                pw.be_prefill.append(r)
            elif r.stage == "decode" and dw is not None:
                dw.be_decoders.append(r)
            continue
        if r.stage == "prefill" and pw is not None:
            it = _item(r, pw.worker, k, True, ctx.kv_frac)
            pw.queue.append(it)
            if pw is not dw:
                pw.kv_used += it.kv
        if dw is not None:
            dw.counts[k] += 1
            dw.kv_used += _kv_blocks(r, dw.worker, ctx.kv_frac)
            if r.stage == "decode":
                dw.decoders.append(r)
    return new, notes


def _dp(ctx: _Ctx, load: _Load, cands: list[_Item]) -> list[_Item]:
    """SLOs-Serve DP on one prefill-capable worker: the largest subset of `cands` that can be
    admitted next to the forced queue. States are keyed by admitted counts per tier (mixed
    workers: decode load shapes the prefill budget) or by the admitted count (prefill
    workers), each holding a Pareto set of (prefill tokens so far, KV blocks)."""
    w = load.worker
    mixed = w.role == "mixed"
    t0 = max(ctx.now, w.busy_until)
    base = tuple(load.counts)
    ntiers = len(base)
    if ctx.config(w, base) is None:
        return []
    budgets: dict[tuple, DecodeConfig | None] = {}
    model = w.model

    def budget(d: float, key: tuple) -> int:
        """Prefill tokens the worker can finish by time d with `key` more decoders."""
        k = key if mixed else ()
        if k in budgets:
            cfg = budgets[k]
        else:
            counts = tuple(b + x for b, x in zip(base, k, strict=True)) if mixed else base
            cfg = ctx.config(w, counts)
            if cfg is not None and cfg.prefill_tokens <= 0:
                cfg = None
            budgets[k] = cfg
        if cfg is None:
            return -1
        return prefill_within(model, cfg, d - t0)

    items = sorted(load.queue + cands, key=lambda it: (it.deadline, not it.forced))
    zero = (0,) * ntiers if mixed else (0,)
    # excess: how late the forced queue already is at each forced deadline (kept, not blamed)
    excess: list[int] = []
    cum = 0
    for it in items:
        if it.forced:
            cum += it.tokens
            excess.append(max(0, cum - budget(it.deadline, zero)))
            if excess[-1] > 0:
                load.unprotected.add(it.req.id)
        else:
            excess.append(0)
    cap = w.kv_capacity_blocks - load.kv_used
    # state: key -> Pareto list of (tokens, kv, chain of admitted candidates)
    states: dict[tuple, list[tuple[int, int, tuple | None]]] = {zero: [(0, 0, None)]}
    for it, ex in zip(items, excess, strict=True):
        if it.forced:
            nxt: dict[tuple, list] = {}
            for key, lst in states.items():
                lim = INF if key == zero else budget(it.deadline, key) + ex
                keep = [(c + it.tokens, m, ch) for c, m, ch in lst if c + it.tokens <= lim]
                if keep:
                    nxt[key] = keep
            states = nxt
            continue
        nxt = {k: list(v) for k, v in states.items()}
        for key, lst in states.items():
            nkey = _add(key, it.tier) if mixed else (key[0] + 1,)
            b = budget(it.deadline, nkey)
            if b < 0:
                continue
            for c, m, ch in lst:
                c2, m2 = c + it.tokens, m + it.kv
                if c2 <= b and m2 <= cap:
                    _pareto_add(nxt.setdefault(nkey, []), (c2, m2, (it, ch)))
        states = nxt
    best_key = max(states, key=lambda k: (sum(k), -min(s[0] for s in states[k])))
    chain = min(states[best_key], key=lambda s: (s[0], s[1]))[2]
    out: list[_Item] = []
    while chain is not None:
        out.append(chain[0])
        chain = chain[1]
    return out


def _pareto_add(lst: list, s: tuple) -> None:
    c, m = s[0], s[1]
    for o in lst:
        if o[0] <= c and o[1] <= m:
            return
    lst[:] = [o for o in lst if not (c <= o[0] and m <= o[1])]
    lst.append(s)


def _decode_fits(ctx: _Ctx, load: _Load, r: PlanRequest) -> bool:
    k = ctx.tier_of[r.tpot]
    if load.kv_used + _kv_blocks(r, load.worker, ctx.kv_frac) > load.worker.kv_capacity_blocks:
        return False
    return ctx.config(load.worker, _add(load.counts, k)) is not None


def _rotate(seq: list, start: int) -> list:
    if not seq:
        return []
    s = start % len(seq)
    return seq[s:] + seq[:s]


def _emit(
    ctx: _Ctx, load: _Load, cfg: DecodeConfig | None
) -> tuple[list[PlannedBatch], list[TierCadence], list[_Item]]:
    """Predict the worker's next batches: admitted decoders by EDF token deadline, then
    admitted prefill chunks in EDF order, then best-effort decode and prefill in what is left.
    Returns the batches, the tier cadences and the committed prefill items predicted late."""
    w, model = load.worker, load.worker.model
    t0 = max(ctx.now, w.busy_until)
    horizon = ctx.snap.decode_horizon
    feasible = cfg is not None
    if cfg is None:  # admitted decode load no longer sustainable: plain decoding, no claims
        u = min(ctx.tpots) if ctx.tpots else 0.05
        k = len(ctx.tpots)
        cfg = DecodeConfig(u, (0,) * k, (1,) * k, (1.0,) * k, 0, w.max_batch_tokens, 0)
    u = cfg.period
    prefills = w.role != "decode"
    cadences: list[TierCadence] = []
    if w.role != "prefill":
        for k, n in enumerate(load.counts):
            if n > 0 and k < len(cfg.spec):
                e = cfg.expected[k]
                cadences.append(TierCadence(ctx.tpots[k], cfg.spec[k], ctx.alphas[k], e,
                                            e * ctx.tpots[k], cfg.every[k], n))
    heap: list = []
    seq = 0
    per_tier = [0] * len(ctx.tpots)
    for r in load.decoders:
        k = ctx.tier_of[r.tpot]
        if r.token_deadline is not None:
            d = r.token_deadline
        else:  # unknown pace: stagger the tier over its cadence
            m = cfg.every[k] if k < len(cfg.every) else 1
            d = t0 + u * (1 + per_tier[k] % m)
            per_tier[k] += 1
        heap.append((d, seq, r, k))
        seq += 1
    heapq.heapify(heap)
    be_heap = [(r.token_deadline or t0, i, r, ctx.tier_of[r.tpot])
               for i, r in enumerate(load.be_decoders)]
    heapq.heapify(be_heap)
    queue = [[it, it.tokens, it.req.prompt_tokens - it.tokens] for it in load.queue]
    queue.sort(key=lambda q: q[0].deadline)
    be_queue = sorted(load.be_prefill, key=lambda r: r.ttft_deadline)
    be_left = [_remaining(r) for r in be_queue]
    qi = bi = 0
    late: list[_Item] = []
    batches: list[PlannedBatch] = []
    s = t0
    spec = cfg.spec
    agg: BatchShape | None = None
    while True:
        work_prefill = prefills and (qi < len(queue) or bi < len(be_queue))
        if not work_prefill and not (heap and len(batches) < horizon):
            break
        if len(batches) >= (PREFILL_HORIZON if prefills and qi < len(queue) else horizon):
            break  # committed prompts are followed to the end; best effort only briefly
        claim = INF
        dec: list[tuple[str, int]] = []
        dtok = ver = nreq = ctxt = steps = 0
        served: list[tuple[PlanRequest, int]] = []
        served_d: list[float] = []
        reserved = 0
        if heap and len(batches) >= horizon:  # past the horizon: decode in aggregate
            if agg is None:
                agg = decode_shape(ctx.tier_loads(load.counts), cfg.spec, cfg.every)
            dtok, ver, nreq = agg.decode_tokens, agg.verify_tokens, agg.num_requests
            ctxt, steps = agg.context_tokens, agg.spec_steps
            reserved = dtok + ver
        while not reserved and heap and heap[0][0] < s + 2 * u and dtok + ver < cfg.step_tokens:
            d, _, r, k = heapq.heappop(heap)
            sp = spec[k] if k < len(spec) else 0
            dec.append((r.id, 1 + sp))
            if sp > 0:
                ver += 1 + sp
                steps = max(steps, sp)
            else:
                dtok += 1
            nreq += 1
            ctxt += r.prompt_tokens + r.generated
            if feasible and d >= s + u - 1e-9:
                claim = min(claim, d)
            served.append((r, k))
            served_d.append(d)
        shape = BatchShape(0, dtok, ver, nreq, ctxt, steps)
        room = 0
        if prefills:
            room = w.max_batch_tokens - dtok - ver
            if w.role == "mixed":
                room = min(room, model.prefill_capacity(u, shape))
        pre: list[tuple[str, int]] = []
        finished: list[_Item] = []
        ptok = 0
        limit = INF  # the batch must end by the deadline of each prompt it finishes
        while room > 0 and qi < len(queue):
            q = queue[qi]
            n = min(room, q[1])
            fin = n == q[1] and q[0].req.id not in load.unprotected
            lim = min(limit, q[0].deadline) if fin else limit
            if lim < INF:  # the most prefill tokens that still end by lim
                shape = BatchShape(0, dtok, ver, nreq + 1, ctxt + q[2], steps)
                cap = model.prefill_capacity(lim - s, shape) - ptok
                if cap >= n:
                    limit = lim
                    room = min(room, cap)
                elif limit < INF:  # would make an earlier finisher late: a smaller chunk
                    n = cap
                    if n <= 0:
                        break
            pre.append((q[0].req.id, n))
            ctxt += q[2]
            q[1] -= n
            q[2] += n
            room -= n
            ptok += n
            nreq += 1
            if q[1] == 0:
                finished.append(q[0])
                qi += 1
        while not reserved and be_heap and be_heap[0][0] < s + 2 * u and room > 0:
            _, _, r, k = heapq.heappop(be_heap)
            dec.append((r.id, 1))
            dtok += 1
            nreq += 1
            room -= 1
        while room > 0 and bi < len(be_queue):
            n = min(room, be_left[bi])
            pre.append((be_queue[bi].id, n))
            be_left[bi] -= n
            room -= n
            ptok += n
            nreq += 1
            if be_left[bi] == 0:
                bi += 1
        end = s + model.predict(BatchShape(ptok, dtok, ver, nreq, ctxt, steps))
        for it in finished:
            if it.req.id in load.unprotected:
                continue
            claim = min(claim, it.deadline)
            if end > it.deadline + 1e-9:
                late.append(it)
        for (r, k), d in zip(served, served_d, strict=True):
            # token-bucket pacing: the next verify step is due one interval after this one was
            heapq.heappush(heap, (max(d, end) + cfg.expected[k] * ctx.tpots[k], seq, r, k))
            seq += 1
        if not pre and not dec and not reserved:
            s = max(s + u, heap[0][0] - u) if heap else s + u  # idle until a token is due
            continue
        batches.append(PlannedBatch(s, end, pre, dec, claim, reserved))
        # decoders pace batches at the period; waiting prefill runs back to back
        paced = heap and not (prefills and (qi < len(queue) or bi < len(be_queue)))
        s = max(end, s + u) if paced else end
    return batches, cadences, late


def plan(snap: Snapshot) -> Plan:
    """Decide admission, routing, chunked-prefill order and per-tier decode cadence."""
    ctx = _Ctx(snap)
    loads = {w.id: _Load(w, [0] * len(ctx.tpots)) for w in snap.workers}
    new, decisions = _load_state(ctx, loads)
    pre = [w.id for w in snap.workers if w.role != "decode"]
    dec = [w.id for w in snap.workers if w.role == "decode"]
    dec = dec or [w.id for w in snap.workers if w.role == "mixed"]
    new.sort(key=lambda r: (r.ttft_deadline if r.stage == "prefill" else -INF, r.arrival))
    route = {r.id: i + snap.route_start for i, r in enumerate(new)}
    placed: dict[str, tuple[_Load | None, _Load | None, _Item | None]] = {}
    why: dict[str, str] = {}

    # 1. prefill side: per-worker DP, declined requests move on to the next worker in turn
    targets: dict[str, list[str]] = {}
    pending: dict[str, list[PlanRequest]] = {}
    pos: dict[str, int] = {}
    for r in new:
        if r.stage == "decode":
            continue
        if r.ttft_deadline <= snap.now:
            why[r.id] = "TTFT deadline already passed"
            continue
        fits = any(_decode_fits(ctx, loads[d], r) for d in dec)
        ts = [w for w in _rotate(pre, route[r.id]) if fits or loads[w].worker.role == "mixed"]
        if not ts:
            why[r.id] = "no decode capacity for its TPOT tier" if pre else "no prefill worker"
            continue
        targets[r.id], pos[r.id] = ts, 0
        pending.setdefault(ts[0], []).append(r)
    while pending:
        nxt: dict[str, list[PlanRequest]] = {}
        for wid, reqs in pending.items():
            load = loads[wid]
            cands = [_item(r, load.worker, ctx.tier_of[r.tpot], False, ctx.kv_frac) for r in reqs]
            chosen = {id(it) for it in _dp(ctx, load, cands)}
            for it in cands:
                r = it.req
                if id(it) in chosen:
                    it.forced = True
                    load.queue.append(it)
                    load.new_ids.add(r.id)
                    load.kv_used += it.kv
                    if load.worker.role == "mixed":
                        load.counts[it.tier] += 1
                        placed[r.id] = (load, load, it)
                    else:
                        placed[r.id] = (load, None, it)
                    continue
                pos[r.id] += 1
                if pos[r.id] < len(targets[r.id]):
                    nxt.setdefault(targets[r.id][pos[r.id]], []).append(r)
                else:
                    why[r.id] = "no worker can meet its TTFT and TPOT"
        pending = nxt

    # 2. decode side of disaggregated admissions (and new requests already decoding)
    for r in new:
        p = placed.get(r.id)
        if r.stage == "prefill" and (p is None or p[1] is not None):
            continue
        dl = next((loads[d] for d in _rotate(dec, route[r.id]) if _decode_fits(ctx, loads[d], r)),
                  None)
        if dl is None:
            if p is not None:
                _unplace(loads, p, r, ctx.tier_of[r.tpot], ctx.kv_frac)
                del placed[r.id]
            why[r.id] = "no decode worker can sustain its TPOT"
            continue
        dl.counts[ctx.tier_of[r.tpot]] += 1
        dl.kv_used += _kv_blocks(r, dl.worker, ctx.kv_frac)
        if r.stage == "decode":
            dl.decoders.append(r)
            dl.new_ids.add(r.id)
        placed[r.id] = (p[0] if p else None, dl, p[2] if p else None)

    # 3. best effort and rejections
    out: list[Decision] = []
    for r in new:
        if r.id in placed:
            continue
        if r.on_decline == "reject" or not (pre or dec):
            out.append(Decision(r.id, "reject", None, None, why.get(r.id, "")))
            continue
        pl = loads[_rotate(pre, route[r.id])[0]] if pre and r.stage == "prefill" else None
        dl = pl if pl is not None and pl.worker.role == "mixed" else None
        if dl is None and dec:
            dl = loads[_rotate(dec, route[r.id])[0]]
        if pl is not None:
            pl.be_prefill.append(r)
        elif dl is not None:
            dl.be_decoders.append(r)
        out.append(Decision(r.id, "best_effort", pl.worker.id if pl else None,
                            dl.worker.id if dl else None, why.get(r.id, "")))

    # 4. schedules; a newly admitted request predicted late is declined (repair)
    prefill_plans: dict[str, PrefillSchedule] = {}
    decode_plans: dict[str, DecodePlan] = {}
    for w in sorted(snap.workers, key=lambda w: w.role == "decode"):
        load = loads[w.id]
        while True:
            cfg = ctx.config(w, tuple(load.counts))
            batches, cadences, late = _emit(ctx, load, cfg)
            if not late:
                break
            victim = _victim(load, late)
            if victim is None:  # only earlier admissions are late: keep them, claim nothing
                load.unprotected.update(it.req.id for it in late)
                continue
            r = victim.req
            _unplace(loads, placed.pop(r.id), r, ctx.tier_of[r.tpot], ctx.kv_frac)
            why[r.id] = "predicted to miss its TTFT"
            if r.on_decline == "reject":
                out.append(Decision(r.id, "reject", None, None, why[r.id]))
            else:
                load.be_prefill.append(r)
                dw = w.id if w.role == "mixed" else (_rotate(dec, route[r.id]) or [None])[0]
                out.append(Decision(r.id, "best_effort", w.id, dw, why[r.id]))
        if w.role != "decode":
            order = [it.req.id for it in sorted(load.queue, key=lambda it: it.deadline)]
            order += [r.id for r in sorted(load.be_prefill, key=lambda r: r.ttft_deadline)]
            budget = cfg.prefill_tokens if cfg else 0
            prefill_plans[w.id] = PrefillSchedule(w.id, budget, order, batches)
        if w.role != "prefill":
            c = cfg
            decode_plans[w.id] = DecodePlan(
                w.id, c.period if c else 0.0, c.step_tokens if c else 0,
                c.decode_tokens if c else 0, c.prefill_tokens if c else 0,
                cadences, batches, c is not None)
    for r in new:
        if r.id in placed:
            p = placed[r.id]
            out.append(Decision(r.id, "admit", p[0].worker.id if p[0] else None,
                                p[1].worker.id if p[1] else None, "meets TTFT and TPOT"))
    admitted = [r.id for r in snap.requests if r.state == "admitted"] + list(placed)
    order = {r.id: i for i, r in enumerate(snap.requests)}
    out.sort(key=lambda d: order.get(d.request_id, 0))
    return Plan(snap.now, decisions + out, prefill_plans, decode_plans, admitted)


def _victim(load: _Load, late: list[_Item]) -> _Item | None:
    """Moore-Hodgson repair: the largest new admission due no later than the first late one."""
    first = min(it.deadline for it in late)
    new = [it for it in load.queue if it.req.id in load.new_ids and it.deadline <= first + 1e-9]
    return max(new, key=lambda it: it.tokens) if new else None


def _unplace(
    loads: dict[str, _Load], p: tuple, r: PlanRequest, tier: int, frac: float
) -> None:
    """Undo a placement made by this plan (prefill queue, KV and decode reservations)."""
    pl, dl, it = p
    if pl is not None and it is not None:
        pl.queue.remove(it)
        pl.new_ids.discard(r.id)
        pl.kv_used -= it.kv
    if dl is not None:
        dl.counts[tier] -= 1
        if dl is not pl:
            dl.kv_used -= _kv_blocks(r, dl.worker, frac)
        if r in dl.decoders:
            dl.decoders.remove(r)
