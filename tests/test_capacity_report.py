"""Capacity over seeds: mean and spread, vllm-spec's best length, the best baseline, ratios."""

from __future__ import annotations

import argparse
import json

import pytest

from slos_serve.sim import cli
from slos_serve.sim.capacity_report import expand, grid, record, report


def _found(rates: dict[tuple[str, str], list[float]]) -> dict:
    return {(sc, s, seed): {"0.9": {"rate": r, "probes": [(r, 0.95)]}}
            for (sc, s), per_seed in rates.items() for seed, r in enumerate(per_seed)}


RATES = {
    ("chatbot", "vllm"): [10.0, 12.0, 14.0],
    ("chatbot", "vllm-spec1"): [11.0, 13.0, 15.0],
    ("chatbot", "vllm-spec2"): [13.0, 13.0, 16.0],  # best mean: 14
    ("chatbot", "vllm-spec3"): [14.0, 14.0, 12.0],  # best seed, lower mean
    ("chatbot", "vllm-spec4"): [9.0, 9.0, 9.0],
    ("chatbot", "slos"): [20.0, 21.0, 22.0],
    ("coding", "vllm"): [30.0, 30.0, 30.0],
    ("coding", "vllm-spec1"): [20.0, 20.0, 20.0],
    ("coding", "vllm-spec2"): [20.0, 20.0, 20.0],
    ("coding", "vllm-spec3"): [20.0, 20.0, 20.0],
    ("coding", "vllm-spec4"): [20.0, 20.0, 20.0],
    ("coding", "slos"): [60.0, 60.0, 60.0],
}
SYSTEMS = ["vllm", "vllm-spec", "slos"]


def test_expand_runs_every_spec_length() -> None:
    assert expand(["vllm", "vllm-spec", "slos"]) == [
        "vllm", "vllm-spec1", "vllm-spec2", "vllm-spec3", "vllm-spec4", "slos"]


def test_spec_family_keeps_the_best_mean_length_and_ratios_use_means() -> None:
    rep = report(_found(RATES), ["chatbot", "coding"], SYSTEMS, [0, 1, 2], 0.9)
    spec = rep.rows["chatbot"]["vllm-spec"]
    assert (spec.spec_len, spec.label, spec.mean) == (2, "vllm-spec(s=2)", 14.0)
    assert (spec.min, spec.max) == (13.0, 16.0)
    assert spec.stdev == pytest.approx(3 ** 0.5)
    assert rep.best_baseline("chatbot") == "vllm-spec" and rep.best_baseline("coding") == "vllm"
    assert rep.rows["coding"]["vllm-spec"].spec_len == 1  # a tie: the shortest length
    to_best, to_vllm = rep.ratios("best"), rep.ratios("vllm")
    assert to_best["chatbot"]["slos"] == pytest.approx(21.0 / 14.0)
    assert to_vllm["chatbot"]["slos"] == pytest.approx(21.0 / 12.0)
    assert to_best["coding"]["slos"] == pytest.approx(2.0)
    assert rep.geomeans("best")["slos"] == pytest.approx((1.5 * 2.0) ** 0.5)


def test_record_and_table() -> None:
    found = _found(RATES)
    rep = report(found, ["chatbot", "coding"], SYSTEMS, [0, 1, 2], 0.9)
    out = json.loads(json.dumps(record(found, [rep], [0, 1, 2], workers=2)))
    assert out["best_baseline"] == {"chatbot": "vllm-spec(s=2)", "coding": "vllm"}
    assert out["vllm_spec_length"] == {"chatbot": 2, "coding": 1}
    assert out["capacity"]["chatbot"]["slos"] == pytest.approx(21.0)
    assert out["capacity_spread"]["chatbot"]["vllm"]["per_seed"] == [10.0, 12.0, 14.0]
    assert out["ratio_to_best_baseline"]["chatbot"]["vllm-spec"] == pytest.approx(1.0)
    assert out["geomean_ratio_to_vllm"]["slos"] > out["geomean_ratio_to_best_baseline"]["slos"]
    assert out["per_worker"]["coding"]["slos"] == pytest.approx(30.0)
    assert set(out["probes"]["chatbot"]["vllm-spec3"]) == {"0", "1", "2"}
    text = "\n".join(rep.table([0, 1, 2]))
    assert "14.00 [13.00-16.00] s=2" in text and "vllm-spec(s=2)" in text
    assert "1.50x" in text and "seeds 0,1,2" in text


def test_grid_aligns_columns() -> None:
    lines = grid(["a", "bb"], [["long", "1"], ["x", "22222"]])
    assert len({len(line) for line in lines}) == 1 and lines[1].startswith("long")


def test_cli_capacity_over_seeds(tmp_path) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "cap.json"
    args = parser.parse_args([
        "capacity", "--scenarios", "coding", "--systems", "vllm,vllm-spec,vllm-v0",
        "--targets", "0.9", "--window", "2", "--min-requests", "30", "--max-requests", "60",
        "--rel-tol", "0.5", "--jobs", "1", "--seeds", "0,1", "--out", str(out),
    ])
    assert cli.run(args) == 0
    data = json.loads(out.read_text())
    assert data["seeds"] == [0, 1]
    assert set(data["capacity"]["coding"]) == {"vllm", "vllm-spec", "vllm-v0"}
    assert len(data["capacity_spread"]["coding"]["vllm"]["per_seed"]) == 2
    assert data["vllm_spec_length"]["coding"] in (1, 2, 3, 4)
    assert data["best_baseline"]["coding"] in ("vllm", "vllm-v0") or \
        data["best_baseline"]["coding"].startswith("vllm-spec(s=")


def test_cli_single_run_takes_the_spec_length(tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "one.json"
    args = parser.parse_args(["--scenario", "coding", "--system", "vllm-spec,vllm-v0",
                              "--baseline-spec-len", "3", "--rate", "4", "--num-requests",
                              "20", "--json", str(out)])
    assert cli.run(args) == 0
    assert "vllm-spec(s=3)" in capsys.readouterr().out
    assert json.loads(out.read_text())["vllm-spec"]["run_as"] == "vllm-spec3"
    with pytest.raises(SystemExit):
        cli.run(parser.parse_args(["--system", "vllm-spec", "--baseline-spec-len", "7"]))
