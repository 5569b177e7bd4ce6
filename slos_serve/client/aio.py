"""The asyncio client: `AsyncClient` (grpc.aio) and its `AsyncGenerateStream`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2

from proto import slos_serve_pb2 as pb
from slos_serve.client._base import ClientBase, StreamBase
from slos_serve.client.request import Prompt, build_generate_request, takes_generate_options
from slos_serve.client.types import (
    ClusterInfo,
    Completion,
    Event,
    HealthStatus,
    ModelInfo,
)
from slos_serve.errors import Cancelled, ProtocolError, from_rpc_error

__all__ = ["AsyncClient", "AsyncGenerateStream"]

T = TypeVar("T")


def _task_is_cancelling() -> bool:
    """True when the current task itself is being cancelled (Python >= 3.11 can tell)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if callable(cancelling) else False


class AsyncGenerateStream(StreamBase):
    """A running Generate call: `async for` it for `Started`, `Chunk`..., then `Completion`.

    Same contract as the sync `GenerateStream`: leaving the `async for` early (break,
    exception) cancels the RPC once the loop's iterator is released, `cancel()`, `aclose()`
    and `async with` do so at once, and errors surface as `SloServeError` subclasses. A
    cancellation this client made surfaces as `Cancelled`, not as `asyncio.CancelledError`,
    unless the awaiting task itself is being cancelled.
    """

    async def _read(self) -> Any:
        try:
            return await self._call.read()
        except grpc.RpcError as err:
            self._done = True
            raise from_rpc_error(err) from err
        except asyncio.CancelledError:
            # grpc.aio raises CancelledError on reading a call cancelled locally; when that
            # was our cancel() and not the task's own cancellation, report it as the SDK's
            # typed error, as the sync client does.
            if self._cancelled_here and not _task_is_cancelling():
                raise Cancelled(grpc.StatusCode.CANCELLED, "cancelled by the client") from None
            self.cancel()
            raise

    async def _next_event(self) -> Event | None:
        """The next event, or None at the (successful) end of the stream."""
        if self._ended():
            return None
        msg = await self._read()
        if msg is grpc.aio.EOF:
            self._done = True
            raise self._asm.end_without_final()
        try:
            event = self._asm.feed(msg)
            if event is self._asm.completion:
                # Read the status too: the Completion only counts if the RPC ended OK.
                if await self._read() is not grpc.aio.EOF:
                    raise ProtocolError("message after Final")
                self._done = True
        except ProtocolError:
            self.cancel()
            raise
        return event

    def __aiter__(self) -> _AsyncEventIterator:
        if self._iterated:
            raise RuntimeError("an AsyncGenerateStream can be iterated only once")
        self._iterated = True
        return _AsyncEventIterator(self)

    async def collect(self) -> Completion:
        """Read the stream to its end and return the Completion."""
        try:
            async for _ in self:
                pass
        finally:
            self.cancel()  # e.g. the awaiting task was cancelled; no-op after the end
        assert self._asm.completion is not None  # _next_event raises otherwise
        return self._asm.completion

    async def aclose(self) -> None:
        self.cancel()

    async def __aenter__(self) -> AsyncGenerateStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()


class _AsyncEventIterator:
    """The iterator `async for` holds. A class with `__del__`, not an async generator,
    because an abandoned async generator is only finalised later by the event loop, while
    this cancels the RPC as soon as the loop lets go of it."""

    def __init__(self, stream: AsyncGenerateStream) -> None:
        self._stream = stream

    def __aiter__(self) -> _AsyncEventIterator:
        return self

    async def __anext__(self) -> Event:
        event = await self._stream._next_event()
        if event is None:
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        self._stream.cancel()

    def __del__(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream is not None:
            stream.cancel()


class AsyncClient(ClientBase):
    """asyncio client of a slos-serve coordinator (grpc.aio); create it inside the loop.

    >>> async with AsyncClient("localhost:50051", timeout=60) as c:
    ...     async for ev in c.stream("def fib(n):", max_tokens=32, tier="interactive"):
    ...         print(ev)

    Arguments and results are those of `Client`; methods are coroutines except `stream`,
    which returns an async-iterable `AsyncGenerateStream` at once.
    """

    _aio = True

    async def _unary(
        self, fn: Callable[..., Awaitable[T]], request: Any, timeout: float | None
    ) -> T:
        try:
            return await fn(request, **self._call_kwargs(timeout))
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    @takes_generate_options
    def stream(
        self, prompt: Prompt, *, timeout: float | None = None, **options: Any
    ) -> AsyncGenerateStream:
        """Start a Generate call (see `Client.stream`); `async for` the result."""
        req = build_generate_request(prompt, **options)
        return AsyncGenerateStream(self._stub.Generate(req, **self._call_kwargs(timeout)))

    @takes_generate_options
    async def generate(
        self, prompt: Prompt, *, timeout: float | None = None, **options: Any
    ) -> Completion:
        """Generate and wait for the whole output (see `Client.stream` for the arguments)."""
        return await self.stream(prompt, timeout=timeout, **options).collect()

    async def abort(self, request_id: str, *, timeout: float | None = None) -> bool:
        """Abort a running request by id; True if it was found."""
        resp = await self._unary(
            self._stub.Abort, pb.AbortRequest(request_id=request_id), timeout
        )
        return resp.found

    async def model_info(self, *, timeout: float | None = None) -> ModelInfo:
        """The served model and its SLO tier table."""
        return ModelInfo.from_proto(
            await self._unary(self._stub.ModelInfo, pb.ModelInfoRequest(), timeout)
        )

    async def cluster_info(self, *, timeout: float | None = None) -> ClusterInfo:
        """The coordinator's workers, their health and load."""
        return ClusterInfo.from_proto(
            await self._unary(self._stub.ClusterInfo, pb.ClusterInfoRequest(), timeout)
        )

    async def health(self, service: str = "", *, timeout: float | None = None) -> HealthStatus:
        """grpc.health.v1 Check ("" = the server as a whole); unknown service: `NotFound`."""
        resp = await self._unary(
            self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout
        )
        return HealthStatus(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

    async def close(self, grace: float | None = None) -> None:
        """Close the channel; running calls are cancelled (after `grace` seconds if given)."""
        await self._channel.close(grace)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
