"""The benchmark's systems and capacity report, pure (milliseconds): which clusters and vLLM
servers each system name starts and with what argv, vllm-serve-priority's priorities by
tier, and the capacity ratios against the best vLLM baseline of each scenario."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from slos_serve.bench.capacity import (
    capacity_json,
    capacity_search,
    capacity_table,
    live_search_options,
)
from slos_serve.bench.workload import NO_TTFT, tier_priority
from slos_serve.core.stages import StageSpec
from slos_serve.sim.capacity import CapacityResult
from slos_serve.sim.workloads import TIERS


def stage(max_tokens: int, ttft_ms: float | None, tpot_ms: float, tier: str = "t") -> StageSpec:
    return StageSpec(tier=tier, ttft_ms=NO_TTFT if ttft_ms is None else ttft_ms,
                     tpot_ms=tpot_ms, max_tokens=max_tokens)


# ---------------------------------------------------------------------- capacity --


def test_capacity_search_on_a_synthetic_probe() -> None:
    true_capacity = 3.3
    calls: list[float] = []

    def probe(rate: float) -> float:
        calls.append(rate)
        return 1.0 if rate <= true_capacity else 0.5

    opts = live_search_options(start=1.0, max_probes=8, rel_tol=0.1)
    res = capacity_search(probe, opts)
    assert res.rate <= true_capacity < res.rate * 1.1 + 1e-9
    assert len(calls) <= 8 and [p[0] for p in res.probes] == calls
    # few probes: the answer is a passing rate, never above the truth
    few = capacity_search(probe, live_search_options(start=1.0, max_probes=3))
    assert 0 < few.rate <= true_capacity and len(few.probes) == 3
    # nothing passes
    assert capacity_search(lambda r: 0.0, live_search_options(start=1.0)).rate == 0.0

    found = {"coding": {"slos": res, "vllm-serve": few},
             "chatbot": {"slos": few, "vllm-serve": few}}
    data = capacity_json(found, ["slos", "vllm-serve"], 0.9)
    assert data["best_baseline"] == {"coding": "vllm-serve", "chatbot": "vllm-serve"}
    assert data["capacity"]["coding"]["slos"] == res.rate
    assert data["ratio_to_best_baseline"]["coding"]["slos"] == pytest.approx(
        res.rate / few.rate)
    assert data["ratio_to_best_baseline"]["chatbot"]["vllm-serve"] == pytest.approx(1.0)
    assert data["geomean_ratio_to_best_baseline"]["slos"] == pytest.approx(
        math.sqrt(res.rate / few.rate))
    assert json.loads(json.dumps(data))["probes"]["coding"]["slos"][0][0] == 1.0
    assert data["bracketed"]["coding"] == {"slos": True, "vllm-serve": True}
    assert "geo-mean" in capacity_table(data) and " >=2" not in capacity_table(data)
    # no probe failed: the capacity is only a lower bound, and the table says so
    always = capacity_search(lambda r: 1.0, live_search_options(start=1.0, max_probes=2))
    assert always.rate == 2.0
    data = capacity_json({"coding": {"slos": always}}, ["slos"], 0.9)
    assert data["bracketed"]["coding"]["slos"] is False
    assert data["best_baseline"] == {"coding": None}
    assert data["ratio_to_best_baseline"]["coding"]["slos"] is None
    assert data["geomean_ratio_to_best_baseline"]["slos"] is None
    assert " >=2.00" in capacity_table(data)


def test_capacity_ratios_are_against_the_best_baseline_of_each_scenario() -> None:
    """Per scenario, the vLLM baseline that carried most is the reference, whichever it is."""
    def found(rate: float) -> CapacityResult:
        return CapacityResult(rate, [(rate, 1.0), (2 * rate, 0.0)])

    runs = {"coding": {"slos-mixed": found(6.0), "vllm-serve": found(4.0),
                       "vllm-serve-priority": found(3.0), "vllm-pd": found(2.0)},
            "chatbot": {"slos-mixed": found(6.0), "vllm-serve": found(2.0),
                        "vllm-serve-priority": found(5.0), "vllm-pd": found(1.0)}}
    systems = ["slos-mixed", "vllm-serve", "vllm-serve-priority", "vllm-pd"]
    data = capacity_json(runs, systems, 0.9)
    assert data["best_baseline"] == {"coding": "vllm-serve", "chatbot": "vllm-serve-priority"}
    ratios = data["ratio_to_best_baseline"]
    assert ratios["coding"]["slos-mixed"] == pytest.approx(1.5)
    assert ratios["chatbot"]["slos-mixed"] == pytest.approx(1.2)
    assert ratios["chatbot"]["vllm-serve"] == pytest.approx(0.4)
    assert data["geomean_ratio_to_best_baseline"]["slos-mixed"] == pytest.approx(
        math.sqrt(1.5 * 1.2))
    table = capacity_table(data)
    assert "vllm-serve-priority" in table.splitlines()[3]  # chatbot's best baseline named


# ------------------------------------------------------------------------ systems --


def test_tier_priority_ranks_tiers_by_their_tightest_tpot() -> None:
    """vllm-serve-priority's rule: the tighter a tier's TPOT, the smaller (sooner) its
    priority; a stage of no workload tier last."""
    def prio(tier: str) -> int:
        return tier_priority(stage(4, 1e3, 1e3, tier))

    tightest = {t: min(s.tpot_s for s in TIERS[t].segments) for t in TIERS}
    for a in TIERS:
        for b in TIERS:
            if tightest[a] < tightest[b]:
                assert prio(a) < prio(b), (a, b)
            if tightest[a] == tightest[b]:
                assert prio(a) == prio(b), (a, b)
    assert prio("FastDcd") == 0 and prio("FastThink") == 0 and prio("HumanDcd") == 1
    assert prio("") > max(prio(t) for t in TIERS)


def test_vllm_serve_systems_run_vllms_defaults_and_priority_sends_tiers() -> None:
    from slos_serve.bench.systems import make_system

    plain, prio = make_system("vllm-serve", "m"), make_system("vllm-serve-priority", "m")
    assert (plain.name, prio.name) == ("vllm-serve", "vllm-serve-priority")
    for argv in (plain.argv(1), prio.argv(1)):
        # vLLM's own defaults for the platform: no chunking or batch-token overrides
        assert not [a for a in argv if "chunked-prefill" in a or "batched-tokens" in a], argv
        for flag, value in (("--dtype", "float32"), ("--max-model-len", "2048"),
                            ("--seed", "0"), ("--served-model-name", "bench-model")):
            assert argv[argv.index(flag) + 1] == value
        assert "--enforce-eager" in argv
    assert "--scheduling-policy" not in plain.argv(1)
    assert prio.argv(1)[prio.argv(1).index("--scheduling-policy") + 1] == "priority"
    with pytest.raises(ValueError, match="no simulated engine"):
        make_system("vllm-serve-priority", "m", engine="sim")

    async def bodies() -> tuple[dict, dict, dict]:
        prio.urls = plain.urls = ["http://127.0.0.1:1"]
        d_prio, d_plain = prio.driver(), plain.driver()
        try:
            return (d_prio.body([1, 2], (stage(4, 1e3, 1e3, "FastDcd"),)),
                    d_prio.body([1, 2], (stage(4, 1e3, 1e3, "HumanDcd"),
                                         stage(2, None, 1e3, "HumanDcd"))),
                    d_plain.body([1, 2], (stage(4, 1e3, 1e3, "FastDcd"),)))
        finally:
            await d_prio.close()
            await d_plain.close()

    tight, loose, fcfs = asyncio.run(bodies())
    assert tight["priority"] == 0 and loose["priority"] == 1 and "priority" not in fcfs
    assert loose["max_tokens"] == 6 and tight["max_tokens"] == 4


def test_bench_cluster_systems_and_sim_engine_leave_out_vllm_serve() -> None:
    from slos_serve.bench.cli import BenchSetup, _systems
    from slos_serve.bench.systems import CLUSTERS, SYSTEMS, make_system

    assert set(SYSTEMS) == {"slos-mixed", "slos", "slos-pd", "vllm-pd", "vllm-serve",
                            "vllm-serve-priority"}
    specs = {n: make_system(n, "m", engine="sim").cluster.spec for n in CLUSTERS}
    assert {n: (s.counts(), s.scheduler, s.layout) for n, s in specs.items()} == {
        "slos-mixed": ({"prefill": 0, "decode": 0, "mixed": 2}, "slos", "fixed"),
        "slos": ({"prefill": 0, "decode": 0, "mixed": 2}, "slos", "adaptive"),
        "slos-pd": ({"prefill": 1, "decode": 1, "mixed": 0}, "slos", "fixed"),
        "vllm-pd": ({"prefill": 1, "decode": 1, "mixed": 0}, "vllm", "fixed"),
    }
    setup = BenchSetup(systems="slos-mixed,vllm-serve,vllm-serve-priority", engine="sim")
    assert _systems(setup) == ["slos-mixed"]
    assert _systems(BenchSetup())[0] == "slos-mixed"  # `make bench`'s: beside both vllm-serve
    assert {"vllm-serve", "vllm-serve-priority"} <= set(_systems(BenchSetup()))
