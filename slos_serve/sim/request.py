"""A request's mutable state in the simulation (the cluster moves it, systems decide on it,
the metrics judge it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from slos_serve.sim.workloads import Request, Segment


@dataclass
class SimRequest:
    """A request's mutable state in the simulation."""

    req: Request
    segment: int = 0
    todo_prefill: int = 0  # tokens to compute before the next token is emitted
    context: int = 0  # tokens whose KV exists (where the request lives)
    generated: int = 0  # tokens of the current segment emitted
    kv_alloc: int = 0  # KV tokens reserved on `worker`
    worker: int | None = None  # worker holding the request's KV / running it
    phase: str = "new"  # new, prefill, kvwait, transfer, decode, gap, done
    segment_start: list[float] = field(default_factory=list)
    first_token: list[float | None] = field(default_factory=list)
    segment_end: list[float | None] = field(default_factory=list)
    decision: str = "fcfs"
    pinned_prefill: int | None = None
    pinned_decode: int | None = None
    due0: float = 0.0  # token schedule of the current segment (systems that pace decoding)
    tpot: float = 0.0
    extra: dict = field(default_factory=dict)  # per-system bookkeeping

    @property
    def id(self) -> int:
        return self.req.id

    @property
    def cur(self) -> Segment:
        return self.req.segments[self.segment]

    @property
    def remaining_output(self) -> int:
        return self.cur.output_tokens - self.generated
