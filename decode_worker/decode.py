"""The decode role: pull the prompt's KV and stream every token after the first; or, on a
mixed worker serving a request locally, prefill the prompt here and stream every token."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from proto import slos_serve_pb2 as pb
from slos_serve.core.stages import StageTracker
from slos_serve.engine import Engine, EngineOutput, check_output
from slos_serve.metrics import WorkerMetrics
from slos_serve.wire import engine_request, handoff_from_proto, slo_from_proto


class FirstTokenMismatch(RuntimeError):
    """The decode engine recomputed a different first token than the prefill produced."""


async def decode(
    engine: Engine, request: pb.DecodeRequest, metrics: WorkerMetrics | None = None
) -> AsyncIterator[pb.DecodeResponse]:
    """Streams the tokens after the first (local: every token).

    The decode engine recomputes the last prompt position, so its first output
    token is the prefill's first token again: it is checked, never re-sent
    (the client already has it), and the text is sent from after it.

    Local (`request.local`, a mixed worker): no hand-off and no KV transfer; the engine
    prefills the prompt itself and every token is streamed as it comes, the first in the first
    message (the coordinator's TTFT ends there).

    Resumed (`request.resume_token_ids`, with local): the request's earlier decode worker
    failed mid-stream; this one recomputes prompt + the tokens the client has (as a prefill)
    and streams only what follows them, up to the request's max_tokens in all.

    Multi-stage requests: when the text decoded so far shows a stage's `until`
    string (after the stage began), the engine's scheduler is told that the next
    stage (and its TPOT) is in force; stages that end by token count it follows
    by itself.
    """
    called, pulled = time.perf_counter(), request.local  # local: nothing to pull
    resumed = list(request.resume_token_ids)
    max_tokens = resume_max_tokens(request) if resumed else None
    slo = slo_from_proto(request.slo)
    stages = UntilWatcher(StageTracker(slo.stages)) if any(s.until for s in slo.stages) else None
    handoff = None if request.local else handoff_from_proto(request.handoff)
    sent_tokens, sent_chars = (0, 0) if request.local else (1, len(request.first_text))
    async for out in engine.generate(
        engine_request(
            request.request_id,
            [*request.prompt_token_ids, *resumed],
            request.sampling,
            slo,
            max_tokens=max_tokens,
            kv_transfer_params=None if handoff is None else handoff.to_vllm(),
        )
    ):
        check_output(out, request.request_id)
        if out.token_ids and not pulled:
            # The first token needed the prompt's KV: the hand-off is done.
            pulled = True
            assert handoff is not None
            check_first_token(out.token_ids[0], request.first_token_id)
            if metrics is not None:
                metrics.handoff(handoff.num_blocks, engine.info.block_size,
                                time.perf_counter() - called, request.request_id)
        if stages is not None and not out.finished:
            switched = stages.update(out)
            if switched is not None:
                engine.set_stage(request.request_id, switched)
        new_ids = out.token_ids[sent_tokens:]
        new_text = out.text[sent_chars:]
        if new_ids or out.finished:
            yield pb.DecodeResponse(
                token_ids=new_ids, text=new_text, finish_reason=out.finish_reason or ""
            )
            sent_tokens, sent_chars = len(out.token_ids), max(sent_chars, len(out.text))


def resume_max_tokens(request: pb.DecodeRequest) -> int:
    """The tokens a resumed request still may generate; ValueError (INVALID_ARGUMENT) for a
    resume that is not local or has nothing left to generate."""
    if not request.local:
        raise ValueError("resume_token_ids: a resumed request is local (no hand-off)")
    left = request.sampling.max_tokens - len(request.resume_token_ids)
    if left <= 0:
        raise ValueError(f"resume_token_ids: {len(request.resume_token_ids)} tokens, "
                         f"nothing left of max_tokens {request.sampling.max_tokens}")
    return left


def check_first_token(recomputed: int, prefilled: int) -> None:
    """A hand-off's first decode token is the prefill's, recomputed: they must agree."""
    if recomputed != prefilled:
        raise FirstTokenMismatch(
            f"decode recomputed token {recomputed}, prefill produced {prefilled} "
            "(sampling not seeded identically?)"
        )


class UntilWatcher:
    """Feeds a request's cumulative engine outputs to its stage tracker; reports the stage
    a `until` string switched to (the engine's scheduler counts tokens by itself)."""

    def __init__(self, tracker: StageTracker) -> None:
        self.tracker = tracker
        self._tokens = self._chars = 0

    def update(self, out: EngineOutput) -> int | None:
        """The stage the last `until` string in the new output switched to, or None."""
        new_tokens = len(out.token_ids) - self._tokens
        if new_tokens <= 0:  # (text without tokens waits for the next token)
            return None
        switches = self.tracker.add(new_tokens, out.text[self._chars:])
        self._tokens, self._chars = len(out.token_ids), max(self._chars, len(out.text))
        return next((s.index for s in reversed(switches) if s.by == "until"), None)
