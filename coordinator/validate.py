"""Validation of client requests into a resolved, typed request spec.

Every rule names the field it checks, so a client sees at once what to fix.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from proto import slos_serve_pb2 as pb
from slos_serve.core.policy import RequestSlo
from slos_serve.core.slo import SloError, Tier, TierTable
from slos_serve.core.stages import StageSpec

MAX_REQUEST_ID_LEN = 256
MAX_STOP_STRINGS = 16
MAX_STAGES = 8


class InvalidRequest(ValueError):
    """A request the coordinator will not serve; `code` is the gRPC status name."""

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class ModelFacts:
    max_model_len: int
    vocab_size: int


@dataclass
class RequestSpec:
    prompt_token_ids: list[int]
    sampling: pb.SamplingParams
    tier: Tier
    on_reject: str  # "best_effort" or "reject"
    stop: list[str] = field(default_factory=list)
    stages: list[StageSpec] = field(default_factory=list)  # always >= 1 (stage 0: `tier`)

    def ttft_deadline_unix(self, received_unix: float) -> float:
        return received_unix + self.tier.ttft_ms / 1000.0

    def worker_slo(self, ttft_deadline_unix: float, best_effort: bool) -> RequestSlo:
        """What the workers' engines act on (a multi-stage request: with its stages)."""
        return RequestSlo(
            ttft_deadline_unix=ttft_deadline_unix,
            tpot_ms=self.tier.tpot_ms,
            best_effort=best_effort,
            tier=self.tier.name,
            stages=tuple(self.stages) if len(self.stages) > 1 else (),
        )


def validate(
    request: pb.GenerateRequest,
    facts: ModelFacts,
    tiers: TierTable,
    tokenize: Callable[[str], list[int]],
    default_on_reject: str = "best_effort",
) -> RequestSpec:
    if len(request.request_id) > MAX_REQUEST_ID_LEN:
        raise InvalidRequest(f"request_id: longer than {MAX_REQUEST_ID_LEN} characters")
    prompt = _prompt_tokens(request, facts, tokenize)
    sampling = _sampling(request, prompt, facts)
    tier, stages = _stages(request, tiers)
    on_reject = {pb.SERVE_BEST_EFFORT: "best_effort", pb.REJECT: "reject"}.get(
        request.on_reject, default_on_reject
    )
    return RequestSpec(prompt, sampling, tier, on_reject, list(sampling.stop), stages)


def _resolve(slo: pb.Slo, tiers: TierTable, prefix: str = "") -> Tier:
    try:
        return tiers.resolve(
            slo.tier,
            slo.ttft_ms if slo.HasField("ttft_ms") else None,
            slo.tpot_ms if slo.HasField("tpot_ms") else None,
        )
    except SloError as exc:
        raise InvalidRequest(f"{prefix}{exc}") from exc


def _stages(request: pb.GenerateRequest, tiers: TierTable) -> tuple[Tier, list[StageSpec]]:
    """Stage 0's tier, and one stage from `slo` or the request's `stages` (each with its
    own SLO)."""
    if not request.stages:
        t = _resolve(request.slo, tiers)
        return t, [StageSpec(t.name, t.ttft_ms, t.tpot_ms)]
    slo = request.slo
    if slo.tier or slo.HasField("ttft_ms") or slo.HasField("tpot_ms"):
        raise InvalidRequest("slo: with stages, give each stage its own slo instead")
    if len(request.stages) > MAX_STAGES:
        raise InvalidRequest(f"stages: at most {MAX_STAGES} stages")
    out = []
    resolved = []
    last = len(request.stages) - 1
    for i, st in enumerate(request.stages):
        t = _resolve(st.slo, tiers, f"stages[{i}].")
        resolved.append(t)
        if st.max_tokens < 0:
            raise InvalidRequest(f"stages[{i}].max_tokens: must be >= 0, got {st.max_tokens}")
        if i < last and st.max_tokens == 0 and not st.until:
            raise InvalidRequest(
                f"stages[{i}]: set max_tokens or until (only the last stage runs to the end)"
            )
        out.append(StageSpec(t.name, t.ttft_ms, t.tpot_ms, st.max_tokens, st.until))
    return resolved[0], out


def _prompt_tokens(
    request: pb.GenerateRequest, facts: ModelFacts, tokenize: Callable[[str], list[int]]
) -> list[int]:
    kind = request.WhichOneof("prompt")
    if kind is None:
        raise InvalidRequest("prompt: set either text or token_ids")
    if kind == "text":
        if not request.text.strip():
            raise InvalidRequest("prompt.text: must not be empty")
        ids = tokenize(request.text)
    else:
        ids = list(request.token_ids.ids)
        if not ids:
            raise InvalidRequest("prompt.token_ids: must not be empty")
        bad = next((t for t in ids if not 0 <= t < facts.vocab_size), None)
        if bad is not None:
            raise InvalidRequest(
                f"prompt.token_ids: id {bad} is outside the vocabulary [0, {facts.vocab_size})"
            )
    if len(ids) >= facts.max_model_len:
        raise InvalidRequest(
            f"prompt: {len(ids)} tokens do not fit the model's context of "
            f"{facts.max_model_len} tokens"
        )
    return ids


def _sampling(
    request: pb.GenerateRequest, prompt: list[int], facts: ModelFacts
) -> pb.SamplingParams:
    if not request.HasField("sampling"):
        raise InvalidRequest("sampling.max_tokens: must be set (> 0)")
    s = pb.SamplingParams()
    s.CopyFrom(request.sampling)
    if s.max_tokens <= 0:
        raise InvalidRequest(f"sampling.max_tokens: must be > 0, got {s.max_tokens}")
    if len(prompt) + s.max_tokens > facts.max_model_len:
        raise InvalidRequest(
            f"sampling.max_tokens: prompt ({len(prompt)} tokens) + max_tokens "
            f"({s.max_tokens}) exceeds the model's context of {facts.max_model_len} tokens"
        )
    if s.HasField("temperature") and not (math.isfinite(s.temperature) and s.temperature >= 0):
        raise InvalidRequest(f"sampling.temperature: must be >= 0, got {s.temperature}")
    if s.HasField("top_p") and not (0 < s.top_p <= 1):
        raise InvalidRequest(f"sampling.top_p: must be in (0, 1], got {s.top_p}")
    if len(s.stop) > MAX_STOP_STRINGS or any(not x for x in s.stop):
        raise InvalidRequest(
            f"sampling.stop: at most {MAX_STOP_STRINGS} non-empty strings"
        )
    temperature = s.temperature if s.HasField("temperature") else 1.0
    if temperature > 0 and not s.HasField("seed"):
        # The decode engine recomputes the first token: both engines must draw it alike.
        s.seed = random.getrandbits(31)
    return s
