"""`simulate scaling` and `simulate overhead`: probe sizes follow the cluster, tiny real runs,
the rows and JSON the commands write."""

from __future__ import annotations

import argparse
import json

import pytest

from slos_serve.sim import cli, overhead
from slos_serve.sim.scaling import ScalingOptions, search_options


def test_probe_sizes_grow_with_the_cluster() -> None:
    opts = ScalingOptions(min_requests=200, max_requests=1500, window_s=30.0)
    two, sixty_four = search_options(2, opts, 10.0), search_options(64, opts, 320.0)
    assert (two.min_requests, two.max_requests) == (200, 1500)
    assert (sixty_four.min_requests, sixty_four.max_requests) == (6400, 48000)
    assert sixty_four.window_s == two.window_s == 30.0 and sixty_four.start == 320.0


def test_cli_scaling_writes_capacity_per_worker(tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "scaling.json"
    args = parser.parse_args([
        "scaling", "--scenarios", "coding", "--systems", "vllm", "--sizes", "4", "2",
        "--window", "2", "--min-requests", "30", "--max-requests", "60", "--rel-tol", "0.5",
        "--jobs", "1", "--out", str(out),
    ])
    assert cli.run(args) == 0
    points = json.loads(out.read_text())["scaling"]["coding"]["vllm"]
    assert [p["workers"] for p in points] == [2, 4]
    for p in points:
        assert p["capacity"] > 0 and p["probes"]
        assert p["per_worker"] == pytest.approx(p["capacity"] / p["workers"])
    assert "per worker vs 2 workers" in capsys.readouterr().out


def test_cli_scaling_rejects_an_unknown_system() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["scaling", "--systems", "nope", "--sizes", "2"])
    with pytest.raises(SystemExit):
        cli.run(args)


def test_overhead_rows_for_each_mode_and_size(tmp_path) -> None:
    parser = argparse.ArgumentParser()
    overhead.add_arguments(parser)
    out = tmp_path / "overhead.json"
    args = parser.parse_args(["--live", "16", "--new", "4", "--reps", "2", "--workers", "4",
                              "64", "--json", str(out)])
    assert overhead.run(args) == 0
    rows = json.loads(out.read_text())
    assert [(r["mode"], r["workers"]) for r in rows] == [
        ("disagg", 4), ("disagg", 64), ("colocated", 4), ("colocated", 64)]
    assert all(0 < r["cpu_p50_ms"] <= r["cpu_max_ms"] for r in rows)


@pytest.mark.parametrize("mode", ["disagg", "colocated"])
def test_overhead_snapshot_has_the_workers_asked_for(mode: str) -> None:
    snap = overhead.make_snapshot(64, 8, mode=mode, workers=64, seed=1)
    assert len(snap.workers) == 64
    roles = {w.role for w in snap.workers}
    assert roles == ({"mixed"} if mode == "colocated" else {"prefill", "decode"})
    # the admitted load is spread over the workers
    used = {r.prefill_worker for r in snap.requests if r.prefill_worker}
    assert len(used) > 16
