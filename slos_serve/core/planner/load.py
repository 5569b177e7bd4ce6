"""What one worker carries during a plan, with check/act pairs (after nano-vllm's BlockManager
`can_allocate` / `allocate`): admitted work is reserved (tier counts, KV blocks), best effort
is queued and reserves nothing."""

from __future__ import annotations

from dataclasses import dataclass, field

from slos_serve.core.planner.context import PlanContext, blocks, with_one_more
from slos_serve.core.planner.records import PlanRequest, PlanWorker


@dataclass(slots=True)
class QueuedPrompt:
    """A request in a prefill-capable worker's queue (or a candidate for it)."""

    req: PlanRequest
    deadline: float  # its TTFT deadline
    tokens: int  # prompt tokens still to prefill
    kv: int  # blocks reserved on this worker
    tier: int
    committed: bool  # in the queue: admitted (before or by this plan), never dropped by the DP
    local: bool = False  # decodes on this (mixed) worker too; else its KV is handed off


def queued_prompt(ctx: PlanContext, r: PlanRequest, w: PlanWorker, committed: bool,
                  local: bool | None = None) -> QueuedPrompt:
    """r as a prompt on w: decoding locally (a mixed worker's default) it keeps its KV to
    decode, else (a prefill worker, or a hand-off) only the prompt's."""
    local = w.role == "mixed" if local is None else local
    kv = ctx.kv_blocks(r, w) if local else blocks(r.prompt_tokens, w.block_size)
    return QueuedPrompt(r, r.ttft_deadline, r.prefill_left, kv, ctx.tier(r), committed, local)


@dataclass(slots=True)
class WorkerLoad:
    """One worker's reservations and queues within a plan."""

    worker: PlanWorker
    counts: list[int]  # admitted decoding load per tier (including requests still prefilling)
    kv_used: int = 0
    queue: list[QueuedPrompt] = field(default_factory=list)  # admitted, waiting for prefill
    best_effort_prompts: list[PlanRequest] = field(default_factory=list)
    decoders: list[PlanRequest] = field(default_factory=list)  # admitted, decoding
    best_effort_decoders: list[PlanRequest] = field(default_factory=list)
    new_ids: set[str] = field(default_factory=set)  # admitted by this plan
    unprotected: set[str] = field(default_factory=set)  # admitted but already late

    @property
    def role(self) -> str:
        return self.worker.role

    # ------------------------------------------------------------ decode side

    def can_admit_decode(self, ctx: PlanContext, r: PlanRequest,
                         handed_off: bool = False) -> bool:
        """r's KV fits and the worker still sustains every admitted TPOT with r added
        (`handed_off`: and r's TPOT absorbs the wait for its KV, ctx.absorbs_handoff)."""
        if self.kv_used + ctx.kv_blocks(r, self.worker) > self.worker.kv_capacity_blocks:
            return False
        counts = with_one_more(self.counts, ctx.tier(r))
        if ctx.config(self.worker, counts) is None:
            return False
        return not handed_off or ctx.absorbs_handoff(self.worker, counts, r)

    def admit_decode(self, ctx: PlanContext, r: PlanRequest, *, new: bool) -> None:
        """Reserve r's decoding here: its tier count and (unless already reserved with its
        prompt on this mixed worker) its KV blocks."""
        self.counts[ctx.tier_of[r.tpot]] += 1
        self.kv_used += ctx.kv_blocks(r, self.worker)
        if r.phase == "decode":
            self.decoders.append(r)
            if new:
                self.new_ids.add(r.id)

    # ------------------------------------------------------------ prefill side

    def admit_prompt(self, p: QueuedPrompt) -> None:
        """Queue a prompt this plan admits: its KV (and, decoding here, its tier)."""
        p.committed = True
        self.queue.append(p)
        self.new_ids.add(p.req.id)
        self.kv_used += p.kv
        if p.local:
            self.counts[p.tier] += 1

    def keep_prompt(self, p: QueuedPrompt, *, reserve_kv: bool) -> None:
        """Queue a prompt admitted before this plan (its decode side reserves its tier, and
        its KV too when that is this same worker)."""
        self.queue.append(p)
        if reserve_kv:
            self.kv_used += p.kv

    def queue_best_effort(self, r: PlanRequest) -> None:
        if r.phase == "prefill":
            self.best_effort_prompts.append(r)
        else:
            self.best_effort_decoders.append(r)


@dataclass(slots=True)
class Placement:
    """Where this plan placed a new request: its prompt on a prefill-capable worker, its
    decoding on a decode-capable one (the same load on a mixed worker)."""

    prefill: WorkerLoad | None
    decode: WorkerLoad | None
    prompt: QueuedPrompt | None

    def release(self, ctx: PlanContext, r: PlanRequest) -> None:
        """Undo the placement (prefill queue, KV and decode reservations)."""
        pl, dl, it = self.prefill, self.decode, self.prompt
        if pl is not None and it is not None:
            pl.queue.remove(it)
            pl.new_ids.discard(r.id)
            pl.kv_used -= it.kv
        if dl is not None:
            dl.counts[ctx.tier(r)] -= 1
            if dl is not pl:
                dl.kv_used -= ctx.kv_blocks(r, dl.worker)
            if r in dl.decoders:
                dl.decoders.remove(r)

    def worker_ids(self) -> tuple[str | None, str | None]:
        return (self.prefill.worker.id if self.prefill else None,
                self.decode.worker.id if self.decode else None)
