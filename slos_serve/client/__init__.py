"""Python SDK for a slos-serve coordinator: sync and asyncio clients over gRPC.

    from slos_serve.client import Client, Chunk, Completion, Started
    from slos_serve.errors import Rejected

    with Client("localhost:50051", timeout=120) as client:
        try:
            for event in client.stream("def fib(n):", max_tokens=64, tier="interactive"):
                if isinstance(event, Started):
                    print("decision:", event.decision.value)
                elif isinstance(event, Chunk):
                    print(event.text, end="", flush=True)
                elif isinstance(event, Completion):
                    print(f"\\nTTFT {event.ttft_ms:.1f} ms, SLO met: {event.slo_met}")
        except Rejected as err:
            print("refused:", err.details)

Results are plain dataclasses; failures are `slos_serve.errors.SloServeError` subclasses.
The SDK imports only grpc and the generated stubs (no vLLM, no torch), so it installs and
loads fast wherever a client runs.
"""

from slos_serve.client.aio import AsyncClient, AsyncGenerateStream
from slos_serve.client.channel import DEFAULT_MAX_MESSAGE_BYTES, ChannelOptions, TlsConfig
from slos_serve.client.request import (
    GenerateOptions,
    OnReject,
    StageSpec,
    build_generate_request,
)
from slos_serve.client.sync import Client, GenerateStream
from slos_serve.client.types import (
    Chunk,
    ClusterInfo,
    Completion,
    Decision,
    Event,
    HealthStatus,
    LoadReport,
    ModelInfo,
    SloTier,
    StageResult,
    Started,
    WorkerStatus,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "AsyncClient",
    "AsyncGenerateStream",
    "ChannelOptions",
    "Chunk",
    "Client",
    "ClusterInfo",
    "Completion",
    "Decision",
    "Event",
    "GenerateOptions",
    "GenerateStream",
    "HealthStatus",
    "LoadReport",
    "ModelInfo",
    "OnReject",
    "SloTier",
    "StageResult",
    "StageSpec",
    "Started",
    "TlsConfig",
    "WorkerStatus",
    "build_generate_request",
]
