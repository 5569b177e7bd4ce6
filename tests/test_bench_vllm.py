"""`slos-serve bench` on real vLLM engines (slow): the cluster (gRPC) and vLLM's own OpenAI
server (HTTP, two pinned instances) side by side on a short load, then nothing left running.

A smaller `make bench`: two systems instead of three (vllm-pd is the slos cluster's code path
with another scheduler), a handful of requests. Asserts completeness and cleanliness, not
latencies: this machine is shared and noisy.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from slos_serve.bench.records import read_records

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parent.parent


def _listening(address: str) -> bool:
    host, _, port = address.removeprefix("http://").rpartition(":")
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0


def test_bench_slos_and_vllm_serve_side_by_side(model_dir: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "slos_serve.cli", "bench", "--model", model_dir,
           "--systems", "slos,vllm-serve", "--scenario", "coding", "--rates", "3",
           "--requests", "8", "--max-context", "512", "--out", str(out), "--no-progress"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-4000:]
    print(done.stdout)
    recs = read_records(out / "records.jsonl")
    assert len(recs) == 16 and {r["system"] for r in recs} == {"slos", "vllm-serve"}
    for r in recs:
        assert r["finished"] and not r["error"], r
        assert r["completion_tokens"] == r["output_tokens"] == len(r["token_times"])
        assert sum(r["prompt_tokens"]) + r["output_tokens"] <= 512
    assert {r["decision"] for r in recs if r["system"] == "vllm-serve"} == {"admitted"}
    assert all(r["calls"][0]["server"] for r in recs if r["system"] == "slos")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["slo_scale"] > 0 and set(meta["zero_load"]) == {"slos", "vllm-serve"}
    for f in ("summary.json", "attainment.png", "cdf-coding.png", "timeline-coding.png"):
        assert (out / f).exists(), f
    # every process the run started is gone: nothing listens where they served
    addresses = [*meta["system_config"]["vllm-serve"]["urls"],
                 *meta["system_config"]["slos"]["addresses"].values()]
    assert len(addresses) == 5
    assert not [a for a in addresses if _listening(a)]
