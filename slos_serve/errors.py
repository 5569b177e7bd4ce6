"""Typed client-side errors, mapped from gRPC status codes.

The coordinator reports every failure as a gRPC status (design: "bad input gets a clear
gRPC status ... no request is lost silently"). Callers should not have to compare
`grpc.StatusCode` values or know that a message-too-large error and a planner refusal share
RESOURCE_EXHAUSTED: they catch `InvalidRequest`, `Rejected`, `Unavailable`, ... instead. The
server's details string is kept verbatim, because it names the offending field.

This module is client-side only and imports nothing beyond grpc.
"""

from __future__ import annotations

import grpc

__all__ = [
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidRequest",
    "NotFound",
    "ProtocolError",
    "Rejected",
    "SloServeError",
    "Unavailable",
    "from_rpc_error",
]


class SloServeError(Exception):
    """Base of every error the SDK raises for a failed call.

    `code` is the gRPC status code (None only if the failure never had one), `details` the
    server's (or gRPC's) message, unchanged. Codes without a dedicated subclass
    (UNIMPLEMENTED, PERMISSION_DENIED, UNAUTHENTICATED, ABORTED, ...) raise this base class.
    """

    def __init__(self, code: grpc.StatusCode | None, details: str = "") -> None:
        self.code = code
        self.details = details or ""
        super().__init__(self.details)

    @property
    def code_name(self) -> str:
        """The status code's name ("INVALID_ARGUMENT"), for logs and JSON output."""
        return self.code.name if self.code is not None else "NONE"

    def __str__(self) -> str:
        return f"{self.code_name}: {self.details}" if self.details else self.code_name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code_name}, details={self.details!r})"


class InvalidRequest(SloServeError):
    """INVALID_ARGUMENT or OUT_OF_RANGE: the request itself is wrong; retrying won't help."""


class Rejected(SloServeError):
    """RESOURCE_EXHAUSTED: the planner refused the request (it cannot meet its SLO and the
    request asked not to be served best-effort), or a message exceeded the size limit.
    The details say which."""


class Unavailable(SloServeError):
    """UNAVAILABLE: the coordinator (or every worker it needs) cannot be reached; retryable."""


class DeadlineExceeded(SloServeError):
    """DEADLINE_EXCEEDED: the call's deadline passed before the server finished."""


class Cancelled(SloServeError):
    """CANCELLED: the call was cancelled, by this client or by the server."""


class NotFound(SloServeError):
    """NOT_FOUND: e.g. a health check for a service the server does not know."""


class Internal(SloServeError):
    """INTERNAL, UNKNOWN or DATA_LOSS: the server failed; a bug or a crashed worker."""


class FailedPrecondition(SloServeError):
    """FAILED_PRECONDITION: the server is not in a state to serve this (e.g. draining)."""


class ProtocolError(Internal):
    """The server broke the stream contract (no Started first, a second Final, no Final...).

    Raised by the SDK itself, not by a status; a subclass of `Internal` because, to the
    caller, it is a server fault all the same.
    """

    def __init__(self, details: str) -> None:
        super().__init__(grpc.StatusCode.INTERNAL, f"protocol error: {details}")


_BY_CODE: dict[grpc.StatusCode, type[SloServeError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Rejected,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.UNKNOWN: Internal,
    grpc.StatusCode.DATA_LOSS: Internal,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
}


def error_class(code: grpc.StatusCode | None) -> type[SloServeError]:
    """The exception class for a status code (the base class for codes without their own)."""
    return _BY_CODE.get(code, SloServeError) if code is not None else SloServeError


def from_rpc_error(err: grpc.RpcError) -> SloServeError:
    """Turn a `grpc.RpcError` (sync or grpc.aio) into the matching typed error.

    Both the sync stream/unary errors and `grpc.aio.AioRpcError` expose `code()` and
    `details()`; a bare `RpcError` without them (rare: raised by some interceptors) maps to
    `Internal` with UNKNOWN, keeping its text.
    """
    code_fn = getattr(err, "code", None)
    details_fn = getattr(err, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    if details is None:
        details = str(err)
    return error_class(code)(code, details)
