"""Failover and resume rules in process, on the SIMULATED engine: in-process workers (real
gRPC servers on loopback) and the coordinator's worker calls (coordinator/worker_calls.py),
without a cluster of processes (tests/test_faults_sim.py kills real ones).

A resumed decode continues the undisturbed output exactly; a prefill fails over whatever
the status but a client mistake; an engine's "error" finish is retried or resumed, never a
normal end; a worker not serving or draining gets no new requests.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from sim_serving import prompt_ids, sim_tokens

pytestmark = pytest.mark.timeout(120)


# ------------------------------------------- a resume, on the worker alone (in process) --


def _decode_all(request) -> list[int]:
    """Every token a SIMULATED engine's decode streams for `request`, in process."""
    from decode_worker.decode import decode
    from slos_serve.engine.sim_engine import SimEngine

    async def run() -> list[int]:
        engine = SimEngine()
        await engine.start()
        try:
            return [t async for out in decode(engine, request) for t in out.token_ids]
        finally:
            await engine.shutdown()

    return asyncio.run(run())


def test_a_resumed_decode_continues_the_undisturbed_output_exactly() -> None:
    from proto import slos_serve_pb2 as pb

    prompt, n = prompt_ids(25, offset=3), 40
    whole = sim_tokens(prompt, n, None)
    for k in (1, 17, n - 1):  # resumed after the first token, mid-way, before the last
        request = pb.DecodeRequest(request_id=f"r{k}", prompt_token_ids=prompt, local=True,
                                   sampling=pb.SamplingParams(max_tokens=n, temperature=0.0),
                                   resume_token_ids=whole[:k])
        assert _decode_all(request) == whole[k:]  # no token again, none skipped


@pytest.mark.parametrize("local,sent", [(False, 3), (True, 40), (True, 41)])
def test_a_resume_that_is_not_local_or_has_nothing_left_is_invalid(local: bool,
                                                                   sent: int) -> None:
    from proto import slos_serve_pb2 as pb

    request = pb.DecodeRequest(request_id="bad", prompt_token_ids=[5, 6], local=local,
                               sampling=pb.SamplingParams(max_tokens=40),
                               resume_token_ids=[7] * sent)
    with pytest.raises(ValueError, match="resume_token_ids"):  # INVALID_ARGUMENT on the wire
        _decode_all(request)


# ------------------------------------- a prefill fails over whatever the status (in process) --


class _BrokenEngine:
    """A SIMULATED engine that has failed: every request raises `error` (RuntimeError: the
    worker answers INTERNAL, as with vLLM's EngineDeadError; ValueError: INVALID_ARGUMENT)."""

    def __init__(self, error: Exception) -> None:
        from slos_serve.engine.sim_engine import SimEngine

        self.sim, self.error = SimEngine(), error
        self.info = self.sim.info

    def load(self):
        return self.sim.load()

    async def start(self) -> None:
        await self.sim.start()

    async def shutdown(self) -> None:
        await self.sim.shutdown()

    async def abort(self, request_id: str) -> bool:
        return False

    def dead(self) -> str:
        return ""  # failing requests, not a dead process

    async def release_handoffs(self, engine_request_ids: list[str]) -> int:
        return 0

    async def generate(self, request):
        raise self.error
        yield  # (an async generator, as an engine's generate is)


async def _prefill_workers(engines: list, role: str = "prefill"
                           ) -> tuple[list, list[str], list]:
    """In-process workers of `role` (real gRPC servers on loopback) over `engines`; their
    servers, addresses and health services."""
    from grpc_health.v1.health_pb2 import HealthCheckResponse

    from proto import slos_serve_pb2 as pb
    from proto import slos_serve_pb2_grpc as pb_grpc
    from slos_serve.grpc_util import create_server
    from slos_serve.worker.service import WorkerService

    servers, addresses, healths = [], [], []
    for engine in engines:
        server, health = create_server([pb.DESCRIPTOR.services_by_name["Worker"].full_name])
        pb_grpc.add_WorkerServicer_to_server(WorkerService(role, engine), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await health.set("", HealthCheckResponse.SERVING)
        servers.append(server)
        addresses.append(f"127.0.0.1:{port}")
        healths.append(health)
    return servers, addresses, healths


async def _stop(pool, servers: list, engines: list) -> None:
    await pool.close()
    for server in servers:
        await server.stop(None)
    for e in engines:
        await e.shutdown()


@pytest.mark.parametrize("first", ["internal", "invalid", "all-broken"])
def test_a_prefill_fails_over_whatever_the_status_but_a_client_mistake(first: str) -> None:
    import grpc

    from coordinator import worker_calls
    from coordinator.pool import WorkerPool
    from proto import slos_serve_pb2 as pb
    from slos_serve.engine.sim_engine import SimEngine

    async def run() -> None:
        error = ValueError("top_p: out of range") if first == "invalid" else RuntimeError(
            "EngineDeadError: the engine core died")
        second = _BrokenEngine(error) if first == "all-broken" else SimEngine()
        engines = [_BrokenEngine(error), second]
        for e in engines:
            await e.start()
        servers, addresses, _ = await _prefill_workers(engines)
        pool = WorkerPool(prefill=addresses, decode=[])
        try:
            await pool.refresh()
            assert all(w.healthy for w in pool.workers)
            prompt = prompt_ids(12, offset=5)
            request = pb.PrefillRequest(
                request_id="p1", prompt_token_ids=prompt, hand_off=False,
                sampling=pb.SamplingParams(max_tokens=1, temperature=0.0),
                slo=pb.WorkerSlo(ttft_deadline_unix=time.time() + 10, tpot_ms=50.0,
                                 stages=[pb.StageSlo(tpot_ms=50.0)]))
            live = worker_calls.InFlight()
            if first == "internal":
                out = await worker_calls.prefill(pool, request, pool.workers[0], live)
                assert out.first_token_id == sim_tokens(prompt, 1, None)[0]
                assert (live.prefill_worker, live.failovers) == (addresses[1], 1)
            elif first == "invalid":  # another worker would say the same: not retried
                with pytest.raises(grpc.RpcError) as info:
                    await worker_calls.prefill(pool, request, pool.workers[0], live)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert live.failovers == 0
            else:
                with pytest.raises(worker_calls.NoWorker) as lost:
                    await worker_calls.prefill(pool, request, pool.workers[0], live)
                assert str(lost.value).startswith(
                    f"no healthy prefill worker left to retry on after {addresses[1]} failed: "
                    "INTERNAL: RuntimeError: EngineDeadError")
                assert live.failovers == 1
        finally:
            await _stop(pool, servers, engines)

    asyncio.run(run())


class _FailsMidway:
    """A SIMULATED engine that ends every request with finish reason "error" once it has
    `after` tokens (what vLLM does with a KV load it cannot recover): the worker must answer
    INTERNAL, and the coordinator retry or resume it, not end it as if it were complete."""

    def __init__(self, after: int) -> None:
        from slos_serve.engine.sim_engine import SimEngine

        self.sim, self.after = SimEngine(), after

    def __getattr__(self, name: str):
        return getattr(self.sim, name)

    async def generate(self, request):
        from slos_serve.engine import EngineOutput

        async for out in self.sim.generate(request):
            if len(out.token_ids) > self.after:
                yield EngineOutput(out.token_ids, out.text, True, "error")
                return
            yield out


@pytest.mark.parametrize("after", [0, 3])
def test_an_engine_error_is_retried_or_resumed_not_a_normal_end(after: int) -> None:
    from coordinator import worker_calls
    from coordinator.pool import WorkerPool
    from proto import slos_serve_pb2 as pb
    from slos_serve.engine.sim_engine import SimEngine

    async def run() -> None:
        engines = [_FailsMidway(after), SimEngine()]
        for e in engines:
            await e.start()
        servers, addresses, _ = await _prefill_workers(engines, role="mixed")
        pool = WorkerPool(prefill=[], decode=[], mixed=addresses)
        try:
            await pool.refresh()
            prompt = prompt_ids(12, offset=9)
            request = pb.DecodeRequest(
                request_id="e1", prompt_token_ids=prompt, local=True,
                sampling=pb.SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True),
                slo=pb.WorkerSlo(ttft_deadline_unix=time.time() + 10, tpot_ms=50.0,
                                 stages=[pb.StageSlo(tpot_ms=50.0)]))
            live, sofar, reasons = worker_calls.InFlight(), [], []
            async for out in worker_calls.decode(pool, request, pool.workers[0], live, sofar):
                sofar.extend(out.token_ids)
                reasons.append(out.finish_reason)
            assert sofar == sim_tokens(prompt, 12, None)  # none duplicated, none skipped
            assert reasons[-1] == "length" and "error" not in reasons
            assert live.decode_worker == addresses[1]
            # no token out yet: sent again whole (a failover); after some: resumed
            assert (live.failovers, live.resumes) == ((1, 0) if after == 0 else (0, 1))
        finally:
            await _stop(pool, servers, engines)

    asyncio.run(run())


def test_a_worker_not_serving_or_draining_gets_no_new_requests() -> None:
    from grpc_health.v1.health_pb2 import HealthCheckResponse

    from coordinator.pool import WorkerPool
    from proto import slos_serve_pb2 as pb
    from slos_serve.engine.sim_engine import SimEngine

    async def run() -> None:
        engines = [SimEngine() for _ in range(3)]
        for e in engines:
            await e.start()
        servers, addresses, healths = await _prefill_workers(engines)
        pool = WorkerPool(prefill=addresses, decode=[])
        try:
            await pool.refresh()
            assert all(w.healthy for w in pool.workers)
            await healths[0].set("", HealthCheckResponse.NOT_SERVING)
            await pool.workers[1].stub.Drain(pb.DrainRequest(timeout_s=0.1))
            await pool.refresh()
            assert [w.healthy for w in pool.workers] == [False, False, True]
            assert {pool.pick("prefill").address for _ in range(4)} == {addresses[2]}
            await healths[0].set("", HealthCheckResponse.SERVING)
            await pool.refresh()
            assert pool.workers[0].healthy  # serving again: back in routing
        finally:
            await _stop(pool, servers, engines)

    asyncio.run(run())
