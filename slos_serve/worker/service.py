"""The Worker gRPC service, one implementation for every role.

The role decides which of Prefill / Decode a worker accepts ("mixed" takes both, and local
Decodes: prefill and decode of one request on this worker; a decode worker takes the local
Decodes that resume a request whose decode worker failed, recomputed); everything else (abort, load
reports, drain, error mapping) is shared.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc

from decode_worker.decode import decode
from prefill_worker.held import HeldKv
from prefill_worker.prefill import prefill
from proto import slos_serve_pb2 as pb
from proto import slos_serve_pb2_grpc as pb_grpc
from slos_serve.engine import Engine
from slos_serve.metrics import WorkerMetrics
from slos_serve.wire import info_to_proto, load_to_proto, plan_from_proto

log = logging.getLogger(__name__)

ROLES = ("prefill", "decode", "mixed")
# The calls each role takes: "mixed" is a local request (prefill and decode here), "resume"
# a local decode that resumes a request whose decode worker failed mid-stream (recomputed):
# a decode worker takes it too, or a lost decode would have nowhere to go.
ACCEPTS = {"prefill": ("prefill",), "decode": ("decode", "resume"),
           "mixed": ("prefill", "decode", "mixed", "resume")}


class WorkerService(pb_grpc.WorkerServicer):
    def __init__(self, role: str, engine: Engine, metrics: WorkerMetrics | None = None) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        self.role = role
        self.engine = engine
        self.metrics = metrics if metrics is not None else WorkerMetrics(role, "")
        self.active: set[str] = set()
        self.draining = False
        self.held = HeldKv(engine.release_handoffs)  # hand-offs not known to be read

    async def _admit(self, context: grpc.aio.ServicerContext, stage: str, request_id: str) -> None:
        """`stage`: one of ACCEPTS' calls."""
        if stage not in ACCEPTS[self.role]:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this is a {self.role} worker; it does not serve "
                f"{'local requests' if stage == 'mixed' else stage}",
            )
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "worker is draining")
        if dead := self.engine.dead():
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"this worker's engine died: {dead}")
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
            if response.HasField("handoff"):
                self.held.record(request.request_id, response.handoff.remote_request_id)
            return response
        except Exception as exc:  # every failure reaches the caller as a status
            outcome = "error"
            await _abort_from(context, exc, request.request_id, self.engine.dead())
        finally:
            self.active.discard(request.request_id)
            self.metrics.request_served("prefill", outcome)

    async def Decode(self, request, context) -> AsyncIterator[pb.DecodeResponse]:
        """A hand-off's decode, or (`local`, mixed workers only) the whole request: then it
        counts as one prefill served once its first token is out, and one decode."""
        stage = "decode"
        if request.local:
            stage = "resume" if request.resume_token_ids else "mixed"
        await self._admit(context, stage, request.request_id)
        self.active.add(request.request_id)
        outcome, first_out = "cancelled", stage != "mixed"
        try:
            async for response in decode(self.engine, request, self.metrics):
                if not first_out and response.token_ids:
                    first_out = True
                    self.metrics.request_served("prefill", "ok")
                yield response
            outcome = "ok"
        except asyncio.CancelledError:
            log.info("decode %s cancelled by the caller", request.request_id)
            raise
        except Exception as exc:
            outcome = "error"
            await _abort_from(context, exc, request.request_id, self.engine.dead())
        finally:
            self.active.discard(request.request_id)
            if first_out:
                self.metrics.request_served("decode", outcome)
            else:  # a local request that ended before its first token
                self.metrics.request_served("prefill", outcome)

    async def Abort(self, request, context):
        """Ends the request here, and frees its hand-off's KV if this worker holds it."""
        found = request.request_id in self.active
        await self.engine.abort(request.request_id)
        released = await self.held.release(request.request_id)
        return pb.WorkerAbortResponse(found=found or released > 0)

    async def GetLoad(self, request, context):
        if dead := self.engine.dead():
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"this worker's engine died: {dead}")
        return load_to_proto(self.engine.load(), self.role, len(self.active), self.draining,
                             self.metrics.handoffs.summary())

    async def SetPlan(self, request, context):
        try:
            self.engine.set_plan(plan_from_proto(request))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:  # the plan is advisory: never take the worker down
            log.exception("SetPlan failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        return pb.WorkerPlanAck(applied=True)

    async def GetInfo(self, request, context):
        return info_to_proto(self.engine.info, self.role)

    async def Drain(self, request, context):
        self.draining = True
        deadline = time.monotonic() + (request.timeout_s or 30.0)
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return pb.DrainResponse(remaining=len(self.active))


async def _abort_from(context: grpc.aio.ServicerContext, exc: Exception, request_id: str,
                      engine_dead: str = "") -> None:
    """A failure as the caller's status: the engine's death is UNAVAILABLE (another worker
    serves the request), a bad argument INVALID_ARGUMENT, anything else INTERNAL, logged."""
    if engine_dead:
        await context.abort(grpc.StatusCode.UNAVAILABLE,
                            f"this worker's engine died: {engine_dead}")
    if isinstance(exc, ValueError):
        code = grpc.StatusCode.INVALID_ARGUMENT
    else:
        code = grpc.StatusCode.INTERNAL
        log.exception("request %s failed", request_id)
    await context.abort(code, f"{type(exc).__name__}: {exc}")
