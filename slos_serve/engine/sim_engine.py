"""A SIMULATED engine: no model runs. Labelled as such wherever it is used.

It exists for fast tests of the coordinator and for measuring the
coordinator's own overhead. It batches like a continuous-batching engine
(one step = every running request's next token plus prefill chunks under a
token budget) and sleeps for a step time given by a simple linear model.
A token is a deterministic function of the whole context before it (prompt
plus the tokens generated so far) and the seed, as a real model's greedy
token is: a prefill worker and a decode worker agree on every token without
sharing state, as two real engines agree through the KV cache, and a request
recomputed from prompt + its tokens so far (a decode resumed on another
worker) continues exactly as it would have undisturbed.

It takes the coordinator's plans and stage switches and reports them back
(`plan`, `stages`), but does not act on them: it batches first come, first
served, never speculates, and its load report's per-tier speculation list is
empty.

It learns its performance model as the vLLM engine's scheduler does (core/learning.py):
every step's composition and measured seconds refit the model its load report carries.
`slowdown` (a SIMULATION KNOB, settable at any time) stretches every step, as a busy
neighbour on a real engine's core would, so fast tests can watch the model follow.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from slos_serve.core.learning import OnlineModel
from slos_serve.core.perf_model import BatchShape, PerfModel, Piece
from slos_serve.core.policy import MODES
from slos_serve.core.worker_plan import WorkerPlan
from slos_serve.engine.base import (
    EngineInfo,
    EngineLoad,
    EngineOutput,
    EngineRequest,
    check_stage_index,
    learned_fields,
)


@dataclass
class SimTiming:
    """Step time = base + per_prefill_token * prefill tokens + per_decode_seq * decodes."""

    base_ms: float = 4.0
    per_prefill_token_ms: float = 0.02
    per_decode_seq_ms: float = 0.15
    max_batch_tokens: int = 2048

    def step_s(self, prefill_tokens: int, decode_seqs: int) -> float:
        ms = (
            self.base_ms
            + self.per_prefill_token_ms * prefill_tokens
            + self.per_decode_seq_ms * decode_seqs
        )
        return ms / 1000.0

    def perf_model(self) -> PerfModel:
        """This timing as a performance model (a decoding request is one decode token)."""
        weights = (self.per_prefill_token_ms / 1000.0, self.per_decode_seq_ms / 1000.0,
                   0.0, 0.0, 0.0, 0.0)
        return PerfModel([Piece(weights, self.base_ms / 1000.0)], name="sim-engine",
                         source="SIMULATED engine: SimTiming")


@dataclass
class SimRequest:
    """A request in the simulated engine: its prefill progress and its tokens so far."""

    request: EngineRequest
    queue: asyncio.Queue
    prefilled: int = 0
    tokens: list[int] = field(default_factory=list)
    aborted: bool = False
    context: hashlib.blake2b | None = None  # the simulated model's state (sim_context)

    @property
    def remaining_prefill(self) -> int:
        return len(self.request.prompt_token_ids) - self.prefilled


def sim_context(prompt: list[int], seed: int | None) -> hashlib.blake2b:
    """The simulated model's state after reading `prompt`: a running hash of the context
    (fed each generated token by `sim_step`)."""
    context = hashlib.blake2b(f"sim:{seed}:".encode(), digest_size=8)
    context.update(b"".join(t.to_bytes(4, "little") for t in prompt))
    return context


def sim_step(context: hashlib.blake2b, vocab: int) -> int:
    """The next token of `context` (a function of the whole context and the seed); the
    context is extended by it."""
    token = int.from_bytes(context.copy().digest(), "little") % vocab
    context.update(token.to_bytes(4, "little"))
    return token


def sim_tokens(prompt: list[int], n: int, seed: int | None, vocab: int) -> list[int]:
    """The first `n` tokens the simulated model generates after `prompt`."""
    context = sim_context(prompt, seed)
    return [sim_step(context, vocab) for _ in range(n)]


class SimEngine:
    def __init__(
        self,
        model: str = "sim",
        *,
        max_model_len: int = 2048,
        vocab_size: int = 2048,
        block_size: int = 16,
        kv_blocks: int = 4096,
        timing: SimTiming | None = None,
        detokenize: Callable[[list[int]], str] | None = None,
        scheduler: str = "slos",
        profile: PerfModel | None = None,
    ) -> None:
        """`profile`: the model the engine starts learning from (default: its own timing's,
        exact until `slowdown` changes)."""
        if scheduler not in MODES:
            raise ValueError(f"scheduler must be one of {MODES}, not {scheduler!r}")
        self.scheduler = scheduler  # reported only: the simulation does not act on plans
        self.plan: WorkerPlan | None = None  # the last plan set
        self.stages: dict[str, int] = {}  # stage switches of live requests
        self.info = EngineInfo(
            kind="sim",
            model=model,
            max_model_len=max_model_len,
            block_size=block_size,
            engine_id=f"sim-{uuid.uuid4().hex[:8]}",
            vocab_size=vocab_size,
            scheduler=scheduler,
        )
        self._kv_blocks = kv_blocks
        self._timing = timing or SimTiming()
        self._detokenize = detokenize or (lambda ids: "".join(f"<{t}>" for t in ids))
        self._waiting: list[SimRequest] = []
        self._running: list[SimRequest] = []
        self._by_id: dict[str, SimRequest] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._steps = 0
        self._step_time_total = 0.0
        self._last_step_s = 0.0
        self.slowdown = 1.0  # SIMULATION KNOB: every step takes this many times longer
        self.learner = OnlineModel(profile or self._timing.perf_model())

    async def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    def _blocks(self, r: SimRequest) -> int:
        return math.ceil((r.prefilled + len(r.tokens)) / self.info.block_size)

    def load(self) -> EngineLoad:
        used = sum(self._blocks(r) for r in self._running)
        return EngineLoad(
            running=len(self._running),
            waiting=len(self._waiting),
            kv_blocks_total=self._kv_blocks,
            kv_blocks_used=used,
            steps=self._steps,
            mean_step_ms=1000 * self._step_time_total / self._steps if self._steps else 0.0,
            spec=[],
            scheduler=self.scheduler,
            last_step_ms=1000 * self._last_step_s,
            **learned_fields(self.learner),
        )

    def set_plan(self, plan: WorkerPlan) -> None:
        self.plan = plan

    def set_stage(self, request_id: str, index: int) -> None:
        self.stages[request_id] = check_stage_index(index)

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        if request.request_id in self._by_id:
            raise ValueError(f"request {request.request_id!r} is already running")
        sim = SimRequest(request, asyncio.Queue())
        params = request.kv_transfer_params or {}
        if params.get("remote_num_tokens"):
            # Decode side: the hand-off carries the prompt's KV, so only the last
            # position is recomputed (as vLLM does after a NIXL pull).
            sim.prefilled = len(request.prompt_token_ids) - 1
        self._by_id[request.request_id] = sim
        self._waiting.append(sim)
        self._wake.set()
        try:
            while True:
                out: EngineOutput = await sim.queue.get()
                yield out
                if out.finished:
                    return
        finally:
            self._remove(sim)

    def _remove(self, sim: SimRequest) -> None:
        sim.aborted = True
        self._by_id.pop(sim.request.request_id, None)
        self.stages.pop(sim.request.request_id, None)
        for queue in (self._waiting, self._running):
            if sim in queue:
                queue.remove(sim)

    async def abort(self, request_id: str) -> bool:
        sim = self._by_id.get(request_id)
        if sim is None:
            return False
        self._remove(sim)
        sim.queue.put_nowait(EngineOutput(sim.tokens, "", True, "abort"))
        return True

    async def _run(self) -> None:
        while True:
            if not self._waiting and not self._running:
                self._wake.clear()
                await self._wake.wait()
            shape = self._prefill_chunks(self._timing.max_batch_tokens - len(self._running))
            decodes = list(self._running)  # (prompts finished in this step emit a token too)
            step = self._timing.step_s(shape.prefill_tokens, len(decodes)) * self.slowdown
            started = time.perf_counter()
            await asyncio.sleep(step)
            self._steps += 1
            self._last_step_s = time.perf_counter() - started
            self._step_time_total += self._last_step_s
            self.learner.observe(shape, self._last_step_s)
            for sim in decodes:
                if not sim.aborted:
                    self._emit_token(sim)

    def _prefill_chunks(self, budget: int) -> BatchShape:
        """Takes the step's prompt chunks, first come first served within `budget` tokens
        (finished prompts join the running requests); the step's composition."""
        prefill_tokens = prompts = 0
        context = sum(d.prefilled + len(d.tokens) for d in self._running)
        for sim in list(self._waiting):
            if budget <= 0:
                break
            chunk = min(budget, sim.remaining_prefill)
            context += sim.prefilled
            sim.prefilled += chunk
            prefill_tokens += chunk
            prompts += 1
            budget -= chunk
            if sim.remaining_prefill == 0:
                self._waiting.remove(sim)
                self._running.append(sim)
        decodes = len(self._running)
        return BatchShape(prefill_tokens, decodes, 0, prompts + decodes, context, 0)

    def _emit_token(self, sim: SimRequest) -> None:
        req = sim.request
        if sim.context is None:
            sim.context = sim_context(req.prompt_token_ids, req.seed)
        token = sim_step(sim.context, self.info.vocab_size)
        sim.tokens.append(token)
        finished = len(sim.tokens) >= req.max_tokens
        params = None
        if finished and (req.kv_transfer_params or {}).get("do_remote_decode"):
            params = {
                "do_remote_prefill": True,
                "do_remote_decode": False,
                "remote_engine_id": self.info.engine_id,
                "remote_request_id": req.request_id,
                "remote_host": "sim",
                "remote_port": 1,  # never contacted: the simulated decode pulls nothing
                "remote_block_ids": [list(range(self._blocks(sim)))],
                "remote_num_tokens": len(req.prompt_token_ids),
                "tp_size": 1,
                "transfer_mode": "sim",
            }
        out = EngineOutput(
            token_ids=list(sim.tokens),
            text=self._detokenize(sim.tokens),
            finished=finished,
            finish_reason="length" if finished else None,
            kv_transfer_params=params,
        )
        if finished:
            self._remove(sim)
        sim.queue.put_nowait(out)

    def dead(self) -> str:
        return ""  # runs in the worker's own process: it dies with it

    async def release_handoffs(self, engine_request_ids: list[str]) -> int:
        return 0  # a simulated hand-off holds no blocks after its prefill

    async def shutdown(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            self._loop_task = None
