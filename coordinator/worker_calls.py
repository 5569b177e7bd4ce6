"""The coordinator's calls to its workers for one request: prefill and decode (or one local
call that does both on a mixed worker), with failover to another worker of the role while
that is still safe, and the request's Abort RPC reaching the calls in flight."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from coordinator.pool import WorkerHandle, WorkerPool
from proto import slos_serve_pb2 as pb

log = logging.getLogger(__name__)

# Worker failures that another worker may not repeat: try the next one.
RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
PREFILL_ATTEMPTS = 3


class Aborted(Exception):
    """The request was aborted through the Abort RPC."""


class NoWorker(Exception):
    """No healthy worker of the role could take the call (`detail` says why)."""


@dataclass
class InFlight:
    """A request in flight, as Abort needs to see it."""

    calls: list = field(default_factory=list)
    aborted: bool = False
    tier: str | None = None  # set once Started is sent (metrics: in flight until done)
    final: pb.Final | None = None  # the Final sent, if any
    record: pb.Final | None = None  # how far it got, sent or not (the request log's)

    def abort(self) -> None:
        self.aborted = True
        self.cancel_calls()

    def cancel_calls(self) -> None:
        """No-op for calls already done; frees worker resources if we were cancelled."""
        for call in self.calls:
            call.cancel()


def task_cancelling() -> bool:
    """True when this task itself is being cancelled (the client went away)."""
    task = asyncio.current_task()
    return bool(task is not None and task.cancelling())


async def prefill(
    pool: WorkerPool, request: pb.PrefillRequest, worker: WorkerHandle | None, live: InFlight
) -> pb.PrefillResponse:
    """Prefill on `worker`; if it is unreachable, on the next healthy one. NoWorker when
    none could serve."""
    tried: set[str] = set()
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
            if live.aborted and not task_cancelling():
                raise Aborted() from None
            raise
        except grpc.RpcError as err:
            if live.aborted:
                raise Aborted() from None
            if err.code() not in RETRYABLE:
                raise
            worker.healthy = False
            last_error = err
            log.warning("prefill worker %s unavailable; trying another", worker.address)
            worker = pool.pick("prefill", exclude=tried)
    raise NoWorker(last_error.details() if last_error else "none is healthy")


async def decode(
    pool: WorkerPool, request: pb.DecodeRequest, worker: WorkerHandle, live: InFlight
) -> AsyncIterator[pb.DecodeResponse]:
    """Streams from `worker`; if it is unreachable before its first token, from another
    (a local request: another mixed worker, which prefills it again).

    Failing over is safe only before any decode output: the prefill worker
    still holds the KV until a decoder has read it, and the client has no token yet.
    """
    tried = {worker.address}
    kind = "mixed" if request.local else "decode"
    while True:
        call = worker.stub.Decode(request)
        live.calls.append(call)
        received = False
        try:
            async for out in _read_stream(call, live):
                received = True
                yield out
            return
        except grpc.RpcError as err:
            spare = pool.pick(kind, exclude=tried)
            if received or err.code() not in RETRYABLE or spare is None:
                raise
            worker.healthy = False
            log.warning("decode worker %s unavailable; trying %s", worker.address,
                        spare.address)
            worker = spare
            tried.add(worker.address)


async def _read_stream(call, live: InFlight) -> AsyncIterator[pb.DecodeResponse]:
    try:
        async for out in call:
            yield out
    except asyncio.CancelledError:
        if live.aborted and not task_cancelling():
            raise Aborted() from None
        raise
    except grpc.RpcError:
        if live.aborted:
            raise Aborted() from None
        raise
