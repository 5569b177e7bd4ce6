"""The one request path behind every client-facing edge: validate, decide, route, prefill,
hand off, decode. The gRPC service (coordinator/server.py) and the OpenAI HTTP front
(coordinator/http_front.py) convert to and from it; neither has rules of its own.

One request: the planner's decision (admitted or best effort: Started; rejected:
RESOURCE_EXHAUSTED) -> the prefill worker's first token, sent at once (TTFT ends
here) -> the decode worker's tokens after the first -> Final with measured TTFT /
TPOT and the verdict per stage. A request routed to one mixed worker for both is served
there locally: one Decode call (`local`) that streams every token, the first at once.
Every request ends with a Final, a `Refused` (a status the edge turns into its own), or
the client's own cancellation (the caller's task is cancelled: the worker calls are too).
A worker that fails costs a retry on another, not the request: Started names the workers
first chosen, Final the ones that served (coordinator/worker_calls.py, failover and resume).

Two schedulers (coordinator/routing.py): "slos" (the planner decides every arrival
and each worker gets its share of the plan) and "vllm" (the baseline: round-robin
routing, everything admitted, the engines schedule as vLLM does). The calls to the
workers, with their failover, are coordinator/worker_calls.py's.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

import grpc

from coordinator import worker_calls
from coordinator.admission import Admission
from coordinator.pool import WorkerHandle, WorkerPool
from coordinator.routing import PlannedRouting, RoundRobinRouting, Route
from coordinator.validate import InvalidRequest, ModelFacts, RequestSpec, validate_async
from coordinator.worker_calls import Aborted, InFlight, NoWorker
from proto import slos_serve_pb2 as pb
from slos_serve.core.slo import TierTable
from slos_serve.core.stages import StageResult, StageTracker
from slos_serve.metrics import CoordinatorMetrics
from slos_serve.wire import resumed_slo, slo_to_proto, stage_result_to_proto

log = logging.getLogger(__name__)

DECISIONS = {"admit": pb.ADMITTED, "best_effort": pb.BEST_EFFORT, "reject": pb.REJECTED}
REJECT_RETRY_AFTER_S = 1.0  # what a rejected client is told to wait (HTTP Retry-After)


class Refused(Exception):
    """A request not served, or not served to its end. `code` is a gRPC status name
    (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE, ...): the one vocabulary both
    edges map from; `field` names the offending request field of a client mistake."""

    def __init__(self, code: str, message: str, field: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


@dataclass(slots=True)
class Served:
    """How far a request got, for its Final (and for a decode resumed elsewhere)."""

    token_ids: list[int] = field(default_factory=list)  # the tokens sent to the client
    first_at: float | None = None  # perf_counter() of the first token
    finish_reason: str = "error"

    @property
    def tokens(self) -> int:
        return len(self.token_ids)


class Frontend:
    def __init__(
        self,
        pool: WorkerPool,
        tiers: TierTable,
        tokenizer,
        model_name: str,
        default_on_reject: str = "best_effort",
        metrics: CoordinatorMetrics | None = None,
        admission: Admission | None = None,
        request_log: Callable[[str, pb.Final, str], None] | None = None,
    ) -> None:
        """`admission` None: the "vllm" baseline (round-robin, everything admitted).
        `request_log(request_id, final, tier)` sees every Final (the per-request records)."""
        self.pool = pool
        self.tiers = tiers
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.default_on_reject = default_on_reject
        self.live: dict[str, InFlight] = {}
        self.metrics = metrics if metrics is not None else CoordinatorMetrics(tiers.tiers)
        self.routing: PlannedRouting | RoundRobinRouting = (
            RoundRobinRouting(pool) if admission is None else PlannedRouting(pool, admission)
        )
        self.scheduler = self.routing.scheduler
        self.request_log = request_log

    def start(self) -> None:
        """Starts the periodic re-planning (needs a running event loop)."""
        self.routing.start()

    async def stop(self) -> None:
        await self.routing.stop()

    def facts(self) -> ModelFacts:
        lens = [w.info.max_model_len for w in self.pool.workers if w.info is not None]
        return ModelFacts(max_model_len=min(lens) if lens else 0, vocab_size=len(self.tokenizer))

    def _tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    # --------------------------------------------------------------- Generate --
    async def generate(self, request: pb.GenerateRequest, received: float | None = None
                       ) -> AsyncIterator[pb.GenerateResponse]:
        """Started (or `Refused`), the token chunks, then Final (or `Refused` mid-stream).
        TTFT counts from `received` (perf_counter; default now): the HTTP edge passes when
        its handler started, so its JSON parse and chat template (a tokenization) count."""
        now = time.perf_counter()
        received = now if received is None else min(received, now)
        received_unix = time.time() - (now - received)
        spec, rid = await self._accept(request)
        ttft_deadline_unix = spec.ttft_deadline_unix(received_unix)
        route = self.routing.decide(rid, spec, received_unix, ttft_deadline_unix)
        if route.decision.action == "reject":
            self.metrics.request_rejected(spec.tier.name)
            if self.request_log is not None:
                self.request_log(rid, pb.Final(finish_reason="rejected", decision=pb.REJECTED,
                                               prompt_tokens=len(spec.prompt_token_ids)),
                                 spec.tier.name)
            raise Refused(
                "RESOURCE_EXHAUSTED",
                f"rejected by the planner: {route.decision.reason or 'no capacity'} "
                f"(tier {spec.tier.name!r}; on_reject=REJECT)",
            )
        live = self.live[rid] = InFlight(routed=tuple(
            w.address for w in (route.prefill, route.decode) if w is not None))
        failed = False
        try:
            # aclosing: a client that goes away closes the inner stream at once,
            # which cancels the worker calls instead of leaving them to the GC.
            async with aclosing(
                self._serve(rid, spec, live, received, ttft_deadline_unix, route)
            ) as responses:
                async for response in responses:
                    yield response
        except Exception:  # a status for the client (cancellation is a BaseException)
            failed = True
            raise
        finally:
            del self.live[rid]
            self.routing.finish(rid)
            if live.tier is not None:
                self.metrics.request_done(live.tier, live.final, failed)
                self.metrics.failed_over(live.failovers, live.resumes)
                if self.request_log is not None and live.record is not None:
                    self.request_log(rid, live.record, live.tier)

    async def _accept(self, request: pb.GenerateRequest) -> tuple[RequestSpec, str]:
        """The validated request and its id; `Refused` if it is not served (a long text
        prompt is tokenized in a thread)."""
        facts = self.facts()
        if facts.max_model_len == 0:
            raise Refused("UNAVAILABLE", "no worker has reported yet")
        try:
            spec = await validate_async(request, facts, self.tiers, self._tokenize,
                                        self.default_on_reject)
        except InvalidRequest as exc:
            self.metrics.request_invalid(str(exc))
            raise Refused(exc.code, str(exc), field=str(exc).split(":", 1)[0]) from exc
        rid = request.request_id or uuid.uuid4().hex
        if rid in self.live:
            self.metrics.request_invalid("request_id: already in flight")
            raise Refused("ALREADY_EXISTS", f"request_id: {rid!r} is already in flight",
                          field="request_id")
        return spec, rid

    async def _serve(
        self,
        rid: str,
        spec: RequestSpec,
        live: InFlight,
        received: float,
        ttft_deadline_unix: float,
        route: Route,
    ) -> AsyncIterator[pb.GenerateResponse]:
        if route.decode is None or route.prefill is None:
            role = "decode" if route.decode is None else "prefill"
            raise Refused("UNAVAILABLE", f"no healthy {role} worker")
        verdict = DECISIONS[route.decision.action]
        slo = slo_to_proto(spec.worker_slo(ttft_deadline_unix, verdict == pb.BEST_EFFORT))
        live.tier = spec.tier.name
        self.metrics.request_started(live.tier, pb.Decision.Name(verdict).lower())
        yield pb.GenerateResponse(request_id=rid, started=_started(spec, route, verdict))
        stages = StageTracker(spec.stages, received)
        served = Served()
        try:
            async with aclosing(
                self._tokens(rid, spec, slo, live, route, stages, served)
            ) as chunks:
                async for chunk in chunks:
                    yield pb.GenerateResponse(request_id=rid, chunk=chunk)
        except Aborted:
            served.finish_reason = "abort"
        except (GeneratorExit, asyncio.CancelledError):  # the client went away
            served.finish_reason = "cancelled"
            raise
        except NoWorker as exc:
            log.warning("request %s lost: %s", rid, exc)
            raise Refused("UNAVAILABLE", str(exc)) from exc
        except grpc.RpcError as err:
            log.warning("request %s failed on a worker: %s", rid, err.details())
            raise Refused(err.code().name, f"worker error: {err.details()}") from err
        finally:
            live.cancel_calls()
            if live.resumes or served.finish_reason not in ("stop", "length"):
                worker_calls.release_handoff(live, rid)
            # how far it got, however it ended (the request log's record)
            live.record = self._final(spec, received, served, verdict, stages.results(), live)
        live.final = live.record
        yield pb.GenerateResponse(request_id=rid, final=live.final)

    async def _tokens(
        self,
        rid: str,
        spec: RequestSpec,
        slo: pb.WorkerSlo,
        live: InFlight,
        route: Route,
        stages: StageTracker,
        served: Served,
    ) -> AsyncIterator[pb.TokenChunk]:
        """The prefill's first token, then the decode's tokens after it (a local route:
        every token from the one worker's stream)."""
        assert route.prefill is not None and route.decode is not None
        request = {"request_id": rid, "prompt_token_ids": spec.prompt_token_ids,
                   "sampling": spec.sampling, "slo": slo}
        if route.local:
            local = pb.DecodeRequest(**request, local=True)
            async for chunk in self._stream(rid, local, route.decode, live, stages, served):
                yield chunk
            return
        prefill_request = pb.PrefillRequest(**request, hand_off=spec.sampling.max_tokens > 1)
        first = await worker_calls.prefill(self.pool, prefill_request, route.prefill, live)
        if live.failovers:
            self.routing.moved(rid, live.prefill_worker, "")
        if first.HasField("handoff"):
            live.handoff_at = self.pool.get(live.prefill_worker)
        served.first_at = time.perf_counter()
        served.token_ids.append(first.first_token_id)
        self._progress(rid, stages, 1, first.first_text, served.first_at, first=True)
        yield pb.TokenChunk(token_ids=[first.first_token_id], text=first.first_text)
        if first.finish_reason:
            served.finish_reason = first.finish_reason
            return
        decode_request = pb.DecodeRequest(**request, handoff=first.handoff,
                                          first_token_id=first.first_token_id,
                                          first_text=first.first_text)
        async for chunk in self._stream(rid, decode_request, route.decode, live, stages,
                                        served):
            yield chunk

    async def _stream(
        self,
        rid: str,
        request: pb.DecodeRequest,
        worker: WorkerHandle,
        live: InFlight,
        stages: StageTracker,
        served: Served,
    ) -> AsyncIterator[pb.TokenChunk]:
        """A Decode stream as chunks; the first token of a local one is the request's."""
        def resume_slo() -> pb.WorkerSlo:  # a multi-stage request resumed: stages ahead
            return resumed_slo(request.slo, stages.remaining())

        stream = worker_calls.decode(self.pool, request, worker, live, served.token_ids,
                                     resume_slo if request.slo.stages else None)
        at = worker.address
        async with aclosing(stream):  # (closed at once when the client goes away)
            async for out in stream:
                if live.decode_worker != at:  # resumed (or failed over) elsewhere
                    at = live.decode_worker
                    self.routing.moved(rid, live.prefill_worker, at)
                n, now = len(out.token_ids), time.perf_counter()
                served.token_ids.extend(out.token_ids)  # (before the next read: a resume's)
                if n and served.first_at is None:
                    served.first_at = now
                    self._progress(rid, stages, 1, out.text if n == 1 else "", now, first=True)
                    if n > 1:
                        self._progress(rid, stages, n, out.text, now, new_tokens=n - 1)
                else:
                    self._progress(rid, stages, served.tokens, out.text, now, new_tokens=n)
                if out.token_ids or out.text:
                    yield pb.TokenChunk(token_ids=out.token_ids, text=out.text)
                if out.finish_reason:
                    served.finish_reason = out.finish_reason

    def _progress(
        self,
        rid: str,
        stages: StageTracker,
        generated: int,
        text: str,
        now: float,
        *,
        first: bool = False,
        new_tokens: int = 1,
    ) -> None:
        """Stage accounting and the planner's view of the request's progress."""
        switched = stages.add(new_tokens, text, now)
        if first:
            self.routing.first_token(rid)
        else:
            self.routing.progress(rid, generated)
        if switched:
            self.routing.switch_stage(rid, stages.current.tpot_ms or 0.0)

    def _final(
        self,
        spec: RequestSpec,
        received: float,
        served: Served,
        decision: int,
        results: list[StageResult],
        live: InFlight,
    ) -> pb.Final:
        now = time.perf_counter()
        e2e_ms = 1000 * (now - received)
        first_at = served.first_at
        ttft_ms = 1000 * (first_at - received) if first_at is not None else e2e_ms
        n_tokens = served.tokens
        tpot_ms = (e2e_ms - ttft_ms) / (n_tokens - 1) if n_tokens > 1 else 0.0
        ttft_met = first_at is not None and ttft_ms <= spec.tier.ttft_ms
        staged = len(results) > 1  # judged per stage; the overall TPOT is informational
        if staged:
            head, *rest = results
            tpot_met = head.tpot_ms <= head.tpot_slo_ms and all(r.met for r in rest)
            for r in results:
                self.metrics.stage_done(r.tier, r.met)
        else:
            tpot_met = tpot_ms <= spec.tier.tpot_ms
        finish_reason = served.finish_reason
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
            decision=decision,
            stages=[stage_result_to_proto(r) for r in results] if staged else [],
            prefill_worker=live.prefill_worker,
            decode_worker=live.decode_worker,
            failovers=live.failovers,
            resumes=live.resumes,
        )

    # ------------------------------------------------------------------ others --
    def abort(self, request_id: str) -> bool:
        """Aborts a request in flight; False if there is none of that id."""
        live = self.live.get(request_id)
        if live is None:
            return False
        live.abort()
        return True

    def model_info(self) -> pb.ModelInfoResponse:
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

    def cluster_info(self) -> pb.ClusterInfoResponse:
        return pb.ClusterInfoResponse(
            scheduler=self.scheduler,
            workers=[
                pb.WorkerStatus(address=w.address, role=w.role, healthy=w.healthy, load=w.load,
                                draining=w.draining)
                for w in self.pool.workers
            ],
        )



def _started(spec: RequestSpec, route: Route, verdict: int) -> pb.Started:
    assert route.prefill is not None and route.decode is not None
    return pb.Started(
        decision=verdict,
        tier=spec.tier.name,
        ttft_slo_ms=spec.tier.ttft_ms,
        tpot_slo_ms=spec.tier.tpot_ms,
        prefill_worker=route.prefill.address,
        decode_worker=route.decode.address,
        prompt_tokens=len(spec.prompt_token_ids),
        reason=route.decision.reason if verdict == pb.BEST_EFFORT else "",
    )
