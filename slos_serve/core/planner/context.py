"""Per-plan constants: the TPOT tiers of a snapshot and the decode configuration cache."""

from __future__ import annotations

import itertools
import math

from slos_serve.core.memo import trim
from slos_serve.core.planner.records import PlanRequest, PlanWorker, Snapshot
from slos_serve.core.spec import (
    DecodeConfig,
    TierLoad,
    choose_config,
    decode_shape,
    prefill_only,
)

INF = float("inf")
_CONFIGS: dict[tuple, DecodeConfig | None] = {}  # decode configurations, across plans
_MAX_CONFIGS = 1024  # a few plans' worth: later plans mostly plan on another outlook
# what a configuration depends on besides the counts, as a number never reused (hashing the
# whole key, TTFT outlook included, on every lookup cost more than the lookup)
_MODEL_IDS: dict[tuple, int] = {}
_NEXT_ID = itertools.count()


class PlanContext:
    """What every step of one plan shares: the snapshot, its TPOT tiers (index k: the k-th
    tightest TPOT, with its acceptance rate and average context) and decode configurations."""

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
        # prompts arriving are shared among the workers that prefill
        self.prefill_share = 1.0 / max(1, sum(w.role != "decode" for w in snap.workers))
        self._model_keys: dict[int, int] = {}

    def _model_key(self, w: PlanWorker) -> int:
        """What a configuration depends on besides the counts (context only if it costs)."""
        key = self._model_keys.get(id(w))
        if key is None:
            pieces = tuple((p.weights, p.bias) for p in w.model.pieces)
            uses_ctx = any(p.weights[4] for p in w.model.pieces)
            full = (pieces, w.role == "prefill", w.max_batch_tokens, self.snap.max_spec_len,
                    tuple(self.tpots), tuple(self.alphas),
                    self.snap.ttft_outlook if w.role == "mixed" else None, self.prefill_share,
                    tuple(self.avg_ctx) if uses_ctx else ())
            key = _MODEL_IDS.get(full)
            if key is None:
                trim(_MODEL_IDS, _MAX_CONFIGS)
                key = _MODEL_IDS[full] = next(_NEXT_ID)
            self._model_keys[id(w)] = key
        return key

    def config(self, w: PlanWorker, counts: tuple[int, ...]) -> DecodeConfig | None:
        """Decode configuration of worker w under admitted tier counts. Cached across plans:
        consecutive snapshots mostly revisit the same counts."""
        key = (self._model_key(w), counts)
        if key in _CONFIGS:
            return _CONFIGS[key]
        trim(_CONFIGS, _MAX_CONFIGS)
        if w.role == "prefill":
            cfg = prefill_only(w.model, w.max_batch_tokens)
        else:
            outlook = self.snap.ttft_outlook if w.role == "mixed" else None
            cfg = choose_config(w.model, self.tier_loads(counts), self.snap.max_spec_len,
                                w.max_batch_tokens, outlook, self.prefill_share)
        _CONFIGS[key] = cfg
        return cfg

    def absorbs_handoff(self, w: PlanWorker, counts: tuple[int, ...], r: PlanRequest) -> bool:
        """Whether r, handed off to decode on w (tier counts `counts`, r included), still
        meets its TPOT after waiting Snapshot.handoff_delay for its KV: the wait must fit in
        the slack its decode leaves per token (TPOT less the interval it is served at while
        it catches up) over the tokens it still expects. A decoder behind its pace is in
        every batch (policy.paced_out holds back only those ahead of it) and shortens the
        steps by what it lags (policy.step_bound_ms): on a decode worker and a mixed one alike
        it catches up at the pace of back-to-back decode batches, the interval is that
        batch's predicted time."""
        delay = self.snap.handoff_delay
        if delay <= 0 or r.expected_output <= 0:
            return True
        cfg = self.config(w, counts)
        if cfg is None:
            return False
        k = self.tier(r)
        every = (1,) * len(counts)
        batch = w.model.predict(decode_shape(self.tier_loads(counts), cfg.spec, every))
        interval = batch / cfg.expected[k]
        return delay <= r.expected_output * (r.tpot - interval)

    def tier_loads(self, counts: list[int] | tuple[int, ...]) -> list[TierLoad]:
        per = zip(self.tpots, counts, self.alphas, self.avg_ctx, strict=True)
        return [TierLoad(t, n, a, n * c) for t, n, a, c in per]

    def tier(self, r: PlanRequest) -> int:
        return self.tier_of[r.tpot]

    def kv_blocks(self, r: PlanRequest, w: PlanWorker) -> int:
        """KV blocks reserved for r on its decode side: its context now plus `kv_frac` of the
        output still expected (1: its peak; r.kv_blocks overrides)."""
        if r.kv_blocks is not None:
            return r.kv_blocks
        rest = math.ceil(r.expected_output * self.kv_frac)
        return -(-max(r.prompt_tokens + r.generated + rest, 0) // max(w.block_size, 1))


def blocks(tokens: int, block_size: int) -> int:
    """KV blocks that hold `tokens` (ctx.kv_blocks inlines the same rounding: a hot path)."""
    return -(-max(tokens, 0) // max(block_size, 1))


def with_one_more(counts: list[int] | tuple[int, ...], k: int) -> tuple[int, ...]:
    """The tier counts with one more request in tier k."""
    out = list(counts)
    out[k] += 1
    return tuple(out)


def rotate(seq: list, start: int) -> list:
    """seq starting at index start (mod its length): the routing order from an offset."""
    if not seq:
        return []
    s = start % len(seq)
    return seq[s:] + seq[:s]
