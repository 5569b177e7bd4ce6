"""The live benchmark suite (`slos-serve bench`), fast: pure logic in milliseconds, the load
generator and the drivers against fakes, and short real runs on the SIMULATED engine.

The OpenAI-HTTP driver is tested against a FAKE of vLLM's /v1/completions written here (an
aiohttp server streaming SSE chunks shaped like vLLM 0.32's): it checks the driver's parsing,
not vLLM.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from slos_serve.bench.loadgen import run_load
from slos_serve.bench.records import CallResult, add_tokens, make_record, read_records
from slos_serve.bench.summary import summarize, table
from slos_serve.bench.workload import (
    NO_TTFT,
    REFERENCE_DECODE_STEP_S,
    BenchRequest,
    Call,
    WorkloadOptions,
    auto_slo_scale,
    follow_up_prompt,
    mean_rate,
    reference_ttft_s,
    round_up_2,
    to_bench_requests,
    ttft_objective,
    workload_requests,
)
from slos_serve.core.stages import StageSpec
from slos_serve.sim.workloads import load_trace

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "tests" / "data" / "azure-trace-sample.csv"


def stage(max_tokens: int, ttft_ms: float | None, tpot_ms: float, tier: str = "t") -> StageSpec:
    """A stage of a call (`ttft_ms` None: no TTFT objective, a stage that continues a call)."""
    return StageSpec(tier=tier, ttft_ms=NO_TTFT if ttft_ms is None else ttft_ms,
                     tpot_ms=tpot_ms, max_tokens=max_tokens)


def one_call(rid: int, tier: str, out: int, ttft_ms: float, tpot_ms: float,
             arrival: float = 0.0, prompt: int = 8) -> BenchRequest:
    return BenchRequest(rid, arrival, tier, tier,
                        (Call(tuple(range(prompt)), (stage(out, ttft_ms, tpot_ms, tier),)),))


def call_at(sent: float, ttft: float, gaps: Sequence[float], finish: str = "length",
            decision: str = "admitted") -> CallResult:
    """A call sent at `sent` whose first token came `ttft` later, then one per gap."""
    c = CallResult(sent=sent, finish_reason=finish, decision=decision)
    t = sent + ttft
    add_tokens(c, 1, t)
    for g in gaps:
        t += g
        add_tokens(c, 1, t)
    return c


# ------------------------------------------------------------- records and summary --


def test_verdicts_and_attainment_math() -> None:
    """TTFT from the send, TPOT = (last - first) / (n - 1); attainment and goodput per tier."""
    recs = [
        # tight: met (TTFT 50 <= 100, TPOT 10 <= 20)
        make_record("s", "x", 2.0, one_call(0, "tight", 5, 100, 20, 0.0),
                    [call_at(0.0, 0.05, [0.01] * 4)]),
        # tight: TTFT missed
        make_record("s", "x", 2.0, one_call(1, "tight", 5, 100, 20, 1.0),
                    [call_at(1.0, 0.15, [0.01] * 4)]),
        # loose: TPOT missed (30 ms > 20)
        make_record("s", "x", 2.0, one_call(2, "loose", 3, 1000, 20, 2.0),
                    [call_at(2.0, 0.1, [0.03, 0.03])]),
        # loose: met, best effort still counts when on time
        make_record("s", "x", 2.0, one_call(3, "loose", 3, 1000, 20, 4.0),
                    [call_at(4.0, 0.1, [0.01, 0.01], decision="best_effort")]),
        # loose: rejected
        make_record("s", "x", 2.0, one_call(4, "loose", 3, 1000, 20, 5.0),
                    [CallResult(sent=5.0, decision="rejected", error="Rejected: no")]),
        # loose: ended early (abort): not finished, whatever its times
        make_record("s", "x", 2.0, one_call(5, "loose", 3, 1000, 20, 8.0),
                    [call_at(8.0, 0.1, [0.01], finish="abort")]),
    ]
    r0 = recs[0]
    assert r0["ttft_ms"] == pytest.approx(50) and r0["tpot_ms"] == pytest.approx(10)
    assert r0["e2e_ms"] == pytest.approx(90)
    assert r0["itl_ms"] == pytest.approx([10, 10, 10, 10])
    assert r0["lateness_ms"] == pytest.approx(0)
    assert [r["attained"] for r in recs] == [True, False, False, True, False, False]
    assert [r["finished"] for r in recs] == [True, True, True, True, False, False]
    assert recs[4]["decision"] == "rejected"
    (s,) = summarize(recs)
    assert s["sent"] == 6 and s["attained"] == 2
    assert s["attainment"] == pytest.approx(2 / 6)
    assert s["window_s"] == 8.0 and s["goodput"] == pytest.approx(2 / 8)
    assert s["tiers"]["tight"]["attainment"] == pytest.approx(0.5)
    assert s["tiers"]["loose"]["attainment"] == pytest.approx(0.25)
    assert s["tiers"]["tight"]["ttft_ms_p50"] == pytest.approx(100)
    assert s["decisions"] == {"admitted": 4, "best_effort": 1, "rejected": 1}
    text = table([s])
    assert "33.3%" in text and "tight" in text and "loose" in text


def test_stages_of_one_call_are_judged_separately() -> None:
    """Reasoning: thinking (3 tokens, tight TPOT) then answer (2, loose) in one call; the
    answer's TPOT runs from the thinking's last token."""
    req = BenchRequest(0, 0.0, "FastThink", "reasoning", (Call(
        (1, 2, 3), (stage(3, 100, 10), stage(2, None, 50))),))
    # thinking tokens 5 ms apart (met); answer tokens 40 ms apart (met for 50)
    rec = make_record("s", "x", 1, req, [call_at(0.0, 0.02, [0.005, 0.005, 0.04, 0.04])])
    st = rec["stages"]
    assert [s["tokens"] for s in st] == [3, 2]
    assert st[0]["tpot_ms"] == pytest.approx(5) and st[1]["tpot_ms"] == pytest.approx(40)
    assert st[1]["ttft_ms"] is None and st[1]["ttft_slo_ms"] is None
    assert rec["attained"]
    # the answer slower (60 ms per token): only stage 1 misses
    rec = make_record("s", "x", 1, req, [call_at(0.0, 0.02, [0.005, 0.005, 0.06, 0.06])])
    assert [s["met"] for s in rec["stages"]] == [True, False] and not rec["attained"]


def test_tool_follow_up_is_judged_from_its_own_send() -> None:
    req = BenchRequest(0, 0.0, "FastTool", "tool", (
        Call((1, 2), (stage(2, 100, 12),)),
        Call((3,), (stage(2, 50, 20),), gap_s=0.2)))
    calls = [call_at(0.0, 0.05, [0.01]), call_at(0.5, 0.04, [0.015])]
    rec = make_record("s", "x", 1, req, calls)
    assert [s["ttft_ms"] for s in rec["stages"]] == pytest.approx([50, 40])
    assert rec["attained"] and rec["completion_tokens"] == 4
    # the follow-up never sent (first call failed): missed, unfinished
    rec = make_record("s", "x", 1, req, [CallResult(sent=0.0, error="boom")])
    assert not rec["finished"] and not rec["attained"] and rec["error"] == "boom"


# ---------------------------------------------------------------------- workload --


def test_workload_maps_stages_to_calls_and_scales_slos() -> None:
    corpus = list(range(5000))
    for scenario, ncalls, nstages in (("tool", 2, 2), ("reasoning", 1, 2), ("coding", 1, 1)):
        reqs = workload_requests(WorkloadOptions(scenario=scenario, requests=5), 2.0)
        sent = to_bench_requests(reqs, corpus, slo_scale=2.0)
        for p, r in zip(sent, reqs, strict=True):
            assert len(p.calls) == ncalls and len(p.stages) == nstages
            assert len(p.calls[0].new_prompt) == r.segments[0].prompt_tokens
            assert p.output_tokens == r.output_tokens
            for s, st in zip(p.stages, r.segments, strict=True):
                assert s.tpot_ms == pytest.approx(2000 * st.tpot_slo)
                assert (ttft_objective(s) is None) == (st.ttft_slo is None)
                if ttft_objective(s) is not None:
                    assert s.ttft_ms == pytest.approx(2000 * st.ttft_slo)
            if scenario == "tool":
                assert p.calls[1].gap_s == r.segments[1].gap_s
    # follow-up prompt: conversation so far + new tokens, oldest dropped to fit the context
    assert follow_up_prompt([1, 2, 3], [4, 5], [6], max_tokens=2, max_context=8) == [
        1, 2, 3, 4, 5, 6]
    assert follow_up_prompt([1, 2, 3], [4, 5], [6], max_tokens=4, max_context=8) == [
        3, 4, 5, 6]


def test_duration_and_max_output_bound_the_workload() -> None:
    full = workload_requests(WorkloadOptions(requests=50), 5.0)
    cut = workload_requests(WorkloadOptions(requests=50, duration_s=3.0, max_output=7), 5.0)
    assert 0 < len(cut) < len(full)
    assert all(r.arrival <= 3.0 for r in cut)
    assert all(s.output_tokens <= 7 for r in cut for s in r.segments)


def test_trace_replay_with_time_scale_and_max_context() -> None:
    rows = load_trace(TRACE)
    raw = workload_requests(WorkloadOptions(trace=str(TRACE), requests=100, max_context=4096),
                            None)
    half = workload_requests(WorkloadOptions(trace=str(TRACE), requests=100, time_scale=0.5,
                                             max_context=1024), None)
    assert len(raw) == len(half) == len(rows) == 24
    for a, b, row in zip(raw, half, rows, strict=True):
        assert b.arrival == pytest.approx(a.arrival / 2)
        assert a.arrival == pytest.approx(row.t)
        assert b.total_tokens <= 1024 and b.segments[0].output_tokens >= 1
    # a short trace row keeps its lengths; a long one is clipped (prompt first)
    assert half[2].segments[0].prompt_tokens == rows[2].context_tokens == 476
    assert half[0].segments[0].prompt_tokens == 1023 and half[0].output_tokens == 1
    # a rate overrides the time scale: the replay's mean rate is the rate asked
    fast = workload_requests(WorkloadOptions(trace=str(TRACE), requests=100), 10.0)
    assert mean_rate([r.arrival for r in fast]) == pytest.approx(10.0)
    limited = workload_requests(WorkloadOptions(trace=str(TRACE), requests=5), None)
    assert len(limited) == 5


def test_auto_slo_scale() -> None:
    ref = reference_ttft_s(100)
    # TTFT twice the reference's, TPOT below the reference step: TTFT decides
    assert auto_slo_scale([(100, 2 * ref, 0.01)]) == pytest.approx(2.0)
    # TPOT 3x the reference step decides
    step = REFERENCE_DECODE_STEP_S
    assert auto_slo_scale([(100, ref, 3 * step), (100, ref / 2, 0)]) == pytest.approx(3)
    assert round_up_2(0.1234) == pytest.approx(0.13)
    assert round_up_2(12.01) == pytest.approx(13)
    assert round_up_2(2.0) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        auto_slo_scale([])


# ----------------------------------------------------------------- load generator --


class FakeDriver:
    """In-process stand-in for a system: tokens every `step` s after a `ttft` s wait."""

    def __init__(self, ttft: float = 0.01, step: float = 0.002, fail_ids: set[int] = frozenset(),
                 slow: float = 0.0) -> None:
        self.ttft, self.step, self.slow = ttft, step, slow
        self.prompts: list[list[int]] = []

    async def call(self, prompt: list[int], stages: Sequence[StageSpec], result: CallResult,
                   clock: Callable[[], float]) -> list[int]:
        self.prompts.append(prompt)
        result.decision = "admitted"
        if prompt and prompt[0] == -1:
            raise RuntimeError("fake failure")
        await asyncio.sleep(self.ttft + self.slow)
        n = sum(s.max_tokens for s in stages)
        for _ in range(n):
            add_tokens(result, 1, clock())
            await asyncio.sleep(self.step)
        result.finish_reason = "length"
        return list(range(100, 100 + n))

    async def close(self) -> None:
        pass


def test_load_generator_sends_on_time_and_runs_follow_ups() -> None:
    requests = [one_call(i, "t", 3, 1000, 1000, arrival=0.02 * i) for i in range(10)]
    requests.append(BenchRequest(10, 0.2, "tool", "tool", (
        Call((7, 8), (stage(2, 1000, 1000),)), Call((9,), (stage(2, 1000, 1000),),
                                                       gap_s=0.05))))
    requests.append(BenchRequest(11, 0.21, "t", "t", (Call((-1,), (stage(2, 1e3, 1e3),)),)))
    driver = FakeDriver()
    res = asyncio.run(run_load(requests, driver, system="fake", scenario="x", rate=50,
                               max_context=5, progress=False))
    recs = {r["id"]: r for r in res.records}
    assert res.sent == 12 and not res.stopped_early
    assert all(recs[i]["attained"] for i in range(11))
    assert all(abs(recs[i]["lateness_ms"]) < 50 for i in range(12))
    # follow-up prompt = prompt + output + new, clipped to max_context - max_tokens = 3
    assert [100, 101, 9] in driver.prompts
    tool = recs[10]
    assert tool["calls"][1]["sent"] - tool["token_times"][1] >= 0.05
    assert recs[11]["error"].startswith("RuntimeError: fake failure")
    assert not recs[11]["attained"]


def test_load_generator_stops_early_past_the_miss_budget_and_bounds_the_drain() -> None:
    requests = [one_call(i, "t", 2, 1.0, 1000, arrival=0.01 * i) for i in range(40)]
    res = asyncio.run(run_load(requests, FakeDriver(ttft=0.01), system="fake", scenario="x",
                               rate=100, max_context=100, miss_budget=3, progress=False))
    assert res.stopped_early and res.sent < 40
    assert sum(not r["attained"] for r in res.records) > 3
    assert all(r["error"].startswith("not sent") for r in res.records[res.sent:])
    # a request slower than the drain is cancelled and recorded as failed
    slow = [one_call(0, "t", 2, 1e6, 1e6)]
    res = asyncio.run(run_load(slow, FakeDriver(slow=5.0), system="fake", scenario="x",
                               rate=1, max_context=100, drain_s=0.2, progress=False))
    assert res.wall_s < 2 and res.records[0]["error"].startswith("cancelled")


# -------------------------------------------------- OpenAI-HTTP driver, FAKE server --


def _fake_vllm_app(with_token_ids: bool):
    """A FAKE of vLLM serve's /v1/completions streaming (SSE), for the driver's parsing."""
    from aiohttp import web

    seen: list[dict] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append(body)
        if body.get("max_tokens", 0) > 100:
            return web.json_response({"error": {"message": "too long"}}, status=400)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        n = body["max_tokens"]
        # a multi-token chunk (speculative decoding) first, then one token per chunk
        chunks = [[11, 12]] + [[20 + i] for i in range(n - 2)]
        for k, ids in enumerate(chunks):
            choice = {"index": 0, "text": "x" * len(ids), "logprobs": None,
                      "finish_reason": "length" if k == len(chunks) - 1 else None,
                      "stop_reason": None}
            if with_token_ids:
                choice["token_ids"] = ids
            event = {"id": "cmpl-1", "object": "text_completion", "created": 0,
                     "model": body.get("model"), "choices": [choice], "usage": None}
            await resp.write(f"data: {json.dumps(event)}\n\n".encode())
            await asyncio.sleep(0.005)
        usage = {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "m",
                 "choices": [], "usage": {"prompt_tokens": len(body["prompt"]),
                                          "completion_tokens": n, "total_tokens": 0}}
        await resp.write(f"data: {json.dumps(usage)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    return app, seen


@pytest.mark.parametrize("with_token_ids", [True, False], ids=["token_ids", "text-only"])
def test_openai_http_driver_against_a_fake_vllm_server(with_token_ids: bool) -> None:
    from aiohttp import web

    from slos_serve.bench.driver_http import HttpError, OpenAIHttpDriver

    async def main() -> tuple[list[CallResult], list[list[int]], list[dict], str]:
        app, seen = _fake_vllm_app(with_token_ids)
        runner = web.AppRunner(app)
        await runner.setup()
        sites = []
        for _ in range(2):  # two servers: the driver round-robins
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            sites.append(site)
        urls = [f"http://127.0.0.1:{s._server.sockets[0].getsockname()[1]}" for s in sites]
        driver = OpenAIHttpDriver(urls, model="m")
        results, outs = [], []
        try:
            for _ in range(2):
                res = CallResult(sent=0.0)
                outs.append(await driver.call([1, 2, 3], (stage(4, 1e3, 1e3),), res,
                                              lambda: 1.0))
                results.append(res)
            err = ""
            try:
                await driver.call([1], (stage(101, 1e3, 1e3),), CallResult(0.0), lambda: 1.0)
            except HttpError as exc:
                err = str(exc)
        finally:
            await driver.close()
            await runner.cleanup()
        return results, outs, seen, err

    results, outs, seen, err = asyncio.run(main())
    for res in results:
        assert len(res.token_times) == 4 and res.finish_reason == "length"
        assert res.decision == "admitted"
    if with_token_ids:
        assert outs[0] == [11, 12, 20, 21]
    body = seen[0]
    assert body["prompt"] == [1, 2, 3] and body["stream"] is True
    assert body["ignore_eos"] is True and body["temperature"] == 0.0
    assert body["stream_options"] == {"include_usage": True} and body["model"] == "m"
    assert err.startswith("HTTP 400")


# ------------------------------------------------ real runs on the SIMULATED engine --


def test_bench_on_a_sim_cluster_then_report_from_records_alone(
    model_dir: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "slos_serve.cli", "bench", "--engine", "sim", "--model",
           model_dir, "--systems", "slos,vllm-pd", "--scenario", "reasoning", "--rates", "4",
           "--requests", "6", "--max-context", "400", "--out", str(out), "--no-progress"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SLO scale" in done.stderr and "vllm-pd" in done.stdout
    recs = read_records(out / "records.jsonl")
    assert len(recs) == 12 and {r["system"] for r in recs} == {"slos", "vllm-pd"}
    for r in recs:
        assert r["finished"], r
        assert r["completion_tokens"] == r["output_tokens"] == len(r["token_times"])
        assert len(r["stages"]) == 2 and r["calls"][0]["server"]["stages"]
        assert r["sent"] >= r["arrival"] - 1e-3
        assert sum(r["prompt_tokens"]) + r["output_tokens"] <= 400
    meta = json.loads((out / "meta.json").read_text())
    assert set(meta["zero_load"]) == {"slos", "vllm-pd"} and meta["slo_scale"] > 0
    for f in ["summary.json", "attainment.png", "cdf-reasoning.png", "timeline-reasoning.png"]:
        (out / f).unlink()
    (out / "meta.json").unlink()  # the report needs records.jsonl alone
    rep = subprocess.run([sys.executable, "-m", "slos_serve.cli", "bench", "report", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert "attain" in rep.stdout and "timeline-reasoning.png" in rep.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert {s["system"] for s in summary["runs"]} == {"slos", "vllm-pd"}
    for f in ["attainment.png", "cdf-reasoning.png", "timeline-reasoning.png"]:
        assert (out / f).stat().st_size > 10_000


def test_load_generator_keeps_up_at_high_rate_on_sim(model_dir: str) -> None:
    """>= 10x the live benchmark's rates: achieved within 10 % of the schedule's rate."""
    from slos_serve.bench.overhead import loadgen_check

    (row,) = loadgen_check(model_dir, [50.0], seconds=4.0, max_output=8, progress=False)
    print(row)
    assert row["requests"] == 200 and row["errors"] == 0
    assert abs(row["scheduled_rate"] / 50.0 - 1) < 0.1  # seeded Poisson schedule
    assert abs(row["achieved_over_scheduled"] - 1) < 0.1
    assert row["lateness_ms_p50"] < 20


def test_coordinator_overhead_runs_on_sim(model_dir: str) -> None:
    from slos_serve.bench.overhead import coordinator_overhead, overhead_table

    res = coordinator_overhead(model_dir, prompt_tokens=32, output_tokens=16, n=3,
                               concurrency=4, seconds=1.0)
    print(overhead_table(res))
    assert res["engine"] == "SIMULATED"
    for path in ("coordinator", "direct"):
        assert res["throughput"][path]["tokens_per_s"] > 0
        assert res["short_requests"][path]["requests_per_s"] > 0
        assert res["latency"][path]["itl_ms_mean"] > 0
