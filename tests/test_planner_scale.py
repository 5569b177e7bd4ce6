"""Planner shards (sim/shards.py) and `simulate planner-scale`: a sharded plan's work stays
bounded as the cluster grows (a whole-cluster plan's does not), requests stay on their shard,
and the command writes its rows.

Sizes are small (3 and 12 workers, 1 s of chatbot arrivals at 10 req/s per worker) to keep the
module cheap; the growth it checks is the one docs/scale.md measures at 8 to 256 workers.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace

import pytest

from slos_serve.core.perf_model import load_profile
from slos_serve.sim import cli
from slos_serve.sim.core import SimConfig
from slos_serve.sim.planner_scale import planner_cost, timed_run
from slos_serve.sim.shards import split
from slos_serve.sim.slos_system import SlosSystem
from slos_serve.sim.workloads import WorkloadSpec, build_workload

PROFILE = "opt-13b-a100"
PER_WORKER = 10.0  # req/s, about chatbot's capacity per worker
WINDOW_S = 1.0
SMALL, LARGE, SHARD = 3, 12, 3


def test_split_covers_the_workers_in_groups_of_at_most_k() -> None:
    for n, k in [(10, 4), (256, 8), (7, 7), (5, 0), (3, 8)]:
        groups = split(n, k)
        assert sorted(i for g in groups for i in g) == list(range(n))
        assert max(len(g) for g in groups) <= (k if 0 < k < n else n)
        assert max(map(len, groups)) - min(map(len, groups)) <= 1
    assert len(split(256, 8)) == 32 and split(5, 0) == [list(range(5))]


def _run(workers: int, shard: int) -> tuple[SlosSystem, float]:
    model = load_profile(PROFILE)
    rate = PER_WORKER * workers
    reqs = build_workload(WorkloadSpec("chatbot", rate, round(rate * WINDOW_S), seed=0))
    cfg = replace(SimConfig(), workers=workers, plan_shard=shard)
    system, done = timed_run(reqs, "slos-colocated", cfg, model, PROFILE)
    # every request ran only on the workers of the shard that planned it
    shards = {i: s.index for s in system.shards for i in s.workers}
    for r in done:
        if "shard" in r.extra:
            for w in (r.pinned_prefill, r.pinned_decode):
                assert w is None or shards[w] == r.extra["shard"]
    return system, reqs[-1].arrival


@pytest.fixture(scope="module")
def runs() -> dict[tuple[int, int], tuple[SlosSystem, float]]:
    return {(n, k): _run(n, k) for n, k in [(SMALL, 0), (LARGE, 0), (LARGE, SHARD)]}


def _plan_size(system: SlosSystem) -> float:
    return statistics.mean(x.requests for x in system.plan_times)


def test_a_sharded_plan_sees_only_its_shard(runs) -> None:
    system, _ = runs[LARGE, SHARD]
    assert len(system.shards) == LARGE // SHARD
    assert max(x.workers for x in system.plan_times) == SHARD
    assert {x.shard for x in system.plan_times} == set(range(LARGE // SHARD))
    whole, _ = runs[LARGE, 0]
    assert {x.workers for x in whole.plan_times} == {LARGE}


def test_a_sharded_plans_work_stays_flat_where_a_whole_clusters_grows(runs) -> None:
    """Requests per plan (the plan's work, machine-free): 4x the cluster is ~4x the work for
    one plan over it, ~1x for shards as small as the small cluster."""
    small, large, sharded = (_plan_size(runs[k][0]) for k in
                             [(SMALL, 0), (LARGE, 0), (LARGE, SHARD)])
    assert large / small > 2.5
    assert sharded / small < 1.5


def test_a_sharded_admission_costs_about_what_a_small_clusters_does(runs) -> None:
    """CPU per admission as a ratio within one process (the machine's speed cancels out):
    sharded at 12 workers within 2x of 3 workers, below the whole 12-worker plan's."""
    cost = {k: planner_cost(s, 0.0, end) for k, (s, end) in runs.items()}
    small, whole, sharded = (cost[k].adm_ms_p50 for k in [(SMALL, 0), (LARGE, 0), (LARGE, SHARD)])
    assert sharded < 2.0 * small
    assert sharded < whole


def test_cli_planner_scale_writes_rows(tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "ps.json"
    args = parser.parse_args(["planner-scale", "--sizes", "2", "--shards", "0", "1",
                              "--window", "0.5", "--jobs", "1", "--out", str(out)])
    assert cli.run(args) == 0
    points = json.loads(out.read_text())["points"]
    assert sorted((p["workers"], p["shard"]) for p in points) == [(2, 0), (2, 1)]
    assert all(p["plans"] > 0 and p["adm_ms_p50"] > 0 and p["cores"] > 0 for p in points)
    assert "ms/adm p50" in capsys.readouterr().out
