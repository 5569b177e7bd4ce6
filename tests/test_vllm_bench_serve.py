"""vLLM's own `bench serve` against the cluster's HTTP front: every request successful, and
vLLM's TTFT / TPOT medians within 10 % of the coordinator's own records of the same run
(`--request-log`, matched per request id: vLLM sends `x-request-id: PREFIX{i}`).

The fast tests run the SIMULATED engine; the slow one the same on vLLM (1 prefill + 1 decode).
One cluster per module. vLLM's harness runs in a subprocess (`slos_serve.bench.vllm_bench`).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from slos_serve.bench.vllm_bench import (
    SUMMARY_KEYS,
    VllmBenchRun,
    bench_system,
    merged,
    parse_goodput,
    per_request,
    run_vllm_bench,
)

ROOT = Path(__file__).resolve().parent.parent
GOODPUT = ("ttft:2000", "tpot:200")
NUM_PROMPTS = 40
# Prompts long enough that TTFT dwarfs what no server clock sees: the 3-4 ms (quiet machine)
# from vLLM's timer start to the front's handler, half of it vLLM's client itself (its
# aiohttp session's trust_env=True looks up proxies and netrc per request: ~2 ms here), the
# rest transport and Python (the gRPC SDK sees 1.5-2.5 ms too). TPOT agrees to 0.1 ms.
INPUT_LEN, OUTPUT_LEN = 1920, 32  # + chat template + output < 2048 (the context)


def started(model_dir: str, log_dir: Path, **layout: object) -> Iterator[tuple[str, Path]]:
    """A cluster with its HTTP front and request log, stopped after the module."""
    from slos_serve.up import ClusterSpec, LocalCluster

    log = log_dir / "requests.jsonl"
    cluster = LocalCluster(ClusterSpec(model=model_dir, request_log=str(log), **layout))
    cluster.start(timeout_s=600, progress=False)
    try:
        yield cluster.http_url, log
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def sim_front(model_dir: str, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[str, Path]]:
    yield from started(model_dir, tmp_path_factory.mktemp("sim"), engine="sim", mixed=2)


@pytest.fixture(scope="module")
def vllm_front(model_dir: str, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[str, Path]]:
    yield from started(model_dir, tmp_path_factory.mktemp("vllm"), engine="vllm", prefill=1,
                       decode=1)


def check_against_the_cluster(result: dict, log: Path, prefix: str, n: int) -> None:
    """vLLM's figures vs the coordinator's, request by request and in median."""
    assert result["completed"] == n and result["failed"] == 0, result["errors"][:3]
    ours = per_request(result, prefix)
    logged = {e["request_id"]: e for e in map(json.loads, log.read_text().splitlines())
              if e["request_id"].startswith(prefix)}
    assert set(logged) == set(ours), sorted(set(logged) ^ set(ours))[:5]
    for rid, v in ours.items():
        e = logged[rid]
        assert v["success"] and e["finish_reason"] == "length"
        assert e["completion_tokens"] == v["output_tokens"] == result["output_lens"][0]
    for key in ("ttft_ms", "tpot_ms"):
        theirs = statistics.median(v[key] for v in ours.values())
        cluster = statistics.median(logged[rid][key] for rid in ours)
        print(f"{prefix} {key}: vLLM bench {theirs:.2f}, cluster {cluster:.2f}")
        assert theirs == pytest.approx(cluster, rel=0.10), key
    # the per-request lists give vLLM's own summary back (what `bench vllm-bench` merges)
    again = merged([result], parse_goodput(GOODPUT))
    for key in ("completed", "failed", "request_throughput", "request_goodput",
                "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms"):
        assert again[key] == pytest.approx(result[key], rel=1e-6), key


def bench_run(url: str, model_dir: str, tmp_path: Path, backend: str, rate: float,
              n: int = NUM_PROMPTS) -> tuple[dict, str]:
    prefix = f"{backend}-{tmp_path.name}-"
    run = VllmBenchRun(base_url=url, model=model_dir, backend=backend, num_prompts=n,
                       request_rate=rate, input_len=INPUT_LEN, output_len=OUTPUT_LEN,
                       goodput=GOODPUT,
                       request_id_prefix=prefix, result_file=tmp_path / "result.json")
    return run_vllm_bench(run, timeout_s=600, log=tmp_path / "vllm-bench.log"), prefix


def test_bench_vllm_bench_runs_each_system_in_turn(model_dir: str, tmp_path: Path) -> None:
    """`slos-serve bench vllm-bench`: the README's side-by-side command (SIMULATED engine,
    the slos systems; vllm-serve is left out there). First in the module: no other cluster
    is up while it runs its own."""
    cmd = [sys.executable, "-m", "slos_serve.cli", "bench", "--engine", "sim", "--model",
           model_dir, "vllm-bench", "--systems", "slos-mixed,slos-pd,vllm-serve",
           "--num-prompts", "12", "--request-rate", "6", "--input-len", "128",
           "--output-len", "16", "--goodput", *GOODPUT, "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    print(done.stdout)
    rows = json.loads((tmp_path / "vllm-bench.json").read_text())
    assert list(rows) == ["slos-mixed", "slos-pd"]  # vllm-serve: no simulated engine
    for name, row in rows.items():
        assert (row["completed"], row["failed"]) == (12, 0), name
        assert row["request_goodput"] is not None and row["median_tpot_ms"] > 0
        assert name in done.stdout
        saved = json.loads((tmp_path / name / "vllm-bench-0.json").read_text())
        assert saved["median_ttft_ms"] == row["median_ttft_ms"]  # vLLM's own figures


@pytest.mark.parametrize("backend", ["openai", "openai-chat"])
def test_vllm_bench_serve_against_the_sim_front(model_dir: str, sim_front: tuple[str, Path],
                                                tmp_path: Path, backend: str) -> None:
    url, log = sim_front
    result, prefix = bench_run(url, model_dir, tmp_path, backend, rate=6.0)
    assert result["backend"] == backend and result["request_goodput"] is not None
    check_against_the_cluster(result, log, prefix, NUM_PROMPTS)


def test_several_urls_are_driven_at_once_and_merged(model_dir: str,
                                                    sim_front: tuple[str, Path],
                                                    tmp_path: Path) -> None:
    """A system of two base URLs (as vllm-serve's two instances): one run per URL, each
    with half the prompts and rate, summed up (here both URLs are the same front)."""
    url, _ = sim_front
    template = VllmBenchRun(base_url="", model=model_dir, num_prompts=9, request_rate=8.0,
                            input_len=32, output_len=8, goodput=GOODPUT,
                            request_id_prefix="two-urls-", result_file=tmp_path / "x.json")
    row = bench_system([url, url], template, tmp_path)
    assert set(row) >= set(SUMMARY_KEYS)
    assert (row["completed"], row["failed"]) == (9, 0)
    assert 0 < row["median_ttft_ms"] <= row["p99_ttft_ms"]
    runs = [json.loads((tmp_path / f"vllm-bench-{i}.json").read_text()) for i in (0, 1)]
    assert [r["num_prompts"] for r in runs] == [5, 4]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", ["openai", "openai-chat"])
def test_vllm_bench_serve_against_a_vllm_cluster(model_dir: str, vllm_front: tuple[str, Path],
                                                 tmp_path: Path, backend: str) -> None:
    """The same on real engines (1 prefill + 1 decode), at a rate the tiny model on this
    machine serves: every request successful, medians within 10 % of the cluster's."""
    url, log = vllm_front
    result, prefix = bench_run(url, model_dir, tmp_path, backend, rate=2.0, n=24)
    check_against_the_cluster(result, log, prefix, 24)
