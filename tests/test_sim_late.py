"""The early stop of overloaded runs (`Cluster._check_late`): a request is counted late only
once it can no longer attain, never while it waits for its tool result between stages."""

from __future__ import annotations

from slos_serve.core.perf_model import load_profile
from slos_serve.sim.core import Cluster, SimConfig
from slos_serve.sim.request import SimRequest
from slos_serve.sim.simulator import SYSTEMS, simulate
from slos_serve.sim.workloads import Request, Segment

MODEL = load_profile("opt-13b-a100")


def _tool_call(gap_s: float) -> Request:
    """A short function call, a long tool run, then the answer: loose SLOs, easily met."""
    return Request(0, 0.0, "t", (Segment(100, 5, 1.0, 0.1), Segment(50, 5, 1.0, 0.1, gap_s)))


def test_waiting_for_a_tool_result_is_not_late() -> None:
    """A tool that runs 5 s (far longer than the first stage's TPOT budget of 0.4 s) must not
    make the request count as missed; with no miss allowed, a false miss stops the run."""
    res = simulate([_tool_call(5.0)], "vllm", SimConfig(miss_budget=0), MODEL, "opt-13b-a100")
    assert not res.stopped_early
    assert res.results[0].attained


def _cluster(now: float) -> Cluster:
    c = Cluster(SimConfig(), MODEL, ["mixed"], SYSTEMS["vllm"](), "opt-13b-a100")
    c.now = now
    return c


def _answer_segment(start: float, first: float | None) -> SimRequest:
    """A reasoning request 2 s into its answer segment (no prompt, no TTFT, 10 tokens at
    0.1 s each, measured from the segment's start)."""
    req = Request(0, 0.0, "t", (Segment(10, 5, 1.0, 0.1), Segment(0, 10, None, 0.1)))
    return SimRequest(req, segment=1, phase="decode", generated=0 if first is None else 1,
                      segment_start=[0.0, start], first_token=[0.1, first],
                      segment_end=[start, None])


def test_a_segment_without_ttft_is_late_once_its_tpot_cannot_be_met() -> None:
    c = _cluster(now=3.5)
    slow, on_time = _answer_segment(1.0, None), _answer_segment(3.0, None)
    c.requests = [slow, on_time]
    c._check_late()
    assert slow.extra.get("late") and not on_time.extra.get("late")
    assert c.missed == 1


def test_a_segment_without_prompt_measures_tpot_from_its_start() -> None:
    """Its first token came at 3.0 s, but the segment started at 1.0 s: 2.5 s for 10 tokens
    already exceeds 1.0 s, although 0.5 s since the first token would not."""
    c = _cluster(now=3.5)
    r = _answer_segment(1.0, 3.0)
    c.requests = [r]
    c._check_late()
    assert r.extra.get("late")


def test_ttft_deadline_passed_is_late() -> None:
    c = _cluster(now=2.0)
    req = Request(0, 0.0, "t", (Segment(100, 5, 1.0, 0.1),))
    waiting = SimRequest(req, phase="prefill", segment_start=[0.0], first_token=[None],
                         segment_end=[None])
    c.requests = [waiting]
    c._check_late()
    assert waiting.extra.get("late") and c.missed == 1
