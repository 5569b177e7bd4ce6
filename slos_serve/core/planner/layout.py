"""Conditional disaggregation (Snapshot.adaptive_layout): where a request decodes, and which role
each worker plays.

Per request (steps.admit_prompts, admit_decodes): the workers that would prefill it soonest
(`prefill_wait`: the prompt tokens queued there, counting those this plan routed before it,
over the prefill rate its decode configuration leaves) are tried first; on each, the prompt
first tries to prefill and decode there (the DP with its decode tier counted on that worker),
then to prefill there and hand its KV off (the DP with only that worker's own decoders), the
decode side going to the least loaded other worker that sustains every TPOT with it added and,
if that worker is mixed, still meets its own committed prompts' deadlines. Local before
hand-off on one worker: it moves no KV and needs no second worker's decode capacity.

Per worker (`next_roles`, after admission): a mixed worker whose decode configuration leaves
almost nothing of its batches to prefill turns to decode (back to mixed with some room); the
mixed worker with the fewest decoders turns to prefill while the plan declines prompts and the
model predicts the cluster prefills GAIN times faster with its decoders moved to the others,
the others keeping HEADROOM (they could sustain twice the decoders and KV they would hold); a
drain to prefill stops (mixed again) once that move no longer pays; a prefill worker is mixed
again when taking a share of the decoders back pays as much, or a decode worker can no longer
sustain its load or has KV_FULL of its memory reserved (a prefill worker's memory holds no
decodes: where KV binds, the fixed 1P+1D layout loses). A change to a pure role drains first:
the worker takes no new work of the kind it gives up and switches once the last such request
has left it; a change back to mixed adds a kind and is immediate. At least one worker keeps
taking prompts and one decodes.
"""

from __future__ import annotations

from slos_serve.core.planner.context import INF, PlanContext, with_one_more
from slos_serve.core.planner.dp import PrefillBudget
from slos_serve.core.planner.load import WorkerLoad
from slos_serve.core.planner.records import PlanWorker, WorkerRole
from slos_serve.core.spec import choose_config

DECODE_BOUND = 1 / 32  # below this share of a batch left to prefill a mixed worker decodes
MIXED_AGAIN = 1 / 8  # a decode worker with this share free takes prompts again
GAIN = 1.1  # a layout change must raise the predicted cluster prefill rate this much
HEADROOM = 2  # ... and leave the decode workers room for this many times their load and KV
KV_FULL = 0.9  # a prefill worker decodes again when a decode worker's KV is this full


def takes_prompts(w: PlanWorker) -> bool:
    """New prompts may be routed to w (not a decode worker, nor draining towards one)."""
    return w.role != "decode" and w.target_role != "decode"


def takes_decodes(w: PlanWorker) -> bool:
    """New decodes may be placed on w (not a prefill worker, nor draining towards one)."""
    return w.role != "prefill" and w.target_role != "prefill"


def decodes_locally(w: PlanWorker) -> bool:
    """A new prompt on w may also decode there."""
    return w.role == "mixed" and w.target_role is None


def decode_load(load: WorkerLoad) -> tuple[int, int]:
    """Least decode load first: admitted decoders, then reserved KV."""
    return sum(load.counts), load.kv_used


def keeps_prompts(ctx: PlanContext, load: WorkerLoad, tier: int) -> bool:
    """One more decoder of `tier` on a mixed worker leaves its committed prompts on time
    (each as late as it already was, at most): its decoders shrink the prefill budget."""
    if load.role != "mixed" or not load.queue:
        return True
    budget = PrefillBudget(ctx, load)
    zero = (0,) * len(load.counts)
    more = with_one_more(zero, tier)
    cum = 0
    for it in sorted(load.queue, key=lambda it: it.deadline):
        cum += it.tokens
        if it.req.id in load.unprotected:
            continue
        after = budget(it.deadline, more)
        if after < 0 or cum > after + max(0, cum - budget(it.deadline, zero)):
            return False
    return True


def prefill_share(ctx: PlanContext, load: WorkerLoad) -> float:
    """The share of a batch the worker's decode configuration leaves to prefill."""
    cfg = ctx.config(load.worker, tuple(load.counts))
    if cfg is None:
        return 0.0
    return max(cfg.prefill_tokens, 0) / max(load.worker.max_batch_tokens, 1)


def prefill_rate(ctx: PlanContext, w: PlanWorker, counts: tuple[int, ...]) -> float:
    """Prefill tokens per second w sustains next to decoders `counts`, whatever its role
    (-1: it cannot sustain them)."""
    if w.role == "prefill":
        cfg = choose_config(w.model, ctx.tier_loads(counts), ctx.snap.max_spec_len,
                            w.max_batch_tokens)
    else:
        cfg = ctx.config(w, counts)
    if cfg is None or cfg.prefill_tokens <= 0:
        return -1.0
    return cfg.prefill_tokens / (cfg.batch_time or cfg.period)  # back to back while it waits


def prefill_wait(backlog: int, rate: float) -> float:
    """Seconds until a worker prefilling at `rate` (prefill_rate) clears `backlog` prompt
    tokens: the routing key of conditional disaggregation (a worker that cannot prefill
    last)."""
    return backlog / rate if rate > 0 else INF


def _rate_after(ctx: PlanContext, loads: list[WorkerLoad], moves: list[list[int]],
                kv: list[int]) -> float:
    """The predicted prefill rate of `loads` with `moves` decoders (and `kv` blocks) added
    to each; -1 if one of them cannot sustain its decoders or hold their KV."""
    total = 0.0
    for load, add, blocks in zip(loads, moves, kv, strict=True):
        if load.kv_used + blocks > load.worker.kv_capacity_blocks:
            return -1.0
        rate = prefill_rate(ctx, load.worker, tuple(a + b for a, b in zip(load.counts, add,
                                                                          strict=True)))
        if rate < 0:
            return -1.0
        total += rate
    return total


def spread(counts: list[int], kv: int, to: list[WorkerLoad]) -> tuple[list[list[int]], list[int]]:
    """Decoders `counts` (holding `kv` blocks) spread over `to`, one at a time to the one
    with the fewest decoders: what each receives, and its share of the blocks."""
    moves = [[0] * len(counts) for _ in to]
    have = [sum(load.counts) for load in to]
    for k, n in enumerate(counts):
        for _ in range(n):
            i = min(range(len(to)), key=lambda j: (have[j], j))
            moves[i][k] += 1
            have[i] += 1
    total = max(sum(counts), 1)
    return moves, [kv * sum(m) // total for m in moves]


def better_as_prefill(ctx: PlanContext, load: WorkerLoad, others: list[WorkerLoad]) -> bool:
    """Moving this mixed worker's decoders to `others` (it prefills only) raises the
    predicted prefill rate of the cluster by GAIN, every worker still sustaining its TPOTs."""
    if not others:
        return False
    zero = [0] * len(load.counts)
    mine = prefill_rate(ctx, load.worker, tuple(load.counts))
    rest = _rate_after(ctx, others, [zero] * len(others), [0] * len(others))
    full = prefill_rate(ctx, load.worker, tuple(zero))
    now = mine + rest
    if full + rest <= GAIN * now:  # an upper bound: more decoders never prefill faster
        return False
    decode_kv = load.kv_used - sum(it.kv for it in load.queue if not it.local)
    moves, kv = spread(load.counts, decode_kv, others)
    after = _rate_after(ctx, others, moves, kv)
    if after < 0 or full + after <= GAIN * now:
        return False
    # headroom: the receivers would still sustain HEADROOM times the decoders they would hold
    # (else the next burst of decodes turns the layout back at once)
    grown = [[HEADROOM * (a + b) for a, b in zip(o.counts, m, strict=True)]
             for o, m in zip(others, moves, strict=True)]
    return all(prefill_rate(ctx, o.worker, tuple(g)) >= 0
               and HEADROOM * (o.kv_used + k) <= o.worker.kv_capacity_blocks
               for o, g, k in zip(others, grown, kv, strict=True))


def better_as_mixed(ctx: PlanContext, load: WorkerLoad, others: list[WorkerLoad]) -> bool:
    """Taking an equal share of the decoders of `others` onto this prefill worker raises
    the predicted prefill rate of the cluster by GAIN, or `others` no longer sustain theirs or
    fill their KV (a pure prefill worker's memory holds no decodes)."""
    zero = [0] * len(load.counts)
    now = _rate_after(ctx, others, [zero] * len(others), [0] * len(others))
    if now < 0 or any(o.kv_used > KV_FULL * o.worker.kv_capacity_blocks for o in others):
        return True  # the decode workers no longer sustain their load, or their KV fills
    share = [[-(n // (len(others) + 1)) for n in o.counts] for o in others]
    taken = [-sum(col) for col in zip(*share, strict=True)] if share else zero
    mine = prefill_rate(ctx, load.worker, tuple(taken))
    after = _rate_after(ctx, others, share, [0] * len(others))
    full = prefill_rate(ctx, load.worker, tuple(zero))
    return mine >= 0 and after >= 0 and mine + after > GAIN * (full + now)


def next_roles(ctx: PlanContext, loads: dict[str, WorkerLoad],
               pressed: bool = True) -> dict[str, WorkerRole]:
    """Each worker's role and drain target after this plan's admissions: drains advance,
    decode-bound workers decode, and at most one worker a plan turns to (or from) prefill
    where the model predicts the cluster prefills faster so, and only while prompts are
    declined (`pressed`): below that the cluster's prefill rate binds nothing and a pure
    prefill worker only lengthens the TTFT of what it hands off."""
    out = {wid: step_role(ctx, load) for wid, load in loads.items()}
    decoding = [load for load in loads.values() if takes_decodes(load.worker)]
    mixed = [ld for ld in decoding if decodes_locally(ld.worker) and out[ld.worker.id].target
             is None and out[ld.worker.id].role == "mixed"]
    for ld in loads.values():  # a drain to prefill stops once it no longer pays
        if out[ld.worker.id].target == "prefill" and not better_as_prefill(ctx, ld, decoding):
            out[ld.worker.id] = WorkerRole("mixed")
    if pressed and len(decoding) > 1 and mixed:
        w = min(mixed, key=lambda ld: (sum(ld.counts), ld.worker.id))
        if better_as_prefill(ctx, w, [ld for ld in decoding if ld is not w]):
            out[w.worker.id] = WorkerRole("mixed", "prefill")
    pure = [ld for ld in loads.values() if ld.worker.role == "prefill"]
    if pure and decoding:
        w = pure[0]
        if better_as_mixed(ctx, w, decoding):
            out[w.worker.id] = WorkerRole("mixed")
    for takes in (takes_prompts, takes_decodes):  # one worker keeps taking each kind
        if not any(takes(_as_worker(loads[wid].worker, r)) for wid, r in out.items()):
            for wid, load in loads.items():  # undo the changes that left none
                if takes(load.worker):
                    out[wid] = WorkerRole(load.worker.role, load.worker.target_role)
    return out


def _as_worker(w: PlanWorker, r: WorkerRole) -> PlanWorker:
    return PlanWorker(w.id, r.role, w.model, w.kv_capacity_blocks, target_role=r.target)


def step_role(ctx: PlanContext, load: WorkerLoad) -> WorkerRole:
    """One worker's next role by its own load: a drain ends once the last request of the
    kind it gives up has left; a decode-bound mixed worker drains to decode, and a decode
    worker with prefill room is mixed again (a prefill worker stays, see next_roles)."""
    w = load.worker
    if w.target_role == "decode":
        drained = not load.queue and not load.best_effort_prompts
        return WorkerRole("decode") if drained else WorkerRole(w.role, "decode")
    if w.target_role == "prefill":
        drained = not any(load.counts) and not load.best_effort_decoders
        return WorkerRole("prefill") if drained else WorkerRole(w.role, "prefill")
    if w.role == "decode":
        return WorkerRole("mixed" if prefill_share(ctx, load) >= MIXED_AGAIN else "decode")
    if w.role == "mixed" and prefill_share(ctx, load) < DECODE_BOUND:
        return WorkerRole("mixed", "decode")
    return WorkerRole(w.role)
