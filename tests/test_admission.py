"""The live coordinator's admission (coordinator/admission.py) on the sim-engine profile:
pure, no gRPC, milliseconds."""

from __future__ import annotations

from coordinator.admission import Admission, WorkerView
from slos_serve.core.perf_model import load_profile

TIGHT, LOOSE = 0.03, 0.2  # TPOT seconds


def _admission(spec_tokens: int = 0) -> Admission:
    a = Admission(load_profile("sim-engine"))
    a.set_workers([
        WorkerView("p0", "prefill", 4096, 16, spec_tokens),
        WorkerView("d0", "decode", 4096, 16, spec_tokens),
        WorkerView("dead", "decode", 0),  # no KV capacity known yet: gets no work
    ])
    return a


def test_feasible_request_is_admitted_and_routed() -> None:
    a = _admission()
    d = a.admit("r1", 100.0, 101.0, TIGHT, 200, 32, "best_effort")
    assert d.action == "admit" and (d.prefill_worker, d.decode_worker) == ("p0", "d0")
    assert a.requests["r1"].state == "admitted"
    a.first_token("r1", 100.1)
    a.progress("r1", 5)
    assert a.requests["r1"].stage == "decode" and a.requests["r1"].generated == 5
    a.finish("r1")
    assert "r1" not in a.requests


def test_impossible_ttft_follows_the_request_policy() -> None:
    a = _admission()
    # 1900 prompt tokens cannot be prefilled in 1 ms on any worker
    d = a.admit("r", 100.0, 100.001, TIGHT, 1900, 8, "reject")
    assert d.action == "reject" and d.reason and "r" not in a.requests
    d = a.admit("s", 100.0, 100.001, TIGHT, 1900, 8, "best_effort")
    assert d.action == "best_effort" and d.prefill_worker == "p0"
    assert a.requests["s"].state == "best_effort"


def test_overload_declines_some_requests() -> None:
    a = _admission()
    actions = [a.admit(f"r{i}", 100.0, 100.2, TIGHT, 1500, 16, "reject").action
               for i in range(40)]
    # the sim engine prefills ~50k tokens/s: about 6 prompts of 1500 fit in 200 ms
    assert 1 <= actions.count("admit") <= 12 and "reject" in actions


def test_worker_plans_carry_tiers_and_speculation() -> None:
    a = _admission(spec_tokens=4)
    for i, tpot in enumerate((TIGHT, TIGHT, LOOSE)):
        a.admit(f"r{i}", 100.0, 102.0, tpot, 100, 64, "best_effort")
        a.first_token(f"r{i}", 100.05)
    a.replan(100.1)
    plans = a.worker_plans()
    assert set(plans) == {"p0", "d0"}
    assert plans["p0"].tiers == () and plans["p0"].step_token_budget > 0
    tiers = {t.tpot_ms: t.spec_tokens for t in plans["d0"].tiers}
    assert set(tiers) == {TIGHT * 1000, LOOSE * 1000}
    assert tiers[TIGHT * 1000] >= tiers[LOOSE * 1000]
    assert not plans["d0"].pace  # pacing is for mixed workers


def test_no_worker_ready_means_best_effort_or_reject() -> None:
    a = Admission(load_profile("sim-engine"))
    assert a.admit("r", 0.0, 1.0, TIGHT, 10, 4, "best_effort").action == "best_effort"
    assert a.admit("s", 0.0, 1.0, TIGHT, 10, 4, "reject").action == "reject"
