"""What `Client` and `AsyncClient` share: channel, stubs, deadline, metadata."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grpc_health.v1 import health_pb2_grpc

from proto import slos_serve_pb2_grpc as pb_grpc
from slos_serve.client.channel import ChannelOptions, TlsConfig, make_channel, resolve_tls


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
    ) -> None:
        if not target or not isinstance(target, str):
            raise ValueError("target must be a non-empty 'host:port' string")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be > 0 seconds (or None for no deadline)")
        self.target = target
        self.tls = resolve_tls(tls)
        self.timeout = timeout
        self.options = options or ChannelOptions()
        self.metadata = tuple(metadata)
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
