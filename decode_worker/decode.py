"""The decode role: pull the prompt's KV and stream every token after the first."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from kv_transfer.metadata import KvHandoff
from proto import slos_serve_pb2 as pb
from slos_serve.core.policy import RequestSlo, StageTracker
from slos_serve.engine import Engine
from slos_serve.metrics import WorkerMetrics
from slos_serve.wire import engine_request, engine_slo


class FirstTokenMismatch(RuntimeError):
    """The decode engine recomputed a different first token than the prefill produced."""


async def decode(
    engine: Engine, request: pb.DecodeRequest, metrics: WorkerMetrics | None = None
) -> AsyncIterator[pb.DecodeResponse]:
    """Streams the tokens after the first.

    The decode engine recomputes the last prompt position, so its first output
    token is the prefill's first token again: it is checked, never re-sent
    (the client already has it), and the text is sent from after it.

    Multi-stage requests: when the text decoded so far shows a stage's `until`
    string (after the stage began), the engine's scheduler is told that the next
    stage (and its TPOT) is in force; stages that end by token count it follows
    by itself.
    """
    called, pulled = time.perf_counter(), False
    slo = RequestSlo.from_dict(engine_slo(request.slo))
    stages = StageTracker(slo) if any(s.until for s in slo.stages) else None
    handoff = KvHandoff.from_proto(request.handoff)
    sent_tokens, sent_chars = 1, len(request.first_text)
    async for out in engine.generate(
        engine_request(
            request.request_id,
            list(request.prompt_token_ids),
            request.sampling,
            request.slo,
            kv_transfer_params=handoff.to_vllm(),
        )
    ):
        if out.token_ids and not pulled and metrics is not None:
            # The first token needed the prompt's KV: the hand-off is done.
            pulled = True
            metrics.handoff(
                handoff.num_blocks, engine.info.block_size, time.perf_counter() - called
            )
        if out.token_ids and out.token_ids[0] != request.first_token_id:
            raise FirstTokenMismatch(
                f"decode recomputed token {out.token_ids[0]}, prefill produced "
                f"{request.first_token_id} (sampling not seeded identically?)"
            )
        if stages is not None and not out.finished:
            switched = stages.update(out.text, len(out.token_ids))
            if switched is not None:
                engine.set_stage(request.request_id, switched)
        new_ids = out.token_ids[sent_tokens:]
        new_text = out.text[sent_chars:]
        if new_ids or out.finished:
            yield pb.DecodeResponse(
                token_ids=new_ids, text=new_text, finish_reason=out.finish_reason or ""
            )
            sent_tokens, sent_chars = len(out.token_ids), max(sent_chars, len(out.text))
