"""The blocking client: `Client` and its `GenerateStream`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
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
from slos_serve.errors import ProtocolError, from_rpc_error

__all__ = ["Client", "GenerateStream"]

T = TypeVar("T")


class GenerateStream(StreamBase):
    """A running Generate call: iterate it for `Started`, `Chunk`..., then `Completion`.

    Iterating gives a generator; when that generator is closed before the stream's end
    (a `break` out of the `for` loop, an exception in its body, `close()` on it) the RPC
    is cancelled, so the coordinator aborts the request on its workers and frees their KV
    blocks instead of generating tokens nobody reads. `cancel()`/`close()` and the
    context-manager exit do the same explicitly. A stream is read once.

    Errors surface as `SloServeError` subclasses while iterating.
    """

    def __init__(self, call: Any) -> None:
        super().__init__(call)  # grpc's _MultiThreadedRendezvous: an iterator and a grpc.Call
        self._lock = threading.Lock()

    # -- reading -----------------------------------------------------------------------

    def _next_event(self) -> Event | None:
        """The next event, or None at the (successful) end of the stream."""
        if self._ended():
            return None
        try:
            msg = next(self._call)
        except StopIteration:
            self._done = True
            raise self._asm.end_without_final() from None
        except grpc.RpcError as err:
            self._done = True
            raise from_rpc_error(err) from err
        try:
            event = self._asm.feed(msg)
            if event is self._asm.completion:
                self._expect_end()
        except ProtocolError:
            self.cancel()
            raise
        return event

    def _expect_end(self) -> None:
        """After Final, read the status: the Completion only counts if the RPC ended OK.

        Reading to the end (rather than stopping at Final) also keeps the server from seeing
        a cancellation for a request that completed.
        """
        try:
            next(self._call)
        except StopIteration:
            self._done = True
            return
        except grpc.RpcError as err:
            self._done = True
            raise from_rpc_error(err) from err
        raise ProtocolError("message after Final")

    def __iter__(self) -> Iterator[Event]:
        with self._lock:
            if self._iterated:
                raise RuntimeError("a GenerateStream can be iterated only once")
            self._iterated = True
        return self._events()

    def _events(self) -> Iterator[Event]:
        try:
            while (event := self._next_event()) is not None:
                yield event
        finally:
            self.cancel()  # no-op when the stream has ended

    def collect(self) -> Completion:
        """Read the stream to its end and return the Completion."""
        for _ in self:
            pass
        assert self._asm.completion is not None  # _next_event raises otherwise
        return self._asm.completion

    # -- cancelling --------------------------------------------------------------------

    close = StreamBase.cancel

    def __enter__(self) -> GenerateStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class Client(ClientBase):
    """Blocking client of a slos-serve coordinator.

    >>> with Client("localhost:50051", timeout=60) as c:
    ...     out = c.generate("def fib(n):", max_tokens=32, tier="interactive")
    ...     print(out.text, out.ttft_ms, out.slo_met)

    `timeout` is the default deadline of every call in seconds (None: no deadline); each
    method's `timeout` overrides it for that call. `tls=True` uses the system roots; a
    `TlsConfig` pins roots and/or enables mutual TLS. `metadata` is sent with every call;
    `api_key` (default: $SLOS_SERVE_API_KEY) as `authorization: Bearer KEY`. Thread-safe:
    one Client can serve many threads.
    """

    _aio = False

    def _unary(self, fn: Callable[..., T], request: Any, timeout: float | None) -> T:
        try:
            return fn(request, **self._call_kwargs(timeout))
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    @takes_generate_options
    def stream(
        self, prompt: Prompt, *, timeout: float | None = None, **options: Any
    ) -> GenerateStream:
        """Start a Generate call; iterate the returned stream for its events.

        The keywords are `GenerateOptions`' fields: `max_tokens`, sampling, the SLO (a `tier`
        name, or explicit `ttft_ms`/`tpot_ms`, or both if they agree), `stages`, and
        `on_reject` (if the planner cannot admit the request on time: serve it best-effort
        or fail with `Rejected`). `timeout` overrides the client's deadline for this call.
        """
        req = build_generate_request(prompt, **options)
        return GenerateStream(self._stub.Generate(req, **self._call_kwargs(timeout)))

    @takes_generate_options
    def generate(
        self, prompt: Prompt, *, timeout: float | None = None, **options: Any
    ) -> Completion:
        """Generate and wait for the whole output (see `stream` for the arguments)."""
        return self.stream(prompt, timeout=timeout, **options).collect()

    def abort(self, request_id: str, *, timeout: float | None = None) -> bool:
        """Abort a running request by id (e.g. from another process); True if it was found."""
        resp = self._unary(self._stub.Abort, pb.AbortRequest(request_id=request_id), timeout)
        return resp.found

    def model_info(self, *, timeout: float | None = None) -> ModelInfo:
        """The served model and its SLO tier table."""
        return ModelInfo.from_proto(
            self._unary(self._stub.ModelInfo, pb.ModelInfoRequest(), timeout)
        )

    def cluster_info(self, *, timeout: float | None = None) -> ClusterInfo:
        """The coordinator's workers, their health and load."""
        return ClusterInfo.from_proto(
            self._unary(self._stub.ClusterInfo, pb.ClusterInfoRequest(), timeout)
        )

    def health(self, service: str = "", *, timeout: float | None = None) -> HealthStatus:
        """grpc.health.v1 Check ("" = the server as a whole). An unknown service raises
        `NotFound`, per the health protocol."""
        resp = self._unary(
            self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout
        )
        return HealthStatus(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

    def close(self) -> None:
        """Close the channel; running calls are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
