"""The request side of the SDK: a Generate call's options, declared once, and their wire form.

`GenerateOptions` is the one list of what a call may ask for besides its prompt. The four
entry points (`Client` / `AsyncClient` `stream` / `generate`) and `build_generate_request`
take these as keywords and forward them untouched (`takes_generate_options` shows the list
in their signatures), so a new option is added here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from proto import slos_serve_pb2 as pb

Prompt = str | Sequence[int]
F = TypeVar("F", bound=Callable[..., Any])


class OnReject(str, Enum):
    """What the coordinator should do with a request it cannot admit on time."""

    DEFAULT = "default"  # the coordinator's configured default
    BEST_EFFORT = "best_effort"  # serve it anyway, without the SLO promise
    REJECT = "reject"  # fail fast with RESOURCE_EXHAUSTED (`Rejected`)

    def to_proto(self) -> int:
        return {
            OnReject.DEFAULT: pb.ON_REJECT_DEFAULT,
            OnReject.BEST_EFFORT: pb.SERVE_BEST_EFFORT,
            OnReject.REJECT: pb.REJECT,
        }[self]


@dataclass(frozen=True)
class StageSpec:
    """One stage of a multi-stage request (e.g. thinking, then answer), with its own SLO.

    `max_tokens` 0 means "until `until`"; the SLO fields mean what `generate`'s do: a tier
    name, or explicit objectives, or both; the coordinator resolves them against its tier
    table (into `slos_serve.core.stages.StageSpec`, whose values are all set).
    """

    max_tokens: int = 0
    until: str = ""
    tier: str | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None


def _number(name: str, value: Any, kind: type) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: must be {kind.__name__}, got {value!r}") from exc


def _slo(tier: str | None, ttft_ms: float | None, tpot_ms: float | None) -> pb.Slo:
    slo = pb.Slo(tier=tier or "")
    if ttft_ms is not None:
        slo.ttft_ms = _number("ttft_ms", ttft_ms, float)
    if tpot_ms is not None:
        slo.tpot_ms = _number("tpot_ms", tpot_ms, float)
    return slo


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerateOptions:
    """What a Generate call asks for besides its prompt.

    The SLO is a `tier` name, or explicit `ttft_ms`/`tpot_ms`, or both if they agree (the
    coordinator checks); `stages` give later parts of the output SLOs of their own.
    `on_reject` says what to do if the planner cannot admit the request on time: serve it
    best-effort or fail with `Rejected`.

    Only types are checked here (a TypeError/ValueError naming the field is a programming
    error on the caller's side). Values (max_tokens <= 0, unknown tier...) are left for the
    coordinator to judge, because it alone knows the model's context and the tier table;
    it answers INVALID_ARGUMENT, which surfaces as `InvalidRequest`.
    """

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: Sequence[str] | str | None = None
    ignore_eos: bool = False
    tier: str | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    stages: Sequence[StageSpec] | None = None
    on_reject: OnReject | str | None = None
    request_id: str | None = None

    def __post_init__(self) -> None:
        for i, st in enumerate(self.stages or ()):
            if not isinstance(st, StageSpec):
                raise TypeError(f"stages[{i}]: must be a StageSpec, got {type(st).__name__}")
        if self.on_reject is not None:
            try:
                OnReject(self.on_reject)
            except ValueError as exc:
                raise ValueError(f"on_reject: {exc}") from exc

    def sampling(self) -> pb.SamplingParams:
        sampling = pb.SamplingParams(max_tokens=_number("max_tokens", self.max_tokens, int),
                                     ignore_eos=bool(self.ignore_eos))
        if self.temperature is not None:
            sampling.temperature = _number("temperature", self.temperature, float)
        if self.top_p is not None:
            sampling.top_p = _number("top_p", self.top_p, float)
        if self.seed is not None:
            sampling.seed = _number("seed", self.seed, int)
        if self.stop:
            sampling.stop.extend([self.stop] if isinstance(self.stop, str) else list(self.stop))
        return sampling

    def to_request(self, prompt: Prompt) -> pb.GenerateRequest:
        """The wire request for `prompt` (text, or a sequence of token ids)."""
        req = pb.GenerateRequest(request_id=self.request_id or "")
        if isinstance(prompt, str):
            req.text = prompt
        elif isinstance(prompt, (bytes, bytearray)):
            raise TypeError("prompt must be str or a sequence of token ids, not bytes")
        else:
            try:
                ids = [int(t) for t in prompt]
            except (TypeError, ValueError) as exc:
                raise TypeError(f"prompt must be str or a sequence of int token ids: {exc}"
                                ) from exc
            req.token_ids.CopyFrom(pb.TokenIds(ids=ids))
        req.sampling.CopyFrom(self.sampling())
        req.slo.CopyFrom(_slo(self.tier, self.ttft_ms, self.tpot_ms))
        for st in self.stages or ():
            req.stages.append(pb.Stage(slo=_slo(st.tier, st.ttft_ms, st.tpot_ms),
                                       max_tokens=int(st.max_tokens), until=st.until))
        if self.on_reject is not None:
            req.on_reject = OnReject(self.on_reject).to_proto()
        return req


def takes_generate_options(fn: F) -> F:
    """Show `GenerateOptions`' fields as keyword-only parameters in `fn`'s signature.

    `fn` takes them as `**options` and passes them on; with this, `help()`, `inspect` and
    interactive completion list them as if written out, without a second copy of the list.
    """
    sig = inspect.signature(fn)
    own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    positional = [p for p in own if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    keyword = [p for p in own if p.kind is inspect.Parameter.KEYWORD_ONLY]
    options = [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, annotation=f.type,
            default=inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default,
        )
        for f in dataclasses.fields(GenerateOptions)
    ]
    fn.__signature__ = sig.replace(parameters=[*positional, *options, *keyword])  # type: ignore[attr-defined]
    return fn


@takes_generate_options
def build_generate_request(prompt: Prompt, **options: Any) -> pb.GenerateRequest:
    """The wire request for `prompt` with `GenerateOptions(**options)`."""
    return GenerateOptions(**options).to_request(prompt)
