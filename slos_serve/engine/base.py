"""The narrow interface between a worker and its engine.

A worker needs a few things of an engine: generate (an async stream of
cumulative outputs), abort, a load snapshot, a few static facts, and a way to
hand the coordinator's plan (and multi-stage switches) to its scheduler. Keeping
the interface this small lets the simulated engine stand in for vLLM in fast
tests of the coordinator and in measurements of the coordinator's overhead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from slos_serve.core.learning import OnlineModel
from slos_serve.core.perf_model import PerfModel
from slos_serve.core.policy import RequestSlo
from slos_serve.core.spec_stats import TierStats
from slos_serve.core.worker_plan import WorkerPlan


@dataclass
class EngineRequest:
    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    # NixlConnector's kv_transfer_params: the prefill side's request flags, or
    # the hand-off the decode side pulls from.
    kv_transfer_params: dict[str, Any] | None = None
    # What the engine's scheduler acts on (default: no objective, best effort).
    slo: RequestSlo = field(default_factory=RequestSlo)


@dataclass
class EngineOutput:
    """A cumulative view of one request's output so far."""

    token_ids: list[int]
    text: str
    finished: bool = False
    finish_reason: str | None = None
    kv_transfer_params: dict[str, Any] | None = None


ENGINE_ERROR = "error"  # vLLM's finish reason for a request its engine could not finish


class EngineRequestFailed(RuntimeError):
    """The engine ended a request with finish reason "error" (vLLM: a KV load it could not
    recover, an internal failure). Raised, not passed on as a normal end: the worker
    answers INTERNAL, which the coordinator retries (a prefill) or resumes elsewhere (a
    decode) instead of handing the client a cut-short output that looks complete."""


def check_output(out: EngineOutput, request_id: str) -> EngineOutput:
    """`out`, or EngineRequestFailed if the engine failed the request."""
    if out.finish_reason == ENGINE_ERROR:
        raise EngineRequestFailed(f"the engine failed request {request_id} after "
                                  f"{len(out.token_ids)} tokens (finish reason 'error')")
    return out


@dataclass
class EngineInfo:
    kind: str  # "vllm" or "sim"
    model: str
    max_model_len: int
    block_size: int
    engine_id: str
    vocab_size: int = 0
    max_spec_tokens: int = 0  # speculative tokens a verify step may carry (0: off)
    scheduler: str = ""  # "slos" or "vllm"


@dataclass
class EngineLoad:
    running: int = 0
    waiting: int = 0
    kv_blocks_total: int = 0
    kv_blocks_used: int = 0
    steps: int = 0
    mean_step_ms: float = 0.0
    spec_acceptance: float = 0.0  # accepted / drafted, over every tier
    spec: list[TierStats] = field(default_factory=list)
    scheduler: str = ""  # "slos" or "vllm"
    last_step_ms: float = 0.0
    # the performance model learned from the engine's steps (core/learning.py; None: the
    # profile is in force, or the engine learns none), and the live relative error of the
    # model in force over its recent steps
    perf_model: PerfModel | None = None
    model_error: float = 0.0
    model_samples: int = 0  # steps the model has learned from

    @property
    def kv_usage(self) -> float:
        return self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else 0.0


def learned_fields(learner: OnlineModel | None) -> dict[str, Any]:
    """EngineLoad's learned-model fields, from an engine's learner (none: no fields)."""
    if learner is None:
        return {}
    return {"perf_model": learner.model if learner.learned else None,
            "model_error": learner.error, "model_samples": learner.samples}


class Engine(Protocol):
    info: EngineInfo

    async def start(self) -> None: ...

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]: ...

    async def abort(self, request_id: str) -> bool: ...

    def load(self) -> EngineLoad: ...

    def set_plan(self, plan: WorkerPlan) -> None:
        """The coordinator's plan for this engine (its scheduler's next steps follow it)."""
        ...

    def set_stage(self, request_id: str, index: int) -> None:
        """A multi-stage request entered stage `index` (its stage's `until` string).
        ValueError if `index` is not a stage index (check_stage_index)."""
        ...

    def dead(self) -> str:
        """Why the engine can serve no more ("" while it can): its engine process died."""
        ...

    async def release_handoffs(self, engine_request_ids: list[str]) -> int:
        """Frees now the KV held for hand-offs no decode will read (by the engine's ids
        of the requests, KvHandoff.remote_request_id); returns how many were held."""
        ...

    async def shutdown(self) -> None: ...


def check_stage_index(index: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"stage index: must be an integer >= 0, not {index!r}")
    return index
