"""SLOs-Serve's admission DP on one prefill-capable worker.

Candidates and the committed queue in deadline order; states keyed by the admitted counts
per TPOT tier (mixed workers: decode load shapes the prefill budget) or by the admitted count
(prefill workers), each a Pareto set of (prefill tokens so far, KV blocks). Admitting a
candidate needs its tokens within the budget at its deadline and its blocks within the KV left.
"""

from __future__ import annotations

from typing import NamedTuple

from slos_serve.core.planner.context import INF, PlanContext, with_one_more
from slos_serve.core.planner.load import QueuedPrompt, WorkerLoad
from slos_serve.core.spec import PrefillCurve


class Chain(NamedTuple):
    """The candidates a DP state admitted, newest first (a linked list shared by states)."""

    prompt: QueuedPrompt
    rest: Chain | None


class DpState(NamedTuple):
    tokens: int  # prefill tokens of the committed and admitted prompts so far
    kv: int  # KV blocks of the admitted candidates
    chain: Chain | None


class PrefillBudget:
    """Prefill tokens the worker can finish by a deadline with some more decoders admitted.
    Values are kept: a worker's DP runs once per routing round, mostly on the same base load
    and so over the same committed deadlines and keys."""

    def __init__(self, ctx: PlanContext, load: WorkerLoad, local: bool = True) -> None:
        self.ctx = ctx
        self.worker = load.worker
        self.mixed = load.role == "mixed" and local  # admissions add decoders here
        self.t0 = max(ctx.now, load.worker.busy_until)
        self.base = tuple(load.counts)
        self._curves: dict[tuple, PrefillCurve | None] = {}
        self._values: dict[tuple[tuple, float], int] = {}

    def feasible(self) -> bool:
        return self.ctx.config(self.worker, self.base) is not None

    def __call__(self, deadline: float, key: tuple) -> int:
        """-1: no configuration sustains the decoders of `key` (added to the base load)."""
        k = key if self.mixed else ()
        v = self._values.get((k, deadline))
        if v is None:
            v = self._values[(k, deadline)] = self._budget(deadline, k)
        return v

    def _budget(self, deadline: float, k: tuple) -> int:
        if k in self._curves:
            curve = self._curves[k]
        else:
            counts = (tuple(b + x for b, x in zip(self.base, k, strict=True)) if self.mixed
                      else self.base)
            cfg = self.ctx.config(self.worker, counts)
            ok = cfg is not None and cfg.prefill_tokens > 0
            curve = self._curves[k] = PrefillCurve(self.worker.model, cfg) if ok else None
        if curve is None:
            return -1
        return curve.within(deadline - self.t0)


BudgetCache = dict[tuple[str, tuple[int, ...], bool], PrefillBudget]  # worker, base, local


def select(
    ctx: PlanContext, load: WorkerLoad, cands: list[QueuedPrompt], local: bool = True,
    budgets: BudgetCache | None = None,
) -> list[QueuedPrompt]:
    """The largest subset of `cands` the worker can admit next to its committed queue
    (local: they decode here too, on a mixed worker; else they hand their KV off).
    `budgets`: the plan's budgets so far (kept across its routing rounds)."""
    budget = _budget_of(ctx, load, local, {} if budgets is None else budgets)
    if not budget.feasible():
        return []
    items = sorted(load.queue + cands, key=lambda it: (it.deadline, not it.committed))
    zero = (0,) * len(budget.base) if budget.mixed else (0,)
    excess = _committed_excess(load, items, budget, zero)
    cap = load.worker.kv_capacity_blocks - load.kv_used
    states: dict[tuple, list[DpState]] = {zero: [DpState(0, 0, None)]}
    run: list[tuple[QueuedPrompt, int]] = []  # committed prompts since the last candidate
    for it, ex in zip(items, excess, strict=True):
        if it.committed:
            run.append((it, ex))
            continue
        if run:
            states, run = _keep_committed(states, run, budget, zero), []
        states = _try_candidate(states, it, budget, cap)
    if run:
        states = _keep_committed(states, run, budget, zero)
    # the most admissions; among those the fewest prefill tokens, then the fewest KV blocks
    best_key = max(states, key=lambda k: (sum(k), -min(c for c, _, _ in states[k])))
    chain = min(states[best_key], key=lambda s: (s.tokens, s.kv)).chain
    out: list[QueuedPrompt] = []
    while chain is not None:
        out.append(chain.prompt)
        chain = chain.rest
    return out


def _budget_of(ctx: PlanContext, load: WorkerLoad, local: bool,
               budgets: BudgetCache) -> PrefillBudget:
    key = (load.worker.id, tuple(load.counts), local)
    budget = budgets.get(key)
    if budget is None:
        budget = budgets[key] = PrefillBudget(ctx, load, local)
    return budget


def _committed_excess(
    load: WorkerLoad, items: list[QueuedPrompt], budget: PrefillBudget, zero: tuple
) -> list[int]:
    """How late the committed queue already is at each committed deadline: allowed to it (not
    blamed on candidates); such prompts are marked unprotected (no batch claims them)."""
    excess: list[int] = []
    cum = 0
    for it in items:
        if it.committed:
            cum += it.tokens
            excess.append(max(0, cum - budget(it.deadline, zero)))
            if excess[-1] > 0:
                load.unprotected.add(it.req.id)
        else:
            excess.append(0)
    return excess


def _keep_committed(
    states: dict[tuple, list[DpState]], run: list[tuple[QueuedPrompt, int]],
    budget: PrefillBudget, zero: tuple,
) -> dict[tuple, list[DpState]]:
    """Every state must still fit each committed prompt of the run (consecutive in deadline
    order, with its excess) by its deadline: a state of c tokens must have c + (the run's
    tokens up to the prompt) <= the budget there, i.e. c <= the run's least room."""
    total = sum(it.tokens for it, _ in run)
    nxt: dict[tuple, list[DpState]] = {}
    for key, lst in states.items():
        room = INF
        if key != zero:
            lowest = min(c for c, _, _ in lst)
            cum = 0
            for it, ex in run:
                cum += it.tokens
                room = min(room, budget(it.deadline, key) + ex - cum)
                if room < lowest:
                    break
        keep = [DpState(c + total, m, ch) for c, m, ch in lst if c <= room]
        if keep:
            nxt[key] = keep
    return nxt


def _try_candidate(
    states: dict[tuple, list[DpState]], it: QueuedPrompt, budget: PrefillBudget, cap: int
) -> dict[tuple, list[DpState]]:
    """Each state either skips the candidate or admits it, if it fits by its deadline. The
    lists of `states` are shared with the result until a state is added to them."""
    nxt = dict(states)
    copied: set[tuple] = set()
    for key, lst in states.items():
        nkey = with_one_more(key, it.tier) if budget.mixed else (key[0] + 1,)
        b = budget(it.deadline, nkey)
        if b < 0:
            continue
        for c, m, ch in lst:
            c2, m2 = c + it.tokens, m + it.kv
            if c2 <= b and m2 <= cap:
                if nkey not in copied:
                    copied.add(nkey)
                    nxt[nkey] = list(nxt.get(nkey, ()))
                _pareto_add(nxt[nkey], DpState(c2, m2, Chain(it, ch)))
    return nxt


def _pareto_add(lst: list[DpState], s: DpState) -> None:
    c, m = s.tokens, s.kv
    for oc, om, _ in lst:
        if oc <= c and om <= m:
            return
    lst[:] = [o for o in lst if not (c <= o.tokens and m <= o.kv)]
    lst.append(s)
