"""The SIMULATED engine learns its model (core/learning.py) as the vLLM scheduler does: slowed
at runtime (its `slowdown` knob), the learned model follows within seconds, its load report
carries the model and the error, and the coordinator plans that worker on it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

import coordinator.admission as admission_module
from coordinator.admission import Admission
from coordinator.routing import PlannedRouting
from proto import slos_serve_pb2 as pb
from slos_serve.core.perf_model import BatchShape, PerfModel, load_profile
from slos_serve.engine import EngineRequest
from slos_serve.engine.sim_engine import SimEngine
from slos_serve.wire import info_to_proto, model_from_proto, model_to_proto, reported_model
from slos_serve.worker.service import WorkerService


async def drain(engine: SimEngine, rid: str, prompt: int, tokens: int) -> None:
    req = EngineRequest(rid, list(range(3, 3 + prompt)), tokens, ignore_eos=True)
    async for _ in engine.generate(req):
        pass


def recorded(engine: SimEngine) -> list[tuple[BatchShape, float]]:
    """Every step the engine's learner observes, as (composition, measured seconds)."""
    steps: list[tuple[BatchShape, float]] = []
    observe = engine.learner.observe

    def spy(shape: BatchShape, seconds: float) -> None:
        steps.append((shape, seconds))
        observe(shape, seconds)

    engine.learner.observe = spy  # type: ignore[method-assign]
    return steps


def rel_err(model: PerfModel, steps: list[tuple[BatchShape, float]]) -> float:
    return sum(abs(model.predict(s) / t - 1) for s, t in steps) / len(steps)


def test_the_learned_model_follows_a_2x_slowdown_within_seconds() -> None:
    engine = SimEngine()
    steps = recorded(engine)
    snapshots: list[PerfModel] = []

    async def main() -> None:
        await engine.start()
        tasks = [asyncio.create_task(drain(engine, f"r{i}", 64 + 32 * i, 100_000))
                 for i in range(6)]
        await asyncio.sleep(1.0)
        snapshots.append(engine.learner.model)
        n_before = len(steps)
        engine.slowdown = 2.0
        await asyncio.sleep(2.5)
        snapshots.append(engine.learner.model)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await engine.shutdown()
        steps[:] = steps[n_before:]

    asyncio.run(main())
    before, after = snapshots
    recent = steps[-50:]
    assert len(steps) > 150, f"only {len(steps)} steps in 2.5 s"
    # the model of before the slowdown predicts about half of the steps now measured ...
    assert rel_err(before, recent) > 0.3
    # ... the learned one, 2.5 s later, the new step times themselves
    assert rel_err(after, recent) < 0.12
    load = engine.load()
    assert load.perf_model is after and load.model_samples == engine.learner.samples
    assert 0 < load.model_error < 0.15


def test_the_load_report_carries_the_learned_model_its_error_and_hand_off_waits() -> None:
    engine = SimEngine()
    service = WorkerService("decode", engine)

    async def main() -> pb.LoadReport:
        await engine.start()
        engine.slowdown = 1.5
        await asyncio.gather(*(drain(engine, f"r{i}", 32, 150) for i in range(4)))
        for ms in (10, 12, 11, 200):  # hand-offs the decode side measured
            service.metrics.handoff(4, 16, ms / 1000)
        report = await service.GetLoad(pb.LoadRequest(), None)
        await engine.shutdown()
        return report

    report = asyncio.run(main())
    assert report.HasField("perf_model") and report.model_samples > 100
    assert 0 < report.model_error < 0.3
    model = reported_model(report)
    assert model is not None
    assert model.pieces[0].weights == pytest.approx(engine.learner.model.pieces[0].weights)
    assert (report.handoff_count, report.handoff_p50_ms, report.handoff_p99_ms) == (
        4, pytest.approx(11), pytest.approx(200))


def test_a_model_round_trips_the_wire() -> None:
    m = load_profile("opt-6.7b-a100")
    back = model_from_proto(model_to_proto(m))
    assert [(p.weights, p.bias) for p in back.pieces] == [(p.weights, p.bias) for p in m.pieces]
    with pytest.raises(ValueError, match="features"):
        model_from_proto(pb.PerfModelSpec(features=["warp_tokens"],
                                          pieces=[pb.ModelPiece(weights=[1.0])]))
    assert reported_model(pb.LoadReport()) is None


def test_the_admission_plans_each_worker_on_the_model_it_reported(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """routing._views reads each worker's reported model and hand-off p99; Admission builds
    that worker's PlanWorker on it (the profile's model for a worker that reported none)."""
    profile = load_profile("sim-engine")
    learned = load_profile("opt-13b-h100")
    engine = SimEngine()

    def worker(address: str, role: str, load: pb.LoadReport) -> SimpleNamespace:
        return SimpleNamespace(address=address, role=role, healthy=True,
                               info=info_to_proto(engine.info, role), load=load)

    reports = {
        "p": pb.LoadReport(role="prefill", kv_blocks_total=100),
        "d": pb.LoadReport(role="decode", kv_blocks_total=100, handoff_p99_ms=250.0,
                           perf_model=model_to_proto(learned)),
    }
    pool = SimpleNamespace(workers=[worker(a, r.role, r) for a, r in reports.items()])
    admission = Admission(profile)
    routing = PlannedRouting(pool, admission)  # type: ignore[arg-type]
    admission.set_workers(routing._views())
    models = {w.id: w.model for w in admission.workers}
    assert models["p"] is profile
    assert [(p.weights, p.bias) for p in models["d"].pieces] == [
        (p.weights, p.bias) for p in learned.pieces]
    snaps = []
    real_plan = admission_module.plan
    monkeypatch.setattr(admission_module, "plan", lambda snap: snaps.append(snap)
                        or real_plan(snap))
    admission.admit("r", 0.0, 5.0, 0.1, 64, 16, "best_effort")
    assert admission.last is not None
    assert [v.handoff_p99_s for v in admission.views if v.id == "d"] == [pytest.approx(0.25)]
    # seen, but not planned on (Admission.replan says why)
    assert snaps[-1].handoff_delay == 0.0


def test_the_stats_file_carries_the_learned_model(tmp_path) -> None:
    """The vLLM scheduler's end of the side channel: the model survives the stats file."""
    from slos_serve.engine.base import EngineLoad
    from slos_serve.engine.side_channel import read_stats, write_stats

    learned = load_profile("opt-6.7b-a100")
    path = tmp_path / "stats.json"
    write_stats(path, EngineLoad(steps=3, perf_model=learned, model_error=0.07,
                                 model_samples=300), {"time": 1.0})
    back = read_stats(path)
    assert back is not None and back.perf_model is not None
    assert [(p.weights, p.bias) for p in back.perf_model.pieces] == [
        (p.weights, p.bias) for p in learned.pieces]
    assert (back.model_error, back.model_samples) == (0.07, 300)
    write_stats(path, EngineLoad(steps=3), {})
    assert read_stats(path).perf_model is None  # type: ignore[union-attr]
