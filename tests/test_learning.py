"""The online performance model (core/learning.py): it follows a changed engine, reports its
live error, falls back to the profile, stays bounded and cheap."""

from __future__ import annotations

import random
import time
import tracemalloc

import pytest

from slos_serve.core.learning import LearningOptions, OnlineModel
from slos_serve.core.perf_model import BatchShape, PerfModel, Piece

# a profile like the CPU one: per prefill, verify, request and context token, plus a floor
PROFILE = PerfModel([Piece((3.6e-5, 0.0, 5.5e-5, 6e-5, 4e-7, 5e-5), 1.8e-3)], name="cpu")


def shapes(seed: int = 0):
    """Steps as an engine runs them: decode batches, now and then with a prompt chunk."""
    rng = random.Random(seed)
    while True:
        d = rng.randint(1, 16)
        ctx = d * rng.randint(100, 800)
        if rng.random() < 0.3:
            yield BatchShape(prefill_tokens=rng.randint(16, 1024), decode_tokens=d,
                             num_requests=d + 1, context_tokens=ctx)
        else:
            yield BatchShape(decode_tokens=d, num_requests=d, context_tokens=ctx)


def feed(m: OnlineModel, truth, n: int, seed: int = 0, noise: float = 0.05) -> None:
    rng = random.Random(seed + 1)
    gen = shapes(seed)
    for _ in range(n):
        s = next(gen)
        m.observe(s, truth(s) * rng.uniform(1 - noise, 1 + noise))


def mean_rel_err(model: PerfModel, truth, seed: int = 99, n: int = 300) -> float:
    gen = shapes(seed)
    test = [next(gen) for _ in range(n)]
    return sum(abs(model.predict(s) / truth(s) - 1) for s in test) / n


def twice(s: BatchShape) -> float:
    return 2 * PROFILE.predict(s)


def steeper_prefill(s: BatchShape) -> float:
    """The prefill slope tripled, the rest as profiled."""
    return PROFILE.predict(s) + 2 * 3.6e-5 * s.prefill_tokens


def test_an_unchanged_engine_keeps_the_profiles_accuracy() -> None:
    m = OnlineModel(PROFILE)
    feed(m, PROFILE.predict, 300)
    assert mean_rel_err(m.model, PROFILE.predict) < 0.03
    assert m.error < 0.05


def test_a_uniform_slowdown_is_followed_within_200_steps() -> None:
    m = OnlineModel(PROFILE)
    feed(m, PROFILE.predict, 200)
    assert mean_rel_err(m.model, twice) > 0.45  # the model before: half the new times
    feed(m, twice, 200, seed=1)
    assert m.learned
    assert mean_rel_err(m.model, twice) < 0.08


def test_a_changed_slope_is_followed_within_200_steps() -> None:
    m = OnlineModel(PROFILE)
    assert mean_rel_err(PROFILE, steeper_prefill) > 0.15
    feed(m, steeper_prefill, 200)
    assert mean_rel_err(m.model, steeper_prefill) < 0.08


def test_the_live_error_is_that_of_predictions_made_before_refitting() -> None:
    m = OnlineModel(PROFILE)
    feed(m, PROFILE.predict, 200)
    assert m.error < 0.05
    feed(m, twice, 20, seed=1)  # the model has not caught up: about half the new times
    assert m.error > 0.25
    feed(m, twice, 300, seed=2)
    assert m.error < 0.08
    assert m.prior_error > 0.45  # the profile alone stays half off


def test_too_few_steps_leave_the_profile_in_force() -> None:
    m = OnlineModel(PROFILE, LearningOptions(min_samples=16))
    feed(m, twice, 15)
    assert m.model is PROFILE and not m.learned


def test_unusable_durations_are_ignored() -> None:
    m = OnlineModel(PROFILE)
    s = BatchShape(decode_tokens=4, num_requests=4)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        m.observe(s, bad)
    assert m.samples == 0 and m.model is PROFILE


def test_one_repeated_composition_fits_it_and_keeps_the_rest_near_the_profile() -> None:
    """Degenerate samples (one batch shape, over and over): the system is singular without
    the ridge; the learned model fits that shape and leaves unexcited features alone."""
    m = OnlineModel(PROFILE)
    s = BatchShape(decode_tokens=8, num_requests=8, context_tokens=2000)
    for _ in range(200):
        m.observe(s, 2 * PROFILE.predict(s))
    assert m.model.predict(s) == pytest.approx(2 * PROFILE.predict(s), rel=0.02)
    verify = BatchShape(verify_tokens=40, num_requests=8, spec_steps=4)
    assert 0.5 * PROFILE.predict(verify) < m.model.predict(verify) < 3 * PROFILE.predict(verify)


def test_predictions_are_never_negative() -> None:
    m = OnlineModel(PROFILE)
    feed(m, lambda s: 0.05 * PROFILE.predict(s), 400, noise=0.5)  # far faster, noisy
    for p in m.model.pieces:
        assert all(w >= 0 for w in p.weights) and p.bias >= 0
    gen = shapes(5)
    assert all(m.model.predict(next(gen)) >= 0 for _ in range(200))


def test_a_fit_worse_than_the_profile_is_not_used() -> None:
    """Steps the model cannot explain (random times around the profile's): the profile
    stays as good as anything, and the model in force errs no more than it."""
    m = OnlineModel(PROFILE)
    rng = random.Random(3)
    feed(m, lambda s: PROFILE.predict(s) * rng.choice((0.5, 1.5)), 600, noise=0.0)
    assert m.error <= 1.15 * m.prior_error + 0.01


def test_memory_is_bounded_whatever_the_number_of_steps() -> None:
    m = OnlineModel(PROFILE)
    feed(m, twice, 500)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    feed(m, twice, 5000, seed=4)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(d.size_diff for d in after.compare_to(before, "filename")
                if "learning" in str(d.traceback))
    assert grown < 20_000  # bytes: the statistics and one published model, not the steps


def test_one_observation_costs_well_under_100_microseconds() -> None:
    m = OnlineModel(PROFILE)
    gen = shapes(6)
    steps = [(s, PROFILE.predict(s)) for s in (next(gen) for _ in range(2000))]
    best = float("inf")
    for _ in range(3):  # the best of three: a busy machine only adds to it
        t0 = time.perf_counter()
        for s, y in steps:
            m.observe(s, y)
        best = min(best, (time.perf_counter() - t0) / len(steps))
    assert best < 100e-6, f"{1e6 * best:.1f} us per observation"
