"""The client-facing SloServe gRPC service: a thin edge over coordinator/frontend.py.

It only maps: a `Refused` becomes the gRPC status of the same name, and with an API key
set (`--api-key`) a call without `authorization: Bearer KEY` metadata ends UNAUTHENTICATED
(the health and reflection services stay open: they are other services). The membership
RPCs (AddWorker, RemoveWorker: coordinator/membership.py) are behind the same key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc

from coordinator import membership
from coordinator.auth import ApiKey
from coordinator.frontend import Frontend, Refused
from proto import slos_serve_pb2 as pb
from proto import slos_serve_pb2_grpc as pb_grpc


class CoordinatorService(pb_grpc.SloServeServicer):
    def __init__(self, front: Frontend, api_key: ApiKey | None = None) -> None:
        self.front = front
        self.api_key = api_key

    async def _check(self, context: grpc.aio.ServicerContext) -> None:
        if self.api_key is None:
            return
        auth = dict(context.invocation_metadata() or ()).get("authorization")
        problem = self.api_key.problem(auth)
        if problem:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)

    async def Generate(self, request, context) -> AsyncIterator[pb.GenerateResponse]:
        await self._check(context)
        try:
            async with aclosing(self.front.generate(request)) as responses:
                async for response in responses:
                    yield response
        except Refused as exc:
            await context.abort(getattr(grpc.StatusCode, exc.code), exc.message)

    async def Abort(self, request, context):
        await self._check(context)
        return pb.AbortResponse(found=self.front.abort(request.request_id))

    async def ModelInfo(self, request, context):
        await self._check(context)
        return self.front.model_info()

    async def ClusterInfo(self, request, context):
        await self._check(context)
        return self.front.cluster_info()

    async def AddWorker(self, request, context):
        await self._check(context)
        if not request.address:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "address: required")
        try:
            return membership.add(self.front, request.address, request.role)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def RemoveWorker(self, request, context):
        await self._check(context)
        return await membership.remove(self.front, request.address, request.drain_timeout_s)
