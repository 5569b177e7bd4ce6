"""gRPC server plumbing shared by the coordinator and the workers."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from types import ModuleType
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
from grpc_health.v1 import _async as health_async
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024

# Keepalive: a peer that stops answering (a dead host, a SIGSTOP'd process) ends the
# connection and every stream on it within KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS, not at
# TCP's minutes-long timeout. The servers must accept pings that often, with or without
# calls (gRPC's default answers more than 2 pings per 5 min without data with GOAWAY).
KEEPALIVE_TIME_MS = 500
KEEPALIVE_TIMEOUT_MS = 1_000

# Every node certificate (slos_serve/tls.py) also names NODE_NAME, and internal channels check
# that name (NODE_OPTIONS) instead of the address dialled: a worker's address (a pod's IP, a
# Ray node that joined later) is not known when the certificates are made, and every node
# holds the same pair anyway, so the address proves nothing a node certificate from the CA
# does not.
NODE_NAME = "node.slos-serve.internal"
NODE_OPTIONS = [("grpc.ssl_target_name_override", NODE_NAME)]

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
    ("grpc.http2.max_ping_strikes", 0),  # 0: never GOAWAY a peer for pinging
]

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),  # 0: no limit on pings between data frames
    # Workers come and go (start-up, restarts): gRPC's default reconnect backoff
    # grows to 120 s and would keep a recovered worker out of rotation that long.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def create_server(
    service_names: list[str], health: health_async.HealthServicer | None = None
) -> tuple[grpc.aio.Server, health_async.HealthServicer]:
    """An asyncio server with the standard health service (`health`, default a plain one)
    and reflection on.

    Reflection answers as `grpc.reflection.v1alpha` (grpcio-reflection's) and as
    `grpc.reflection.v1` (today's clients' first choice): grpcio-reflection 1.85 ships
    v1alpha only, and v1's messages are v1alpha's on the wire, field for field, so the
    same servicer serves both names."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    health = health if health is not None else health_async.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
    servicer = reflection.aio.ReflectionServicer([*names, reflection.SERVICE_NAME,
                                                  REFLECTION_V1])
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = {"ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1, v1),))
    return server, health


async def set_health(health: health_async.HealthServicer, service_names: list[str],
                     status: int) -> None:
    """One status for the server ("") and each of its services by name: a client that
    checks `slos_serve.v1.Worker` sees what one checking "" sees."""
    for name in ("", *service_names):
        await health.set(name, status)


class Undecodable:
    """What a request that is not a valid message decodes to: the method answers
    INVALID_ARGUMENT (grpc would log a traceback and answer UNKNOWN)."""

    def __init__(self, error: str) -> None:
        self.error = error


def add_service(server: grpc.aio.Server, service: ServiceDescriptor, servicer: object,
                messages: ModuleType) -> None:
    """`add_XServicer_to_server`, with request decoding that turns a payload that is not
    a valid protobuf message into INVALID_ARGUMENT and one short log line. `messages`: the
    _pb2 module with the request and response classes. Unary requests only (this
    project's services have no client streaming)."""
    handlers = {}
    for method in service.methods:
        request_cls = getattr(messages, method.input_type.name)
        response_cls = getattr(messages, method.output_type.name)
        behavior = getattr(servicer, method.name)
        make = (grpc.unary_stream_rpc_method_handler if method.server_streaming
                else grpc.unary_unary_rpc_method_handler)
        guard = _guard_stream if method.server_streaming else _guard_unary
        handlers[method.name] = make(
            guard(behavior, method.full_name), request_deserializer=_decoder(request_cls),
            response_serializer=response_cls.SerializeToString)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def _decoder(cls: type) -> Callable[[bytes], object]:
    def decode(raw: bytes) -> object:
        try:
            return cls.FromString(raw)
        except DecodeError as exc:
            return Undecodable(str(exc))

    return decode


async def _refuse(request: Undecodable, method: str, context: grpc.aio.ServicerContext
                  ) -> None:
    log.warning("%s: undecodable request from %s: %s", method, context.peer(),
                request.error[:200])
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"request: not a valid protobuf message ({request.error[:200]})")


def _guard_unary(behavior: Callable, method: str) -> Callable:
    async def handle(request: object, context: grpc.aio.ServicerContext) -> object:
        if isinstance(request, Undecodable):
            await _refuse(request, method, context)
        return await behavior(request, context)

    return handle


def _guard_stream(behavior: Callable, method: str) -> Callable:
    async def handle(request: object, context: grpc.aio.ServicerContext) -> AsyncIterator:
        if isinstance(request, Undecodable):
            await _refuse(request, method, context)
        async for response in behavior(request, context):
            yield response

    return handle


def bind(server: grpc.aio.Server, host: str, port: int,
         credentials: grpc.ServerCredentials | None = None) -> int:
    """Listens on host:port: with TLS given `credentials` (slos_serve/tls.py), else plaintext."""
    address = f"{host}:{port}"
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port} (port in use?)")
    return bound


async def serve_until_signal(
    server: grpc.aio.Server,
    health: health_async.HealthServicer,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    grace_s: float = 5.0,
    stop: asyncio.Event | None = None,
) -> None:
    """Serves until SIGTERM/SIGINT (or `stop` is set), then stops gracefully and runs
    `on_stop`. Start-up is over by then: its heap is frozen (`freeze_startup_heap`)."""
    freeze_startup_heap()
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await health.enter_graceful_shutdown()
    await server.stop(grace_s)
    if on_stop is not None:
        await on_stop()


def freeze_startup_heap() -> None:
    """Moves every object alive now out of the cyclic collector's reach, as vLLM's own
    server does after start-up (`vllm.utils.gc_utils.freeze_gc_heap`). A process of the
    cluster imports torch and transformers: ~380k objects that live as long as it does,
    and a full collection walked them all in ~190 ms with the event loop stopped, often
    enough to delay a request's handler (or a token) by that much."""
    gc.collect()
    gc.freeze()


def open_channel(target: str, credentials: grpc.ChannelCredentials | None = None,
                 options: list[tuple[str, Any]] | None = None) -> grpc.aio.Channel:
    """An asyncio channel to `target`: TLS with `credentials` (slos_serve/tls.py), else
    plaintext. The one place a process of the cluster dials another."""
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)


async def check_health(target: str, timeout_s: float = 2.0, service: str = "",
                       credentials: grpc.ChannelCredentials | None = None,
                       options: list[tuple[str, Any]] | None = None) -> bool:
    """True when `target` answers the standard health check with SERVING."""
    async with open_channel(target, credentials, options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            request = health_pb2.HealthCheckRequest(service=service)
            resp = await stub.Check(request, timeout=timeout_s)
        except grpc.RpcError:
            return False
        return resp.status == health_pb2.HealthCheckResponse.SERVING
