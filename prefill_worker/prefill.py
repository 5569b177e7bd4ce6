"""The prefill role: compute the prompt's KV and the first token, hand the KV off."""

from __future__ import annotations

import time

from kv_transfer.metadata import KvHandoff, prefill_params
from proto import slos_serve_pb2 as pb
from slos_serve.engine import Engine, check_output
from slos_serve.wire import engine_request, handoff_to_proto, slo_from_proto


class HandoffMissing(RuntimeError):
    """The engine finished a hand-off prefill without usable transfer metadata."""


async def prefill(engine: Engine, request: pb.PrefillRequest) -> pb.PrefillResponse:
    """Runs the prompt for exactly one token.

    With `hand_off`, the engine keeps the prompt's KV blocks for a decode worker
    to pull and returns where they are. A request that ends at its first token
    (EOS, a stop string, or max_tokens == 1) needs no hand-off and frees them.
    """
    kv_params = prefill_params() if request.hand_off else None
    started = time.perf_counter()
    last = None
    async for out in engine.generate(
        engine_request(
            request.request_id,
            list(request.prompt_token_ids),
            request.sampling,
            slo_from_proto(request.slo),
            max_tokens=1,
            kv_transfer_params=kv_params,
        )
    ):
        last = check_output(out, request.request_id)
    if last is None or not last.token_ids:
        raise RuntimeError(f"engine produced no token for {request.request_id}")
    response = pb.PrefillResponse(
        first_token_id=last.token_ids[0],
        first_text=last.text,
        compute_ms=1000 * (time.perf_counter() - started),
    )
    # vLLM reports "length" when it stopped at our max_tokens=1: the request goes on.
    ended = not request.hand_off or last.finish_reason not in (None, "length")
    if ended:
        response.finish_reason = last.finish_reason or "length"
        if request.hand_off and last.kv_transfer_params:  # kept for a decode that won't come
            await engine.release_handoffs(
                [str(last.kv_transfer_params.get("remote_request_id", ""))])
        return response
    if not last.kv_transfer_params:
        raise HandoffMissing(f"no kv_transfer_params for {request.request_id}")
    try:
        handoff = KvHandoff.from_vllm(last.kv_transfer_params)
    except ValueError as exc:
        raise HandoffMissing(f"engine returned unusable transfer metadata: {exc}") from exc
    response.handoff.CopyFrom(handoff_to_proto(handoff))
    return response
