"""The Worker gRPC service, one implementation for every role.

The role decides which of Prefill / Decode a worker accepts ("mixed" takes
both); everything else (abort, load reports, drain, error mapping) is shared.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc

from decode_worker.decode import decode
from prefill_worker.prefill import prefill
from proto import slos_serve_pb2 as pb
from proto import slos_serve_pb2_grpc as pb_grpc
from slos_serve.engine import Engine
from slos_serve.metrics import WorkerMetrics
from slos_serve.wire import engine_plan

log = logging.getLogger(__name__)

ROLES = ("prefill", "decode", "mixed")


class WorkerService(pb_grpc.WorkerServicer):
    def __init__(self, role: str, engine: Engine, metrics: WorkerMetrics | None = None) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        self.role = role
        self.engine = engine
        self.metrics = metrics if metrics is not None else WorkerMetrics(role, "")
        self.active: set[str] = set()
        self.draining = False

    async def _admit(self, context: grpc.aio.ServicerContext, stage: str, request_id: str) -> None:
        if self.role not in (stage, "mixed"):
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this is a {self.role} worker; it does not serve {stage}",
            )
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "worker is draining")
        if not request_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request_id: must be set")
        if request_id in self.active:
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS, f"request_id: {request_id!r} is already running"
            )

    async def Prefill(self, request, context):
        await self._admit(context, "prefill", request.request_id)
        self.active.add(request.request_id)
        outcome = "cancelled"
        try:
            response = await prefill(self.engine, request)
            outcome = "ok"
            return response
        except Exception as exc:  # every failure reaches the caller as a status
            outcome = "error"
            await _abort_from(context, exc, request.request_id)
        finally:
            self.active.discard(request.request_id)
            self.metrics.request_served("prefill", outcome)

    async def Decode(self, request, context) -> AsyncIterator[pb.DecodeResponse]:
        await self._admit(context, "decode", request.request_id)
        self.active.add(request.request_id)
        outcome = "cancelled"
        try:
            async for response in decode(self.engine, request, self.metrics):
                yield response
            outcome = "ok"
        except asyncio.CancelledError:
            log.info("decode %s cancelled by the caller", request.request_id)
            raise
        except Exception as exc:
            outcome = "error"
            await _abort_from(context, exc, request.request_id)
        finally:
            self.active.discard(request.request_id)
            self.metrics.request_served("decode", outcome)

    async def Abort(self, request, context):
        found = request.request_id in self.active
        await self.engine.abort(request.request_id)
        return pb.WorkerAbortResponse(found=found)

    async def GetLoad(self, request, context):
        load = self.engine.load()
        return pb.LoadReport(
            role=self.role,
            running=load.running,
            waiting=load.waiting,
            kv_blocks_total=load.kv_blocks_total,
            kv_blocks_used=load.kv_blocks_used,
            kv_usage=load.kv_usage,
            steps=load.steps,
            mean_step_ms=load.mean_step_ms,
            spec_acceptance=load.spec_acceptance,
            active_requests=len(self.active),
            draining=self.draining,
            spec=[
                pb.TierSpecStats(tpot_ms=t.tpot_ms, tier=t.tier, steps=t.steps,
                                 drafted=t.drafted, accepted=t.accepted,
                                 spec_tokens=t.spec_tokens)
                for t in getattr(load, "spec", ())
            ],
            scheduler=getattr(load, "scheduler", ""),
            last_step_ms=getattr(load, "last_step_ms", 0.0),
        )

    async def SetPlan(self, request, context):
        try:
            self.engine.set_plan(engine_plan(request))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:  # the plan is advisory: never take the worker down
            log.exception("SetPlan failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        return pb.WorkerPlanAck(applied=True)

    async def GetInfo(self, request, context):
        info = self.engine.info
        return pb.WorkerInfo(
            role=self.role,
            engine=info.kind,
            model=info.model,
            max_model_len=info.max_model_len,
            block_size=info.block_size,
            engine_id=info.engine_id,
            max_spec_tokens=info.max_spec_tokens,
            scheduler=info.scheduler,
        )

    async def Drain(self, request, context):
        self.draining = True
        deadline = time.monotonic() + (request.timeout_s or 30.0)
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return pb.DrainResponse(remaining=len(self.active))


async def _abort_from(context: grpc.aio.ServicerContext, exc: Exception, request_id: str) -> None:
    if isinstance(exc, ValueError):
        code = grpc.StatusCode.INVALID_ARGUMENT
    else:
        code = grpc.StatusCode.INTERNAL
        log.exception("request %s failed", request_id)
    await context.abort(code, f"{type(exc).__name__}: {exc}")
