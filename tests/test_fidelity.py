"""bench/fidelity.py: a live run's requests replayed through the simulator (fast, no engine)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from slos_serve.bench.fidelity import (
    compare,
    fidelity_table,
    kv_bytes_per_token,
    scaled,
    simulated_attainment,
)
from slos_serve.bench.workload import WorkloadOptions, workload_requests
from slos_serve.core.perf_model import load_profile

PROFILE = "opt-13b-a100"


def _run_dir(tmp_path: Path, records: list[dict], scale: float = 2.0) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "hidden_size": 256, "head_dim": 64}))
    opts = WorkloadOptions(scenario="chatbot", requests=30, seed=3)
    (tmp_path / "meta.json").write_text(json.dumps({
        "workload": asdict(opts), "slo_scale": scale, "model": str(model), "spec_tokens": 0}))
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return tmp_path


def test_kv_bytes_per_token_counts_k_and_v_of_every_layer(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, [])
    assert kv_bytes_per_token(run / "model") == 2 * 4 * 2 * 64 * 4


def test_the_replay_uses_the_live_runs_requests_and_scaled_slos(tmp_path: Path) -> None:
    live = [{"system": "vllm-serve", "rate": 4.0, "attained": i % 4 != 0} for i in range(30)]
    live += [{"system": "vllm-pd", "rate": 4.0, "attained": True} for _ in range(30)]
    run = _run_dir(tmp_path, live)
    rows = {f.system: f for f in compare(run, profile=PROFILE)}
    reqs = scaled(workload_requests(WorkloadOptions(scenario="chatbot", requests=30, seed=3),
                                    4.0), 2.0)
    expected = simulated_attainment(reqs, "vllm-serve", load_profile(PROFILE),
                                    (1 << 30) // kv_bytes_per_token(run / "model"))
    assert rows["vllm-serve"].simulated == pytest.approx(expected)
    assert rows["vllm-serve"].live == pytest.approx(22 / 30)
    assert rows["vllm-pd"].simulated is None  # no simulated twin, and the table says so
    assert "no twin" in fidelity_table(list(rows.values()))


def test_scaling_the_slos_changes_what_the_simulator_attains() -> None:
    reqs = workload_requests(WorkloadOptions(scenario="coding", requests=40, seed=1), 8.0)
    model = load_profile(PROFILE)
    tight = simulated_attainment(scaled(reqs, 0.2), "slos-mixed", model, 10**6)
    loose = simulated_attainment(scaled(reqs, 5.0), "slos-mixed", model, 10**6)
    assert tight is not None and loose is not None and tight < loose
