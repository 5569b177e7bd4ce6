"""Tests of the client SDK (slos_serve.client, slos_serve.errors) and `slos-serve generate`.

They run against `ScriptedRunningServer`, a small in-process gRPC server defined below. It is a
TEST DOUBLE, not the coordinator: it replays a scripted Started/Chunk/Final sequence, ends
calls with given status codes, and records what it received and whether the client went
away early. That pins the SDK to the proto contract independently of the real coordinator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from proto import slos_serve_pb2 as pb
from proto import slos_serve_pb2_grpc as pb_grpc
from slos_serve import generate_cli
from slos_serve.client import (
    AsyncClient,
    ChannelOptions,
    Chunk,
    Client,
    Completion,
    Decision,
    HealthStatus,
    OnReject,
    StageSpec,
    Started,
    TlsConfig,
    build_generate_request,
)
from slos_serve.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidRequest,
    NotFound,
    ProtocolError,
    Rejected,
    SloServeError,
    Unavailable,
    from_rpc_error,
)

pytestmark = pytest.mark.timeout(30)

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


def _start_server(creds: grpc.ServerCredentials | None = None) -> RunningServer:
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


@pytest.fixture
def srv() -> Iterator[RunningServer]:
    ts = _start_server()
    yield ts
    ts.server.stop(0)


@pytest.fixture
def client(srv: RunningServer) -> Iterator[Client]:
    with Client(srv.target, timeout=10) as c:
        yield c


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------- request building --


def test_request_carries_every_field(client: Client, srv: RunningServer) -> None:
    client.generate(
        "hi", max_tokens=7, temperature=0.0, top_p=0.9, seed=42, stop=["\n", "END"],
        ignore_eos=True, tier="interactive", ttft_ms=150, tpot_ms=40,
        stages=[StageSpec(max_tokens=3, until="</think>", tier="batch")],
        on_reject="reject", request_id="mine",
    )
    (req,) = srv.servicer.requests
    assert req.WhichOneof("prompt") == "text" and req.text == "hi"
    assert req.request_id == "mine"
    s = req.sampling
    assert (s.max_tokens, s.temperature, s.seed, list(s.stop), s.ignore_eos) == (
        7, 0.0, 42, ["\n", "END"], True)
    assert s.HasField("temperature") and abs(s.top_p - 0.9) < 1e-6
    assert (req.slo.tier, req.slo.ttft_ms, req.slo.tpot_ms) == ("interactive", 150, 40)
    assert req.stages[0].until == "</think>" and req.stages[0].slo.tier == "batch"
    assert req.on_reject == pb.REJECT


def test_request_defaults_leave_optionals_unset() -> None:
    req = build_generate_request([5, 6, 7], max_tokens=3)
    assert list(req.token_ids.ids) == [5, 6, 7]
    for name in ("temperature", "top_p", "seed"):
        assert not req.sampling.HasField(name)
    assert not req.slo.HasField("ttft_ms") and not req.slo.HasField("tpot_ms")
    assert req.on_reject == pb.ON_REJECT_DEFAULT and req.request_id == ""
    assert build_generate_request("x", max_tokens=1, on_reject=OnReject.BEST_EFFORT).on_reject \
        == pb.SERVE_BEST_EFFORT
    with pytest.raises(TypeError):
        build_generate_request(b"bytes", max_tokens=1)
    with pytest.raises(TypeError):
        build_generate_request(["a"], max_tokens=1)


# ------------------------------------------------------------- streams and events --


def test_generate_collects_the_stream(client: Client, srv: RunningServer) -> None:
    c = client.generate("hi", max_tokens=3)
    time.sleep(0.05)
    assert not srv.servicer.client_gone.is_set()  # a completed call is not a cancelled one
    assert isinstance(c, Completion)
    assert (c.request_id, c.text, c.token_ids, c.finish_reason) == (RID, "Hello!", [1, 2, 3],
                                                                    "length")
    assert (c.prompt_tokens, c.completion_tokens, c.ttft_ms, c.tpot_ms, c.e2e_ms) == (
        5, 3, 12.5, 4.25, 21.0)
    assert c.ttft_met and c.tpot_met and c.slo_met and c.decision is Decision.ADMITTED
    assert (c.tier, c.ttft_slo_ms, c.tpot_slo_ms, c.prefill_worker) == (
        "interactive", 200.0, 50.0, "p0")
    assert c.stages[0].tokens == 3 and c.stages[0].slo_met
    d = c.to_dict()
    assert d["decision"] == "admitted" and json.loads(json.dumps(d))["text"] == "Hello!"


def test_stream_yields_typed_events_in_order(client: Client) -> None:
    stream = client.stream([1, 2], max_tokens=3)
    events = list(stream)
    assert [type(e) for e in events] == [Started, Chunk, Chunk, Completion]
    st = events[0]
    assert isinstance(st, Started)
    assert (st.decision, st.tier, st.ttft_slo_ms, st.tpot_slo_ms, st.request_id) == (
        Decision.ADMITTED, "interactive", 200.0, 50.0, RID)
    assert events[1] == Chunk(token_ids=[1], text="Hel")
    assert stream.done and stream.completion is events[-1] and stream.request_id == RID
    with pytest.raises(RuntimeError):
        iter(stream)  # read once


def test_final_decision_falls_back_to_started(client: Client, srv: RunningServer) -> None:
    srv.servicer.script = [m_started(pb.BEST_EFFORT), m_final(pb.DECISION_UNSPECIFIED, False)]
    c = client.generate("hi", max_tokens=1)
    assert c.decision is Decision.BEST_EFFORT and not c.slo_met and c.text == ""


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ([m_chunk([1], "a"), m_final()], "before Started"),
        ([m_started(), m_started(), m_final()], "second Started"),
        ([m_started(), m_chunk([1], "a")], "without a Final"),
        ([m_started(), m_final(), m_chunk([1], "a")], "after Final"),
    ],
)
def test_contract_violations_raise_protocol_error(
    client: Client, srv: RunningServer, script: list[Any], message: str
) -> None:
    srv.servicer.script = script
    with pytest.raises(ProtocolError, match=message) as info:
        client.generate("hi", max_tokens=1)
    assert isinstance(info.value, Internal)


# ----------------------------------------------------------------- error mapping --

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


@pytest.mark.parametrize(("code", "exc_type"), CODE_CASES)
def test_status_codes_map_to_typed_errors(
    client: Client, srv: RunningServer, code: grpc.StatusCode, exc_type: type[SloServeError]
) -> None:
    details = f"sampling.max_tokens: {code.name} from the test server"
    srv.servicer.script = [Status(code, details)]
    with pytest.raises(SloServeError) as info:
        client.generate("hi", max_tokens=1)
    assert type(info.value) is exc_type
    assert info.value.code == code and info.value.details == details
    assert code.name in str(info.value) and details in str(info.value)


def test_error_mid_stream_after_events(client: Client, srv: RunningServer) -> None:
    srv.servicer.script = [m_started(), m_chunk([1], "a"), Status(grpc.StatusCode.INTERNAL, "boom")]
    seen: list[Any] = []
    with pytest.raises(Internal, match="boom"):
        for ev in client.stream("hi", max_tokens=3):
            seen.append(ev)
    assert [type(e) for e in seen] == [Started, Chunk]


@pytest.mark.parametrize(("code", "exc_type"), CODE_CASES[:4])
def test_unary_errors_are_mapped(
    client: Client, srv: RunningServer, code: grpc.StatusCode, exc_type: type[SloServeError]
) -> None:
    srv.servicer.unary_status = Status(code, "nope")
    for call in (client.model_info, client.cluster_info, lambda: client.abort("x")):
        with pytest.raises(exc_type, match="nope"):
            call()


def test_from_rpc_error_without_status() -> None:
    err = from_rpc_error(grpc.RpcError("bare"))
    assert type(err) is Internal and err.code == grpc.StatusCode.UNKNOWN and "bare" in err.details


def test_oversize_message_is_rejected(srv: RunningServer) -> None:
    with Client(srv.target, options=ChannelOptions(max_send_message_bytes=1024)) as c:
        with pytest.raises(Rejected) as info:
            c.generate("x" * 4096, max_tokens=1)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and info.value.details


def test_unreachable_server_is_unavailable() -> None:
    with Client(f"127.0.0.1:{_free_port()}", timeout=5) as c:
        with pytest.raises(Unavailable):
            c.generate("hi", max_tokens=1)
        with pytest.raises(Unavailable):
            c.health()


# ------------------------------------------------------- cancellation, deadlines --


def test_breaking_out_of_the_loop_cancels_the_rpc(client: Client, srv: RunningServer) -> None:
    srv.servicer.script = [m_started(), m_chunk([1], "a"), Hang()]
    stream = client.stream("hi", max_tokens=100)
    for ev in stream:  # the stream object stays referenced: the loop's break alone cancels
        if isinstance(ev, Chunk):
            break
    assert srv.servicer.client_gone.wait(3), "the server never saw the cancellation"
    assert stream.done and stream.completion is None


def test_with_block_and_cancel(client: Client, srv: RunningServer) -> None:
    srv.servicer.script = [m_started(), Hang()]
    with client.stream("hi", max_tokens=100) as stream:
        it = iter(stream)
        assert isinstance(next(it), Started)
    assert srv.servicer.client_gone.wait(3)

    srv.servicer.client_gone.clear()
    stream = client.stream("hi", max_tokens=100)
    it = iter(stream)
    next(it)
    assert stream.cancel() is True and stream.cancel() is False
    with pytest.raises(Cancelled):
        next(it)
    assert srv.servicer.client_gone.wait(3)


def test_deadline_exceeded(srv: RunningServer) -> None:
    srv.servicer.script = [m_started(), Hang()]
    with Client(srv.target, timeout=0.3) as c:  # the client's default deadline
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            c.generate("hi", max_tokens=1)
        assert time.monotonic() - t0 < 3
    with Client(srv.target, timeout=60) as c:  # a per-call deadline overrides it
        with pytest.raises(DeadlineExceeded):
            c.generate("hi", max_tokens=1, timeout=0.2)


# ------------------------------------------------------------------ info, health --


def test_info_abort_health(client: Client, srv: RunningServer) -> None:
    mi = client.model_info()
    assert (mi.model, mi.max_model_len, mi.default_tier) == ("tiny-llama", 512, "batch")
    assert [t.name for t in mi.tiers] == ["interactive", "batch"] and mi.tiers[0].ttft_ms == 200
    ci = client.cluster_info()
    assert ci.scheduler == "round-robin"
    assert ci.workers[0].load is not None and ci.workers[0].load.running == 2
    assert ci.workers[1].load is None and not ci.workers[1].healthy
    assert client.abort(RID) is True and client.abort("other") is False
    assert srv.servicer.aborted_ids == [RID, "other"]
    assert client.health() is HealthStatus.SERVING
    assert client.health("slos_serve.v1.SloServe") is HealthStatus.NOT_SERVING
    with pytest.raises(NotFound):
        client.health("no.such.Service")


def test_metadata_is_sent(srv: RunningServer) -> None:
    with Client(srv.target, metadata=[("authorization", "Bearer t")]) as c:
        c.generate("hi", max_tokens=1)
    assert srv.servicer.metadata_seen[0]["authorization"] == "Bearer t"


# ----------------------------------------------------------------------- asyncio --


def test_async_client_end_to_end(srv: RunningServer) -> None:
    async def main() -> None:
        async with AsyncClient(srv.target, timeout=10) as c:
            comp = await c.generate("hi", max_tokens=3)
            assert comp.text == "Hello!" and comp.decision is Decision.ADMITTED
            events = [ev async for ev in c.stream("hi", max_tokens=3)]
            assert [type(e) for e in events] == [Started, Chunk, Chunk, Completion]
            assert (await c.model_info()).model == "tiny-llama"
            assert (await c.cluster_info()).workers[0].role == "prefill"
            assert await c.abort(RID) is True
            assert await c.health() is HealthStatus.SERVING
            with pytest.raises(NotFound):
                await c.health("nope")

    asyncio.run(main())


@pytest.mark.parametrize(("code", "exc_type"), CODE_CASES)
def test_async_error_mapping(
    srv: RunningServer, code: grpc.StatusCode, exc_type: type[SloServeError]
) -> None:
    srv.servicer.script = [m_started(), Status(code, "why: field x")]
    srv.servicer.unary_status = Status(code, "unary why")

    async def main() -> None:
        async with AsyncClient(srv.target, timeout=10) as c:
            with pytest.raises(SloServeError) as info:
                await c.generate("hi", max_tokens=1)
            assert type(info.value) is exc_type
            assert (info.value.code, info.value.details) == (code, "why: field x")
            with pytest.raises(exc_type, match="unary why"):
                await c.model_info()

    asyncio.run(main())


def test_async_break_cancels_and_cancel_raises(srv: RunningServer) -> None:
    srv.servicer.script = [m_started(), m_chunk([1], "a"), Hang()]

    async def main() -> None:
        async with AsyncClient(srv.target, timeout=10) as c:
            stream = c.stream("hi", max_tokens=100)
            async for ev in stream:
                if isinstance(ev, Chunk):
                    break
            assert await asyncio.to_thread(srv.servicer.client_gone.wait, 3)
            assert stream.done

            srv.servicer.client_gone.clear()
            stream = c.stream("hi", max_tokens=100)
            it = aiter(stream)
            assert isinstance(await anext(it), Started)
            assert stream.cancel() is True
            with pytest.raises(Cancelled):
                await anext(it)
            assert await asyncio.to_thread(srv.servicer.client_gone.wait, 3)

            srv.servicer.client_gone.clear()
            async with c.stream("hi", max_tokens=100) as stream:
                await anext(aiter(stream))
            assert await asyncio.to_thread(srv.servicer.client_gone.wait, 3)

    asyncio.run(main())


def test_async_task_cancellation_cancels_the_rpc(srv: RunningServer) -> None:
    srv.servicer.script = [m_started(), Hang()]

    async def main() -> None:
        async with AsyncClient(srv.target) as c:
            task = asyncio.create_task(c.generate("hi", max_tokens=100))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await asyncio.to_thread(srv.servicer.client_gone.wait, 3)

    asyncio.run(main())


def test_async_deadline_and_protocol_error(srv: RunningServer) -> None:
    async def main() -> None:
        async with AsyncClient(srv.target, timeout=0.3) as c:
            srv.servicer.script = [m_started(), Hang()]
            with pytest.raises(DeadlineExceeded):
                await c.generate("hi", max_tokens=1)
            srv.servicer.script = [m_started(), m_final(), m_chunk([1], "a")]
            with pytest.raises(ProtocolError, match="after Final"):
                await c.generate("hi", max_tokens=1)
        async with AsyncClient(f"127.0.0.1:{_free_port()}", timeout=5) as c:
            with pytest.raises(Unavailable):
                await c.generate("hi", max_tokens=1)

    asyncio.run(main())


# ------------------------------------------------------------------------- TLS --


def test_tls_options_build_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_bytes(b"-----BEGIN X-----\n" + name.encode() + b"\n")
    tls = TlsConfig.from_files(tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem",
                               server_name="coord.internal")
    assert tls.root_certificates and tls.root_certificates.endswith(b"ca.pem\n")
    assert isinstance(tls.credentials(), grpc.ChannelCredentials)
    assert isinstance(TlsConfig().credentials(), grpc.ChannelCredentials)
    with pytest.raises(ValueError, match="both"):
        TlsConfig(certificate_chain=b"c")

    opts = dict(ChannelOptions(keepalive_time_ms=30_000, keepalive_timeout_ms=5_000,
                               extra=[("grpc.primary_user_agent", "t")]).to_grpc(tls))
    assert opts["grpc.ssl_target_name_override"] == "coord.internal"
    assert opts["grpc.keepalive_time_ms"] == 30_000 and opts["grpc.keepalive_timeout_ms"] == 5_000
    assert opts["grpc.max_receive_message_length"] == 64 * 1024 * 1024
    assert opts["grpc.primary_user_agent"] == "t"
    assert "grpc.keepalive_time_ms" not in dict(ChannelOptions().to_grpc())

    made: list[tuple[str, Any]] = []
    real_secure = grpc.secure_channel

    def spy(target: str, creds: grpc.ChannelCredentials, options: Any = None) -> Any:
        made.append((target, creds))
        return real_secure(target, creds, options=options)

    monkeypatch.setattr(grpc, "secure_channel", spy)
    Client("example.invalid:443", tls=tls).close()
    Client("example.invalid:443", tls=True).close()
    Client("example.invalid:443").close()  # plaintext: no secure channel
    assert [t for t, _ in made] == ["example.invalid:443"] * 2


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI for a cert")
def test_tls_round_trip(tmp_path: Path) -> None:
    """A real TLS handshake against a self-signed certificate, checked by name override."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=slos-test.local",
         "-addext", "subjectAltName=DNS:slos-test.local",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=20,
    )
    ts = _start_server(grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())]))
    try:
        tls = TlsConfig.from_files(root_certificates=cert, server_name="slos-test.local")
        with Client(ts.target, tls=tls, timeout=10) as c:
            assert c.generate("hi", max_tokens=3).text == "Hello!"
        with Client(ts.target, timeout=10) as c:  # plaintext against a TLS port fails
            with pytest.raises(Unavailable):
                c.generate("hi", max_tokens=1)
    finally:
        ts.server.stop(0)


# --------------------------------------------------------------- generate CLI --


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="slos-serve generate")
    generate_cli.add_arguments(parser)
    return generate_cli.run(parser.parse_args(argv))


def test_cli_streams_text_then_verdict(srv: RunningServer, capsys: pytest.CaptureFixture) -> None:
    rc = run_cli(["--target", srv.target, "--prompt", "hi", "--max-tokens", "3", "--seed", "1",
                  "--tier", "interactive", "--stop", "a", "b", "--stop", "c", "--ignore-eos"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert out == "Hello!\n"
    assert "admitted" in err and "TTFT 12.5 ms (SLO 200 ms): met" in err
    assert "TPOT 4.2 ms (SLO 50 ms): met" in err and "SLO: met" in err
    (req,) = srv.servicer.requests
    assert list(req.sampling.stop) == ["a", "b", "c"] and req.sampling.ignore_eos
    assert req.slo.tier == "interactive" and req.sampling.seed == 1


def test_cli_json(srv: RunningServer, capsys: pytest.CaptureFixture) -> None:
    rc = run_cli(["--target", srv.target, "--prompt", "hi", "--ttft-ms", "100", "--tpot-ms",
                  "20", "--json"])
    out, _ = capsys.readouterr()
    assert rc == 0
    data = json.loads(out)
    assert data["text"] == "Hello!" and data["decision"] == "admitted" and data["slo_met"]
    assert data["token_ids"] == [1, 2, 3] and data["stages"][0]["tokens"] == 3
    req = srv.servicer.requests[0]
    assert (req.slo.ttft_ms, req.slo.tpot_ms) == (100, 20)


@pytest.mark.parametrize(
    ("code", "rc", "name"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 2, "InvalidRequest"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 3, "Rejected"),
        (grpc.StatusCode.INTERNAL, 1, "Internal"),
    ],
)
def test_cli_errors_and_exit_codes(
    srv: RunningServer, capsys: pytest.CaptureFixture, code: grpc.StatusCode, rc: int, name: str
) -> None:
    srv.servicer.script = [Status(code, "slo.tier: unknown tier 'x'")]
    assert run_cli(["--target", srv.target, "--prompt", "hi", "--tier", "x"]) == rc
    _, err = capsys.readouterr()
    assert f"error: {name} ({code.name}): slo.tier: unknown tier 'x'" in err

    assert run_cli(["--target", srv.target, "--prompt", "hi", "--json"]) == rc
    out, _ = capsys.readouterr()
    assert json.loads(out)["error"] == {
        "type": name, "code": code.name, "details": "slo.tier: unknown tier 'x'"}


def test_cli_rejected_decision_and_unavailable(
    srv: RunningServer, capsys: pytest.CaptureFixture
) -> None:
    srv.servicer.script = [m_started(pb.REJECTED), m_final(pb.REJECTED, False)]
    assert run_cli(["--target", srv.target, "--prompt", "hi"]) == 3
    assert "rejected" in capsys.readouterr().err
    assert run_cli(["--target", f"127.0.0.1:{_free_port()}", "--prompt", "hi"]) == 1
    assert "error: Unavailable (UNAVAILABLE)" in capsys.readouterr().err


def test_cli_bad_arguments_exit_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        run_cli(["--max-tokens", "3"])  # --prompt is required
    assert info.value.code == 2
    assert run_cli(["--prompt", "hi", "--client-cert", "/nonexistent/c.pem",
                    "--client-key", "/nonexistent/k.pem"]) == 2


def test_cli_dispatcher_runs_generate(srv: RunningServer, capsys: pytest.CaptureFixture) -> None:
    from slos_serve import cli

    assert cli.main(["generate", "--target", srv.target, "--prompt", "hi", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "Hello!"
