"""Synthetic Azure-format traces: written, read back by `--trace`, bursty when asked."""

from __future__ import annotations

import argparse

import pytest

from slos_serve.sim import cli
from slos_serve.sim.traces import SHIPPED, inter_arrival_cv, make_trace, resolve, write_trace
from slos_serve.sim.workloads import WorkloadSpec, build_workload, load_trace


def test_round_trip_through_load_trace(tmp_path) -> None:
    rows = make_trace("chatbot", 5.0, 0.3, 60.0, seed=4)
    path = tmp_path / "t.csv"
    write_trace(rows, path)
    assert path.read_text().startswith("TIMESTAMP,ContextTokens,GeneratedTokens\n")
    back = load_trace(path)
    assert len(back) == len(rows) and 200 < len(rows) < 500
    assert [r.t for r in back] == pytest.approx([r.t - rows[0].t for r in rows], abs=1e-5)
    assert [(r.context_tokens, r.generated_tokens) for r in back] == \
        [(r.context_tokens, r.generated_tokens) for r in rows]
    assert max(r.t for r in rows) < 60.0


def test_burstiness_shows_in_the_inter_arrivals() -> None:
    bursty = inter_arrival_cv(make_trace("coding", 5.0, 0.3, 120.0, seed=1))
    poisson = inter_arrival_cv(make_trace("coding", 5.0, 1.0, 120.0, seed=1))
    assert bursty > 1.4 and 0.8 < poisson < 1.2


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_traces_replay(name: str) -> None:
    scenario, rate, burstiness, duration, _ = SHIPPED[name]
    rows = load_trace(resolve(name))
    assert 200 <= len(rows) <= 500 and rows[-1].t < duration
    cv = inter_arrival_cv(rows)
    assert cv > 1.4 if burstiness < 1 else 0.8 < cv < 1.3
    reqs = build_workload(WorkloadSpec(scenario, 10.0, 100, trace=resolve(name)))
    assert len(reqs) == 100  # the capacity search compresses it to its rate (TraceOptions)


def test_cli_make_trace(tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "b.csv"
    args = parser.parse_args(["make-trace", "--out", str(out), "--scenario", "coding",
                              "--rate", "4", "--burstiness", "0.2", "--duration", "30"])
    assert cli.run(args) == 0
    assert len(load_trace(out)) > 50 and "CV" in capsys.readouterr().out
