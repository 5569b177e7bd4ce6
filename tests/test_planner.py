"""Planner: hand-checkable DP cases, EDF decode cadence, routing, and properties."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slos_serve.core.perf_model import PerfModel, Piece
from slos_serve.core.planner import Plan, PlanRequest, PlanWorker, Snapshot, plan

# 1 ms per token + 10 ms per batch: a 100-token prefill batch takes 0.11 s
TOY = PerfModel([Piece((1e-3, 1e-3, 1e-3, 0, 0, 0), 0.01)], name="toy")


def prefill_req(rid: str, tokens: int, deadline: float, tpot: float = 0.1, **kw) -> PlanRequest:
    return PlanRequest(rid, "prefill", 0.0, deadline, tpot, tokens, expected_output=16, **kw)


def decoder(rid: str, tpot: float, worker: str, prompt: int = 16, **kw) -> PlanRequest:
    return PlanRequest(rid, "decode", 0.0, 0.0, tpot, prompt, remaining_prefill=0, generated=1,
                       expected_output=16, is_new=False, state="admitted",
                       prefill_worker=worker, decode_worker=worker, **kw)


def disagg(kv: int = 10_000, prefill_tokens: int = 100, n_prefill: int = 1) -> list[PlanWorker]:
    ws = [PlanWorker(f"p{i}", "prefill", TOY, kv, max_batch_tokens=prefill_tokens)
          for i in range(n_prefill)]
    return ws + [PlanWorker("d0", "decode", TOY, kv)]


def actions(p: Plan) -> dict[str, str]:
    return {d.request_id: d.action for d in p.verdicts}


def test_only_one_of_two_requests_can_meet_its_ttft() -> None:
    # each needs one full 0.11 s batch; only one batch ends before 0.15 s
    reqs = [prefill_req("a", 100, 0.15), prefill_req("b", 100, 0.15)]
    p = plan(Snapshot(0.0, reqs, disagg()))
    acts = actions(p)
    assert sorted(acts.values()) == ["admit", "best_effort"]
    reqs = [replace(r, on_reject="reject") for r in reqs]
    assert sorted(actions(plan(Snapshot(0.0, reqs, disagg()))).values()) == ["admit", "reject"]
    # with a later deadline both fit (two batches end at 0.22 s)
    reqs = [prefill_req("a", 100, 0.25), prefill_req("b", 100, 0.25)]
    assert set(actions(plan(Snapshot(0.0, reqs, disagg()))).values()) == {"admit"}


def test_dp_prefers_two_small_requests_over_one_large_earlier_one() -> None:
    # greedy EDF would take "big" (200 tokens by 0.23 s) and then fit nothing else
    reqs = [prefill_req("big", 200, 0.23), prefill_req("s1", 100, 0.24),
            prefill_req("s2", 100, 0.24)]
    p = plan(Snapshot(0.0, reqs, disagg()))
    assert actions(p) == {"big": "best_effort", "s1": "admit", "s2": "admit"}
    sched = p.prefill["p0"]
    assert sched.order[:2] == ["s1", "s2"] and sched.order[2] == "big"
    first, second = sched.batches[:2]
    assert [c[0] for c in first.prefill + second.prefill] == ["s1", "s2"]
    assert math.isclose(second.end, 0.22)
    assert first.deadline == 0.24 and second.end <= second.deadline


def test_admission_is_bounded_by_kv_memory() -> None:
    # 32 prompt + 16 generated + 16 expected = 64 tokens = 4 blocks; the decoder holds 10
    reqs = [replace(prefill_req(f"r{i}", 32, 5.0), expected_output=31) for i in range(3)]
    p = plan(Snapshot(0.0, reqs, [PlanWorker("p0", "prefill", TOY, 100),
                                  PlanWorker("d0", "decode", TOY, 10)]))
    assert list(actions(p).values()).count("admit") == 2
    declined = [d for d in p.verdicts if d.action != "admit"]
    assert "decode" in declined[0].reason
    # colocated: prompt and output share the same 10 blocks
    p = plan(Snapshot(0.0, reqs, [PlanWorker("m0", "mixed", TOY, 10)]))
    assert list(actions(p).values()).count("admit") == 2


def test_tight_and_loose_tiers_share_batches_on_a_mixed_worker() -> None:
    olds = [decoder(f"t{i}", 0.05, "m0") for i in range(4)]
    olds += [decoder(f"l{i}", 0.1, "m0") for i in range(4)]
    new = prefill_req("n", 60, 1.0)
    p = plan(Snapshot(0.0, olds + [new], [PlanWorker("m0", "mixed", TOY, 1000)]))
    assert actions(p) == {"n": "admit"}
    dp = p.decode["m0"]
    tiers = {t.tpot: t for t in dp.tiers}
    assert dp.step_time == 0.05
    assert tiers[0.05].every == 1 and tiers[0.1].every == 2
    # worst batch: 4 tight + 2 loose tokens (+1 reserved for n's tier): 0.05 s holds 40 tokens
    assert dp.decode_tokens_per_step == 7
    assert dp.prefill_budget_per_step == 33
    batches = dp.batches[:4]
    for b in batches:
        ids = [rid for rid, _ in b.decode]
        assert all(f"t{i}" in ids for i in range(4))  # tight: every batch
        assert b.end <= b.deadline
    for i in range(4):  # loose: one batch out of two
        assert sum(f"l{i}" in [rid for rid, _ in b.decode] for b in batches) == 2
    # the new prompt rides in the same batches as the decoders, split over two of them
    chunks = [(b, c) for b in batches for c in b.prefill]
    assert sum(c[1] for _, c in chunks) == 60 and len(chunks) == 2
    assert all(b.decode for b, _ in chunks)


def test_edf_cadence_on_a_decode_worker_follows_token_deadlines() -> None:
    # period u = 0.1 s (one 100 ms tier); a request is due once its deadline is within 2u
    reqs = [decoder("late", 0.1, "d0", token_deadline=0.35),
            decoder("soon", 0.1, "d0", token_deadline=0.12)]
    ws = [PlanWorker("p0", "prefill", TOY, 100), PlanWorker("d0", "decode", TOY, 100)]
    p = plan(Snapshot(0.0, reqs, ws))
    b = p.decode["d0"].batches
    assert [rid for rid, _ in b[0].decode] == ["soon"]  # "late" can wait
    assert b[0].deadline == 0.12 and b[0].end <= 0.12
    # batches are paced at the period; "late" becomes due when it can no longer wait
    assert [round(x.start, 6) for x in b[:3]] == [0.0, 0.1, 0.2]
    first_late = next(i for i, x in enumerate(b) if ("late", 1) in x.decode)
    assert first_late == 2 and b[2].deadline == 0.32 and b[2].end <= 0.32
    # "soon" is paced from its deadline: 0.12, 0.22, 0.32 ...
    assert [("soon", 1) in x.decode for x in b[:3]] == [True, True, True]
    assert b[1].deadline == 0.22


def test_admitted_request_is_kept_even_when_it_is_already_late() -> None:
    old = replace(prefill_req("old", 300, 0.05), is_new=False, state="admitted",
                  prefill_worker="p0", decode_worker="d0")
    new = prefill_req("new", 50, 0.2)
    p = plan(Snapshot(0.0, [old, new], disagg()))
    assert "old" in p.admitted and "old" in p.prefill["p0"].order
    assert p.verdict("old") is None  # no decision revisits an admitted request
    # "old" (300 tokens) is served first in EDF order, so "new" cannot finish by 0.2 s
    assert actions(p) == {"new": "best_effort"}


def test_routing_starts_at_i_mod_r_and_moves_on_when_full() -> None:
    reqs = [prefill_req(f"r{i}", 100, 0.15) for i in range(3)]
    p = plan(Snapshot(0.0, reqs, disagg(n_prefill=2), route_start=1))
    d = {x.request_id: x for x in p.verdicts}
    assert d["r0"].prefill_worker == "p1" and d["r1"].prefill_worker == "p0"
    assert d["r0"].action == d["r1"].action == "admit"
    assert d["r2"].action == "best_effort"  # both workers hold one 0.11 s batch before 0.15 s


# ---------------------------------------------------------------- properties


@st.composite
def clusters(draw):
    mixed = draw(st.booleans())
    kv = draw(st.integers(8, 200))
    if mixed:
        return [PlanWorker(f"m{i}", "mixed", TOY, kv, max_batch_tokens=128)
                for i in range(draw(st.integers(1, 2)))]
    ws = [PlanWorker(f"p{i}", "prefill", TOY, kv, max_batch_tokens=128)
          for i in range(draw(st.integers(1, 2)))]
    return ws + [PlanWorker(f"d{i}", "decode", TOY, kv) for i in range(draw(st.integers(1, 2)))]


def arrivals(draw, now: float, n: int, tag: str) -> list[PlanRequest]:
    out = []
    for i in range(n):
        out.append(PlanRequest(
            f"{tag}{i}", "prefill", now, now + draw(st.floats(0.02, 1.0)),
            draw(st.sampled_from([0.05, 0.1, 0.2])), draw(st.integers(1, 300)),
            expected_output=draw(st.integers(1, 64)),
            on_reject=draw(st.sampled_from(["best_effort", "reject"]))))
    return out


def advance(snap: Snapshot, p: Plan, dt: float, news: list[PlanRequest]) -> Snapshot:
    """Apply the plan's decisions, let time pass, move some admitted prompts to decode."""
    now = snap.now + dt
    by_id = {d.request_id: d for d in p.verdicts}
    out = []
    for r in snap.requests:
        d = by_id.get(r.id)
        if d is not None and d.action == "reject":
            continue
        if d is not None:
            r = replace(r, is_new=False, state="admitted" if d.action == "admit" else
                        "best_effort", prefill_worker=d.prefill_worker,
                        decode_worker=d.decode_worker)
        if r.phase == "prefill" and r.ttft_deadline <= now and r.decode_worker is not None:
            r = replace(r, phase="decode", remaining_prefill=0, generated=1,
                        token_deadline=now + r.tpot)
        out.append(r)
    return replace(snap, now=now, requests=out + news, route_start=snap.route_start + 1)


def check_batches(p: Plan) -> None:
    for sched in list(p.prefill.values()) + list(p.decode.values()):
        for b in sched.batches:
            assert b.end <= b.deadline + 1e-9, (sched, b)
            assert b.start <= b.end


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_admitted_requests_are_never_dropped_and_batches_meet_their_claims(data) -> None:
    draw = data.draw
    snap = Snapshot(0.0, arrivals(draw, 0.0, draw(st.integers(1, 8)), "a"), draw(clusters()),
                    default_alpha=draw(st.sampled_from([0.0, 0.7])),
                    max_spec_len=draw(st.integers(0, 4)))
    admitted: set[str] = set()
    for step in range(3):
        p = plan(snap)
        check_batches(p)
        assert admitted <= set(p.admitted), "an admitted request was dropped"
        for d in p.verdicts:
            assert d.request_id not in admitted or d.action == "admit"
        admitted |= {d.request_id for d in p.verdicts if d.action == "admit"}
        assert admitted <= set(p.admitted)
        dt = draw(st.floats(0.0, 0.3))
        snap = advance(snap, p, dt, arrivals(draw, snap.now + dt, draw(st.integers(0, 6)),
                                             f"s{step}_"))


def test_a_ttft_shorter_than_one_batch_period_gets_a_smaller_faster_batch() -> None:
    # a full 100-token batch takes 0.11 s; a 20-token prompt due at 0.05 s still fits in a
    # partial batch (0.01 + 0.02 s), and the emitted batch is cut to end by its deadline
    reqs = [prefill_req("short", 20, 0.05), prefill_req("long", 150, 1.0)]
    p = plan(Snapshot(0.0, reqs, disagg()))
    assert actions(p) == {"short": "admit", "long": "admit"}
    first = p.prefill["p0"].batches[0]
    assert first.prefill[0] == ("short", 20) and first.end <= 0.05 + 1e-9
    check_batches(p)
    # on a mixed worker whose decode period is longer than the TTFT window, likewise
    olds = [decoder(f"d{i}", 0.2, "m0") for i in range(4)]
    p = plan(Snapshot(0.0, olds + [prefill_req("n", 10, 0.06, tpot=0.2)],
                      [PlanWorker("m0", "mixed", TOY, 1000)]))
    assert p.decode["m0"].step_time > 0.06
    assert actions(p) == {"n": "admit"}
    check_batches(p)
