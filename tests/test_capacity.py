"""Capacity search: finds the threshold of a monotone attainment curve; tiny real searches."""

from __future__ import annotations

import argparse
import json

import pytest

from slos_serve.core.perf_model import load_profile
from slos_serve.sim import cli
from slos_serve.sim.capacity import SearchOptions, probe_requests, search, system_capacity
from slos_serve.sim.core import SimConfig
from slos_serve.sim.workloads import WorkloadSpec


@pytest.mark.parametrize("threshold", [0.3, 3.7, 7.3, 55.0])
@pytest.mark.parametrize("start", [1.0, 4.0, 100.0])
def test_search_brackets_a_step(threshold: float, start: float) -> None:
    def attain(rate: float) -> float:
        return 1.0 if rate <= threshold else 0.5

    res = search(attain, SearchOptions(start=start, rel_tol=0.02, max_probes=40))
    assert threshold / 1.02 <= res.rate <= threshold
    assert all((a >= 0.9) == (r <= threshold) for r, a in res.probes)


def test_search_monotone_in_target() -> None:
    def attain(rate: float) -> float:  # falls smoothly with rate
        return 1.0 / (1.0 + (rate / 10.0) ** 4)

    caps = [search(attain, SearchOptions(target=t, rel_tol=0.01)).rate for t in (0.5, 0.9, 0.98)]
    assert caps[0] > caps[1] > caps[2] > 0
    assert attain(caps[1]) >= 0.9 and attain(caps[1] * 1.02) < 0.9


def test_search_gives_zero_when_nothing_passes() -> None:
    res = search(lambda r: 0.0, SearchOptions(start=1.0, min_rate=0.1))
    assert res.rate == 0.0


def test_probe_size_follows_rate() -> None:
    opts = SearchOptions(window_s=10.0, min_requests=20, max_requests=100)
    spec = WorkloadSpec("coding", 1.0, 1, seed=0)
    assert len(probe_requests(spec, 1.0, opts)) == 20
    assert len(probe_requests(spec, 5.0, opts)) == 50
    assert len(probe_requests(spec, 50.0, opts)) == 100


def test_tiny_system_capacity_is_monotone_in_target() -> None:
    model = load_profile("opt-13b-a100")
    spec = WorkloadSpec("coding", 1.0, 1, seed=0)
    caps = []
    for target in (0.5, 0.9):
        opts = SearchOptions(target=target, start=20.0, rel_tol=0.4, window_s=2.0,
                             min_requests=30, max_requests=80)
        res = system_capacity("vllm", spec, SimConfig(), model, "opt-13b-a100", opts)
        assert res.rate > 0 and res.probes
        caps.append(res.rate)
    assert caps[0] >= caps[1]


def test_cli_capacity_writes_json(tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "cap.json"
    args = parser.parse_args([
        "capacity", "--scenarios", "coding", "--systems", "vllm,sarathi", "--targets", "0.9",
        "--window", "2", "--min-requests", "30", "--max-requests", "60", "--rel-tol", "0.5",
        "--jobs", "1", "--out", str(out),
    ])
    assert cli.run(args) == 0
    data = json.loads(out.read_text())
    assert set(data["capacity"]["coding"]) == {"vllm", "sarathi"}
    assert data["ratio_to_vllm"]["coding"]["vllm"] == pytest.approx(1.0)
    assert "geo-mean" in capsys.readouterr().out


def test_cli_single_run(capsys) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--scenario", "coding", "--system", "vllm,slos", "--rate", "4",
                              "--num-requests", "20"])
    assert cli.run(args) == 0
    text = capsys.readouterr().out
    assert "attainment" in text and "FastDcd" in text


def test_cli_help_renders() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert "--scenario" in parser.format_help()
    for action in ("capacity", "overhead"):
        with pytest.raises(SystemExit):
            parser.parse_args([action, "--help"])
