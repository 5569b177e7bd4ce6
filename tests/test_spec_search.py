"""The fast paths of the decode configuration search against the perf model they stand for:
the same values, exactly, so that the planner's decisions do not move (test_plan_fingerprint
pins those on whole plans)."""

from __future__ import annotations

import random

import pytest

from slos_serve.core.perf_model import BatchShape, PerfModel, Piece, load_profile
from slos_serve.core.spec import (
    DecodeConfig,
    PeriodSearch,
    PrefillCurve,
    TierLoad,
    coefs_of,
    decode_shape,
    tier_grid,
    time_of,
)

# a profile with every feature costing something (the shipped one ignores context)
DENSE = PerfModel([Piece((6e-5, 5e-5, 7e-5, 2e-4, 3e-8, 2.5e-3), 0.02),
                   Piece((1e-5, 2e-4, 2e-4, 1e-4, 1e-7, 1e-3), 0.005)])
MODELS = [load_profile("opt-13b-a100"), DENSE]


def loads(rng: random.Random, n: int) -> list[list[TierLoad]]:
    return [[TierLoad(tpot, rng.choice((0, rng.randint(1, 90))), rng.uniform(0.2, 0.95),
                      rng.randint(0, 60_000)) for tpot in (0.03, 0.05, 0.1)]
            for _ in range(n)]


@pytest.mark.parametrize("model", MODELS)
def test_time_of_is_predict_exactly(model: PerfModel) -> None:
    rng = random.Random(1)
    pieces = coefs_of(model)
    for _ in range(500):
        x = [rng.randint(0, 4000) for _ in range(6)]
        assert time_of(pieces, *x) == model.predict(BatchShape(*x))


@pytest.mark.parametrize("model", MODELS)
def test_a_candidate_is_the_configuration_the_model_gives(model: PerfModel) -> None:
    """Room, decode part and batch time at a period are those of prefill_capacity,
    decode_shape and predict on BatchShapes."""
    rng = random.Random(2)
    checked = 0
    for tiers in loads(rng, 200):
        if not any(t.count for t in tiers):
            continue
        grid = tier_grid(tiers, rng.randint(0, 6))
        search = PeriodSearch(model, tiers, grid, 4096)
        for u in grid.periods(tiers) + [rng.uniform(0.01, 0.4)]:
            c = search.at(u)
            at = grid.steps(u)
            fits = all(ok for (ok, _, _), t in zip(at.rows, tiers, strict=True) if t.count)
            if c is None:
                if fits:  # then it is the room that lacks
                    base = decode_shape(tiers, at.spec, at.every)
                    assert (model.prefill_capacity(u, base) < 0
                            or base.decode_tokens + base.verify_tokens > 4096)
                continue
            checked += 1
            cfg = search.build(c)
            assert cfg.base == decode_shape(tiers, cfg.spec, cfg.every)
            assert cfg.prefill_tokens == min(model.prefill_capacity(u, cfg.base),
                                             4096 - cfg.decode_tokens)
            b = cfg.base
            full = BatchShape(cfg.prefill_tokens, b.decode_tokens, b.verify_tokens,
                              b.num_requests + 1, b.context_tokens, b.spec_steps)
            assert cfg.batch_time == min(u, model.predict(full))
    assert checked > 100


@pytest.mark.parametrize("model", MODELS)
def test_the_rate_bound_is_above_every_configurations_rate(model: PerfModel) -> None:
    """choose_config skips the periods whose bound is below the best rate found: the bound
    must hold for every load (the pruning is exact only then)."""
    rng = random.Random(3)
    for tiers in loads(rng, 200):
        if not any(t.count for t in tiers):
            continue
        grid = tier_grid(tiers, rng.randint(0, 6))
        search = PeriodSearch(model, tiers, grid, rng.choice((512, 4096, 1 << 20)))
        for u in grid.periods(tiers):
            c = search.at(u)
            if c is not None:
                assert c.room / c.period <= search.rate_bound(u)


def test_no_rate_bound_when_a_feature_lowers_the_time() -> None:
    odd = PerfModel([Piece((7e-5, -1e-5, 0, 0, 0, 0), 0.03)])
    search = PeriodSearch(odd, [TierLoad(0.05, 3)], tier_grid([TierLoad(0.05, 3)], 2), 2048)
    assert search.rate_bound(0.1) == float("inf")


def prefill_within_reference(model: PerfModel, cfg: DecodeConfig, seconds: float) -> int:
    """The rule as first written: whole batches, then one partial batch."""
    p = cfg.prefill_tokens
    if seconds <= 0 or p <= 0:
        return 0
    step = cfg.batch_time if cfg.batch_time > 0 else cfg.period
    k = max(0, int(seconds / step + 1e-9))
    rest = seconds - k * step
    part = model.prefill_capacity(rest, cfg.base) if rest > 1e-9 else 0
    return k * p + min(max(part, 0), p)


@pytest.mark.parametrize("model", MODELS)
def test_prefill_curve_is_prefill_capacity_batch_by_batch(model: PerfModel) -> None:
    rng = random.Random(4)
    for _ in range(300):
        base = BatchShape(0, rng.randint(0, 60), rng.randint(0, 200), rng.randint(0, 80),
                          rng.randint(0, 50_000), rng.randint(0, 5))
        u = rng.uniform(0.02, 0.3)
        room = max(0, model.prefill_capacity(u, base))
        cfg = DecodeConfig(u, (), (), (), 0, room, room, base, rng.choice((0.0, u * 0.9)))
        curve = PrefillCurve(model, cfg)
        for _ in range(10):
            s = rng.uniform(-0.01, 1.5)
            assert curve.within(s) == prefill_within_reference(model, cfg, s)


def test_a_trimmed_memo_keeps_its_newer_half() -> None:
    from slos_serve.core.memo import trim

    table = {k: k for k in range(10)}
    trim(table, 10)
    assert len(table) == 10
    table[10] = 10
    trim(table, 10)
    assert list(table) == list(range(5, 11))
