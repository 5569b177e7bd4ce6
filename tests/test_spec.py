"""SLO-adaptive speculative length rule and decode batch configuration."""

from __future__ import annotations

import random

import pytest

from slos_serve.core.perf_model import BatchShape, PerfModel, Piece, load_profile
from slos_serve.core.spec import (
    TierLoad,
    choose_config,
    decode_shape,
    expected_tokens,
    prefill_only,
    prefill_within,
)


def test_expected_tokens_counts_the_bonus_token() -> None:
    assert expected_tokens(0, 0.7) == 1.0
    assert expected_tokens(3, 0.0) == 1.0
    assert expected_tokens(1, 0.5) == pytest.approx(1.5)
    assert expected_tokens(2, 0.5) == pytest.approx(1.75)
    assert expected_tokens(4, 1.0) == 5.0


def test_without_speculation_the_loose_tier_skips_every_other_batch() -> None:
    m = load_profile("opt-13b-a100")
    tiers = [TierLoad(0.05, 10), TierLoad(0.1, 10)]
    cfg = choose_config(m, tiers, max_spec_len=0, max_batch_tokens=2048)
    assert cfg is not None
    assert cfg.period == pytest.approx(0.05)
    assert cfg.spec == (0, 0) and cfg.every == (1, 2)
    assert cfg.decode_tokens == 10 + 5
    # the rest of a 50 ms batch is prefill budget
    assert cfg.step_tokens == m.prefill_capacity(0.05, BatchShape(0, 15, 0, 15))  + 15


def _brute_force(m, tiers, max_spec, max_tokens):
    """Every (binding tier, length) by the reference rule, scored by prefill tokens / s."""
    best = None
    for ti in tiers:
        for j in range(max_spec + 1):
            u = expected_tokens(j, ti.alpha) * ti.tpot
            spec, every = [], []
            for t in tiers:
                s = next((s for s in range(max_spec + 1)
                          if expected_tokens(s, t.alpha) * t.tpot >= u - 1e-12), None)
                if s is None:
                    break
                spec.append(s)
                every.append(max(1, int(expected_tokens(s, t.alpha) * t.tpot / u + 1e-9)))
            else:
                shape = decode_shape(tiers, tuple(spec), tuple(every))
                room = m.prefill_capacity(u, shape)
                dec = shape.decode_tokens + shape.verify_tokens
                if room >= 0 and dec <= max_tokens:
                    rate = min(room, max_tokens - dec) / u
                    if best is None or rate > best[0] + 1e-9:
                        best = (rate, u, tuple(spec))
    return best


@pytest.mark.parametrize("alphas", [(0.8, 0.8), (0.6, 0.9), (0.9, 0.3)])
def test_spec_rule_picks_the_config_with_most_prefill_throughput(alphas) -> None:
    m = load_profile("opt-13b-a100")
    tiers = [TierLoad(0.05, 40, alphas[0]), TierLoad(0.1, 60, alphas[1])]
    cfg = choose_config(m, tiers, max_spec_len=8, max_batch_tokens=2048)
    rate, u, spec = _brute_force(m, tiers, 8, 2048)
    assert cfg.period == pytest.approx(u)
    assert cfg.spec == spec
    assert cfg.prefill_rate == pytest.approx(rate)
    # every tier keeps its TPOT on average: E(sd_k) tokens per `every_k` periods
    for t, s, e in zip(tiers, cfg.spec, cfg.every, strict=True):
        assert expected_tokens(s, t.alpha) * t.tpot >= e * cfg.period - 1e-9


def test_speculation_buys_prefill_throughput_for_tight_tiers() -> None:
    m = load_profile("opt-13b-a100")
    tiers = [TierLoad(0.05, 40, 0.8)]
    plain = choose_config(m, tiers, 0, 2048)
    spec = choose_config(m, tiers, 8, 2048)
    assert spec.spec[0] > 0 and spec.period > plain.period
    assert spec.prefill_rate > plain.prefill_rate


def test_overload_is_infeasible() -> None:
    m = PerfModel([Piece((1e-3, 1e-3, 1e-3, 0, 0, 0), 0.01)])
    assert choose_config(m, [TierLoad(0.05, 39)], 0, 1000) is not None  # 0.049 s
    assert choose_config(m, [TierLoad(0.05, 41)], 0, 1000) is None  # 0.051 s > 50 ms


def test_prefill_within_counts_a_partial_batch() -> None:
    toy = PerfModel([Piece((1e-3, 1e-3, 1e-3, 0, 0, 0), 0.01)], name="toy")
    cfg = prefill_only(toy, 100)  # 0.11 s per 100-token batch
    assert prefill_within(toy, cfg, 0.0) == 0
    assert prefill_within(toy, cfg, 0.005) == 0  # less than the fixed cost of a batch
    # (0.05 - 0.01) s / 1 ms per token, rounded down (floating point may take one off)
    assert prefill_within(toy, cfg, 0.05) in (39, 40)
    assert prefill_within(toy, cfg, 0.15) in (129, 130)  # one full batch + a partial one
    assert prefill_within(toy, cfg, 0.3) in (269, 270)


def test_a_configurations_decode_part_is_decode_shapes() -> None:
    """choose_config sums the decode part in its own loop (a hot path): it must be the shape
    decode_shape gives for the configuration's lengths and cadence."""
    m = load_profile("opt-13b-a100")
    rng = random.Random(5)
    for _ in range(50):
        tiers = [TierLoad(tpot, rng.choice((0, rng.randint(1, 80))), rng.uniform(0.3, 0.9),
                          rng.randint(0, 40_000)) for tpot in (0.03, 0.05, 0.1)]
        cfg = choose_config(m, tiers, max_spec_len=rng.randint(0, 6), max_batch_tokens=4096)
        if cfg is None or not any(t.count for t in tiers):
            continue
        assert cfg.base == decode_shape(tiers, cfg.spec, cfg.every)
        assert cfg.decode_tokens == cfg.base.decode_tokens + cfg.base.verify_tokens
