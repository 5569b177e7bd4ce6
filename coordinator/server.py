"""The client-facing SloServe service: validate, route, prefill, hand off, decode, stream.

One request: Started (the decision) -> the prefill worker's first token, sent
at once (TTFT ends here) -> the decode worker's tokens after the first -> Final
with measured TTFT / TPOT and the SLO verdict. Every request ends with a Final,
a status the client can see, or the client's own cancellation.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

import grpc

from coordinator.pool import WorkerHandle, WorkerPool
from coordinator.slo import TierTable
from coordinator.validate import InvalidRequest, ModelFacts, RequestSpec, validate
from proto import slos_serve_pb2 as pb
from proto import slos_serve_pb2_grpc as pb_grpc
from slos_serve.metrics import CoordinatorMetrics

log = logging.getLogger(__name__)

# Worker failures that another worker may not repeat: try the next one.
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
PREFILL_ATTEMPTS = 3


class _Aborted(Exception):
    """The request was aborted through the Abort RPC."""


@dataclass
class _Live:
    """A request in flight, as Abort needs to see it."""

    calls: list = field(default_factory=list)
    aborted: bool = False
    tier: str | None = None  # set once Started is sent (metrics: in flight until done)
    final: pb.Final | None = None  # the Final sent, if any

    def abort(self) -> None:
        self.aborted = True
        for call in self.calls:
            call.cancel()


class CoordinatorService(pb_grpc.SloServeServicer):
    def __init__(
        self,
        pool: WorkerPool,
        tiers: TierTable,
        tokenizer,
        model_name: str,
        default_on_reject: str = "best_effort",
        metrics: CoordinatorMetrics | None = None,
    ) -> None:
        self.pool = pool
        self.tiers = tiers
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.default_on_reject = default_on_reject
        self.live: dict[str, _Live] = {}
        self.metrics = metrics if metrics is not None else CoordinatorMetrics(tiers.tiers)

    # ------------------------------------------------------------ helpers --
    def facts(self) -> ModelFacts:
        lens = [w.info.max_model_len for w in self.pool.workers if w.info is not None]
        return ModelFacts(max_model_len=min(lens) if lens else 0, vocab_size=len(self.tokenizer))

    def _tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def _worker_slo(self, spec: RequestSpec, received_unix: float) -> pb.WorkerSlo:
        return pb.WorkerSlo(
            ttft_deadline_unix=received_unix + spec.tier.ttft_ms / 1000.0,
            tpot_ms=spec.tier.tpot_ms,
        )

    # --------------------------------------------------------------- RPCs --
    async def Generate(self, request, context) -> AsyncIterator[pb.GenerateResponse]:
        received = time.perf_counter()
        received_unix = time.time()
        facts = self.facts()
        if facts.max_model_len == 0:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no worker has reported yet")
        try:
            spec = validate(request, facts, self.tiers, self._tokenize, self.default_on_reject)
        except InvalidRequest as exc:
            self.metrics.request_invalid(str(exc))
            await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        rid = request.request_id or uuid.uuid4().hex
        if rid in self.live:
            self.metrics.request_invalid("request_id: already in flight")
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS, f"request_id: {rid!r} is already in flight"
            )
        live = self.live[rid] = _Live()
        failed = False
        try:
            # aclosing: a client that goes away closes the inner stream at once,
            # which cancels the worker calls instead of leaving them to the GC.
            async with aclosing(
                self._serve(rid, spec, live, received, received_unix, context)
            ) as responses:
                async for response in responses:
                    yield response
        except Exception:  # a status for the client (cancellation is a BaseException)
            failed = True
            raise
        finally:
            del self.live[rid]
            if live.tier is not None:
                self.metrics.request_done(live.tier, live.final, failed)

    async def _serve(
        self,
        rid: str,
        spec: RequestSpec,
        live: _Live,
        received: float,
        received_unix: float,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.GenerateResponse]:
        decode_worker = self.pool.pick("decode")
        prefill_worker = self.pool.pick("prefill")
        if decode_worker is None or prefill_worker is None:
            role = "decode" if decode_worker is None else "prefill"
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"no healthy {role} worker")
        slo = self._worker_slo(spec, received_unix)
        sampling = spec.sampling
        live.tier = spec.tier.name
        self.metrics.request_started(live.tier, pb.Decision.Name(pb.ADMITTED).lower())
        yield pb.GenerateResponse(
            request_id=rid,
            started=pb.Started(
                decision=pb.ADMITTED,
                tier=spec.tier.name,
                ttft_slo_ms=spec.tier.ttft_ms,
                tpot_slo_ms=spec.tier.tpot_ms,
                prefill_worker=prefill_worker.address,
                decode_worker=decode_worker.address,
                prompt_tokens=len(spec.prompt_token_ids),
            ),
        )
        n_tokens = 0
        finish_reason = "error"
        first_at = None
        try:
            first = await self._prefill(rid, spec, slo, live, prefill_worker, context)
            first_at = time.perf_counter()
            n_tokens = 1
            yield pb.GenerateResponse(
                request_id=rid,
                chunk=pb.TokenChunk(token_ids=[first.first_token_id], text=first.first_text),
            )
            if first.finish_reason:
                finish_reason = first.finish_reason
            else:
                decode_request = pb.DecodeRequest(
                    request_id=rid,
                    prompt_token_ids=spec.prompt_token_ids,
                    sampling=sampling,
                    slo=slo,
                    handoff=first.handoff,
                    first_token_id=first.first_token_id,
                    first_text=first.first_text,
                )
                async for out in self._decode(decode_request, decode_worker, live):
                    n_tokens += len(out.token_ids)
                    if out.token_ids or out.text:
                        yield pb.GenerateResponse(
                            request_id=rid,
                            chunk=pb.TokenChunk(token_ids=out.token_ids, text=out.text),
                        )
                    if out.finish_reason:
                        finish_reason = out.finish_reason
        except _Aborted:
            finish_reason = "abort"
        except grpc.RpcError as err:
            log.warning("request %s failed on a worker: %s", rid, err.details())
            await context.abort(err.code(), f"worker error: {err.details()}")
        finally:
            for call in live.calls:
                call.cancel()  # no-op once done; frees worker resources if we were cancelled
        live.final = self._final(spec, received, first_at, n_tokens, finish_reason)
        yield pb.GenerateResponse(request_id=rid, final=live.final)

    async def _prefill(
        self,
        rid: str,
        spec: RequestSpec,
        slo: pb.WorkerSlo,
        live: _Live,
        worker: WorkerHandle | None,
        context: grpc.aio.ServicerContext,
    ) -> pb.PrefillResponse:
        """Prefill on `worker`; if it is unreachable, on the next healthy one."""
        tried: set[str] = set()
        request = pb.PrefillRequest(
            request_id=rid,
            prompt_token_ids=spec.prompt_token_ids,
            sampling=spec.sampling,
            slo=slo,
            hand_off=spec.sampling.max_tokens > 1,
        )
        last_error: grpc.RpcError | None = None
        for _ in range(PREFILL_ATTEMPTS):
            if worker is None:
                break
            tried.add(worker.address)
            call = worker.stub.Prefill(request)
            live.calls.append(call)
            try:
                return await call
            except asyncio.CancelledError:
                if live.aborted and not _task_cancelling():
                    raise _Aborted() from None
                raise
            except grpc.RpcError as err:
                if live.aborted:
                    raise _Aborted() from None
                if err.code() not in _RETRYABLE:
                    raise
                worker.healthy = False
                last_error = err
                log.warning("prefill worker %s unavailable; trying another", worker.address)
                worker = self.pool.pick("prefill", exclude=tried)
        detail = last_error.details() if last_error else "none is healthy"
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"no prefill worker could serve: {detail}")
        raise AssertionError("unreachable")

    async def _decode(
        self, request: pb.DecodeRequest, worker: WorkerHandle, live: _Live
    ) -> AsyncIterator[pb.DecodeResponse]:
        """Streams from `worker`; if it is unreachable before its first token, from another.

        Failing over is safe only before any decode output: the prefill worker
        still holds the KV until a decoder has read it.
        """
        tried = {worker.address}
        while True:
            call = worker.stub.Decode(request)
            live.calls.append(call)
            received = False
            try:
                async for out in self._read_stream(call, live):
                    received = True
                    yield out
                return
            except grpc.RpcError as err:
                spare = self.pool.pick("decode", exclude=tried)
                if received or err.code() not in _RETRYABLE or spare is None:
                    raise
                worker.healthy = False
                log.warning("decode worker %s unavailable; trying %s", worker.address,
                            spare.address)
                worker = spare
                tried.add(worker.address)

    @staticmethod
    async def _read_stream(call, live: _Live) -> AsyncIterator[pb.DecodeResponse]:
        try:
            async for out in call:
                yield out
        except asyncio.CancelledError:
            if live.aborted and not _task_cancelling():
                raise _Aborted() from None
            raise
        except grpc.RpcError:
            if live.aborted:
                raise _Aborted() from None
            raise

    def _final(
        self,
        spec: RequestSpec,
        received: float,
        first_at: float | None,
        n_tokens: int,
        finish_reason: str,
    ) -> pb.Final:
        now = time.perf_counter()
        e2e_ms = 1000 * (now - received)
        ttft_ms = 1000 * (first_at - received) if first_at is not None else e2e_ms
        tpot_ms = (e2e_ms - ttft_ms) / (n_tokens - 1) if n_tokens > 1 else 0.0
        ttft_met = first_at is not None and ttft_ms <= spec.tier.ttft_ms
        tpot_met = tpot_ms <= spec.tier.tpot_ms
        return pb.Final(
            finish_reason=finish_reason,
            prompt_tokens=len(spec.prompt_token_ids),
            completion_tokens=n_tokens,
            ttft_ms=ttft_ms,
            tpot_ms=tpot_ms,
            e2e_ms=e2e_ms,
            ttft_met=ttft_met,
            tpot_met=tpot_met,
            slo_met=ttft_met and tpot_met and finish_reason in ("stop", "length"),
            decision=pb.ADMITTED,
        )

    async def Abort(self, request, context):
        live = self.live.get(request.request_id)
        if live is None:
            return pb.AbortResponse(found=False)
        live.abort()
        return pb.AbortResponse(found=True)

    async def ModelInfo(self, request, context):
        facts = self.facts()
        return pb.ModelInfoResponse(
            model=self.model_name,
            max_model_len=facts.max_model_len,
            vocab_size=facts.vocab_size,
            tiers=[
                pb.SloTier(name=t.name, ttft_ms=t.ttft_ms, tpot_ms=t.tpot_ms)
                for t in self.tiers.tiers.values()
            ],
            default_tier=self.tiers.default,
        )

    async def ClusterInfo(self, request, context):
        return pb.ClusterInfoResponse(
            scheduler="round-robin",
            workers=[
                pb.WorkerStatus(address=w.address, role=w.role, healthy=w.healthy, load=w.load)
                for w in self.pool.workers
            ],
        )


def _task_cancelling() -> bool:
    """True when this task itself is being cancelled (the client went away)."""
    task = asyncio.current_task()
    return bool(task is not None and task.cancelling())
