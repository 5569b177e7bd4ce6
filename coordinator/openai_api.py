"""OpenAI request bodies and headers -> the coordinator's GenerateRequest; its responses ->
OpenAI JSON. The HTTP edge's conversions, with no server in them (testable alone).

SLOs ride along the two ways users already write them: body fields (`slo`, `stages`,
`on_reject`, vLLM's `priority`) and llm-d's headers (`x-slo-tier`, `x-slo-ttft-ms`,
`x-slo-tpot-ms`). Body fields win over headers, headers over `priority`. Fields OpenAI
defines that this server cannot honour (n > 1, logprobs, echo, ...) are refused by name
rather than silently ignored; fields it does not know are ignored, as vLLM's server does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from coordinator.validate import TEXT_BYTES_PER_TOKEN
from proto import slos_serve_pb2 as pb
from slos_serve.core.slo import TierTable
from slos_serve.wire import DECISION_NAMES

HEADER_TIER, HEADER_TTFT, HEADER_TPOT = "x-slo-tier", "x-slo-ttft-ms", "x-slo-tpot-ms"
HEADER_ON_REJECT = "x-slo-on-reject"
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's (and vLLM's) default for /v1/completions
ON_REJECT = {"best_effort": pb.SERVE_BEST_EFFORT, "reject": pb.REJECT}
# Refused fields of the shared request path, as an OpenAI client names them.
FIELD_NAMES = {"sampling.max_tokens": "max_tokens", "sampling.temperature": "temperature",
               "sampling.top_p": "top_p", "sampling.stop": "stop", "sampling.seed": "seed",
               "prompt.text": "prompt", "prompt.token_ids": "prompt"}
# OpenAI fields this server does not implement, with the value that means "not used".
UNSUPPORTED = {"n": 1, "best_of": 1, "echo": False, "logprobs": None, "top_logprobs": None,
               "suffix": None, "tools": None, "functions": None, "response_format": None,
               "presence_penalty": 0, "frequency_penalty": 0, "repetition_penalty": 1,
               "logit_bias": None}


class BadRequest(ValueError):
    """A body or header the server will not take; `field` as the client wrote it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP call, converted: the request for the shared path, and how to answer."""

    request: pb.GenerateRequest
    chat: bool
    stream: bool
    include_usage: bool
    return_token_ids: bool
    model: str


def http_field(field: str, chat: bool) -> str:
    """The name a client of this endpoint knows a refused field by."""
    if field.startswith("sampling.stop["):
        field = "sampling.stop"
    name = FIELD_NAMES.get(field, field)
    return "messages" if chat and name in ("prompt", "prompt.text") else name


async def parse_call(
    body: Any,
    headers: Mapping[str, str],
    *,
    chat: bool,
    model: str,
    tiers: TierTable,
    render_chat: Callable[[list[dict[str, Any]]], Awaitable[list[int]]],
    max_model_len: int,
) -> Call:
    """A `/v1/completions` (chat False) or `/v1/chat/completions` body, or BadRequest.
    `render_chat` (the chat template: a tokenization) is awaited: the edge runs it in a
    thread, after the messages are bounded in bytes."""
    if not isinstance(body, dict):
        raise BadRequest("body", "must be a JSON object")
    for name, unused in UNSUPPORTED.items():
        if body.get(name) not in (unused, None, False):
            raise BadRequest(name, f"is not supported by this server (leave it unset or "
                             f"{unused!r})")
    req = pb.GenerateRequest()
    rid = _get(body, "request_id", str)
    if rid:
        req.request_id = rid
    if chat:
        messages = _get(body, "messages", list, required=True)
        _check_messages(messages, max_model_len)
        ids = await render_chat(messages)
        req.token_ids.ids.extend(ids)
        max_tokens = _get(body, "max_completion_tokens", int)
        if max_tokens is None:
            max_tokens = _get(body, "max_tokens", int)
        if max_tokens is None:
            max_tokens = max(1, max_model_len - len(ids))
    else:
        _set_prompt(req, body.get("prompt"))
        max_tokens = _get(body, "max_tokens", int)
        if max_tokens is None:
            max_tokens = DEFAULT_COMPLETION_MAX_TOKENS
    s = req.sampling
    s.max_tokens = max_tokens
    for name in ("temperature", "top_p"):
        value = _get(body, name, float)
        if value is not None:
            setattr(s, name, value)
    seed = _get(body, "seed", int, bits=64)
    if seed is not None:
        s.seed = seed
    stop = body.get("stop")
    if isinstance(stop, str):
        s.stop.append(stop)
    elif isinstance(stop, list) and all(isinstance(x, str) for x in stop):
        s.stop.extend(stop)
    elif stop is not None:
        raise BadRequest("stop", "must be a string or a list of strings")
    s.ignore_eos = bool(_get(body, "ignore_eos", bool))
    _set_slo(req, body, headers, tiers)
    stream = bool(_get(body, "stream", bool))
    options = _get(body, "stream_options", dict) or {}
    requested = body.get("model")
    if requested is not None and not isinstance(requested, str):
        raise BadRequest("model", "must be a string")
    return Call(req, chat, stream, bool(options.get("include_usage")),
                bool(_get(body, "return_token_ids", bool)), requested or model)


def _get(body: dict, name: str, kind: type, required: bool = False, bits: int = 32) -> Any:
    """body[name] of `kind`, or BadRequest naming it (an int must fit `bits` signed bits:
    the proto field's)."""
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(name, "is required")
        return None
    # JSON has one number type: an integral float is an int; bool is not a number here.
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
        raise BadRequest(name, f"must be {_KIND_NAMES[kind]}, got {type(value).__name__}")
    if kind is float and not math.isfinite(value):
        raise BadRequest(name, f"must be a finite number, got {value}")
    if kind is int and not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
        raise BadRequest(name, f"must fit in {bits} bits, got {value}")
    return value


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "a list", dict: "an object"}


def _set_prompt(req: pb.GenerateRequest, prompt: Any) -> None:
    """One prompt: a string, a list of token ids, or a batch of exactly one of either."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        req.text = prompt
    elif isinstance(prompt, list) and prompt and all(
            isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        if not all(-2**31 <= t < 2**31 for t in prompt):
            raise BadRequest("prompt", "token ids must fit in 32 bits")
        req.token_ids.ids.extend(prompt)
    elif prompt is None:
        raise BadRequest("prompt", "is required")
    elif isinstance(prompt, list) and len(prompt) > 1 and all(
            isinstance(p, str | list) for p in prompt):
        raise BadRequest("prompt", "batches are not supported: send one prompt per request")
    else:
        raise BadRequest("prompt", "must be a string or a list of token ids")


def _check_messages(messages: list, max_model_len: int) -> None:
    """Text parts only, and at most `TEXT_BYTES_PER_TOKEN` bytes a token of the context
    (the rule of text prompts, coordinator/validate.py) before the template runs."""
    if not messages:
        raise BadRequest("messages", "must not be empty")
    limit, total = TEXT_BYTES_PER_TOKEN * max_model_len, 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}]", "must be an object with a string role")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI's content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text"
                       and isinstance(p.get("text"), str) for p in content):
                raise BadRequest(f"messages[{i}].content", "only text parts are supported")
            m["content"] = "".join(p["text"] for p in content)
        elif not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content", "must be a string or text parts")
        total += len(m["content"].encode()) + len(m["role"].encode())
        if total > limit:
            raise BadRequest("messages", f"longer than {limit} bytes ({TEXT_BYTES_PER_TOKEN}"
                             f" per token of the model's context of {max_model_len})")


def _set_slo(req: pb.GenerateRequest, body: dict, headers: Mapping[str, str],
             tiers: TierTable) -> None:
    slo = _get(body, "slo", dict)
    stages = _get(body, "stages", list)
    if slo is not None:
        _fill_slo(req.slo, slo, "slo")
    elif not stages:
        _slo_from_headers(req.slo, headers, body, tiers)
    for i, st in enumerate(stages or ()):
        if not isinstance(st, dict):
            raise BadRequest(f"stages[{i}]", "must be an object")
        stage = req.stages.add()
        _fill_slo(stage.slo, st.get("slo") or {}, f"stages[{i}].slo")
        n = _get(st, "max_tokens", int)
        stage.max_tokens = n or 0
        stage.until = _get(st, "until", str) or ""
    on_reject = _get(body, "on_reject", str)
    if on_reject is None:
        on_reject = headers.get(HEADER_ON_REJECT)
    if on_reject is not None:
        if on_reject not in ON_REJECT:
            raise BadRequest("on_reject", f"must be one of {sorted(ON_REJECT)}, got "
                             f"{on_reject!r}")
        req.on_reject = ON_REJECT[on_reject]


def _fill_slo(out: pb.Slo, slo: Any, where: str) -> None:
    if not isinstance(slo, dict):
        raise BadRequest(where, "must be an object")
    tier = slo.get("tier")
    if tier is not None:
        if not isinstance(tier, str):
            raise BadRequest(f"{where}.tier", "must be a string")
        out.tier = tier
    for name in ("ttft_ms", "tpot_ms"):
        try:
            value = _get(slo, name, float)
        except BadRequest as exc:
            raise BadRequest(f"{where}.{name}", str(exc).split(": ", 1)[1]) from None
        if value is not None:
            setattr(out, name, value)


def _slo_from_headers(out: pb.Slo, headers: Mapping[str, str], body: dict,
                      tiers: TierTable) -> None:
    tier = (headers.get(HEADER_TIER) or "").strip()
    if tier:
        if tier not in tiers.tiers:
            raise BadRequest(HEADER_TIER, f"unknown tier {tier!r} (known: "
                             f"{', '.join(sorted(tiers.tiers))})")
        out.tier = tier
    for header, name in ((HEADER_TTFT, "ttft_ms"), (HEADER_TPOT, "tpot_ms")):
        raw = headers.get(header)
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise BadRequest(header, f"must be a positive number of milliseconds, got {raw!r}")
        setattr(out, name, value)
    if tier or HEADER_TTFT in headers or HEADER_TPOT in headers:
        return
    priority = _get(body, "priority", int)
    if priority is not None:
        out.tier = tier_of_priority(priority, tiers)


def tier_of_priority(priority: int, tiers: TierTable) -> str:
    """vLLM's `priority` (smaller: sooner) as a tier: the tier of that rank by TPOT, the
    tightest first (0); past the last rank, the loosest."""
    if priority < 0:
        raise BadRequest("priority", f"must be >= 0, got {priority}")
    ranked = sorted(tiers.tiers.values(), key=lambda t: (t.tpot_ms, t.ttft_ms))
    return ranked[min(priority, len(ranked) - 1)].name


# ------------------------------------------------------------------ responses --


def decision_json(started: pb.Started) -> dict[str, Any]:
    return {"decision": DECISION_NAMES.get(started.decision, "unknown"),
            "tier": started.tier, "ttft_slo_ms": started.ttft_slo_ms,
            "tpot_slo_ms": started.tpot_slo_ms, "reason": started.reason}


def final_json(final: pb.Final) -> dict[str, Any]:
    out = {"decision": DECISION_NAMES.get(final.decision, "unknown"),
           "ttft_ms": round(final.ttft_ms, 3), "tpot_ms": round(final.tpot_ms, 3),
           "e2e_ms": round(final.e2e_ms, 3), "ttft_met": final.ttft_met,
           "tpot_met": final.tpot_met, "slo_met": final.slo_met}
    if final.stages:
        out["stages"] = [{"tier": s.tier, "tokens": s.tokens, "tpot_ms": round(s.tpot_ms, 3),
                          "tpot_slo_ms": s.tpot_slo_ms, "slo_met": s.slo_met}
                         for s in final.stages]
    return out


def usage_json(final: pb.Final) -> dict[str, int]:
    return {"prompt_tokens": final.prompt_tokens, "completion_tokens": final.completion_tokens,
            "total_tokens": final.prompt_tokens + final.completion_tokens}


def finish_reason(final: pb.Final) -> str:
    """OpenAI knows stop and length; an abort is the client's own (it sees no chunk)."""
    return final.finish_reason if final.finish_reason in ("stop", "length") else "stop"


class Chunks:
    """The JSON objects of one streamed answer, in OpenAI's two shapes."""

    def __init__(self, call: Call, request_id: str) -> None:
        self.call = call
        self.id = ("chatcmpl-" if call.chat else "cmpl-") + request_id
        self.created = int(time.time())
        self.object = "chat.completion.chunk" if call.chat else "text_completion"
        self.first = True

    def _wrap(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": self.object, "created": self.created,
                "model": self.call.model, "choices": choices, **extra}

    def _choice(self, text: str, token_ids: Sequence[int], reason: str | None) -> dict:
        if self.call.chat:
            delta: dict[str, Any] = {"content": text}
            if self.first:
                delta["role"] = "assistant"
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None,
                                      "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        if self.call.return_token_ids:
            choice["token_ids"] = list(token_ids)
        return choice

    def tokens(self, chunk: pb.TokenChunk, started: pb.Started | None) -> dict[str, Any]:
        """A chunk of tokens; the first carries the planner's decision."""
        extra = {"slo": decision_json(started)} if self.first and started is not None else {}
        out = self._wrap([self._choice(chunk.text, chunk.token_ids, None)], **extra)
        self.first = False
        return out

    def final(self, final: pb.Final) -> dict[str, Any]:
        """The closing chunk: finish reason, measured TTFT / TPOT and the verdict."""
        return self._wrap([self._choice("", (), finish_reason(final))], slo=final_json(final))

    def usage(self, final: pb.Final) -> dict[str, Any]:
        return self._wrap([], usage=usage_json(final))


def whole_answer(call: Call, request_id: str, started: pb.Started, text: str,
                 token_ids: list[int], final: pb.Final) -> dict[str, Any]:
    """A non-streamed answer."""
    reason = finish_reason(final)
    if call.chat:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant",
                                                          "content": text},
                                  "logprobs": None, "finish_reason": reason}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
    if call.return_token_ids:
        choice["token_ids"] = token_ids
    return {"id": ("chatcmpl-" if call.chat else "cmpl-") + request_id,
            "object": "chat.completion" if call.chat else "text_completion",
            "created": int(time.time()), "model": call.model, "choices": [choice],
            "usage": usage_json(final), "slo": {**decision_json(started), **final_json(final)}}


def error_json(status: int, message: str, field: str = "") -> dict[str, Any]:
    """OpenAI's error object (the SDKs read `error.message`, `error.type`, `error.param`)."""
    kinds = {400: "invalid_request_error", 401: "authentication_error",
             404: "not_found_error", 409: "conflict_error", 429: "rate_limit_error",
             503: "service_unavailable"}
    return {"error": {"message": message, "type": kinds.get(status, "server_error"),
                      "param": field or None, "code": status}}
