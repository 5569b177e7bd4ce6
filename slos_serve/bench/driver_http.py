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
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from typing import Any

from slos_serve.bench.records import CallResult, add_tokens
from slos_serve.core.stages import StageSpec


class HttpError(RuntimeError):
    """The server answered with an error status or an error event."""


class OpenAIHttpDriver:
    """aiohttp client session over one or more base URLs; create it inside the loop."""

    def __init__(self, base_urls: Sequence[str], model: str | None = None,
                 timeout_s: float = 600.0,
                 priority: Callable[[StageSpec], int] | None = None) -> None:
        import aiohttp

        if not base_urls:
            raise ValueError("at least one server URL is needed")
        self.urls = [u.rstrip("/") for u in base_urls]
        self._next = itertools.cycle(self.urls)
        self.model = model
        self.priority = priority
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            connector=aiohttp.TCPConnector(limit=0),
        )

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
        return body

    async def call(
        self, prompt: list[int], stages: Sequence[StageSpec], result: CallResult,
        clock: Callable[[], float],
    ) -> list[int]:
        url = next(self._next) + "/v1/completions"
        out: list[int] = []
        counted, usage_tokens = 0, None
        result.decision = "admitted"
        async with self.session.post(url, json=self.body(prompt, stages)) as resp:
            if resp.status != 200:
                raise HttpError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
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
