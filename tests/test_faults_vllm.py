"""Faults on real vLLM engines: KV no one will read is freed at once, a dead engine is
noticed, and a worker's engine processes die with it.

Slow (engine starts): one cluster (1 prefill, 1 decode, 1 mixed: a spare for either side)
is shared by the module; the tests that kill a process run last and wait for `up`'s
supervisor to restart it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import grpc
import pytest

from proto import slos_serve_pb2 as pb
from proto import slos_serve_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

RELEASE_BOUND_S = 1.0  # the bound on held KV no one will read


@pytest.fixture(scope="module")
def cluster(model_dir: str):
    from slos_serve.up import ClusterSpec, LocalCluster

    cluster = LocalCluster(ClusterSpec(model=model_dir, engine="vllm", prefill=1, decode=1,
                                       mixed=1))
    cluster.start(timeout_s=600, progress=False)
    yield cluster
    cluster.stop()


def proc(cluster, name: str):
    return next(p for p in cluster.procs if p.name == name)


def worker_stub(cluster, name: str) -> tuple[grpc.Channel, pb_grpc.WorkerStub]:
    """A channel to a worker as the coordinator dials it (mutual TLS, `up`'s default)."""
    address, creds = proc(cluster, name).address, cluster.internal_credentials()
    channel = (grpc.secure_channel(address, creds) if creds is not None
               else grpc.insecure_channel(address))
    return channel, pb_grpc.WorkerStub(channel)


def prefill_request(rid: str, n: int = 200, **sampling) -> pb.PrefillRequest:
    return pb.PrefillRequest(
        request_id=rid, prompt_token_ids=[5 + (i * 7) % 300 for i in range(n)],
        sampling=pb.SamplingParams(max_tokens=20, temperature=0.0, **sampling), hand_off=True)


def seconds_until_free(stub: pb_grpc.WorkerStub, limit_s: float = 10.0) -> float:
    """Seconds until the worker's engine holds no KV block (inf: not within `limit_s`)."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        load = stub.GetLoad(pb.LoadRequest(), timeout=5)
        if load.kv_blocks_used == 0 and load.running == 0:
            return time.monotonic() - started
        time.sleep(0.05)
    return float("inf")


def test_an_aborted_handoff_frees_its_kv_at_once(cluster) -> None:
    channel, stub = worker_stub(cluster, "prefill-0")
    with channel:
        out = stub.Prefill(prefill_request("fault-abort"), timeout=120)
        assert out.HasField("handoff")
        assert stub.GetLoad(pb.LoadRequest()).kv_blocks_used > 0  # held for a decode
        started = time.monotonic()
        assert stub.Abort(pb.WorkerAbortRequest(request_id="fault-abort")).found
        assert seconds_until_free(stub) + (time.monotonic() - started) < RELEASE_BOUND_S + 0.5


def test_a_prefill_that_ends_at_its_first_token_holds_no_kv(cluster) -> None:
    channel, stub = worker_stub(cluster, "prefill-0")
    with channel:
        first = stub.Prefill(prefill_request("fault-probe"), timeout=120)
        stub.Abort(pb.WorkerAbortRequest(request_id="fault-probe"))
        assert seconds_until_free(stub) < RELEASE_BOUND_S
        assert first.first_text.strip(), "the probe needs a visible first token"
        out = stub.Prefill(prefill_request("fault-stop", stop=[first.first_text]), timeout=120)
        assert out.finish_reason == "stop" and not out.HasField("handoff")
        assert seconds_until_free(stub) < RELEASE_BOUND_S


CALLER = textwrap.dedent("""
    import sys, grpc
    from proto import slos_serve_pb2 as pb, slos_serve_pb2_grpc as pb_grpc
    from slos_serve.tls import NodeTls
    creds = NodeTls.load(sys.argv[2]).channel_credentials()
    stub = pb_grpc.WorkerStub(grpc.secure_channel(sys.argv[1], creds))
    ids = [5 + (i * 7) % 300 for i in range(1900)]
    print("calling", flush=True)
    stub.Prefill(pb.PrefillRequest(request_id="fault-orphan", prompt_token_ids=ids,
                 sampling=pb.SamplingParams(max_tokens=20, temperature=0.0), hand_off=True))
""")


def test_a_prefill_whose_caller_dies_stops_and_frees_its_kv(cluster) -> None:
    """The caller (a process, as the coordinator is) is killed while its prefill runs."""
    channel, stub = worker_stub(cluster, "prefill-0")
    with channel:
        argv = [sys.executable, "-c", CALLER, proc(cluster, "prefill-0").address,
                str(cluster.tls_dir)]
        caller = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        try:
            assert caller.stdout is not None and caller.stdout.readline().startswith("calling")
            deadline = time.monotonic() + 60
            while stub.GetLoad(pb.LoadRequest()).running == 0:  # the prefill is on
                assert time.monotonic() < deadline, "the prefill never started"
                time.sleep(0.02)
        finally:
            os.kill(caller.pid, signal.SIGKILL)
            caller.wait()
        assert seconds_until_free(stub) < RELEASE_BOUND_S


def test_a_handoff_is_freed_when_the_coordinator_dies(cluster) -> None:
    """The coordinator watches every worker's health; when it dies, the KV the prefill
    worker holds for its requests has no reader any more."""
    channel, stub = worker_stub(cluster, "prefill-0")
    with channel:
        stub.Prefill(prefill_request("fault-coord"), timeout=120)
        assert stub.GetLoad(pb.LoadRequest()).kv_blocks_used > 0
        coordinator = proc(cluster, "coordinator")
        os.kill(coordinator.popen.pid, signal.SIGKILL)
        assert seconds_until_free(stub) < RELEASE_BOUND_S
