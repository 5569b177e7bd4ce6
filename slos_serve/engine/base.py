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
    # Per-request SLO data for the engine's scheduler (SamplingParams.extra_args).
    slo: dict[str, Any] = field(default_factory=dict)


@dataclass
class EngineOutput:
    """A cumulative view of one request's output so far."""

    token_ids: list[int]
    text: str
    finished: bool = False
    finish_reason: str | None = None
    kv_transfer_params: dict[str, Any] | None = None


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
class TierSpecStats:
    """Speculative decoding of one TPOT tier since the engine started."""

    tier: str
    tpot_ms: float
    steps: int = 0  # decode or verify steps of the tier's requests
    drafted: int = 0  # draft tokens scheduled
    accepted: int = 0  # draft tokens accepted
    spec_tokens: int = 0  # the cap in force


@dataclass
class EngineLoad:
    running: int = 0
    waiting: int = 0
    kv_blocks_total: int = 0
    kv_blocks_used: int = 0
    steps: int = 0
    mean_step_ms: float = 0.0
    spec_acceptance: float = 0.0  # accepted / drafted, over every tier
    spec: list[TierSpecStats] = field(default_factory=list)
    scheduler: str = ""  # "slos" or "vllm"
    last_step_ms: float = 0.0

    @property
    def kv_usage(self) -> float:
        return self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else 0.0


class Engine(Protocol):
    info: EngineInfo

    async def start(self) -> None: ...

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]: ...

    async def abort(self, request_id: str) -> bool: ...

    def load(self) -> EngineLoad: ...

    def set_plan(self, plan: dict[str, Any]) -> None:
        """The coordinator's plan for this engine: {"plan_time_unix", "step_token_budget",
        "tiers": [{"tpot_ms", "spec_tokens", "interval_ms"}], "pace"}. ValueError naming
        the field if a value is unusable."""
        ...

    def set_stage(self, request_id: str, index: int) -> None:
        """A multi-stage request entered stage `index` (its stage's `until` string)."""
        ...

    async def shutdown(self) -> None: ...
