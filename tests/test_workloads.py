"""Workloads: deterministic by seed, lengths and arrivals as specified, trace replay."""

from __future__ import annotations

import numpy as np
import pytest

from slos_serve.sim.workloads import (
    SCENARIOS,
    TIERS,
    TraceOptions,
    WorkloadSpec,
    ZeroLoad,
    build_workload,
    gamma_arrivals,
    load_trace,
    reference_zero_load,
    trace_arrivals_and_lengths,
)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_deterministic_by_seed(scenario: str) -> None:
    a = build_workload(WorkloadSpec(scenario, 4.0, 50, seed=3))
    b = build_workload(WorkloadSpec(scenario, 4.0, 50, seed=3))
    c = build_workload(WorkloadSpec(scenario, 4.0, 50, seed=4))
    assert a == b
    assert a != c
    assert [r.id for r in a] == list(range(50))
    assert all(x.arrival < y.arrival for x, y in zip(a, a[1:], strict=False))


def test_same_requests_at_every_rate() -> None:
    """A capacity search changes rate and count: request i must stay the same request."""
    slow = build_workload(WorkloadSpec("mixed", 2.0, 40, seed=1))
    fast = build_workload(WorkloadSpec("mixed", 8.0, 80, seed=1))
    for x, y in zip(slow, fast, strict=False):
        assert x.segments == y.segments and x.tier == y.tier
        assert x.arrival == pytest.approx(4 * y.arrival)


def test_lengths_roughly_as_specified() -> None:
    n = 2000
    mean = {}
    for sc in ("chatbot", "coding", "summarization", "reasoning"):
        w = build_workload(WorkloadSpec(sc, 1.0, n, seed=0))
        mean[sc] = (np.mean([r.prompt_tokens for r in w]), np.mean([r.output_tokens for r in w]))
    assert 200 < mean["chatbot"][0] < 450 and 150 < mean["chatbot"][1] < 350
    assert 100 < mean["coding"][0] < 220
    assert 1100 < mean["summarization"][0] < 1700 and mean["summarization"][1] < 250
    assert mean["reasoning"][1] > 1000  # long thinking
    assert mean["summarization"][0] > 4 * mean["coding"][0]


def test_tiers_and_segments() -> None:
    zl = reference_zero_load()
    tool = build_workload(WorkloadSpec("tool", 1.0, 20, seed=0))
    for r in tool:
        s1, s2 = r.segments
        assert r.tier == "FastTool"
        assert s1.tpot_slo == pytest.approx(0.05) and s2.tpot_slo == pytest.approx(0.1)
        assert s1.ttft_slo == pytest.approx(3 * zl.prefill_s(s1.prompt_tokens))
        assert s2.prompt_tokens > 0 and s2.gap_s >= 0
    think = build_workload(WorkloadSpec("reasoning", 1.0, 20, seed=0))
    for r in think:
        assert r.segments[1].prompt_tokens == 0 and r.segments[1].ttft_slo is None
        assert r.segments[0].tpot_slo < r.segments[1].tpot_slo
    mixed = build_workload(WorkloadSpec("mixed", 1.0, 300, seed=0))
    assert {r.tier for r in mixed} == {"HumanDcd", "FastDcd", "FastPF"}
    assert set(TIERS) >= {r.tier for r in mixed}


def test_relative_tpot_scales_with_decode_step() -> None:
    zl = ZeroLoad(prefill_s=lambda n: 0.001 * n, decode_step_s=0.0317721 * 2,
                  tpot_mode="relative")
    r = build_workload(WorkloadSpec("coding", 1.0, 5, seed=0), zl)[0]
    assert r.segments[0].tpot_slo == pytest.approx(0.1)
    assert r.segments[0].ttft_slo == pytest.approx(5 * 0.001 * r.prompt_tokens)


def test_max_context_clips() -> None:
    w = build_workload(WorkloadSpec("reasoning", 1.0, 200, seed=0, max_context=1024))
    assert max(r.total_tokens for r in w) <= 1024
    assert min(s.output_tokens for r in w for s in r.segments) >= 1


def test_gamma_burstiness() -> None:
    rng = np.random.default_rng(0)
    poisson = np.diff(gamma_arrivals(10.0, 1.0, 20000, rng))
    bursty = np.diff(gamma_arrivals(10.0, 0.25, 20000, rng))
    assert poisson.mean() == pytest.approx(0.1, rel=0.05)
    assert bursty.mean() == pytest.approx(0.1, rel=0.05)
    cv2 = lambda x: x.var() / x.mean() ** 2  # noqa: E731
    assert cv2(poisson) == pytest.approx(1.0, rel=0.1)
    assert cv2(bursty) == pytest.approx(4.0, rel=0.15)  # 1 / shape


def _write_trace(path, rows) -> None:
    with open(path, "w") as f:
        f.write("TIMESTAMP,ContextTokens,GeneratedTokens\n")
        for t, c, g in rows:
            f.write(f"{t},{c},{g}\n")


def test_trace_csv_parsing_and_time_scaling(tmp_path) -> None:
    p = tmp_path / "trace.csv"
    _write_trace(p, [
        ("2023-11-16 18:15:46.6805900", 100, 10),
        ("2023-11-16 18:15:47.1805900", 3000, 500),
        ("2023-11-16 18:15:45.6805900", 50, 5),  # out of order: sorted by time
        ("2023-11-16 18:15:48.6805900", 200, 0),
    ])
    rows = load_trace(p)
    assert [r.t for r in rows] == pytest.approx([0.0, 1.0, 1.5, 3.0])
    assert rows[0].context_tokens == 50
    t, prompt, out = trace_arrivals_and_lengths(rows, TraceOptions(time_scale=0.5))
    assert t == pytest.approx([0.0, 0.5, 0.75, 1.5])
    t, _, _ = trace_arrivals_and_lengths(rows, TraceOptions(rate=2.0))
    assert (len(t) - 1) / t[-1] == pytest.approx(2.0)
    _, prompt, out = trace_arrivals_and_lengths(rows, TraceOptions(max_context=1024))
    assert all(p + o <= 1024 for p, o in zip(prompt, out, strict=True))
    assert min(out) >= 1 and prompt[2] == 1023


def test_trace_replaces_arrivals_and_lengths(tmp_path) -> None:
    p = tmp_path / "trace.csv"
    _write_trace(p, [(i * 0.5, 100 + i, 20 + i) for i in range(10)])
    w = build_workload(WorkloadSpec("chatbot", 1.0, 10, seed=0, trace=str(p)))
    assert [r.prompt_tokens for r in w] == [100 + i for i in range(10)]
    assert [r.output_tokens for r in w] == [20 + i for i in range(10)]
    assert [r.arrival for r in w] == pytest.approx([i * 0.5 for i in range(10)])
    two = build_workload(WorkloadSpec("tool", 1.0, 10, seed=0, trace=str(p)))
    assert all(len(r.segments) == 2 and r.segments[0].prompt_tokens == 100 + r.id for r in two)


def test_bad_trace(tmp_path) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("time,tokens\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        load_trace(p)
    with pytest.raises(ValueError, match="unknown scenario"):
        build_workload(WorkloadSpec("nope", 1.0, 1))
