"""Driver for vLLM's OpenAI-compatible server (system `vllm-serve`): /v1/completions, SSE.

Each call is one streamed completion: prompt as token ids, max_tokens, temperature 0,
ignore_eos (a vLLM extension), `stream_options.include_usage` (the last chunk carries the
token counts) and `return_token_ids` (vLLM 0.32: every chunk lists its token ids, so the
arrival time of every token is known even when a chunk carries several). Servers that do
not return token ids are handled too: a chunk with text counts as one token, and tokens
the final usage reports beyond those counted are put at the last chunk's time.

Calls go round-robin over the given servers (two `vllm serve` instances, one per core).
With a `priority` rule (`vllm-serve-priority`, servers started with `--scheduling-policy
priority`), each body carries the call's `priority` (vLLM: smaller is scheduled first).
vLLM serve has no notion of SLOs: its calls are judged on the client like every other
system's, and the decision is "admitted" by definition. aiohttp is imported when a driver is
made: runs without `vllm-serve` never load it.

The same driver drives any OpenAI-compatible server already running (`bench --backend openai
--base-url URL`). Every call then carries its first stage's objectives as llm-d's headers
(`x-slo-ttft-ms`, `x-slo-tpot-ms`; servers without SLOs ignore them); against a slos-serve
front (`stages_in_body`), a call of several stages sends them all as the body's `stages`,
as the gRPC driver does. The front's decision comes back in the `x-slo-decision` header
(admitted / best_effort; a 429 is a rejection) and its own measurements in the final chunk's
`slo`; a server without them leaves the decision "admitted".
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from slos_serve.bench.records import CallResult, add_tokens
from slos_serve.bench.workload import ttft_objective
from slos_serve.core.stages import StageSpec

DECISIONS = ("admitted", "best_effort")


class HttpError(RuntimeError):
    """The server answered with an error status or an error event."""


class OpenAIHttpDriver:
    """aiohttp client session over one or more base URLs; create it inside the loop."""

    def __init__(self, base_urls: Sequence[str], model: str | None = None,
                 timeout_s: float = 600.0,
                 priority: Callable[[StageSpec], int] | None = None, *,
                 api_key: str | None = None, slo_headers: bool = False,
                 stages_in_body: bool = False) -> None:
        import aiohttp

        if not base_urls:
            raise ValueError("at least one server URL is needed")
        self.urls = [u.rstrip("/") for u in base_urls]
        self._next = itertools.cycle(self.urls)
        self.model = model
        self.priority = priority
        self.slo_headers, self.stages_in_body = slo_headers, stages_in_body
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            connector=aiohttp.TCPConnector(limit=0),
            headers={"Authorization": f"Bearer {api_key}"} if api_key else None,
        )

    def headers(self, stages: Sequence[StageSpec]) -> dict[str, str]:
        """llm-d's SLO headers from the call's first stage (none without `slo_headers`)."""
        if not self.slo_headers or not stages:
            return {}
        return {f"x-slo-{name.replace('_', '-')}": f"{value:g}"
                for name, value in _slo(stages[0]).items()}

    def body(self, prompt: list[int], stages: Sequence[StageSpec]) -> dict[str, Any]:
        max_tokens = sum(s.max_tokens for s in stages)
        body: dict[str, Any] = {
            "prompt": list(prompt), "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
            "return_token_ids": True,
        }
        if self.model:
            body["model"] = self.model
        if self.priority is not None and stages:
            body["priority"] = self.priority(stages[0])
        if self.stages_in_body and len(stages) > 1:
            last = len(stages) - 1  # the last stage runs to the end, as in the gRPC driver
            body["stages"] = [{"max_tokens": 0 if i == last else s.max_tokens,
                               "slo": _slo(s)} for i, s in enumerate(stages)]
        return body

    async def call(
        self, prompt: list[int], stages: Sequence[StageSpec], result: CallResult,
        clock: Callable[[], float],
    ) -> list[int]:
        url = next(self._next) + "/v1/completions"
        out: list[int] = []
        counted, usage_tokens = 0, None
        result.decision = "admitted"
        async with self.session.post(url, json=self.body(prompt, stages),
                                     headers=self.headers(stages)) as resp:
            if resp.status == 429:
                result.decision = "rejected"
            if resp.status != 200:
                raise HttpError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
            if resp.headers.get("x-slo-decision") in DECISIONS:
                result.decision = resp.headers["x-slo-decision"]
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                now = clock()
                event = json.loads(data)
                if "error" in event:
                    raise HttpError(f"error event: {str(event['error'])[:300]}")
                for choice in event.get("choices") or []:
                    ids = choice.get("token_ids")
                    n = len(ids) if ids is not None else (1 if choice.get("text") else 0)
                    if n:
                        add_tokens(result, n, now)
                        counted += n
                        out.extend(ids or [])
                    if choice.get("finish_reason"):
                        result.finish_reason = choice["finish_reason"]
                if "ttft_ms" in (event.get("slo") or {}):  # a slos-serve front's verdict
                    result.server = event["slo"]
                usage = event.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    usage_tokens = int(usage["completion_tokens"])
        if usage_tokens is not None and usage_tokens > counted and result.token_times:
            add_tokens(result, usage_tokens - counted, result.token_times[-1])
        if not result.finish_reason:
            raise HttpError("stream ended without a finish reason")
        return out

    async def close(self) -> None:
        await self.session.close()


def _slo(stage: StageSpec) -> dict[str, float]:
    """A stage's finite objectives (ms): an infinite one is no objective."""
    slo = {"ttft_ms": ttft_objective(stage), "tpot_ms": stage.tpot_ms}
    return {k: v for k, v in slo.items() if v is not None and math.isfinite(v)}
