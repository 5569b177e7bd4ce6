"""The hand-off wait in the planner (Snapshot.handoff_delay): a handed-off request's decode
must absorb the wait for its KV within its TPOT, or the planner decodes it where its prompt
is (or declines it)."""

from __future__ import annotations

from slos_serve.core.planner import PlanWorker, Snapshot, plan
from tests.test_layout import TOY, kv_short_and_busy, mixed, new, queued, where


def test_the_default_counts_no_wait() -> None:
    assert Snapshot(0.0, [], []).handoff_delay == 0.0


def test_a_long_hand_off_wait_makes_the_planner_decode_locally() -> None:
    """m0 prefills soonest (m1 has a prompt queued) but has no KV for the decode: with free
    hand-offs the prompt goes to m0 and its KV to m1; when the wait outlasts what the
    request's TPOT can absorb, it prefills and decodes on m1."""
    workers = [mixed("m0", kv=20), mixed("m1")]
    requests = [queued("q", "m1"), new("r")]
    free = Snapshot(0.0, requests, workers, adaptive_layout=True)
    assert where(plan(free), "r") == ("admit", "m0", "m1")
    slow = Snapshot(0.0, requests, workers, adaptive_layout=True, handoff_delay=60.0)
    assert where(plan(slow), "r") == ("admit", "m1", "m1")


def test_a_hand_off_wait_no_tpot_absorbs_declines_what_only_a_hand_off_serves() -> None:
    snap = Snapshot(0.0, [new("r")], kv_short_and_busy(), adaptive_layout=True,
                    handoff_delay=60.0)
    assert where(plan(snap), "r")[0] == "best_effort"


def pd() -> list[PlanWorker]:
    return [PlanWorker("p", "prefill", TOY, 10_000), PlanWorker("d", "decode", TOY, 10_000)]


def test_a_decode_worker_absorbs_a_wait_within_the_requests_slack() -> None:
    """1P+1D: the decode worker runs its batches back to back (~11 ms for one decoder), so
    a 400-token request at TPOT 100 ms absorbs up to ~35 s of waiting, not 60 s."""
    for delay, action in ((0.0, "admit"), (1.0, "admit"), (30.0, "admit"),
                          (40.0, "reject")):
        r = new("r")
        r.on_reject = "reject"
        snap = Snapshot(0.0, [r], pd(), handoff_delay=delay)
        assert where(plan(snap), "r")[0] == action, delay
