"""The standard gRPC surfaces on a SIMULATED-engine cluster (one mixed worker), with real
clients: health per service name (the same status as ""), reflection as
`grpc.reflection.v1` and v1alpha, and undecodable payloads answered INVALID_ARGUMENT with
one short log line each (no traceback), on the coordinator and on a worker."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from slos_serve.up import ClusterSpec, LocalCluster

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster(model_dir: str):
    c = LocalCluster(ClusterSpec(model=model_dir, engine="sim", mixed=1))
    c.start(timeout_s=120, progress=False)
    yield c
    c.stop()


def _proc(cluster: LocalCluster, name: str):
    return next(p for p in cluster.procs if p.name.startswith(name))


@pytest.mark.parametrize(("who", "service"), [("coordinator", "slos_serve.v1.SloServe"),
                                              ("mixed", "slos_serve.v1.Worker")])
def test_health_answers_per_service_name(cluster, who: str, service: str) -> None:
    with cluster.channel(_proc(cluster, who).name) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", service):
            resp = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING, name
        with pytest.raises(grpc.RpcError) as exc:
            stub.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=5)
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_the_services(cluster, version: str) -> None:
    """v1's messages are v1alpha's on the wire: the v1alpha classes make a v1 client."""
    with grpc.insecure_channel(cluster.target) as channel:
        call = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        responses = list(call(iter([reflection_pb2.ServerReflectionRequest(
            list_services="")]), timeout=5))
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"slos_serve.v1.SloServe", "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= names


@pytest.mark.parametrize(("who", "method", "streaming"), [
    ("coordinator", "/slos_serve.v1.SloServe/Generate", True),
    ("coordinator", "/slos_serve.v1.SloServe/Abort", False),
    ("mixed", "/slos_serve.v1.Worker/Decode", True),
    ("mixed", "/slos_serve.v1.Worker/Prefill", False),
])
def test_undecodable_payloads_are_invalid_argument(cluster, who: str, method: str,
                                                   streaming: bool) -> None:
    proc = _proc(cluster, who)
    before = proc.log_path.read_text()
    with cluster.channel(proc.name) as channel:
        make = channel.unary_stream if streaming else channel.unary_unary
        call = make(method, request_serializer=None, response_deserializer=None)
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as exc:
                out = call(b"\xff\xff\xff\xff", timeout=5)
                if streaming:
                    list(out)
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert exc.value.details().startswith("request: not a valid protobuf message")
    new = proc.log_path.read_text()[len(before):]
    assert "Traceback" not in new
    assert new.count("undecodable request") == 5
