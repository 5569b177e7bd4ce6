"""Performance model: published profiles, fitting, inverse budget, JSON round trip."""

from __future__ import annotations

import random

import pytest

from slos_serve.core.perf_model import (
    BatchShape,
    PerfModel,
    Piece,
    fit,
    list_profiles,
    load,
    load_profile,
)


def test_published_profiles_load_and_match_the_reference() -> None:
    assert {"opt-13b-a100", "opt-30b-a100", "opt-6.7b-a100", "toolllama-7b-a100",
            "opt-13b-h100"} <= set(list_profiles())
    m = load_profile("opt-13b-a100")
    # max(7.21e-5 N + 3.34e-3 S + 0.0317, 3.0e-3 S)
    assert m.predict(BatchShape(prefill_tokens=100, decode_tokens=20)) == pytest.approx(
        7.21e-5 * 120 + 0.0317)
    assert m.predict(BatchShape(verify_tokens=40, spec_steps=4)) == pytest.approx(
        7.21e-5 * 40 + 3.34e-3 * 4 + 0.0317)
    m67 = load_profile("opt-6.7b-a100")  # the second piece binds for large batches
    assert m67.predict_tokens(8000) == pytest.approx(7.52e-5 * 8000 + 0.0030)
    assert m67.predict_tokens(100) == pytest.approx(6.88e-5 * 100 + 0.0248)
    with pytest.raises(KeyError):
        load_profile("no-such-profile")


def test_zero_load_helpers() -> None:
    m = load_profile("opt-13b-h100")
    assert m.zero_load_prefill(1000) == pytest.approx(4.18e-5 * 1000 + 0.0274)
    assert m.zero_load_decode() == pytest.approx(4.18e-5 + 0.0274)
    # chunking pays the per-batch cost once per chunk
    assert m.zero_load_prefill(1000, chunk=256) == pytest.approx(4.18e-5 * 1000 + 4 * 0.0274)


def test_prefill_capacity_is_the_inverse_of_predict() -> None:
    m = load_profile("opt-6.7b-a100")
    base = BatchShape(decode_tokens=30, num_requests=30)
    for t in (0.03, 0.05, 0.2, 0.5):
        n = m.prefill_capacity(t, base)
        grown = BatchShape(n, 30, 0, 30)
        assert m.predict(grown) <= t + 1e-12
        assert m.predict(BatchShape(n + 1, 30, 0, 30)) > t
    assert m.prefill_capacity(0.001, base) == -1


def _synthetic(n: int, seed: int) -> list[tuple[BatchShape, float]]:
    rng = random.Random(seed)
    truth = PerfModel([Piece((5e-5, 5e-5, 5e-5, 0, 1e-7, 2e-3), 0.02),
                       Piece((9e-5, 9e-5, 9e-5, 0, 0, 0), 0.0)])
    out = []
    for _ in range(n):
        s = BatchShape(rng.choice([0, rng.randint(1, 4000)]), rng.randint(0, 64), 0,
                       rng.randint(1, 64), rng.randint(0, 20000), rng.randint(0, 4))
        out.append((s, truth.predict(s) * rng.uniform(0.98, 1.02)))
    return out


def test_fit_recovers_a_two_piece_roofline(tmp_path) -> None:
    rep = fit(_synthetic(300, 1), pieces=2)
    assert rep.r2 > 0.99
    assert rep.max_rel_err < 0.06
    assert rep.test_samples == 60
    assert len(rep.model.pieces) == 2
    one = fit(_synthetic(300, 1), pieces=1)
    assert one.max_rel_err > rep.max_rel_err  # a single line cannot bend at the roofline
    path = tmp_path / "m.json"
    rep.model.save(path)
    back = load(path)
    assert back.r2 == pytest.approx(rep.r2)
    s = BatchShape(1000, 10, 0, 11, 5000, 2)
    assert back.predict(s) == pytest.approx(rep.model.predict(s))


def test_fit_needs_samples() -> None:
    with pytest.raises(ValueError):
        fit(_synthetic(3, 0))
