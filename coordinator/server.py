"""The client-facing SloServe service: validate, decide, route, prefill, hand off, decode.

One request: the planner's decision (admitted or best effort: Started; rejected:
RESOURCE_EXHAUSTED) -> the prefill worker's first token, sent at once (TTFT ends
here) -> the decode worker's tokens after the first -> Final with measured TTFT /
TPOT and the verdict per stage. Every request ends with a Final, a status the
client can see, or the client's own cancellation.

Two schedulers: "slos" (coordinator/admission.py runs the planner on every arrival
and sends each worker its share of the plan) and "vllm" (the baseline: round-robin
routing, everything admitted, the engines schedule as vLLM does).
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

from coordinator.admission import Admission, WorkerPlanRecord, WorkerView
from coordinator.pool import WorkerHandle, WorkerPool
from coordinator.validate import InvalidRequest, ModelFacts, RequestSpec, validate
from proto import slos_serve_pb2 as pb
from proto import slos_serve_pb2_grpc as pb_grpc
from slos_serve.core.planner import Verdict
from slos_serve.core.slo import TierTable
from slos_serve.core.stages import StageTracker
from slos_serve.metrics import CoordinatorMetrics

log = logging.getLogger(__name__)

# Worker failures that another worker may not repeat: try the next one.
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
PREFILL_ATTEMPTS = 3
REPLAN_INTERVAL_S = 0.25  # re-plan (decode cadences, speculation) this often while busy
RESEND_PLANS_S = 5.0  # resend unchanged plans this often (a restarted worker lost them)
_DECISIONS = {"admit": pb.ADMITTED, "best_effort": pb.BEST_EFFORT, "reject": pb.REJECTED}


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
        admission: Admission | None = None,
    ) -> None:
        """`admission` None: the "vllm" baseline (round-robin, everything admitted)."""
        self.pool = pool
        self.tiers = tiers
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.default_on_reject = default_on_reject
        self.live: dict[str, _Live] = {}
        self.metrics = metrics if metrics is not None else CoordinatorMetrics(tiers.tiers)
        self.admission = admission
        self.scheduler = "slos" if admission is not None else "vllm"
        self._sent: dict[str, WorkerPlanRecord] = {}
        self._tasks: set[asyncio.Task] = set()
        self._dirty = False
        self._planner_task: asyncio.Task | None = None

    def start(self) -> None:
        """Starts the periodic re-planning (needs a running event loop)."""
        if self.admission is not None and self._planner_task is None:
            self._planner_task = asyncio.get_running_loop().create_task(self._replan_loop())

    async def stop(self) -> None:
        for task in (self._planner_task, *self._tasks):
            if task is not None:
                task.cancel()
        self._planner_task = None

    # ------------------------------------------------------------ helpers --
    def facts(self) -> ModelFacts:
        lens = [w.info.max_model_len for w in self.pool.workers if w.info is not None]
        return ModelFacts(max_model_len=min(lens) if lens else 0, vocab_size=len(self.tokenizer))

    def _tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def _worker_slo(
        self, spec: RequestSpec, received_unix: float, best_effort: bool
    ) -> pb.WorkerSlo:
        slo = pb.WorkerSlo(
            ttft_deadline_unix=received_unix + spec.tier.ttft_ms / 1000.0,
            tpot_ms=spec.tier.tpot_ms,
            best_effort=best_effort,
            tier=spec.tier.name,
        )
        if len(spec.stages) > 1:
            slo.stages.extend(
                pb.StageSlo(tpot_ms=st.tpot_ms, max_tokens=st.max_tokens, until=st.until)
                for st in spec.stages
            )
        return slo

    # ------------------------------------------------------------ planning --
    def _views(self) -> list[WorkerView]:
        return [
            WorkerView(
                id=w.address,
                role=w.role,
                kv_blocks_total=w.load.kv_blocks_total,
                block_size=w.info.block_size or 16,
                max_spec_tokens=w.info.max_spec_tokens,
                spec={s.tpot_ms / 1000.0: (s.drafted, s.accepted) for s in w.load.spec},
            )
            for w in self.pool.workers
            if w.healthy and w.info is not None and not w.load.draining
        ]

    def _decide(
        self, rid: str, spec: RequestSpec, received_unix: float
    ) -> tuple[Verdict, WorkerHandle | None, WorkerHandle | None]:
        """The decision and the workers: the planner's, or round-robin for "vllm"."""
        if self.admission is None:
            decision = Verdict(rid, "admit", None, None, "")
        else:
            self.admission.set_workers(self._views())
            decision = self.admission.admit(
                rid,
                received_unix,
                received_unix + spec.tier.ttft_ms / 1000.0,
                spec.tier.tpot_ms / 1000.0,
                len(spec.prompt_token_ids),
                spec.sampling.max_tokens,
                spec.on_reject,
            )
            self._push_plans()
        if decision.action == "reject":
            return decision, None, None
        prefill = self._healthy(decision.prefill_worker) or self.pool.pick("prefill")
        decode = self._healthy(decision.decode_worker) or self.pool.pick("decode")
        if self.admission is not None:
            self.admission.route_to(rid, prefill and prefill.address, decode and decode.address)
        return decision, prefill, decode

    def _healthy(self, address: str | None) -> WorkerHandle | None:
        w = self.pool.get(address) if address else None
        return w if w is not None and w.healthy else None

    def _push_plans(self) -> None:
        """Sends each worker its share of the latest plan, when it changed."""
        assert self.admission is not None
        for wid, rec in self.admission.worker_plans().items():
            w = self._healthy(wid)
            if w is None or self._sent.get(wid) == rec:
                continue
            self._sent[wid] = rec
            task = asyncio.get_running_loop().create_task(self._send_plan(w, rec))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send_plan(self, worker: WorkerHandle, rec: WorkerPlanRecord) -> None:
        message = pb.WorkerPlan(
            plan_time_unix=time.time(),
            step_token_budget=rec.step_token_budget,
            tiers=[pb.TierSpec(tpot_ms=t, spec_tokens=k, interval_ms=i) for t, k, i in rec.tiers],
            pace=rec.pace,
        )
        try:
            await worker.stub.SetPlan(message, timeout=2.0)
        except grpc.RpcError as err:
            self._sent.pop(worker.address, None)  # try again with the next plan
            log.debug("plan for %s not delivered: %s", worker.address, err.code())

    async def _replan_loop(self) -> None:
        """Re-plans while requests progress (decode cadences, speculative lengths) and
        resends plans now and then, so a restarted worker gets its share again."""
        assert self.admission is not None
        resent = time.monotonic()
        while True:
            await asyncio.sleep(REPLAN_INTERVAL_S)
            try:
                if time.monotonic() - resent > RESEND_PLANS_S:
                    self._sent.clear()
                    resent = time.monotonic()
                    self._dirty = True
                if self._dirty:
                    self._dirty = False
                    self.admission.set_workers(self._views())
                    self.admission.replan(time.time())
                    self._push_plans()
            except Exception:  # a planning bug must not stop planning for good
                log.exception("re-planning failed")

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
        decision, prefill_worker, decode_worker = self._decide(rid, spec, received_unix)
        if decision.action == "reject":
            self.metrics.request_rejected(spec.tier.name)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rejected by the planner: {decision.reason or 'no capacity'} "
                f"(tier {spec.tier.name!r}; on_reject=REJECT)",
            )
        live = self.live[rid] = _Live()
        failed = False
        try:
            # aclosing: a client that goes away closes the inner stream at once,
            # which cancels the worker calls instead of leaving them to the GC.
            async with aclosing(
                self._serve(rid, spec, live, received, received_unix, context,
                            decision, prefill_worker, decode_worker)
            ) as responses:
                async for response in responses:
                    yield response
        except Exception:  # a status for the client (cancellation is a BaseException)
            failed = True
            raise
        finally:
            del self.live[rid]
            if self.admission is not None:
                self.admission.finish(rid)
                self._dirty = True
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
        decision: Verdict,
        prefill_worker: WorkerHandle | None,
        decode_worker: WorkerHandle | None,
    ) -> AsyncIterator[pb.GenerateResponse]:
        if decode_worker is None or prefill_worker is None:
            role = "decode" if decode_worker is None else "prefill"
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"no healthy {role} worker")
        verdict = _DECISIONS[decision.action]
        slo = self._worker_slo(spec, received_unix, best_effort=verdict == pb.BEST_EFFORT)
        sampling = spec.sampling
        live.tier = spec.tier.name
        self.metrics.request_started(live.tier, pb.Decision.Name(verdict).lower())
        yield pb.GenerateResponse(
            request_id=rid,
            started=pb.Started(
                decision=verdict,
                tier=spec.tier.name,
                ttft_slo_ms=spec.tier.ttft_ms,
                tpot_slo_ms=spec.tier.tpot_ms,
                prefill_worker=prefill_worker.address,
                decode_worker=decode_worker.address,
                prompt_tokens=len(spec.prompt_token_ids),
                reason=decision.reason if verdict == pb.BEST_EFFORT else "",
            ),
        )
        stages = StageTracker(spec.stages, received)
        n_tokens = 0
        finish_reason = "error"
        first_at = None
        try:
            first = await self._prefill(rid, spec, slo, live, prefill_worker, context)
            first_at = time.perf_counter()
            n_tokens = 1
            self._progress(rid, stages, 1, first.first_text, first_at, first=True)
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
                    self._progress(rid, stages, n_tokens, out.text, time.perf_counter(),
                                   new_tokens=len(out.token_ids))
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
        live.final = self._final(spec, received, first_at, n_tokens, finish_reason, verdict,
                                 stages)
        yield pb.GenerateResponse(request_id=rid, final=live.final)

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
        if self.admission is None:
            return
        if first:
            self.admission.first_token(rid, time.time())
            self._dirty = True
        else:
            self.admission.progress(rid, generated)
        if switched:
            self.admission.switch_stage(rid, stages.current.tpot_ms / 1000.0, time.time())
            self._dirty = True

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
        decision: int,
        stages: StageTracker,
    ) -> pb.Final:
        now = time.perf_counter()
        e2e_ms = 1000 * (now - received)
        ttft_ms = 1000 * (first_at - received) if first_at is not None else e2e_ms
        tpot_ms = (e2e_ms - ttft_ms) / (n_tokens - 1) if n_tokens > 1 else 0.0
        ttft_met = first_at is not None and ttft_ms <= spec.tier.ttft_ms
        results = stages.results()
        if len(results) > 1:  # judged per stage; the overall TPOT is informational
            head, *rest = results
            tpot_met = head.tpot_ms <= head.tpot_slo_ms and all(r.met for r in rest)
        else:
            tpot_met = tpot_ms <= spec.tier.tpot_ms
        for r in results if len(results) > 1 else ():
            self.metrics.stage_done(r.tier, r.met)
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
            stages=[
                pb.StageResult(
                    tokens=r.tokens, tpot_ms=r.tpot_ms, tpot_slo_ms=r.tpot_slo_ms,
                    slo_met=r.met, tier=r.tier, first_token_ms=r.first_token_ms,
                    ttft_slo_ms=r.ttft_slo_ms,
                )
                for r in results
            ] if len(results) > 1 else [],
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
            scheduler=self.scheduler,
            workers=[
                pb.WorkerStatus(address=w.address, role=w.role, healthy=w.healthy, load=w.load)
                for w in self.pool.workers
            ],
        )


def _task_cancelling() -> bool:
    """True when this task itself is being cancelled (the client went away)."""
    task = asyncio.current_task()
    return bool(task is not None and task.cancelling())
