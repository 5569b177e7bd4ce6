"""The blocking client against the scripted server: the request it builds, the events it
yields, the typed errors it raises, cancellation, deadlines, and the info calls."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import grpc
import pytest

from proto import slos_serve_pb2 as pb
from sdk.scripted_server import (
    CODE_CASES,
    RID,
    Hang,
    RunningServer,
    Status,
    free_port,
    m_chunk,
    m_final,
    m_started,
)
from slos_serve.client import (
    ChannelOptions,
    Chunk,
    Client,
    Completion,
    Decision,
    HealthStatus,
    OnReject,
    StageSpec,
    Started,
    build_generate_request,
)
from slos_serve.errors import (
    Cancelled,
    DeadlineExceeded,
    Internal,
    NotFound,
    ProtocolError,
    Rejected,
    SloServeError,
    Unavailable,
    from_rpc_error,
)

pytestmark = pytest.mark.timeout(30)


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
    with Client(f"127.0.0.1:{free_port()}", timeout=5) as c:
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


def test_options_are_declared_once() -> None:
    """The four entry points take `GenerateOptions`' fields, shown in their signatures."""
    import inspect

    from slos_serve.client import AsyncClient, GenerateOptions

    names = [f.name for f in dataclasses.fields(GenerateOptions)]
    for fn in (Client.stream, Client.generate, AsyncClient.stream, AsyncClient.generate,
               build_generate_request):
        params = inspect.signature(fn).parameters
        assert [n for n in params if n in names] == names, fn
    with pytest.raises(TypeError, match="max_tokenz"):
        build_generate_request("x", max_tokenz=1)
    with pytest.raises(TypeError, match=r"stages\[0\]"):
        build_generate_request("x", max_tokens=1, stages=["thinking"])
    with pytest.raises(ValueError, match="on_reject"):
        build_generate_request("x", max_tokens=1, on_reject="never")
