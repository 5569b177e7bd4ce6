"""Per-stage accounting of streamed requests (slos_serve/core/stages.py): pure, milliseconds."""

from __future__ import annotations

from dataclasses import replace

import pytest

from slos_serve.core.stages import StageSpec, StageTracker


def test_single_stage_matches_the_request_verdict() -> None:
    t = StageTracker([StageSpec("tight", 100.0, 10.0)], received=0.0)
    t.add(1, "a", 0.05)  # TTFT 50 ms
    t.add(2, "bc", 0.07)
    t.add(1, "d", 0.08)  # 3 more tokens in 30 ms: TPOT 10 ms
    (r,) = t.results()
    assert r.tokens == 4 and r.first_token_ms == pytest.approx(50.0)
    assert r.tpot_ms == pytest.approx(10.0) and r.met


def test_count_boundary_splits_a_chunk_and_judges_each_stage() -> None:
    stages = [StageSpec("tight", 100.0, 10.0, max_tokens=3), StageSpec("loose", 1e4, 50.0)]
    t = StageTracker(stages, received=0.0)
    assert not t.add(1, "x", 0.01)
    assert t.add(4, "yyyy", 0.03)  # 2 tokens end stage 0, 2 start stage 1
    assert t.index == 1 and t.current.tier == "loose"
    t.add(2, "zz", 0.23)
    s0, s1 = t.results()
    assert (s0.tokens, s1.tokens) == (3, 4)
    assert s0.tpot_ms == pytest.approx(10.0) and s0.met  # (0.03 - 0.01) / 2
    # stage 1 starts at 0.03: 4 tokens by 0.23 -> 50 ms each
    assert s1.tpot_ms == pytest.approx(50.0) and s1.met
    assert s1.ttft_slo_ms == 0.0 and s0.ttft_slo_ms == 100.0


def test_until_string_ends_a_stage_and_slow_stage_is_missed() -> None:
    stages = [StageSpec("tight", 1e3, 20.0, until="</think>"), StageSpec("loose", 1e3, 30.0)]
    t = StageTracker(stages, received=0.0)
    t.add(1, "<think>", 0.1)
    assert not t.add(1, "hmm </thi", 0.11)
    assert t.add(1, "nk> ", 0.12)
    t.add(1, "answer", 0.5)  # 380 ms for one token: stage 1 misses its 30 ms TPOT
    s0, s1 = t.results()
    assert s0.tokens == 3 and s0.met
    assert s1.tokens == 1 and not s1.met


def test_unreached_stage_is_reported_empty_and_met() -> None:
    stages = [StageSpec("tight", 100.0, 10.0, max_tokens=5), StageSpec("loose", 1e4, 50.0)]
    t = StageTracker(stages, received=0.0)
    t.add(2, "ab", 0.05)
    s0, s1 = t.results()
    assert s0.tokens == 2 and s1.tokens == 0 and s1.met


def test_no_token_at_all_misses_stage_zero() -> None:
    t = StageTracker([StageSpec("tight", 100.0, 10.0)], received=0.0)
    (r,) = t.results()
    assert r.tokens == 0 and not r.met


def test_needs_a_stage() -> None:
    with pytest.raises(ValueError):
        StageTracker([], received=0.0)


def test_a_resumed_request_is_told_the_stages_still_ahead() -> None:
    """A decode resumed mid-stream on another worker starts from the current stage, with
    what is left of its tokens (the worker's stage 0), the later stages unchanged."""
    from proto import slos_serve_pb2 as pb
    from slos_serve.core.policy import RequestSlo
    from slos_serve.wire import resumed_slo, slo_to_proto

    stages = (StageSpec(tier="a", tpot_ms=100.0, max_tokens=10),
              StageSpec(tier="b", tpot_ms=30.0, max_tokens=20), StageSpec(tier="c", tpot_ms=50.0))
    t = StageTracker(stages)
    t.add(3)
    assert t.remaining() == (replace(stages[0], max_tokens=7), *stages[1:])
    t.add(12)  # into stage 1: 5 of its 20
    assert t.remaining() == (replace(stages[1], max_tokens=15), stages[2])
    slo = slo_to_proto(RequestSlo(ttft_deadline_unix=1.0, tpot_ms=100.0, stages=stages))
    resumed = resumed_slo(slo, t.remaining())
    assert [(s.tpot_ms, s.max_tokens) for s in resumed.stages] == [(30.0, 15), (50.0, 0)]
    assert resumed.tpot_ms == 30.0 and resumed.ttft_deadline_unix == 1.0
    assert isinstance(resumed, pb.WorkerSlo)
