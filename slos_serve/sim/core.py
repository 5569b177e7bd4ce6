"""The discrete-event cluster: clock, workers, batch timing, KV transfer, token accounting.

A *system* (vLLM-like FCFS, Sarathi, DistServe, the SLOs-Serve planner) decides what each idle
worker runs next; this module owns everything systems share: when a batch ends (the
performance model), what its tokens do to each request (prefill progress, first token,
speculative acceptance drawn per token from a seeded RNG), KV moves between workers
(latency + bytes / bandwidth), and per-segment timestamps the metrics are computed from.

Approximations, stated once: KV memory is counted in tokens (block rounding ignored); the
prefix of a later segment (a tool call's second turn) stays cached where it was computed, so only
the segment's new prompt tokens are prefilled and moved; prefill workers' KV memory is not a
constraint (prompts pass through them in well under a second).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from slos_serve.core.perf_model import BatchShape, PerfModel
from slos_serve.sim.metrics import EPS, attained
from slos_serve.sim.request import SimRequest
from slos_serve.sim.workloads import Request

# Sizes of the paper's setups: KV bytes per token (2 * layers * hidden * 2 B, fp16) and the
# KV tokens one replica holds (replica memory * 0.9 - weights, over bytes per token).
HARDWARE: dict[str, tuple[int, int]] = {
    "opt-13b-a100": (819_200, 53_000),  # 40 layers x 5120, TP2 on 2x40 GB, 26 GB weights
    "opt-13b-h100": (819_200, 150_000),  # TP2 on 2x80 GB
    "opt-30b-a100": (1_376_256, 60_000),  # 48 x 7168, TP4 on 4x40 GB, 60 GB weights
    "opt-6.7b-a100": (524_288, 40_000),  # 32 x 4096, one 40 GB GPU, 13 GB weights
    "toolllama-7b-a100": (524_288, 40_000),
}
DEFAULT_HARDWARE = (524_288, 40_000)


@dataclass
class SimConfig:
    """Cluster and engine parameters shared by every system in a comparison."""

    workers: int = 2  # the paper's OPT-13B setup: 4 A100s as 2 TP2 replicas
    kv_capacity_tokens: int | None = None  # per worker; None: from HARDWARE[profile]
    kv_bytes_per_token: int | None = None
    kv_bandwidth: float = 100e9  # bytes/s between a prefill and a decode worker
    kv_latency: float = 5e-4  # s per transfer
    spec_alpha: float = 0.7  # draft acceptance per token (OPT-125M drafting for OPT-13B)
    max_spec_len: int = 8
    seed: int = 0
    pd_ratio: tuple[int, int] | None = None  # disaggregated systems: P:D (None: best of)
    on_reject: str = "best_effort"  # planner systems: what a declined request asks for
    miss_budget: int | None = None  # stop early once this many requests have missed
    horizon_s: float = 600.0  # stop this long after the last arrival
    plan_shard: int = 0  # planner systems: workers per planner shard (0: one plan, sim/shards)


@dataclass
class Batch:
    """One engine step: (request, prompt tokens) chunks and (request, draft length) decodes."""

    prefill: list[tuple[SimRequest, int]] = field(default_factory=list)
    decode: list[tuple[SimRequest, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.prefill or self.decode)

    def shape(self) -> BatchShape:
        ptok = sum(n for _, n in self.prefill)
        plain = sum(1 for _, s in self.decode if s == 0)
        verify = sum(1 + s for _, s in self.decode if s > 0)
        ctx = sum(r.context for r, _ in self.decode) + sum(r.context for r, _ in self.prefill)
        steps = max((s for _, s in self.decode), default=0)
        return BatchShape(ptok, plain, verify, len(self.prefill) + len(self.decode), ctx, steps)


@dataclass
class Worker:
    idx: int
    role: str  # prefill, decode, mixed
    kv_capacity: int
    kv_used: int = 0
    busy_until: float = 0.0
    batch: Batch | None = None
    batches_run: int = 0
    busy_time: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.role[0]}{self.idx}"

    @property
    def kv_free(self) -> int:
        return self.kv_capacity - self.kv_used


class System(Protocol):
    """What a serving system decides; the cluster calls these."""

    name: str

    def setup(self, cluster: Cluster) -> None: ...

    def on_arrival(self, r: SimRequest) -> None: ...

    def on_segment_start(self, r: SimRequest) -> None: ...  # a later segment with a new prompt

    def on_prefill_done(self, r: SimRequest, w: Worker) -> None: ...

    def on_kv_arrived(self, r: SimRequest, w: Worker) -> None: ...

    def on_segment_switch(self, r: SimRequest) -> None: ...  # decoding continues, new TPOT

    def on_leave(self, r: SimRequest, w: Worker | None) -> None: ...  # finished or paused

    def next_batch(self, w: Worker) -> Batch | None: ...


ARRIVAL, BATCH_END, KV_DONE, SEGMENT_START, TIMER = range(5)


class Cluster:
    """Event loop and shared mechanics. `roles` lists each worker's role in order."""

    def __init__(self, cfg: SimConfig, model: PerfModel, roles: list[str], system: System,
                 profile: str = "") -> None:
        kv_bytes, kv_tokens = HARDWARE.get(profile, DEFAULT_HARDWARE)
        self.cfg = cfg
        self.model = model
        self.kv_bytes = cfg.kv_bytes_per_token or kv_bytes
        cap = cfg.kv_capacity_tokens or kv_tokens
        self.workers = [Worker(i, role, cap) for i, role in enumerate(roles)]
        self.system = system
        self.now = 0.0
        self.rng = np.random.default_rng(cfg.seed + 7919)
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = itertools.count()
        self.requests: list[SimRequest] = []
        self.done = 0
        self.missed = 0
        self._stop = False

    # ------------------------------------------------------------ events

    def push(self, t: float, kind: int, payload: object) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, payload))

    def call_at(self, t: float, fn: Callable[[], None]) -> None:
        """Run fn at time t (systems use it for periodic re-planning)."""
        self.push(t, TIMER, fn)

    def run(self, requests: list[Request]) -> list[SimRequest]:
        self.requests = [SimRequest(r) for r in requests]
        for r in self.requests:
            self.push(r.req.arrival, ARRIVAL, r)
        self.system.setup(self)
        last = max((r.arrival for r in requests), default=0.0)
        if self.cfg.miss_budget is not None:
            self.call_at(1.0, self._check_late)
        while self._heap and not self._stop:
            t, _, kind, payload = heapq.heappop(self._heap)
            if t > last + self.cfg.horizon_s:
                break
            self.now = t
            if kind == ARRIVAL:
                r = payload
                r.phase = "prefill"
                r.todo_prefill = r.cur.prompt_tokens
                r.segment_start.append(t)
                r.first_token.append(None)
                r.segment_end.append(None)
                self.system.on_arrival(r)
            elif kind == BATCH_END:
                self._finish_batch(payload)
            elif kind == KV_DONE:
                r, w = payload
                r.phase = "decode"
                self.system.on_kv_arrived(r, w)
            elif kind == SEGMENT_START:
                self._start_segment(payload)
            else:
                payload()
            self.kick()
        return self.requests

    def kick(self) -> None:
        """Start a batch on every idle worker that has work."""
        for w in self.workers:
            if w.batch is None:
                b = self.system.next_batch(w)
                if b:
                    dur = self.model.predict(b.shape())
                    w.batch = b
                    w.busy_until = self.now + dur
                    w.busy_time += dur
                    w.batches_run += 1
                    self.push(w.busy_until, BATCH_END, w)

    # ------------------------------------------------------------ batches and tokens

    def _finish_batch(self, w: Worker) -> None:
        b, w.batch = w.batch, None
        for r, n in b.prefill:
            if r.phase == "done":
                continue
            r.todo_prefill -= n
            r.context += n
            if r.todo_prefill <= 0:
                r.todo_prefill = 0
                self.emit(r, 1, w)
                if r.phase not in ("done", "gap"):
                    self.system.on_prefill_done(r, w)
        specs = [(r, s) for r, s in b.decode if r.phase == "decode"]
        acc = self._accepted([s for _, s in specs])
        for (r, _), k in zip(specs, acc, strict=True):
            self.emit(r, 1 + int(k), w)

    def _accepted(self, spec_lens: list[int]) -> np.ndarray:
        """Accepted drafts per verify step: leading successes of Bernoulli(alpha) draws."""
        if not spec_lens or not any(spec_lens):
            return np.zeros(len(spec_lens), dtype=int)
        s = np.asarray(spec_lens)
        a = self.cfg.spec_alpha
        k = self.rng.geometric(1.0 - a, size=len(s)) - 1 if a > 0 else np.zeros(len(s), int)
        return np.minimum(k, s)

    def emit(self, r: SimRequest, n: int, w: Worker | None) -> None:
        """r's current segment produces n tokens at the current time."""
        take = min(n, r.remaining_output)
        if take <= 0:
            return
        if r.generated == 0:
            r.first_token[r.segment] = self.now
        r.generated += take
        r.context += take
        if r.generated >= r.cur.output_tokens:
            self._end_segment(r, w)

    def _end_segment(self, r: SimRequest, w: Worker | None) -> None:
        r.segment_end[r.segment] = self.now
        if r.segment + 1 >= len(r.req.segments):
            r.phase = "done"
            self.system.on_leave(r, w)
            self.free(r)
            self._account(r)
            return
        nxt = r.req.segments[r.segment + 1]
        if nxt.prompt_tokens > 0 or nxt.gap_s > 0:
            r.phase = "gap"
            self.system.on_leave(r, w)
            self.free(r)
            self.push(self.now + nxt.gap_s, SEGMENT_START, r)
            return
        self._advance(r)
        self.system.on_segment_switch(r)

    def _advance(self, r: SimRequest) -> None:
        r.segment += 1
        r.generated = 0
        r.segment_start.append(self.now)
        r.first_token.append(None)
        r.segment_end.append(None)

    def _start_segment(self, r: SimRequest) -> None:
        self._advance(r)
        r.todo_prefill = r.cur.prompt_tokens
        r.phase = "prefill"
        self.system.on_segment_start(r)

    # ------------------------------------------------------------ resources

    def alloc(self, r: SimRequest, w: Worker, tokens: int) -> bool:
        """Reserve KV so that r holds `tokens` on w; False (nothing reserved) if it cannot."""
        if r.worker is not None and r.worker != w.idx:
            self.free(r)
        extra = tokens - r.kv_alloc
        if extra > w.kv_free:
            return False
        w.kv_used += extra
        r.kv_alloc = tokens
        r.worker = w.idx
        return True

    def free(self, r: SimRequest) -> None:
        if r.worker is not None:
            self.workers[r.worker].kv_used -= r.kv_alloc
        r.kv_alloc = 0
        r.worker = None

    def transfer_time(self, tokens: int) -> float:
        return self.cfg.kv_latency + tokens * self.kv_bytes / self.cfg.kv_bandwidth

    def start_transfer(self, r: SimRequest, dst: Worker, tokens: int) -> None:
        """Move `tokens` of r's KV to dst (already reserved there); on_kv_arrived follows."""
        r.phase = "transfer"
        self.push(self.now + self.transfer_time(tokens), KV_DONE, (r, dst))

    def reject(self, r: SimRequest) -> None:
        r.decision = "reject"
        r.phase = "done"
        self.free(r)
        self._account(r)

    def _account(self, r: SimRequest) -> None:
        self.done += 1
        if not attained(r) and not r.extra.get("late"):
            self._miss()

    def _miss(self) -> None:
        self.missed += 1
        budget = self.cfg.miss_budget
        if budget is not None and self.missed > budget:
            self._stop = True

    def _check_late(self) -> None:
        """Count requests that can no longer attain (`is_late`) as missed, once, so that an
        overloaded run stops early; then again in 1 s."""
        for r in self.requests:
            if r.req.arrival > self.now:
                break
            if r.phase == "done" or r.extra.get("late") or not r.first_token:
                continue
            if is_late(r, self.now):
                r.extra["late"] = True
                self._miss()
        if not self._stop:
            self.call_at(self.now + 1.0, self._check_late)


def is_late(r: SimRequest, now: float) -> bool:
    """r's current segment can no longer attain, judged as `metrics` will judge it: its TTFT
    deadline passed without a first token, or even if every remaining token came now its TPOT
    would be too long. A segment that has ended (the request waits for a tool result before
    its next stage) is not judged here: its times are final and the end of the run counts
    them."""
    st = r.cur
    if r.segment_end[r.segment] is not None:
        return False
    start, first = r.segment_start[r.segment], r.first_token[r.segment]
    if first is None and st.ttft_slo is not None and now > start + st.ttft_slo + EPS:
        return True
    if st.prompt_tokens == 0:  # TPOT over every token, from the previous segment's last one
        return now - start > (st.tpot_slo + EPS) * st.output_tokens
    if first is None or st.output_tokens <= 1:
        return False
    return now - first > (st.tpot_slo + EPS) * (st.output_tokens - 1)
