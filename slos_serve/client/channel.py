"""Channel construction shared by the sync and asyncio clients: TLS and channel options.

Kept apart from the clients so both build byte-identical channels, and so the TLS and
option handling can be tested without a server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "ChannelOptions", "TlsConfig"]

# Prompts arrive as text or token ids; 64 MiB fits any context length with room to spare,
# while gRPC's 4 MiB default receive limit could cut off a long prompt's token-id list.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def _read(path: str | Path | None) -> bytes | None:
    return Path(path).read_bytes() if path is not None else None


@dataclass(frozen=True)
class TlsConfig:
    """TLS settings for a secure channel.

    All fields optional: `TlsConfig()` means "TLS with the system's root certificates".
    `root_certificates` pins the CA (e.g. a private cluster CA); `certificate_chain` +
    `private_key` enable mutual TLS; `server_name` overrides the name checked against the
    server certificate (useful when dialling an IP address).
    """

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("mutual TLS needs both a client certificate chain and its key")

    @classmethod
    def from_files(
        cls,
        root_certificates: str | Path | None = None,
        certificate_chain: str | Path | None = None,
        private_key: str | Path | None = None,
        server_name: str | None = None,
    ) -> TlsConfig:
        """Read PEM files (the usual way certificates are deployed)."""
        return cls(
            root_certificates=_read(root_certificates),
            certificate_chain=_read(certificate_chain),
            private_key=_read(private_key),
            server_name=server_name,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        """The grpc channel credentials for `grpc.secure_channel`."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


@dataclass(frozen=True)
class ChannelOptions:
    """gRPC channel options, named.

    Keepalive is off by default: a client pinging more often than the server allows
    (gRPC servers default to one ping per 5 minutes without data) gets disconnected with
    "too_many_pings", so only turn it on against a server configured to accept it.
    `extra` passes any other raw `(key, value)` grpc option through unchanged.
    """

    max_send_message_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES
    max_receive_message_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES
    keepalive_time_ms: int | None = None
    keepalive_timeout_ms: int | None = None
    keepalive_permit_without_calls: bool = False
    extra: Sequence[tuple[str, Any]] = ()

    def to_grpc(self, tls: TlsConfig | None = None) -> list[tuple[str, Any]]:
        """The option list for grpc.*_channel (TLS adds the target-name override)."""
        opts: list[tuple[str, Any]] = []
        if self.max_send_message_bytes is not None:
            opts.append(("grpc.max_send_message_length", int(self.max_send_message_bytes)))
        if self.max_receive_message_bytes is not None:
            opts.append(("grpc.max_receive_message_length", int(self.max_receive_message_bytes)))
        if self.keepalive_time_ms is not None:
            opts.append(("grpc.keepalive_time_ms", int(self.keepalive_time_ms)))
            opts.append(
                ("grpc.keepalive_permit_without_calls", int(self.keepalive_permit_without_calls))
            )
        if self.keepalive_timeout_ms is not None:
            opts.append(("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_ms)))
        if tls is not None and tls.server_name:
            opts.append(("grpc.ssl_target_name_override", tls.server_name))
        opts.extend(self.extra)
        return opts


def resolve_tls(tls: TlsConfig | bool | None) -> TlsConfig | None:
    """`True` means TLS with system roots; `False`/`None` a plaintext channel."""
    if tls is True:
        return TlsConfig()
    if tls is False or tls is None:
        return None
    if isinstance(tls, TlsConfig):
        return tls
    raise TypeError(f"tls must be a TlsConfig or bool, not {type(tls).__name__}")


def make_channel(
    target: str,
    tls: TlsConfig | None,
    options: ChannelOptions,
    *,
    aio: bool,
) -> Any:
    """A sync `grpc.Channel` or a `grpc.aio.Channel`, secure iff `tls` is given."""
    opts = options.to_grpc(tls)
    mod: Any = grpc.aio if aio else grpc
    if tls is not None:
        return mod.secure_channel(target, tls.credentials(), options=opts)
    return mod.insecure_channel(target, options=opts)
