"""Conditional disaggregation (Snapshot.adaptive_layout): the planner's per-request choice
between local prefill + decode and a KV hand-off, and role changes that drain first."""

from __future__ import annotations

from slos_serve.core.perf_model import PerfModel, Piece, load_profile
from slos_serve.core.planner import Plan, PlanRequest, PlanWorker, Snapshot, WorkerRole, plan
from slos_serve.sim.core import Cluster, SimConfig, SimRequest
from slos_serve.sim.simulator import SYSTEMS, roles_for
from slos_serve.sim.slos_system import SlosSystem
from slos_serve.sim.workloads import Request, Segment

# 1 ms per token + 10 ms per batch
TOY = PerfModel([Piece((1e-3, 1e-3, 1e-3, 0, 0, 0), 0.01)], name="toy")


def new(rid: str, prompt: int = 100, deadline: float = 0.5, output: int = 400,
        tpot: float = 0.1) -> PlanRequest:
    return PlanRequest(rid, "prefill", 0.0, deadline, tpot, prompt, expected_output=output)


def decoding(rid: str, worker: str, tpot: float = 0.1, **kw) -> PlanRequest:
    return PlanRequest(rid, "decode", 0.0, 0.0, tpot, 16, remaining_prefill=0, generated=1,
                       expected_output=16, is_new=False, state="admitted",
                       prefill_worker=worker, decode_worker=worker, **kw)


def queued(rid: str, worker: str, deadline: float = 5.0) -> PlanRequest:
    """Admitted, waiting for its prefill on `worker`, decoding there too."""
    return PlanRequest(rid, "prefill", 0.0, deadline, 0.1, 100, expected_output=16,
                       is_new=False, state="admitted", prefill_worker=worker,
                       decode_worker=worker)


def mixed(wid: str, kv: int = 10_000, busy_until: float = 0.0, **kw) -> PlanWorker:
    return PlanWorker(wid, "mixed", TOY, kv, busy_until=busy_until, **kw)


def where(p: Plan, rid: str) -> tuple[str, str | None, str | None]:
    v = p.verdict(rid)
    assert v is not None
    return v.action, v.prefill_worker, v.decode_worker


def kv_short_and_busy() -> list[PlanWorker]:
    """m0 has KV for a prompt (7 blocks) but not for its decode (32 blocks); m1 has room to
    decode but its running batch ends after the TTFT deadline."""
    return [mixed("m0", kv=20), mixed("m1", busy_until=10.0)]


def test_hand_off_when_the_model_predicts_no_local_placement_works() -> None:
    snap = Snapshot(0.0, [new("r")], kv_short_and_busy(), adaptive_layout=True)
    assert where(plan(snap), "r") == ("admit", "m0", "m1")


def test_the_fixed_colocated_layout_declines_the_same_request() -> None:
    snap = Snapshot(0.0, [new("r")], kv_short_and_busy())
    assert where(plan(snap), "r")[0] == "best_effort"


def test_local_prefill_and_decode_when_it_fits() -> None:
    snap = Snapshot(0.0, [new("r")], [mixed("m0"), mixed("m1")], adaptive_layout=True)
    action, pw, dw = where(plan(snap), "r")
    assert action == "admit" and pw == dw


def test_prompts_go_where_prefill_is_fastest_and_decode_where_load_is_least() -> None:
    # m1 paces batches for a tight decoder: its prefill rate is lower, so the prompt goes to
    # m0; m0 cannot hold its decode KV, so it decodes on m1 (the only other worker)
    reqs = [decoding("d", "m1", tpot=0.03), new("r", deadline=0.2)]
    snap = Snapshot(0.0, reqs, [mixed("m0", kv=20), mixed("m1")], adaptive_layout=True)
    assert where(plan(snap), "r") == ("admit", "m0", "m1")


def test_a_hand_off_does_not_make_the_decode_workers_committed_prompts_late() -> None:
    # m1's queued prompt needs most of m1's budget before its deadline: one more (tight)
    # decoder there would shrink the budget so that it is late -> no hand-off to m1
    reqs = [queued("q", "m1", deadline=0.2), new("r", tpot=0.02)]
    ws = [mixed("m0", kv=20), mixed("m1", max_batch_tokens=100)]
    snap = Snapshot(0.0, reqs, ws, adaptive_layout=True)
    assert where(plan(snap), "r")[0] == "best_effort"
    relaxed = Snapshot(0.0, [queued("q", "m1", deadline=5.0), new("r", tpot=0.02)], ws,
                       adaptive_layout=True)
    assert where(plan(relaxed), "r") == ("admit", "m0", "m1")


def tight(wid: str, **kw) -> PlanWorker:
    """A mixed worker whose 256-token batches a 30 ms decoder paces (see
    test_tight_decoders_spread_over_mixed_workers_move_off_one_of_them)."""
    return mixed(wid, max_batch_tokens=256, **kw)


def declined() -> PlanRequest:
    """A new prompt no worker can prefill by its deadline: the plan declines a prompt."""
    return new("late", prompt=1000, deadline=0.001)


def test_a_worker_draining_to_prefill_takes_no_new_decodes_and_switches_when_drained() -> None:
    ws = [tight("m0", target_role="prefill"), tight("m1")]
    reqs = [decoding("a", "m0", tpot=0.03), decoding("b", "m1", tpot=0.03), new("r")]
    p = plan(Snapshot(0.0, reqs, ws, adaptive_layout=True))
    assert where(p, "r")[2] == "m1"  # decoded elsewhere
    assert p.roles["m0"] == WorkerRole("mixed", "prefill")  # its decoder is still there
    assert p.decode["m0"].tiers  # ... and is still decoded
    p = plan(Snapshot(0.0, [decoding("b", "m1", tpot=0.03), new("s")], ws,
                      adaptive_layout=True))
    assert p.roles["m0"] == WorkerRole("prefill")
    assert where(p, "s") == ("admit", "m0", "m1")


def test_a_drain_to_prefill_that_no_longer_pays_stops() -> None:
    # loose decoders leave both workers nearly all of their batches: moving m0's decoder
    # to m1 gains nothing, so m0 takes decodes again at once
    ws = [tight("m0", target_role="prefill"), tight("m1")]
    reqs = [decoding("a", "m0", tpot=1.0), decoding("b", "m1", tpot=1.0)]
    p = plan(Snapshot(0.0, reqs, ws, adaptive_layout=True))
    assert p.roles["m0"] == WorkerRole("mixed")


def test_prompts_go_where_they_are_prefilled_soonest() -> None:
    # equal workers, m0 first in routing order but 2000 admitted prompt tokens queued on it
    reqs = [queued("q", "m0", deadline=60.0), new("r", deadline=5.0)]
    reqs[0] = PlanRequest("q", "prefill", 0.0, 60.0, 0.1, 2000, expected_output=16,
                          is_new=False, state="admitted", prefill_worker="m0",
                          decode_worker="m0")
    p = plan(Snapshot(0.0, reqs, [mixed("m0"), mixed("m1")], adaptive_layout=True))
    assert where(p, "r")[1] == "m1"
    # within one plan the prompts routed before count: two new prompts spread out
    p = plan(Snapshot(0.0, [new("a", deadline=5.0), new("b", deadline=5.0)],
                      [mixed("m0"), mixed("m1")], adaptive_layout=True))
    assert {where(p, "a")[1], where(p, "b")[1]} == {"m0", "m1"}


def test_a_worker_draining_to_decode_takes_no_new_prompts_and_switches_when_drained() -> None:
    ws = [mixed("m0", target_role="decode"), mixed("m1")]
    p = plan(Snapshot(0.0, [queued("q", "m0"), new("r")], ws, adaptive_layout=True))
    assert where(p, "r")[1] == "m1"
    assert p.roles["m0"] == WorkerRole("mixed", "decode")  # its prompt is still queued
    assert "q" in p.prefill["m0"].order
    p = plan(Snapshot(1.0, [decoding("q", "m0"), new("s")], ws, adaptive_layout=True))
    assert p.roles["m0"] == WorkerRole("decode") and where(p, "s")[1] == "m1"


def test_tight_decoders_spread_over_mixed_workers_move_off_one_of_them() -> None:
    # a 30 ms TPOT paces each worker's batches at 30 ms: ~630 prefill tokens/s each; with
    # both decoders on m1 and m0 prefilling alone in 256-token batches the cluster
    # prefills ~1560 tokens/s: m0 starts draining to prefill
    # (while the plan declines a prompt: the cluster's prefill rate binds)
    ws = [tight("m0"), tight("m1")]
    reqs = [decoding("a", "m0", tpot=0.03), decoding("b", "m1", tpot=0.03), declined()]
    p = plan(Snapshot(0.0, reqs, ws, adaptive_layout=True))
    assert p.roles == {"m0": WorkerRole("mixed", "prefill"), "m1": WorkerRole("mixed")}
    loose = [decoding("a", "m0", tpot=1.0), decoding("b", "m1", tpot=1.0), declined()]
    p = plan(Snapshot(0.0, loose, ws, adaptive_layout=True))
    assert p.roles == {"m0": WorkerRole("mixed"), "m1": WorkerRole("mixed")}


def test_no_worker_turns_to_prefill_while_every_prompt_is_admitted() -> None:
    reqs = [decoding("a", "m0", tpot=0.03), decoding("b", "m1", tpot=0.03), new("r")]
    p = plan(Snapshot(0.0, reqs, [tight("m0"), tight("m1")], adaptive_layout=True))
    assert where(p, "r")[0] == "admit"
    assert p.roles == {"m0": WorkerRole("mixed"), "m1": WorkerRole("mixed")}


def test_a_prefill_worker_decodes_again_when_the_decode_workers_kv_fills() -> None:
    ws = [PlanWorker("m0", "prefill", TOY, 100), mixed("m1", kv=100)]
    light = [decoding("a", "m1", tpot=0.03, kv_blocks=50)]
    p = plan(Snapshot(0.0, light, ws, adaptive_layout=True))
    assert p.roles["m0"] == WorkerRole("prefill")
    full = [decoding("a", "m1", tpot=0.03, kv_blocks=95)]
    p = plan(Snapshot(0.0, full, ws, adaptive_layout=True))
    assert p.roles["m0"] == WorkerRole("mixed")


def test_no_worker_turns_to_prefill_without_decode_headroom() -> None:
    # the move of test_tight_decoders_spread... pays, but m1 could not hold twice the KV
    ws = [tight("m0"), tight("m1", kv=100)]
    reqs = [decoding("a", "m0", tpot=0.03, kv_blocks=30),
            decoding("b", "m1", tpot=0.03, kv_blocks=30), declined()]
    p = plan(Snapshot(0.0, reqs, ws, adaptive_layout=True))
    assert p.roles == {"m0": WorkerRole("mixed"), "m1": WorkerRole("mixed")}


def test_one_worker_keeps_taking_prompts_and_one_keeps_decoding() -> None:
    reqs = [decoding("a", "m0", tpot=0.03)]
    p = plan(Snapshot(0.0, reqs, [mixed("m0")], adaptive_layout=True))
    assert p.roles == {"m0": WorkerRole("mixed")}


def test_fixed_layouts_report_no_roles() -> None:
    p = plan(Snapshot(0.0, [new("r")], [mixed("m0"), mixed("m1")]))
    assert p.roles == {}


def test_the_simulators_layouts() -> None:
    assert {"slos", "slos-pd", "slos-colocated"} <= set(SYSTEMS)
    assert roles_for("slos", 4, None) == ["mixed"] * 4  # roles follow the load from there
    assert roles_for("slos-colocated", 2, None) == ["mixed"] * 2
    assert roles_for("slos-pd", 2, None) == ["prefill", "decode"]


def adaptive_cluster() -> tuple[Cluster, SlosSystem]:
    system = SlosSystem("slos")
    cluster = Cluster(SimConfig(workers=2), load_profile("opt-13b-a100"), ["mixed"] * 2, system,
                      profile="opt-13b-a100")
    system.setup(cluster)
    return cluster, system


def prefilled(cluster: Cluster, on: int, decode: int | None, rid: int = 0) -> SimRequest:
    r = SimRequest(Request(rid, 0.0, "t", (Segment(100, 20, 10.0, 0.1),)))
    r.segment_start.append(0.0)
    r.first_token.append(0.0)
    r.segment_end.append(None)
    r.decision, r.pinned_prefill, r.pinned_decode = "admit", on, decode
    r.phase, r.generated = "prefill", 1
    cluster.alloc(r, cluster.workers[on], 101)
    r.context = 101
    return r


def test_the_simulator_hands_kv_off_where_the_plan_decodes() -> None:
    cluster, system = adaptive_cluster()
    r = prefilled(cluster, on=0, decode=1)
    system.on_prefill_done(r, cluster.workers[0])
    assert r.phase == "transfer" and r.worker == 1  # KV reserved on m1, moving there
    local = prefilled(cluster, on=0, decode=0)
    system.on_prefill_done(local, cluster.workers[0])
    assert local.phase == "decode" and local.id in system.ex[0].decoders


def test_a_returning_stage_whose_decode_worker_turned_prefill_decodes_elsewhere() -> None:
    cluster, system = adaptive_cluster()
    system.pworkers[1].role = "prefill"
    r = prefilled(cluster, on=1, decode=1)
    r.phase = "gap"
    system.on_segment_start(r)
    assert r.pinned_decode is None and r.pinned_prefill == 0  # m1 decodes no more
    system.pworkers[1].role = "mixed"
    system.pworkers[0].role, system.pworkers[0].target_role = "mixed", "decode"
    r2 = prefilled(cluster, on=0, decode=0)
    system.on_segment_start(r2)  # m0 drains to decode: the prompt goes to m1, decoded on m0
    assert r2.pinned_prefill == 1 and r2.pinned_decode == 0


def test_a_returning_stage_prefills_on_the_least_queued_worker_its_own_on_a_tie() -> None:
    cluster, system = adaptive_cluster()
    r = prefilled(cluster, on=1, decode=1)
    r.todo_prefill = 100  # its tool result, as the simulator starts the segment
    system.on_segment_start(r)  # nothing queued anywhere: its own worker
    assert r.pinned_prefill == 1 and r.pinned_decode == 1
    r2 = prefilled(cluster, on=1, decode=1, rid=1)
    r2.todo_prefill = 100
    system.on_segment_start(r2)  # m1 now has r's prompt queued: m0, handing its KV back
    assert r2.pinned_prefill == 0 and r2.pinned_decode == 1
