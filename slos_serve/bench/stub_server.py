"""Trivial servers that answer like the coordinator but do no work: the load generator's
own ceiling (`bench http-overhead`'s "client alone" row).

  python -m slos_serve.bench.stub_server HTTP_PORT GRPC_PORT

HTTP: POST /v1/completions answers every body with canned bytes of the HTTP front's shape
(streamed: a first chunk with the decision, one chunk per further token, the closing chunk
with the verdict, `data: [DONE]`; whole: one JSON object), `max_tokens` tokens. gRPC: the
SloServe Generate stream (Started, one TokenChunk per token, Final). It runs in its own
process, as the coordinator does, so the client's CPU is measured against a server on
another core, not against itself.
"""

from __future__ import annotations

import asyncio
import json
import sys

import grpc
from aiohttp import web

from proto import slos_serve_pb2 as pb
from proto import slos_serve_pb2_grpc as pb_grpc

SLO = {"decision": "admitted", "tier": "standard", "ttft_slo_ms": 1000.0,
       "tpot_slo_ms": 100.0, "reason": ""}
VERDICT = {"decision": "admitted", "ttft_ms": 1.0, "tpot_ms": 1.0, "e2e_ms": 2.0,
           "ttft_met": True, "tpot_met": True, "slo_met": True}


def _chunk(i: int, text: str, reason: str | None, **extra: object) -> bytes:
    body = {"id": "cmpl-stub", "object": "text_completion", "created": 0, "model": "stub",
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}],
            **extra}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def sse_body(tokens: int) -> list[bytes]:
    """The writes of one streamed answer of `tokens` tokens, as the front makes them."""
    writes = [_chunk(0, " a", None, slo=SLO)]
    writes += [_chunk(i, " a", None) for i in range(1, tokens)]
    writes.append(_chunk(tokens, "", "length", slo=VERDICT) + b"data: [DONE]\n\n")
    return writes


def whole_body(tokens: int) -> bytes:
    body = {"id": "cmpl-stub", "object": "text_completion", "created": 0, "model": "stub",
            "choices": [{"index": 0, "text": " a" * tokens, "logprobs": None,
                         "finish_reason": "length"}],
            "usage": {"prompt_tokens": 8, "completion_tokens": tokens,
                      "total_tokens": 8 + tokens}, "slo": VERDICT}
    return json.dumps(body, separators=(",", ":")).encode()


async def completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    tokens = int(body.get("max_tokens") or 16)
    if not body.get("stream"):
        return web.Response(body=whole_body(tokens), content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for part in sse_body(tokens):
        await resp.write(part)
    await resp.write_eof()
    return resp


class StubSloServe(pb_grpc.SloServeServicer):
    async def Generate(self, request, context):
        yield pb.GenerateResponse(request_id="stub", started=pb.Started(
            decision=pb.ADMITTED, tier="standard", ttft_slo_ms=1000.0, tpot_slo_ms=100.0))
        for i in range(request.sampling.max_tokens):
            yield pb.GenerateResponse(request_id="stub",
                                      chunk=pb.TokenChunk(token_ids=[i], text=" a"))
        yield pb.GenerateResponse(request_id="stub", final=pb.Final(
            finish_reason="length", completion_tokens=request.sampling.max_tokens,
            decision=pb.ADMITTED, slo_met=True))


async def serve(http_port: int, grpc_port: int) -> None:
    app = web.Application()
    app.add_routes([web.post("/v1/completions", completions)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    server = grpc.aio.server()
    pb_grpc.add_SloServeServicer_to_server(StubSloServe(), server)
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2])))
