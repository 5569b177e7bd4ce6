"""The HTTP front's streamed answer ends as OpenAI clients expect (the closing chunk, the
usage, `data: [DONE]`, the end of the body, written together), and `bench http-overhead`
measures what it says: every path served, figures present. SIMULATED engine; no timing is
asserted (this machine's speed is not the test's business)."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import aiohttp
import pytest

from slos_serve.bench.http_overhead import (
    GrpcPath,
    HttpPath,
    Settings,
    closed_loop,
    floor,
    http_overhead_table,
    measure_client_alone,
    ttft_ab,
)
from slos_serve.up import ClusterSpec, LocalCluster

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def mixed_cluster(model_dir: str):
    cluster = LocalCluster(ClusterSpec(model=model_dir, engine="sim", mixed=1))
    cluster.start(timeout_s=120, progress=False)
    yield cluster
    cluster.stop()


async def _events(url: str, body: dict) -> list[bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/v1/completions", json=body) as resp:
            assert resp.status == 200
            assert resp.headers["x-slo-decision"] in ("admitted", "best_effort")
            raw = await resp.read()
    assert raw.endswith(b"\n\n")
    return [e for e in raw.split(b"\n\n") if e]


@pytest.mark.parametrize("tokens", [1, 2, 5])
def test_stream_ends_with_final_usage_done(mixed_cluster: LocalCluster, tokens: int) -> None:
    body = {"prompt": [5, 6, 7, 8], "max_tokens": tokens, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}, "return_token_ids": True}
    events = asyncio.run(_events(mixed_cluster.http_url, body))
    assert all(e.startswith(b"data: ") for e in events)
    assert events[-1] == b"data: [DONE]"
    *chunks, final, usage = [json.loads(e[6:]) for e in events[:-1]]
    assert "slo" in chunks[0] and chunks[0]["slo"]["decision"] in ("admitted", "best_effort")
    assert sum(len(c["choices"][0]["token_ids"]) for c in chunks) == tokens
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    assert final["choices"][0]["finish_reason"] == "length"
    assert final["slo"]["ttft_ms"] > 0
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 4, "completion_tokens": tokens,
                              "total_tokens": 4 + tokens}


def test_stream_without_usage_ends_with_final_then_done(mixed_cluster: LocalCluster) -> None:
    body = {"prompt": [5, 6, 7], "max_tokens": 3, "ignore_eos": True, "stream": True}
    events = asyncio.run(_events(mixed_cluster.http_url, body))
    assert events[-1] == b"data: [DONE]"
    final = json.loads(events[-2][6:])
    assert final["choices"][0]["finish_reason"] == "length" and "usage" not in final


def test_bench_paths_serve_and_report(mixed_cluster: LocalCluster) -> None:
    """Each path of the benchmark serves every request; the CPU accounting sees every
    process (a pid that is not there would fail the /proc read)."""
    prompt = [5, 6, 7, 8, 9, 10, 11, 12]
    pids = {p.name: p.popen.pid for p in mixed_cluster.procs}

    async def run() -> tuple[dict, dict, dict]:
        http = HttpPath(mixed_cluster.http_url, prompt)
        grpc_path = GrpcPath(mixed_cluster.target, prompt)
        try:
            ab = await ttft_ab(lambda: http.stream(4), lambda: grpc_path.stream(4), n=6,
                               warmup=2)
            whole = await closed_loop(lambda: http.whole(2), 4, 0.5, pids, warmup_s=0.2)
            grpc_tp = await closed_loop(lambda: grpc_path.stream(2), 4, 0.5, pids,
                                        warmup_s=0.2)
            return ab, whole, grpc_tp
        finally:
            await http.close()
            await grpc_path.close()

    ab, whole, grpc_tp = asyncio.run(run())
    assert ab["requests"] == 6
    assert 0 < ab["http"]["ttft_ms_p50"] <= ab["http"]["ttft_ms_p99"]
    assert 0 < ab["grpc"]["ttft_ms_p50"] <= ab["grpc"]["ttft_ms_p99"]
    for t in (whole, grpc_tp):
        assert t["errors"] == 0 and t["requests_per_s"] > 0
        assert set(t["cpu_ms_per_request"]) == {"client", *pids}
        assert t["cpu_ms_per_request"]["coordinator"] > 0


def test_client_alone_and_table() -> None:
    cfg = Settings(prompt_tokens=4, requests=4, concurrency=4, seconds=0.5)
    stubs = measure_client_alone(cfg, [1, 2, 3, 4])
    tp = stubs["throughput"]
    assert set(tp) == {"http-stream", "http-whole", "grpc", "grpc-raw"}
    assert all(t["errors"] == 0 and t["requests_per_s"] > 0 for t in tp.values())
    assert all(t["cpu_ms_per_request"]["stub"] > 0 for t in tp.values())
    result = {"settings": dataclasses.asdict(cfg), "cores": 2, "runs": [stubs],
              "floor": floor(tp)}
    table = http_overhead_table(result)
    assert "stub servers  grpc-raw" in table and "floor:" in table
