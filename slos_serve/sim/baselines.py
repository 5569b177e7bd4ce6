"""Baseline systems, named for what they are.

- `vllm`: colocated replicas, each vLLM's own FCFS chunked-prefill scheduler with vLLM 0.32's
  defaults on A100 (max_num_batched_tokens 2048, max_num_seqs 256); a join-shortest-queue
  front end spreads requests over replicas (vLLM itself has no multi-replica router; JSQ is
  the strongest simple choice, so the baseline is not handicapped by routing).
- `vllm-spec`: `vllm` with fixed-length speculative decoding (every decode verifies s drafts,
  vLLM's `num_speculative_tokens`), the acceptance model the planner's systems get; one system
  per length (`vllm-spec1` ... `vllm-spec4`), since a vLLM user fixes s once per deployment;
  the capacity search reports the best length per scenario as `vllm-spec`.
- `vllm-v0`: vLLM's scheduler and defaults before V1 (chunked prefill off; `vllm_v0`).
- `sarathi`: the same engine with Sarathi-Serve's stall-free batching: decodes first, then
  prefill chunks, under a token budget sized so a batch fits the tightest TPOT of the workload.
- `distserve`: disaggregated prefill and decode pools; prefill workers batch whole prompts FCFS
  (DistServe does not chunk), decode workers run FCFS continuous batching and pull the KV when
  they admit a request. The P:D split is chosen by the caller (best of 1:1, 2:1, 1:2).
"""

from __future__ import annotations

from collections import deque

from slos_serve.sim.core import Batch, Cluster, SimRequest, Worker
from slos_serve.sim.fcfs import VLLM_MAX_NUM_BATCHED_TOKENS, FcfsEngine
from slos_serve.sim.vllm_v0 import V0Engine

# the fixed speculation lengths a vLLM user would try when tuning `vllm-spec` once
SPEC_LENGTHS = (1, 2, 3, 4)


def _least_loaded(engines: list[FcfsEngine]) -> FcfsEngine:
    return min(engines, key=lambda e: (e.load, e.w.idx))


class ColocatedFcfs:
    """vLLM-style replicas behind a join-shortest-queue router."""

    def __init__(
        self,
        name: str = "vllm",
        budget: int | None = VLLM_MAX_NUM_BATCHED_TOKENS,
        spec_len: int = 0,
        engine: type[FcfsEngine] = FcfsEngine,
    ) -> None:
        self.name = name
        self.budget = budget  # None: sized to the tightest TPOT (Sarathi-Serve)
        self.spec_len = spec_len
        self.engine = engine
        self.engines: list[FcfsEngine] = []

    def setup(self, cluster: Cluster) -> None:
        budget = self.budget
        if budget is None:
            budget = sarathi_budget(cluster)
        self.engines = [self.engine(cluster, w, budget, spec_len=self.spec_len)
                        for w in cluster.workers]

    def on_arrival(self, r: SimRequest) -> None:
        e = _least_loaded(self.engines)
        r.pinned_prefill = e.w.idx
        e.add(r)

    def on_segment_start(self, r: SimRequest) -> None:
        self.engines[r.pinned_prefill].add(r)  # its prefix is cached there

    def on_prefill_done(self, r: SimRequest, w: Worker) -> None:
        r.phase = "decode"

    def on_kv_arrived(self, r: SimRequest, w: Worker) -> None:  # never: colocated
        raise AssertionError("colocated systems move no KV")

    def on_segment_switch(self, r: SimRequest) -> None:
        pass

    def on_leave(self, r: SimRequest, w: Worker | None) -> None:
        if w is not None:
            self.engines[w.idx].remove(r)

    def next_batch(self, w: Worker) -> Batch | None:
        return self.engines[w.idx].step()


def sarathi_budget(cluster: Cluster) -> int:
    """Largest batch (tokens) the performance model runs within the tightest TPOT SLO."""
    tpot = min(s.tpot_slo for r in cluster.requests for s in r.req.segments)
    return max(16, cluster.model.prefill_capacity(tpot))


class PrefillFcfs:
    """A DistServe prefill worker: whole prompts, first come first served, batched up to a
    token limit (a longer prompt runs alone)."""

    def __init__(self, worker: Worker, max_tokens: int = VLLM_MAX_NUM_BATCHED_TOKENS) -> None:
        self.w = worker
        self.max_tokens = max_tokens
        self.waiting: deque[SimRequest] = deque()
        self.queued_tokens = 0

    def add(self, r: SimRequest) -> None:
        self.waiting.append(r)
        self.queued_tokens += r.todo_prefill

    def step(self) -> Batch | None:
        b = Batch()
        total = 0
        while self.waiting:
            n = self.waiting[0].todo_prefill
            if b.prefill and total + n > self.max_tokens:
                break
            r = self.waiting.popleft()
            b.prefill.append((r, n))
            total += n
        self.queued_tokens -= total
        return b if b else None


class DistServe:
    """Disaggregated FCFS: P prefill workers, then KV to one of D decode workers."""

    name = "distserve"

    def __init__(self) -> None:
        self.prefill: dict[int, PrefillFcfs] = {}
        self.decode: dict[int, FcfsEngine] = {}

    def setup(self, cluster: Cluster) -> None:
        self.c = cluster
        for w in cluster.workers:
            if w.role == "prefill":
                self.prefill[w.idx] = PrefillFcfs(w)
            else:
                self.decode[w.idx] = FcfsEngine(cluster, w)

    def on_arrival(self, r: SimRequest) -> None:
        p = min(self.prefill.values(), key=lambda e: (e.queued_tokens, e.w.idx))
        p.add(r)

    def on_segment_start(self, r: SimRequest) -> None:
        self.on_arrival(r)

    def on_prefill_done(self, r: SimRequest, w: Worker) -> None:
        if w.idx in self.decode:  # a preempted request recomputed where it decodes
            r.phase = "decode"
            return
        r.phase = "kvwait"
        r.extra["kv_tokens"] = r.cur.prompt_tokens
        if r.pinned_decode is None:
            r.pinned_decode = _least_loaded(list(self.decode.values())).w.idx
        self.decode[r.pinned_decode].add(r)

    def on_kv_arrived(self, r: SimRequest, w: Worker) -> None:
        self.decode[w.idx].kv_arrived(r)

    def on_segment_switch(self, r: SimRequest) -> None:
        pass

    def on_leave(self, r: SimRequest, w: Worker | None) -> None:
        if w is not None and w.idx in self.decode:
            self.decode[w.idx].remove(r)

    def next_batch(self, w: Worker) -> Batch | None:
        if w.idx in self.prefill:
            return self.prefill[w.idx].step()
        return self.decode[w.idx].step()


def vllm_spec(spec_len: int) -> ColocatedFcfs:
    """`vllm` with `spec_len` drafts verified per decode."""
    return ColocatedFcfs(f"vllm-spec{spec_len}", spec_len=spec_len)


def vllm_v0() -> ColocatedFcfs:
    return ColocatedFcfs("vllm-v0", engine=V0Engine)
