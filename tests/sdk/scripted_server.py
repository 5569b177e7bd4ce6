"""TEST DOUBLE of the coordinator for the SDK's tests: `ScriptedSloServe`, an in-process
gRPC server. It replays a scripted Started/Chunk/Final sequence, ends calls with given
status codes, and records what it received and whether the client went away early. That
pins the SDK to the proto contract independently of the real coordinator.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from proto import slos_serve_pb2 as pb
from proto import slos_serve_pb2_grpc as pb_grpc
from slos_serve.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidRequest,
    NotFound,
    Rejected,
    SloServeError,
    Unavailable,
)

RID = "req-1"


# ------------------------------------------------------------- scripted messages --


def m_started(decision: int = pb.ADMITTED, tier: str = "interactive") -> pb.GenerateResponse:
    return pb.GenerateResponse(
        request_id=RID,
        started=pb.Started(
            decision=decision, tier=tier, ttft_slo_ms=200.0, tpot_slo_ms=50.0,
            prefill_worker="p0", decode_worker="d0", prompt_tokens=5,
        ),
    )


def m_chunk(ids: list[int], text: str) -> pb.GenerateResponse:
    return pb.GenerateResponse(request_id=RID, chunk=pb.TokenChunk(token_ids=ids, text=text))


def m_final(decision: int = pb.ADMITTED, slo_met: bool = True) -> pb.GenerateResponse:
    return pb.GenerateResponse(
        request_id=RID,
        final=pb.Final(
            finish_reason="length", prompt_tokens=5, completion_tokens=3, ttft_ms=12.5,
            tpot_ms=4.25, e2e_ms=21.0, ttft_met=True, tpot_met=slo_met, slo_met=slo_met,
            decision=decision,
            stages=[pb.StageResult(tokens=3, tpot_ms=4.25, tpot_slo_ms=50.0, slo_met=True)],
        ),
    )


OK_SCRIPT = [m_started(), m_chunk([1], "Hel"), m_chunk([2, 3], "lo!"), m_final()]


@dataclass
class Status:
    """Script step: end the call with this status."""

    code: grpc.StatusCode
    details: str


@dataclass
class Hang:
    """Script step: keep the call open until the client goes away (or `seconds` pass)."""

    seconds: float = 10.0


# ---------------------------------------------------------------- the test server --


@dataclass
class ScriptedSloServe(pb_grpc.SloServeServicer):
    """TEST SERVER ONLY: replays `script` for every Generate; unary calls return canned
    answers or `unary_status`. Records requests, and sets `client_gone` when a call it was
    holding open (a `Hang` step) ended from the client's side."""

    script: list[Any] = field(default_factory=lambda: list(OK_SCRIPT))
    unary_status: Status | None = None
    requests: list[pb.GenerateRequest] = field(default_factory=list)
    aborted_ids: list[str] = field(default_factory=list)
    client_gone: threading.Event = field(default_factory=threading.Event)
    metadata_seen: list[dict[str, str]] = field(default_factory=list)

    def Generate(self, request: pb.GenerateRequest, context: grpc.ServicerContext) -> Iterator:
        self.requests.append(request)
        self.metadata_seen.append(dict(context.invocation_metadata()))
        ended = threading.Event()
        finished = False  # the script ran to its end (or to a scripted status)

        def on_rpc_end() -> None:
            # After a client-side cancel, grpc stops resuming this generator, so the end of
            # the call is observed here rather than after a `yield`.
            if not finished:
                self.client_gone.set()
            ended.set()

        context.add_callback(on_rpc_end)
        for step in self.script:
            if isinstance(step, pb.GenerateResponse):
                yield step
            elif isinstance(step, Status):
                finished = True
                context.abort(step.code, step.details)
            elif isinstance(step, Hang):
                if not ended.wait(step.seconds):
                    finished = True  # timed out: the client did not go away
                return
        finished = True

    def _unary(self, context: grpc.ServicerContext) -> None:
        if self.unary_status is not None:
            context.abort(self.unary_status.code, self.unary_status.details)

    def Abort(self, request: pb.AbortRequest, context: grpc.ServicerContext) -> Any:
        self._unary(context)
        self.aborted_ids.append(request.request_id)
        return pb.AbortResponse(found=request.request_id == RID)

    def ModelInfo(self, request: pb.ModelInfoRequest, context: grpc.ServicerContext) -> Any:
        self._unary(context)
        return pb.ModelInfoResponse(
            model="tiny-llama", max_model_len=512, vocab_size=4096, default_tier="batch",
            tiers=[pb.SloTier(name="interactive", ttft_ms=200, tpot_ms=50),
                   pb.SloTier(name="batch", ttft_ms=2000, tpot_ms=200)],
        )

    def ClusterInfo(self, request: pb.ClusterInfoRequest, context: grpc.ServicerContext) -> Any:
        self._unary(context)
        return pb.ClusterInfoResponse(
            scheduler="round-robin",
            workers=[
                pb.WorkerStatus(address="127.0.0.1:1", role="prefill", healthy=True,
                                load=pb.LoadReport(role="prefill", running=2, kv_usage=0.5)),
                pb.WorkerStatus(address="127.0.0.1:2", role="decode", healthy=False),
            ],
        )


@dataclass
class RunningServer:
    servicer: ScriptedSloServe
    target: str
    server: grpc.Server


def start_server(creds: grpc.ServerCredentials | None = None) -> RunningServer:
    servicer = ScriptedSloServe()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_SloServeServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("slos_serve.v1.SloServe", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if creds is None:
        port = server.add_insecure_port("127.0.0.1:0")  # a free port, chosen by the OS
    else:
        port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    return RunningServer(servicer, f"127.0.0.1:{port}", server)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



CODE_CASES = [
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequest),
    (grpc.StatusCode.OUT_OF_RANGE, InvalidRequest),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, Rejected),
    (grpc.StatusCode.UNAVAILABLE, Unavailable),
    (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
    (grpc.StatusCode.CANCELLED, Cancelled),
    (grpc.StatusCode.NOT_FOUND, NotFound),
    (grpc.StatusCode.INTERNAL, Internal),
    (grpc.StatusCode.UNKNOWN, Internal),
    (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
    (grpc.StatusCode.UNIMPLEMENTED, SloServeError),
]

