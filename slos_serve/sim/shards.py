"""Planner shards: the cluster's workers split into groups of at most k, each planned alone.

One plan() over the whole cluster costs time in proportion to the requests in flight, which
grow with the cluster; re-planning on every arrival, whose rate grows with the cluster too,
makes the planner's CPU per second of serving grow with its square (docs/scale.md). A shard
holds its own planning state (the requests routed to it, the ones waiting for a decision, its
TTFT window, its routing counter); an arriving request is given to the shard with the fewest
requests in flight per worker, and only that shard's workers and requests are in its plans.
A plan's cost is then bounded by the shard's size, and the shards are independent: each could
be planned by its own process. `k` = 0 (or >= the cluster): one shard, the unsharded planner.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from slos_serve.core.perf_model import PerfModel
from slos_serve.core.planner import PlanWorker
from slos_serve.core.ttft_window import TtftWindow
from slos_serve.sim.core import SimRequest


@dataclass
class Shard:
    index: int
    workers: list[int]  # worker indices, ascending
    pworkers: list[PlanWorker]  # the planner's view of them, in the same order
    ttft: TtftWindow  # the TTFTs arriving at this shard (its plans' ttft_outlook)
    live: dict[int, SimRequest] = field(default_factory=dict)
    undecided: dict[int, SimRequest] = field(default_factory=dict)
    last_plan: float = -1.0
    dirty: bool = False
    route: int = 0


def split(workers: int, k: int) -> list[list[int]]:
    """Worker indices in ceil(workers / k) contiguous groups of near-equal size (k <= 0:
    one group)."""
    if k <= 0 or k >= workers:
        return [list(range(workers))]
    n = -(-workers // k)
    bounds = [round(i * workers / n) for i in range(n + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(n)]


def make_shards(pworkers: list[PlanWorker], k: int, model: PerfModel) -> list[Shard]:
    return [Shard(i, g, [pworkers[j] for j in g], TtftWindow(model))
            for i, g in enumerate(split(len(pworkers), k))]


def pick(shards: list[Shard], turn: int) -> Shard:
    """The shard with the fewest requests in flight per worker; ties in turn (round robin
    from `turn`), so that an idle cluster fills evenly."""
    n = len(shards)
    order = [shards[(turn + i) % n] for i in range(n)]
    return min(order, key=lambda s: len(s.live) / len(s.workers))
