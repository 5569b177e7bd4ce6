"""`bench --backend openai`: the benchmark suite against an OpenAI-compatible server it did
not start (here a slos-serve cluster's HTTP front, SIMULATED engine), with an API key.

The same workloads, load generator and judging as for the systems the bench starts; the
planner gets each call's SLOs (headers, or the body's `stages` for the tool/reasoning calls)
and the records carry its decision from the `x-slo-decision` header.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from slos_serve.bench.records import read_records

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-bench-test"


@pytest.fixture(scope="module")
def front(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """2 mixed workers (slos-mixed's layout) behind the HTTP front; its request log."""
    from slos_serve.up import ClusterSpec, LocalCluster

    log = tmp_path_factory.mktemp("front") / "requests.jsonl"
    with LocalCluster(ClusterSpec(model=model_dir, engine="sim", mixed=2, api_key=KEY,
                                  request_log=str(log))) as cluster:
        cluster.start(timeout_s=120, progress=False)
        yield cluster.http_url, log


def bench(model_dir: str, url: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "slos_serve.cli", "bench", "--backend", "openai",
           "--base-url", url, "--model", model_dir, "--scenario", "reasoning", "--rates", "4",
           "--requests", "8", "--max-context", "400", "--out", str(out), "--no-progress",
           "--no-plots", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)


def test_bench_drives_a_running_front(model_dir: str, front: tuple[str, Path],
                                      tmp_path: Path) -> None:
    url, log = front
    done = bench(model_dir, url, tmp_path, "--api-key", KEY)
    assert done.returncode == 0, done.stderr[-3000:]
    name = "openai@" + url.split("://")[1]
    assert "SLO scale" in done.stderr  # auto: zero-load measured on the external server
    assert name in done.stdout  # the report table
    recs = read_records(tmp_path / "records.jsonl")
    assert len(recs) == 8 and {r["system"] for r in recs} == {name}
    for r in recs:
        assert r["finished"] and r["completion_tokens"] == r["output_tokens"], r
        assert len(r["stages"]) == 2  # reasoning: judged per stage on the client
        for c in r["calls"]:
            assert c["decision"] in ("admitted", "best_effort")
            assert c["server"]["decision"] == c["decision"]  # header == final chunk's
        assert len(r["calls"][0]["server"]["stages"]) == 2  # the body's stages reached it
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["system_config"][name]["owned_by"] == ["slos-serve"]
    assert KEY not in json.dumps(meta)  # the key is never written down
    # every call (zero-load probes too) came with its own SLOs, not the default tier's
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(logged) >= 8 and {e["tier"] for e in logged} == {"custom"}


def test_impossible_slos_come_back_as_best_effort(model_dir: str, front: tuple[str, Path],
                                                  tmp_path: Path) -> None:
    """SLOs scaled to nothing: the planner cannot admit them; the records say so, from the
    header (a server without SLOs would leave every call "admitted")."""
    url, _ = front
    done = bench(model_dir, url, tmp_path, "--slo-scale", "0.0001", "--api-key", KEY)
    assert done.returncode == 0, done.stderr[-3000:]
    recs = read_records(tmp_path / "records.jsonl")
    assert recs and all(r["decision"] == "best_effort" for r in recs), \
        [r["decision"] for r in recs]
    assert not any(r["attained"] for r in recs)


def test_wrong_key_is_named(model_dir: str, front: tuple[str, Path], tmp_path: Path) -> None:
    done = bench(model_dir, front[0], tmp_path, "--api-key", "wrong")
    assert done.returncode != 0 and "HTTP 401" in done.stderr
