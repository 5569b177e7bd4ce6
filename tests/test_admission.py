"""The live coordinator's admission (coordinator/admission.py) on the sim-engine profile:
pure, no gRPC, milliseconds."""

from __future__ import annotations

from coordinator.admission import Admission, WorkerView
from slos_serve.core.perf_model import PerfModel, Piece, load_profile
from slos_serve.core.planner import Plan, WorkerRole

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


# ------------------------------------------------------------ mixed workers --

# 1 ms per token + 10 ms per batch (tests/test_layout.py's toy model)
TOY = PerfModel([Piece((1e-3, 1e-3, 1e-3, 0, 0, 0), 0.01)], name="toy")
MIXED = [WorkerView("m0", "mixed", 10_000), WorkerView("m1", "mixed", 10_000)]


def test_fixed_layout_serves_each_request_locally_on_a_mixed_worker() -> None:
    a = Admission(TOY, max_batch_tokens=256)
    a.set_workers(MIXED)
    ds = [a.admit(r, 0.0, 0.5, LOOSE, 16, 16, "best_effort") for r in ("a", "b")]
    assert [(d.action, d.prefill_worker, d.decode_worker) for d in ds] == [
        ("admit", "m0", "m0"), ("admit", "m1", "m1")]
    assert a.last is not None and a.last.roles == {}


def test_adaptive_layout_keeps_planned_roles_across_replans() -> None:
    """Tight decoders on both mixed workers and a prompt declined: m0 drains to prefill (the
    planner's layout rule), switches once its decoder has left, and the next prompt is
    prefilled there and handed off; the roles survive every set_workers."""
    a = Admission(TOY, max_batch_tokens=256, adaptive_layout=True)
    a.set_workers(MIXED)
    for rid in ("a", "b"):
        d = a.admit(rid, 0.0, 0.5, TIGHT, 16, 16, "best_effort")
        assert d.action == "admit" and d.prefill_worker == d.decode_worker
        a.first_token(rid, 0.01)
    assert a.admit("late", 0.02, 0.021, LOOSE, 1000, 16, "best_effort").action == "best_effort"
    a.set_workers(MIXED)
    assert [(w.id, w.role, w.target_role) for w in a.workers] == [
        ("m0", "mixed", "prefill"), ("m1", "mixed", None)]
    a.finish("a")
    a.replan(0.05)
    a.set_workers(MIXED)
    assert [(w.id, w.role, w.target_role) for w in a.workers] == [
        ("m0", "prefill", None), ("m1", "mixed", None)]
    d = a.admit("c", 0.06, 1.0, LOOSE, 64, 16, "best_effort")
    assert (d.action, d.prefill_worker, d.decode_worker) == ("admit", "m0", "m1")
    plans = a.worker_plans()
    assert plans["m0"].tiers == () and not plans["m0"].pace  # a prefill worker's share
    assert plans["m1"].pace


def test_planned_roles_apply_to_mixed_workers_only() -> None:
    """A worker started as prefill or decode accepts only that: no plan changes its role."""
    a = Admission(TOY, adaptive_layout=True)
    views = [WorkerView("p0", "prefill", 1000), WorkerView("m0", "mixed", 1000)]
    a.set_workers(views)
    a.apply_roles(Plan(0.0, [], {}, {}, [], roles={"p0": WorkerRole("mixed"),
                                                  "m0": WorkerRole("mixed", "decode")}))
    a.set_workers(views)
    assert [(w.id, w.role, w.target_role) for w in a.workers] == [
        ("p0", "prefill", None), ("m0", "mixed", "decode")]
