"""SLO-adaptive speculative decoding and the decode batch configuration.

E(n) = (1 - alpha^(n+1)) / (1 - alpha): expected tokens a verify step of n draft tokens yields,
counting the bonus token the target model always emits (n = 0 is plain decoding, E = 1).
This is the "+1" variant of the reference; alpha is the per-token acceptance rate of a tier.

Configuration rule (SLOs-Serve): pick a binding tier i and its length j; the batch period is
u = E(j) * T_i; every other tier k gets the smallest sd_k with E(sd_k) * T_k >= u. Departure:
a tier whose interval E(sd_k) * T_k spans m >= 2 periods is served in one batch out of m
(the paper's EDF cadence, where loose tiers skip batches) instead of in every batch. Among
valid configurations the one leaving the most prefill tokens per second wins (on decode-only
workers, the most spare tokens per second for best-effort work).

The whole SLO, not prefill throughput alone (departures from the paper's rule):
- TTFT bound: a prompt that arrives while a full batch runs waits for the rest of it, then
  needs its own batch, which carries the decode part too; a long period makes tight TTFTs
  miss. A configuration is valid only if the fraction of arriving prompts it makes late
  (`ttft_miss`, from the recent arrivals' TTFTs: ttft_window.TtftOutlook) is at most
  TTFT_MISS_BUDGET; the longest period within that bound is a candidate too (each tier
  taking there the fewest drafts that keep its pace).
Ties in prefill rate go to the shorter period (its tokens come sooner).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass
from typing import NamedTuple

from slos_serve.core.memo import trim
from slos_serve.core.perf_model import BatchShape, PerfModel
from slos_serve.core.ttft_window import TtftOutlook

TTFT_MISS_BUDGET = 0.01  # arriving prompts a configuration may make late (expected share)
BISECT_STEPS = 6  # of the longest period within the TTFT bound


def expected_tokens(n: int, alpha: float) -> float:
    """Expected tokens from one verify step with n drafts (bonus token included)."""
    if n <= 0 or alpha <= 0.0:
        return 1.0
    if alpha >= 1.0:
        return float(n + 1)
    return (1.0 - alpha ** (n + 1)) / (1.0 - alpha)


@dataclass(frozen=True, slots=True)
class TierLoad:
    tpot: float
    count: int
    alpha: float = 0.0
    context_tokens: int = 0  # sum over the tier's requests


@dataclass(slots=True)
class DecodeConfig:
    period: float  # u, seconds per batch
    spec: tuple[int, ...]  # per tier, aligned with the TierLoad list
    every: tuple[int, ...]  # tier k served once every every[k] batches
    expected: tuple[float, ...]  # E(spec[k])
    decode_tokens: int  # worst batch: sum_k ceil(n_k / every_k) * (1 + spec_k)
    step_tokens: int  # all tokens a batch of `period` holds
    prefill_tokens: int  # step_tokens - decode_tokens
    base: BatchShape = BatchShape()  # decode part of the worst batch (no prefill)
    batch_time: float = 0.0  # predicted time of that batch with its prefill (<= period; 0: =)

    @property
    def prefill_rate(self) -> float:
        return self.prefill_tokens / self.period


def decode_shape(
    tiers: list[TierLoad], spec: tuple[int, ...], every: tuple[int, ...]
) -> BatchShape:
    """Worst-case decode part of one batch under a configuration."""
    dec = ver = reqs = ctx = steps = 0
    for t, s, m in zip(tiers, spec, every, strict=True):
        if t.count <= 0:
            continue
        n = -(-t.count // m)
        reqs += n
        ctx += -(-t.context_tokens * n // t.count)
        if s > 0:
            ver += n * (s + 1)
            steps = max(steps, s)
        else:
            dec += n
    return BatchShape(0, dec, ver, reqs, ctx, steps)


def prefill_only(model: PerfModel, max_batch_tokens: int) -> DecodeConfig:
    u = model.predict(BatchShape(prefill_tokens=max_batch_tokens, num_requests=1))
    return DecodeConfig(u, (), (), (), 0, max_batch_tokens, max_batch_tokens, BatchShape(), u)


def choose_config(
    model: PerfModel, tiers: list[TierLoad], max_spec_len: int, max_batch_tokens: int,
    outlook: TtftOutlook | None = None, prefill_share: float = 1.0,
) -> DecodeConfig | None:
    """Best configuration for the decoding load `tiers` within the TTFT bound (module
    docstring; `prefill_share`: this worker's share of the arriving prompts); None if no
    period sustains the load. A load no period within the bound sustains gets the shortest
    sustainable period (the bound is about what may arrive, not what is decoding)."""
    if not any(t.count > 0 for t in tiers):
        cfg = prefill_only(model, max_batch_tokens)
        k = len(tiers)
        return DecodeConfig(cfg.period, (0,) * k, (1,) * k, (1.0,) * k, 0, cfg.step_tokens,
                            cfg.prefill_tokens)
    search = PeriodSearch(model, tiers, tier_grid(tiers, max_spec_len), max_batch_tokens)
    periods = search.grid.periods(tiers)
    if outlook is None or not outlook.slacks:
        best = _best_of(search, periods)
    else:
        best = _best_within(search, periods, TtftBound(model, outlook, prefill_share))
    return None if best is None else search.build(best)


def rank(c: Candidate) -> tuple[float, float]:
    """The better configuration ranks higher: prefill rate, then the shorter period."""
    return (c.room / c.period, -c.period)


def _best_of(search: PeriodSearch, periods: list[float]) -> Candidate | None:
    """The best configuration at `periods` (None: none sustains the load), skipping the
    periods whose rate cannot beat the best so far (ranks are distinct: the maximum is one)."""
    best, rate = None, -math.inf
    for u in reversed(periods):
        if search.rate_bound(u) < rate:
            continue
        c = search.at(u)
        if c is not None and (best is None or rank(c) > rank(best)):
            best, rate = c, c.room / c.period
    return best


def _best_within(search: PeriodSearch, periods: list[float],
                 bound: TtftBound) -> Candidate | None:
    """The best of the configurations at `periods` (ascending) and of the periods bisected
    between the longest one within the bound and the next, within the bound (none: the
    shortest). Only the configurations that can decide are built and checked against the
    bound: from the longest down to the first within it, then (after bisection) those
    ranking above the best found (rate_bound: those that cannot are skipped unbuilt)."""
    def fits(c: Candidate | None) -> bool:
        return c is not None and bound.miss_of(c, search.batch_time(c)) <= TTFT_MISS_BUDGET

    top = above = None  # the longest configuration within the bound, the next one above
    i = len(periods)
    while i > 0:
        i -= 1
        c = search.at(periods[i])
        if c is not None:
            if fits(c):
                top = c
                break
            above = c
    if top is None and above is None:
        return None
    found = [] if top is None else [top]
    if above is not None:  # the longest period within the bound, by bisection
        lo = 0.0 if top is None else top.period
        hi = above.period
        for _ in range(BISECT_STEPS):
            mid = (lo + hi) / 2
            cfg = search.at(mid)
            if fits(cfg):
                lo = mid
                found.append(cfg)  # type: ignore[arg-type]
            else:
                hi = mid
    if not found:
        return above  # the shortest sustainable period
    best = max(found, key=rank)
    if top is None:  # no period below fits either
        return best
    rate = best.room / best.period
    lower = [c for u in periods[:i] if search.rate_bound(u) >= rate and (c := search.at(u))]
    for c in sorted(lower, key=rank, reverse=True):
        if rank(c) <= rank(best):
            break
        if fits(c):
            return c
    return best


ALONE = BatchShape(prefill_tokens=1, num_requests=1)
Coefs = tuple[float, float, float, float, float, float, float]  # a piece's weights, its bias


_COEFS: dict[int, tuple[PerfModel, tuple[Coefs, ...]]] = {}


def coefs_of(model: PerfModel) -> tuple[Coefs, ...]:
    """The model's pieces as plain tuples (kept per model: a model's pieces do not change
    once fitted; the model is held so that its id is not reused)."""
    got = _COEFS.get(id(model))
    if got is None or got[0] is not model:
        trim(_COEFS, MAX_GRIDS)
        got = _COEFS[id(model)] = (model, tuple((*p.weights, p.bias) for p in model.pieces))
    return got[1]


def time_of(pieces: tuple[Coefs, ...], x0: int, x1: int, x2: int, x3: int, x4: int,
            x5: int) -> float:
    """model.predict of the shape with features x0..x5, in the same arithmetic (exact)."""
    best = -math.inf
    for w0, w1, w2, w3, w4, w5, b in pieces:
        t = (w0 * x0 + w1 * x1 + w2 * x2 + w3 * x3 + w4 * x4 + w5 * x5) + b
        if t > best:
            best = t
    return best


def prompt_overhead(model: PerfModel, base: BatchShape) -> float:
    """What a batch's decode part `base` adds to the time of a prompt's batch."""
    return TtftBound(model, TtftOutlook((), 0.0)).overhead(base)


def ttft_miss(model: PerfModel, cfg: DecodeConfig, outlook: TtftOutlook,
              prefill_share: float = 1.0) -> float:
    """Expected fraction of arriving prompts that `cfg`'s batches make miss their TTFT."""
    return TtftBound(model, outlook, prefill_share).miss(cfg)


class TtftBound:
    """ttft_miss for many configurations of one worker and outlook (one choose_config)."""

    __slots__ = ("pieces", "slacks", "arriving", "alone", "_over")

    def __init__(self, model: PerfModel, outlook: TtftOutlook, prefill_share: float = 1.0):
        self.pieces = coefs_of(model)
        self.slacks = tuple(sorted(outlook.slacks))  # miss() stops at the first on time
        self.arriving = outlook.prompt_tokens_per_s * prefill_share
        self.alone = model.predict(ALONE)
        self._over: dict[tuple[int, ...], float] = {}

    def overhead(self, base: BatchShape) -> float:
        """What a batch's decode part `base` adds to the time of a prompt's batch."""
        return self._overhead(base.decode_tokens, base.verify_tokens, base.num_requests,
                              base.context_tokens, base.spec_steps)

    def _overhead(self, dec: int, ver: int, reqs: int, ctx: int, steps: int) -> float:
        key = (dec, ver, reqs, ctx, steps)
        over = self._over.get(key)
        if over is None:
            joined = time_of(self.pieces, 1, dec, ver, reqs + 1, ctx, steps)
            over = self._over[key] = max(joined - self.alone, 0.0)
        return over

    def miss(self, cfg: DecodeConfig) -> float:
        """Expected fraction of arriving prompts that `cfg`'s batches make miss their TTFT. A
        prompt finds a full batch running with probability rho (the share of the batches'
        prefill room that the arriving prompt tokens fill), at a uniform moment of it; it waits
        for the rest, then its own batch takes its prefill time plus what the decode part adds
        to it. It is late if that wait exceeds its slack (TTFT less prefill time) less that
        overhead."""
        step = cfg.batch_time if cfg.batch_time > 0 else cfg.period
        return self._late(step, cfg.prefill_rate, self.overhead(cfg.base))

    def miss_of(self, c: Candidate, batch_time: float) -> float:
        """miss() of the configuration a candidate stands for."""
        step = batch_time if batch_time > 0 else c.period
        return self._late(step, c.room / c.period,
                          self._overhead(c.dec, c.ver, c.reqs, c.ctx, c.steps))

    def _late(self, step: float, rate: float, over: float) -> float:
        slacks = self.slacks
        if not slacks:
            return 0.0
        rho = 1.0 if rate <= 0 else min(1.0, self.arriving / rate)
        late = 0.0
        for s in slacks:  # ascending: the rest are on time (adding 0.0 changes no sum)
            d = s - over
            if d >= step:
                break
            # min(1, max(0, 1 - d / step)) for 0 < step, d < step
            late += 1.0 if d <= 0 else 1.0 - d / step
        return rho * late / len(slacks)


class PeriodSteps(NamedTuple):
    """What each tier takes at one batch period (the same for every load of the tiers)."""

    rows: tuple[tuple[bool, int, int], ...]  # per tier: keeps pace here, spec, every
    spec: tuple[int, ...]
    every: tuple[int, ...]
    expected: tuple[float, ...]


class Candidate(NamedTuple):
    """A configuration before it is built: what ranking and the TTFT bound read."""

    period: float
    at: PeriodSteps  # the tiers' lengths and cadences at this period
    dec: int  # decode part of the worst batch: BatchShape's features
    ver: int
    reqs: int
    ctx: int
    steps: int
    room: int  # prefill tokens per batch


class TierGrid:
    """Per tier, the interval E(s) * T of every length s (non-decreasing in s), and the
    steps of each period asked for: both depend on the tiers' TPOTs and acceptance only, so
    they serve every load of a plan's tiers (and of consecutive plans')."""

    __slots__ = ("tpots", "spans", "_steps", "_periods")

    def __init__(self, tpots: tuple[float, ...], alphas: tuple[float, ...], max_spec_len: int):
        lens = range(max_spec_len + 1)
        self.tpots = tpots
        self.spans = [[expected_tokens(s, a) * t for s in lens]
                      for t, a in zip(tpots, alphas, strict=True)]
        self._steps: dict[float, PeriodSteps] = {}
        self._periods: dict[tuple[bool, ...], list[float]] = {}

    def periods(self, tiers: list[TierLoad]) -> list[float]:
        """Candidate periods, ascending: every span of a tier with requests."""
        live = tuple(t.count > 0 for t in tiers)
        out = self._periods.get(live)
        if out is None:
            out = self._periods[live] = sorted(
                {x for sp, on in zip(self.spans, live, strict=True) if on for x in sp})
        return out

    def steps(self, u: float) -> PeriodSteps:
        """Each tier's fewest drafts s with E(s) * T >= u and the batches m its interval
        spans (a tier that cannot keep pace: length 0, marked)."""
        got = self._steps.get(u)
        if got is not None:
            return got
        trim(self._steps, MAX_STEPS)
        fits, spec, every, exp = [], [], [], []
        for sp, tpot in zip(self.spans, self.tpots, strict=True):
            s = bisect_left(sp, u - 1e-12)
            fits.append(s < len(sp))
            if s == len(sp):
                s = 0
            span = sp[s]
            spec.append(s)
            every.append(max(1, int(span / u + 1e-9)))
            exp.append(span / tpot)
        rows = tuple(zip(fits, spec, every, strict=True))
        got = self._steps[u] = PeriodSteps(rows, tuple(spec), tuple(every), tuple(exp))
        return got


MAX_STEPS = 1024  # periods a grid keeps the steps of (bisected ones are mostly new)
MAX_GRIDS = 16  # grids kept: acceptance bounds move between plans
_GRIDS: dict[tuple, TierGrid] = {}


def tier_grid(tiers: list[TierLoad], max_spec_len: int) -> TierGrid:
    """The grid of the tiers' TPOTs and acceptance (kept across calls)."""
    key = (tuple(t.tpot for t in tiers), tuple(t.alpha for t in tiers), max_spec_len)
    grid = _GRIDS.get(key)
    if grid is None:
        trim(_GRIDS, MAX_GRIDS)
        grid = _GRIDS[key] = TierGrid(key[0], key[1], max_spec_len)
    return grid


class PeriodSearch:
    """The configurations of one load at the periods choose_config tries: the perf model
    evaluated from the features directly (its pieces are linear), and only the chosen one
    built into a DecodeConfig."""

    __slots__ = ("live", "grid", "pieces", "max_tokens", "slopes")

    def __init__(self, model: PerfModel, tiers: list[TierLoad], grid: TierGrid,
                 max_tokens: int) -> None:
        self.live = [(i, t.count, t.context_tokens) for i, t in enumerate(tiers) if t.count > 0]
        self.grid = grid
        self.pieces = coefs_of(model)
        self.max_tokens = max_tokens
        # a piece (bias b, prefill weight w0 > 0) bounds the room of period u by (u - b) / w0
        # when no feature lowers a batch's time (weights >= 0)
        costs_only = all(w >= 0 for p in self.pieces for w in p[1:6])
        self.slopes = [(p[6], p[0]) for p in self.pieces if p[0] > 0] if costs_only else []

    def rate_bound(self, u: float) -> float:
        """An upper bound on the prefill rate of any load's configuration at period u (in
        floating point too: the decode part only adds to each piece's time, and every step
        rounds monotonically)."""
        return min((((u - b) / w0) / u for b, w0 in self.slopes), default=math.inf)

    def at(self, u: float) -> Candidate | None:
        """The configuration of period u (None: a tier cannot keep pace, or no room is left).
        Its decode part is decode_shape's; its room is model.prefill_capacity's, capped."""
        steps = self.grid.steps(u)
        rows = steps.rows
        dec = ver = reqs = ctx = most = 0
        for i, count, context in self.live:
            fits, s, m = rows[i]
            if not fits:
                return None
            n = -(-count // m)
            reqs += n
            ctx += -(-context * n // count)
            if s > 0:
                ver += n * (s + 1)
                if s > most:
                    most = s
            else:
                dec += n
        if dec + ver > self.max_tokens:
            return None
        best = math.inf
        for w0, w1, w2, w3, w4, w5, b in self.pieces:
            rest = (w0 * 0 + w1 * dec + w2 * ver + w3 * reqs + w4 * ctx + w5 * most) + b
            if rest > u + 1e-12:
                return None
            if w0 > 0:
                r = (u - rest) / w0
                if r < best:
                    best = r
        room = int(best) if best != math.inf else 1 << 30
        if room < 0:
            return None
        room = min(room, self.max_tokens - dec - ver)
        return Candidate(u, steps, dec, ver, reqs, ctx, most, room)

    def batch_time(self, c: Candidate) -> float:
        """Predicted time of c's worst batch with its prefill (at most the period)."""
        return min(c.period, time_of(self.pieces, c.room, c.dec, c.ver, c.reqs + 1, c.ctx,
                                     c.steps))

    def build(self, c: Candidate) -> DecodeConfig:
        used = c.dec + c.ver
        base = BatchShape(0, c.dec, c.ver, c.reqs, c.ctx, c.steps)
        return DecodeConfig(c.period, c.at.spec, c.at.every, c.at.expected, used,
                            used + c.room, c.room, base, self.batch_time(c))


def batches_within(seconds: float, period: float) -> int:
    return max(0, math.floor(seconds / period + 1e-9))


def prefill_within(model: PerfModel, cfg: DecodeConfig, seconds: float) -> int:
    """Prefill tokens the worker can finish within `seconds` under `cfg` (PrefillCurve)."""
    return PrefillCurve(model, cfg).within(seconds)


class PrefillCurve:
    """prefill_within of one configuration at many deadlines (the admission DP asks for
    many): the decode part's time under each piece of the model computed once."""

    __slots__ = ("tokens", "step", "parts")

    def __init__(self, model: PerfModel, cfg: DecodeConfig) -> None:
        self.tokens = cfg.prefill_tokens
        self.step = cfg.batch_time if cfg.batch_time > 0 else cfg.period
        x = cfg.base.features()
        self.parts = tuple((p.at(x), p.weights[0]) for p in model.pieces)

    def within(self, seconds: float) -> int:
        """k whole batches (p tokens each, back to back: a batch whose tokens are capped ends
        before the period) and then one partial batch -- the worst-case decode part plus the
        most prefill tokens the model says end in the time left (model.prefill_capacity). A
        deadline shorter than one batch thus still gets the tokens of a smaller, faster
        batch."""
        p = self.tokens
        if seconds <= 0 or p <= 0:
            return 0
        step = self.step
        k = batches_within(seconds, step)
        rest = seconds - k * step
        part = 0
        if rest > 1e-9:
            best = math.inf
            for base, wp in self.parts:
                if base > rest + 1e-12:
                    return k * p  # the decode part alone does not fit: no partial batch
                if wp > 0:
                    best = min(best, (rest - base) / wp)
            part = int(best) if best != math.inf else 1 << 30
        return k * p + min(max(part, 0), p)
