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
    live = [t for t in tiers if t.count > 0]
    if not live:
        cfg = prefill_only(model, max_batch_tokens)
        k = len(tiers)
        return DecodeConfig(cfg.period, (0,) * k, (1,) * k, (1.0,) * k, 0, cfg.step_tokens,
                            cfg.prefill_tokens)
    lens = range(max_spec_len + 1)
    # per tier: interval E(s) * T for every length s (non-decreasing in s)
    spans = [[expected_tokens(s, t.alpha) * t.tpot for s in lens] for t in tiers]
    periods = sorted({spans[i][j] for i, t in enumerate(tiers) if t.count > 0 for j in lens})
    configs = [c for u in periods if (c := _config_at(model, tiers, spans, u, max_batch_tokens))]
    if not configs:
        return None

    if outlook is None or not outlook.slacks:
        return max(configs, key=rank)
    return _best_within(model, tiers, spans, max_batch_tokens, configs,
                        TtftBound(model, outlook, prefill_share))


def rank(c: DecodeConfig) -> tuple[float, float]:
    """The better configuration ranks higher: prefill rate, then the shorter period."""
    return (c.prefill_rate, -c.period)


def _best_within(
    model: PerfModel, tiers: list[TierLoad], spans: list[list[float]], max_tokens: int,
    configs: list[DecodeConfig], bound: TtftBound,
) -> DecodeConfig:
    """The best of `configs` (ascending periods) and of the periods bisected between the
    longest one within the bound and the next, within the bound (none: the shortest). Only
    the configurations that can decide are checked against the bound: from the longest down
    to the first within it, then (after bisection) those ranking above the best found."""
    def fits(c: DecodeConfig | None) -> bool:
        return c is not None and bound.miss(c) <= TTFT_MISS_BUDGET

    top = next((i for i in range(len(configs) - 1, -1, -1) if fits(configs[i])), -1)
    found = [] if top < 0 else [configs[top]]
    if top < len(configs) - 1:  # the longest period within the bound, by bisection
        lo = 0.0 if top < 0 else configs[top].period
        hi = configs[top + 1].period
        for _ in range(BISECT_STEPS):
            mid = (lo + hi) / 2
            cfg = _config_at(model, tiers, spans, mid, max_tokens)
            if fits(cfg):
                lo = mid
                found.append(cfg)  # type: ignore[arg-type]
            else:
                hi = mid
    if not found:
        return configs[0]
    best = max(found, key=rank)
    for c in sorted(configs[:top], key=rank, reverse=True):
        if rank(c) <= rank(best):
            break
        if fits(c):
            return c
    return best


ALONE = BatchShape(prefill_tokens=1, num_requests=1)


def prompt_overhead(model: PerfModel, base: BatchShape) -> float:
    """What a batch's decode part `base` adds to the time of a prompt's batch."""
    return TtftBound(model, TtftOutlook((), 0.0)).overhead(base)


def ttft_miss(model: PerfModel, cfg: DecodeConfig, outlook: TtftOutlook,
              prefill_share: float = 1.0) -> float:
    """Expected fraction of arriving prompts that `cfg`'s batches make miss their TTFT."""
    return TtftBound(model, outlook, prefill_share).miss(cfg)


class TtftBound:
    """ttft_miss for many configurations of one worker and outlook (one choose_config)."""

    __slots__ = ("model", "slacks", "arriving", "alone", "_over")

    def __init__(self, model: PerfModel, outlook: TtftOutlook, prefill_share: float = 1.0):
        self.model = model
        self.slacks = tuple(sorted(outlook.slacks))  # miss() stops at the first on time
        self.arriving = outlook.prompt_tokens_per_s * prefill_share
        self.alone = model.predict(ALONE)
        self._over: dict[BatchShape, float] = {}

    def overhead(self, base: BatchShape) -> float:
        """What a batch's decode part `base` adds to the time of a prompt's batch."""
        over = self._over.get(base)
        if over is None:
            joined = self.model.predict(BatchShape(
                1, base.decode_tokens, base.verify_tokens, base.num_requests + 1,
                base.context_tokens, base.spec_steps))
            over = self._over[base] = max(joined - self.alone, 0.0)
        return over

    def miss(self, cfg: DecodeConfig) -> float:
        """Expected fraction of arriving prompts that `cfg`'s batches make miss their TTFT. A
        prompt finds a full batch running with probability rho (the share of the batches'
        prefill room that the arriving prompt tokens fill), at a uniform moment of it; it waits
        for the rest, then its own batch takes its prefill time plus what the decode part adds
        to it. It is late if that wait exceeds its slack (TTFT less prefill time) less that
        overhead."""
        slacks = self.slacks
        if not slacks:
            return 0.0
        step = cfg.batch_time if cfg.batch_time > 0 else cfg.period
        rate = cfg.prefill_rate
        rho = 1.0 if rate <= 0 else min(1.0, self.arriving / rate)
        over = self.overhead(cfg.base)
        late = 0.0
        for s in slacks:  # ascending: the rest are on time (adding 0.0 changes no sum)
            if s - over >= step:
                break
            late += min(1.0, max(0.0, 1.0 - (s - over) / step))
        return rho * late / len(slacks)


def _config_at(
    model: PerfModel, tiers: list[TierLoad], spans: list[list[float]], u: float, max_tokens: int
) -> DecodeConfig | None:
    """The configuration of period u (None: a tier cannot keep pace, or no room is left).
    Its decode part is decode_shape's, summed in the same loop (a hot path)."""
    spec, every, exp = [], [], []
    dec = ver = reqs = ctx = steps = 0
    for t, sp in zip(tiers, spans, strict=True):
        s = bisect_left(sp, u - 1e-12)  # spans are non-decreasing in the length
        count = t.count
        if s == len(sp):
            if count > 0:
                return None
            s = 0
        span = sp[s]
        m = max(1, int(span / u + 1e-9))
        spec.append(s)
        every.append(m)
        exp.append(span / t.tpot)
        if count > 0:
            n = -(-count // m)
            reqs += n
            ctx += -(-t.context_tokens * n // count)
            if s > 0:
                ver += n * (s + 1)
                steps = max(steps, s)
            else:
                dec += n
    if dec + ver > max_tokens:
        return None
    base = BatchShape(0, dec, ver, reqs, ctx, steps)
    room = model.prefill_capacity(u, base)
    if room < 0:
        return None
    room = min(room, max_tokens - dec - ver)
    t = min(u, model.predict(BatchShape(room, dec, ver, reqs + 1, ctx, steps)))
    return DecodeConfig(u, tuple(spec), tuple(every), tuple(exp), dec + ver, dec + ver + room,
                        room, base, t)


def batches_within(seconds: float, period: float) -> int:
    return max(0, math.floor(seconds / period + 1e-9))


def prefill_within(model: PerfModel, cfg: DecodeConfig, seconds: float) -> int:
    """Prefill tokens the worker can finish within `seconds` under `cfg`: k whole batches
    (p tokens each, back to back: a batch whose tokens are capped ends before the period) and
    then one partial batch -- the worst-case decode part plus the most prefill tokens the
    model says end in the time left. A deadline shorter than one batch thus still gets the
    tokens of a smaller, faster batch."""
    p = cfg.prefill_tokens
    if seconds <= 0 or p <= 0:
        return 0
    step = cfg.batch_time if cfg.batch_time > 0 else cfg.period
    k = batches_within(seconds, step)
    rest = seconds - k * step
    part = model.prefill_capacity(rest, cfg.base) if rest > 1e-9 else 0
    return k * p + min(max(part, 0), p)
