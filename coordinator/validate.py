"""Validation of client requests into a resolved, typed request spec.

Every rule names the field it checks, so a client sees at once what to fix. The rules
mirror what the engine would refuse (vLLM's `SamplingParams._verify_args`), so that a
client mistake is INVALID_ARGUMENT here and never an engine error mid-request. Every check
that needs no tokens runs first; a text prompt is bounded in bytes before it is tokenized
(`validate_async` tokenizes a long one in a thread, off the event loop).
"""

from __future__ import annotations

import asyncio
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
MAX_STOP_LEN = 256  # characters of one stop string (the detokenizer checks each per step)
MAX_STAGES = 8
MAX_TEMPERATURE = 2.0  # vLLM refuses more
MAX_SEED = 2**63 - 1  # seeds are >= 0: vLLM reads -1 as "no seed" (then prefill and decode
# draw different first tokens)
# A text prompt longer than this many bytes per token of the context cannot fit it (text
# averages 3-5 bytes a token; few tokens are over 16): refused before it is tokenized.
TEXT_BYTES_PER_TOKEN = 64
INLINE_TOKENIZE_CHARS = 2048  # shorter texts are tokenized inline: a thread hop costs more
ALLOWED_CONTROLS = frozenset("\t\n\r")  # in stop strings (a newline is a common stop)


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


@dataclass
class _Checked:
    """A request whose every check not needing tokens has passed."""

    request: pb.GenerateRequest
    facts: ModelFacts
    sampling: pb.SamplingParams
    tier: Tier
    stages: list[StageSpec]
    on_reject: str
    text: str | None  # the text to tokenize (None: token ids)

    def finish(self, text_ids: list[int] | None) -> RequestSpec:
        """The spec, with the checks that need the prompt's length."""
        ids = list(self.request.token_ids.ids) if text_ids is None else text_ids
        n, context = len(ids), self.facts.max_model_len
        if n >= context:
            raise InvalidRequest(
                f"prompt: {n} tokens do not fit the model's context of {context} tokens")
        s = self.sampling
        if n + s.max_tokens > context:
            raise InvalidRequest(
                f"sampling.max_tokens: prompt ({n} tokens) + max_tokens ({s.max_tokens}) "
                f"exceeds the model's context of {context} tokens")
        return RequestSpec(ids, s, self.tier, self.on_reject, list(s.stop), self.stages)


def validate(
    request: pb.GenerateRequest,
    facts: ModelFacts,
    tiers: TierTable,
    tokenize: Callable[[str], list[int]],
    default_on_reject: str = "best_effort",
) -> RequestSpec:
    """The resolved request, or InvalidRequest naming the field (tokenizes inline)."""
    checked = _check(request, facts, tiers, default_on_reject)
    return checked.finish(None if checked.text is None else tokenize(checked.text))


async def validate_async(
    request: pb.GenerateRequest,
    facts: ModelFacts,
    tiers: TierTable,
    tokenize: Callable[[str], list[int]],
    default_on_reject: str = "best_effort",
) -> RequestSpec:
    """`validate`, with a long text tokenized in a thread: other streams go on meanwhile."""
    checked = _check(request, facts, tiers, default_on_reject)
    text = checked.text
    if text is None:
        return checked.finish(None)
    if len(text) <= INLINE_TOKENIZE_CHARS:
        return checked.finish(tokenize(text))
    return checked.finish(await asyncio.to_thread(tokenize, text))


def _check(request: pb.GenerateRequest, facts: ModelFacts, tiers: TierTable,
           default_on_reject: str) -> _Checked:
    check_request_id(request.request_id)
    text = _prompt(request, facts)
    sampling = _sampling(request)
    tier, stages = _stages(request, tiers)
    if request.on_reject not in pb.OnReject.values():
        raise InvalidRequest(f"on_reject: unknown value {request.on_reject} (known: "
                             f"{', '.join(pb.OnReject.keys())})")
    on_reject = {pb.SERVE_BEST_EFFORT: "best_effort", pb.REJECT: "reject"}.get(
        request.on_reject, default_on_reject
    )
    return _Checked(request, facts, sampling, tier, stages, on_reject, text)


def check_request_id(rid: str, field: str = "request_id") -> None:
    """Visible ASCII only: an id travels in logs and HTTP headers (x-request-id)."""
    if len(rid) > MAX_REQUEST_ID_LEN:
        raise InvalidRequest(f"{field}: longer than {MAX_REQUEST_ID_LEN} characters")
    if rid and not all("!" <= c <= "~" for c in rid):
        raise InvalidRequest(f"{field}: only visible ASCII characters (no spaces, control "
                             "or non-ASCII characters)")


def _check_stop(value: str, field: str) -> None:
    if not value:
        raise InvalidRequest(f"{field}: must not be empty")
    if len(value) > MAX_STOP_LEN:
        raise InvalidRequest(f"{field}: longer than {MAX_STOP_LEN} characters")
    if any(not c.isprintable() and c not in ALLOWED_CONTROLS for c in value):
        raise InvalidRequest(f"{field}: control or non-printable characters (other than "
                             "tab, newline, carriage return) are not allowed")


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
        if st.until:
            _check_stop(st.until, f"stages[{i}].until")
        if i < last and st.max_tokens == 0 and not st.until:
            raise InvalidRequest(
                f"stages[{i}]: set max_tokens or until (only the last stage runs to the end)"
            )
        out.append(StageSpec(t.name, t.ttft_ms, t.tpot_ms, st.max_tokens, st.until))
    return resolved[0], out


def _prompt(request: pb.GenerateRequest, facts: ModelFacts) -> str | None:
    """The text to tokenize (None: token ids, checked here)."""
    kind = request.WhichOneof("prompt")
    if kind is None:
        raise InvalidRequest("prompt: set either text or token_ids")
    if kind == "text":
        limit = TEXT_BYTES_PER_TOKEN * facts.max_model_len
        # len() in characters first: it costs nothing, and a character is >= 1 byte
        if len(request.text) > limit or len(request.text.encode()) > limit:
            raise InvalidRequest(
                f"prompt.text: longer than {limit} bytes ({TEXT_BYTES_PER_TOKEN} per token "
                f"of the model's context of {facts.max_model_len}): it cannot fit")
        if not request.text.strip():
            raise InvalidRequest("prompt.text: must not be empty")
        return request.text
    ids = request.token_ids.ids
    if not ids:
        raise InvalidRequest("prompt.token_ids: must not be empty")
    if len(ids) >= facts.max_model_len:  # before any copy of a long list
        raise InvalidRequest(
            f"prompt: {len(ids)} tokens do not fit the model's context of "
            f"{facts.max_model_len} tokens")
    bad = next((t for t in ids if not 0 <= t < facts.vocab_size), None)
    if bad is not None:
        raise InvalidRequest(
            f"prompt.token_ids: id {bad} is outside the vocabulary [0, {facts.vocab_size})"
        )
    return None


def _sampling(request: pb.GenerateRequest) -> pb.SamplingParams:
    if not request.HasField("sampling"):
        raise InvalidRequest("sampling.max_tokens: must be set (> 0)")
    s = pb.SamplingParams()
    s.CopyFrom(request.sampling)
    if s.max_tokens <= 0:
        raise InvalidRequest(f"sampling.max_tokens: must be > 0, got {s.max_tokens}")
    if s.HasField("temperature") and not (
            math.isfinite(s.temperature) and 0 <= s.temperature <= MAX_TEMPERATURE):
        raise InvalidRequest(
            f"sampling.temperature: must be in [0, {MAX_TEMPERATURE:g}], got {s.temperature}")
    if s.HasField("top_p") and not (0 < s.top_p <= 1):
        raise InvalidRequest(f"sampling.top_p: must be in (0, 1], got {s.top_p}")
    if s.HasField("seed") and not 0 <= s.seed <= MAX_SEED:
        raise InvalidRequest(f"sampling.seed: must be in [0, 2^63 - 1], got {s.seed}")
    if len(s.stop) > MAX_STOP_STRINGS:
        raise InvalidRequest(f"sampling.stop: at most {MAX_STOP_STRINGS} strings")
    for i, stop in enumerate(s.stop):
        _check_stop(stop, f"sampling.stop[{i}]")
    temperature = s.temperature if s.HasField("temperature") else 1.0
    if temperature > 0 and not s.HasField("seed"):
        # The decode engine recomputes the first token: both engines must draw it alike.
        s.seed = random.getrandbits(31)
    return s
