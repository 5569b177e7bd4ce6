"""The OpenAI-compatible HTTP front: aiohttp in the coordinator's own event loop, on the
same request path as gRPC (coordinator/frontend.py).

  POST /v1/completions, /v1/chat/completions   streamed (SSE) or whole answers
  GET  /v1/models                               the served model
  GET  /health                                  200 when the cluster can serve, else 503
  GET  /metrics                                 the coordinator's Prometheus series

A call's life: body + headers -> GenerateRequest (coordinator/openai_api.py) -> the shared
path's Started -> response headers (x-slo-decision, x-slo-tier, x-request-id) -> one SSE
chunk per token chunk, the first with the decision -> a closing chunk with the measured
TTFT / TPOT and verdict -> usage (if asked) -> `data: [DONE]`. A `Refused` before the
first byte is an HTTP status (429 + Retry-After for a planner rejection); after it, an
error event. A client that disconnects cancels its handler (aiohttp's handler
cancellation), which cancels the worker calls: the workers abort and free the KV.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable
from contextlib import aclosing
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from coordinator import openai_api as api
from coordinator.auth import ApiKey
from coordinator.frontend import REJECT_RETRY_AFTER_S, Frontend, Refused
from coordinator.validate import InvalidRequest, check_request_id
from proto import slos_serve_pb2 as pb
from slos_serve.metrics import REGISTRY
from slos_serve.wire import DECISION_NAMES

log = logging.getLogger(__name__)

HTTP_STATUS = {"INVALID_ARGUMENT": 400, "OUT_OF_RANGE": 400, "UNAUTHENTICATED": 401,
               "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
               "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
MAX_BODY_BYTES = 64 * 1024 * 1024  # the gRPC client's message limit


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def error_response(status: int, message: str, field: str = "",
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=_dumps(api.error_json(status, message, field)),
                        content_type="application/json", headers=headers)


class HttpFront:
    """The routes over one `Frontend`. `ready()` says whether the cluster can serve."""

    def __init__(self, front: Frontend, model_names: list[str], api_key: ApiKey | None,
                 ready: Callable[[], bool]) -> None:
        self.front = front
        self.model = model_names[0]
        self.names = set(model_names)
        self.api_key = api_key
        self.ready = ready
        self.app = web.Application(client_max_size=MAX_BODY_BYTES,
                                   middlewares=[self._authenticate])
        self.app.add_routes([
            web.post("/v1/completions", self.completions),
            web.post("/v1/chat/completions", self.chat_completions),
            web.get("/v1/models", self.models),
            web.get("/health", self.health),
            web.get("/metrics", self.metrics),
        ])
        self.runner: web.AppRunner | None = None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None
                    ) -> int:
        """Listens on host:port (0: a free port), HTTPS given `ssl_context`; returns the port."""
        self.runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as exc:
            raise OSError(f"--http-port {port}: cannot listen on {host}: {exc}") from exc
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    # ------------------------------------------------------------- plumbing --
    @web.middleware
    async def _authenticate(self, request: web.Request, handler):
        if self.api_key is not None and request.path.startswith("/v1/"):
            problem = self.api_key.problem(request.headers.get("Authorization"))
            if problem:
                return error_response(401, problem, headers={"WWW-Authenticate": "Bearer"})
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:  # a bug, not the client's: logged once, answered in OpenAI's shape
            log.exception("HTTP %s %s failed", request.method, request.path)
            return error_response(500, "internal error (logged by the coordinator)")

    async def health(self, request: web.Request) -> web.Response:
        if self.ready():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="not ready: no worker of some role is healthy\n")

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(self, request: web.Request) -> web.Response:
        card = {"id": self.model, "object": "model", "created": 0, "owned_by": "slos-serve",
                "max_model_len": self.front.facts().max_model_len}
        return web.json_response({"object": "list", "data": [card]})

    # ---------------------------------------------------------------- calls --
    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._call(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._call(request, chat=True)

    async def _render_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        """The chat template, in a thread (it tokenizes: a long chat would stall every
        stream of the event loop)."""
        tokenizer = self.front.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise api.BadRequest("messages", "this model has no chat template; use "
                                 "/v1/completions")
        try:
            ids = await asyncio.to_thread(tokenizer.apply_chat_template, messages,
                                          tokenize=True, return_dict=False,
                                          add_generation_prompt=True)
        except Exception as exc:  # a template's own error names what it disliked
            raise api.BadRequest("messages", f"the chat template refused them: {exc}") from exc
        return [int(t) for t in ids]

    async def _call(self, request: web.Request, chat: bool) -> web.StreamResponse:
        received = time.perf_counter()  # the request's clock: parse and chat template count
        try:
            body = await request.json(loads=json.loads)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            return error_response(400, f"body: not valid JSON ({str(exc)[:200]})", "body")
        try:
            call = await api.parse_call(body, request.headers, chat=chat, model=self.model,
                                  tiers=self.front.tiers, render_chat=self._render_chat,
                                  max_model_len=self.front.facts().max_model_len)
        except api.BadRequest as exc:
            return error_response(400, str(exc), exc.field)
        except UnicodeEncodeError:  # a JSON string with a lone surrogate (\ud800)
            return error_response(400, "body: a string is not valid Unicode (a lone "
                                  "surrogate)", "body")
        if call.model not in self.names:
            return error_response(404, f"model {call.model!r} does not exist; this server "
                                  f"serves {self.model!r}", "model")
        if not call.request.request_id and request.headers.get("x-request-id"):
            try:  # the rule of request_id (coordinator/validate.py), named as sent
                check_request_id(request.headers["x-request-id"], "x-request-id")
            except InvalidRequest as exc:
                return error_response(400, str(exc), "x-request-id")
            call.request.request_id = request.headers["x-request-id"]
        responses = self.front.generate(call.request, received)
        async with aclosing(responses):
            try:
                first = await anext(responses)
            except Refused as exc:
                return self._refused(exc, chat)
            started, rid = first.started, first.request_id
            headers = {"x-request-id": rid, "x-slo-tier": started.tier,
                       "x-slo-decision": DECISION_NAMES.get(started.decision, ""),
                       **({"x-slo-reason": started.reason} if started.reason else {})}
            if call.stream:
                return await self._stream(request, call, rid, started, responses, headers)
            return await self._whole(call, rid, started, responses, headers)

    def _refused(self, exc: Refused, chat: bool) -> web.Response:
        status = HTTP_STATUS.get(exc.code, 500)
        message, field = exc.message, exc.field
        if field:
            name = api.http_field(field, chat)
            message = name + message[len(field):] if message.startswith(field) else message
            field = name
        if status >= 500:
            log.warning("HTTP call failed: %s", message)
        headers = {"Retry-After": f"{REJECT_RETRY_AFTER_S:g}"} if status == 429 else None
        return error_response(status, message, field, headers)

    async def _stream(self, request: web.Request, call: api.Call, rid: str,
                      started: pb.Started, responses, headers: dict[str, str]
                      ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={**SSE_HEADERS, **headers})
        await resp.prepare(request)
        chunks = api.Chunks(call, rid)
        tail = b""  # what follows the last token: one write with the end of the body
        try:
            async for r in responses:
                if r.HasField("chunk"):
                    await resp.write(b"data: " + _dumps(chunks.tokens(r.chunk, started))
                                     + b"\n\n")
                elif r.HasField("final"):
                    tail = b"data: " + _dumps(chunks.final(r.final)) + b"\n\n"
                    if call.include_usage:
                        tail += b"data: " + _dumps(chunks.usage(r.final)) + b"\n\n"
        except Refused as exc:  # mid-stream: the status line is gone; an error event
            status = HTTP_STATUS.get(exc.code, 500)
            log.warning("request %s ended early: %s", rid, exc.message)
            tail = b"data: " + _dumps(api.error_json(status, exc.message)) + b"\n\n"
        # The final chunk, usage, [DONE] and the end of the chunked body in one write (one
        # send, one wake-up of the client) instead of three: the Final comes right after
        # the last token anyway, and the SSE bytes are the same.
        await resp.write_eof(tail + b"data: [DONE]\n\n")
        return resp

    async def _whole(self, call: api.Call, rid: str, started: pb.Started, responses,
                     headers: dict[str, str]) -> web.Response:
        text: list[str] = []
        ids: list[int] = []
        try:
            async for r in responses:
                if r.HasField("chunk"):
                    text.append(r.chunk.text)
                    ids.extend(r.chunk.token_ids)
                elif r.HasField("final"):
                    answer = api.whole_answer(call, rid, started, "".join(text), ids, r.final)
                    return web.Response(body=_dumps(answer), content_type="application/json",
                                        headers=headers)
        except Refused as exc:
            return self._refused(exc, call.chat)
        return error_response(500, "the request ended without a result")
