"""What the sync and asyncio clients share: channel, stubs, deadline, metadata; and their
streams' state and cancellation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from proto import slos_serve_pb2_grpc as pb_grpc
from slos_serve.client.channel import ChannelOptions, TlsConfig, make_channel, resolve_tls
from slos_serve.client.types import Completion, Started, StreamAssembler
from slos_serve.config import API_KEY_ENV
from slos_serve.errors import Cancelled


class ClientBase:
    """Holds what both clients configure identically, so they cannot drift apart."""

    _aio = False

    def __init__(
        self,
        target: str,
        *,
        tls: TlsConfig | bool | None = None,
        timeout: float | None = None,
        options: ChannelOptions | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        wait_for_ready: bool | None = None,
        api_key: str | None = None,
    ) -> None:
        if not target or not isinstance(target, str):
            raise ValueError("target must be a non-empty 'host:port' string")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be > 0 seconds (or None for no deadline)")
        self.target = target
        self.tls = resolve_tls(tls)
        self.timeout = timeout
        self.options = options or ChannelOptions()
        # The coordinator's `--api-key`, sent as `authorization: Bearer` (default: the
        # same environment variable the coordinator reads; neither: no key sent).
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        auth = (("authorization", f"Bearer {key}"),) if key else ()
        self.metadata = (*auth, *metadata)
        self.wait_for_ready = wait_for_ready
        self._channel: Any = make_channel(target, self.tls, self.options, aio=self._aio)
        # The generated stubs serve sync and grpc.aio channels alike.
        self._stub = pb_grpc.SloServeStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    @property
    def channel(self) -> Any:
        """The underlying grpc channel (for stubs of other services on the same connection)."""
        return self._channel

    def _call_kwargs(self, timeout: float | None) -> dict[str, Any]:
        """Per-call kwargs: the call's timeout, else the client's default deadline."""
        kw: dict[str, Any] = {"timeout": timeout if timeout is not None else self.timeout}
        if self.metadata:
            kw["metadata"] = self.metadata
        if self.wait_for_ready is not None:
            kw["wait_for_ready"] = self.wait_for_ready
        return kw

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(target={self.target!r}, tls={self.tls is not None}, "
            f"timeout={self.timeout})"
        )


class StreamBase:
    """State and cancellation of a running Generate call, shared by `GenerateStream` and
    `AsyncGenerateStream` (which differ only in how they read the call)."""

    def __init__(self, call: Any) -> None:
        self._call = call  # a grpc (or grpc.aio) unary-stream call
        self._asm = StreamAssembler()
        self._done = False
        self._iterated = False
        self._cancelled_here = False

    @property
    def request_id(self) -> str:
        """The coordinator's id for the request ("" until the first message arrives)."""
        return self._asm.request_id

    @property
    def started(self) -> Started | None:
        return self._asm.started

    @property
    def completion(self) -> Completion | None:
        """The Completion, once the stream has ended successfully."""
        return self._asm.completion

    @property
    def done(self) -> bool:
        return self._done

    def _ended(self) -> bool:
        """True once the stream is over; raises `Cancelled` if this client cancelled it
        before its Completion."""
        if self._done and self._cancelled_here and self._asm.completion is None:
            raise Cancelled(grpc.StatusCode.CANCELLED, "cancelled by the client")
        return self._done

    def cancel(self) -> bool:
        """Cancel the RPC if it is still running; True if this call cancelled it."""
        if self._done:
            return False
        self._done = True
        self._cancelled_here = True
        return bool(self._call.cancel())

    def __del__(self) -> None:
        # Dropping an unread stream must not leave the request running on the cluster.
        if not getattr(self, "_done", True):
            try:
                self._call.cancel()
            except Exception:  # noqa: BLE001 - interpreter shutdown or loop closed
                pass
