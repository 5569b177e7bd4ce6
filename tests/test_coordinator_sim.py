"""The coordinator's serving path, fast: a real cluster of processes on the SIMULATED engine.

Streaming, latency verdicts, abort and cancel, concurrency, and a prefill worker that
dies. Tokens are known in advance (tests/sim_serving.py), so these tests check the stream
exactly (the first token sent once, nothing lost) without running a model. The request
contract (bad input, stages, info) is test_coordinator_sim_requests.py's.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator

import pytest
from sim_serving import (
    GREEDY,
    LONG,
    SEEDED,
    SIM_VOCAB,
    all_healthy,
    all_idle,
    assert_serves,
    busy_decode_workers,
    prompt_ids,
    sim_tokens,
    streams_over_a_killed_worker,
    wait_for,
)

from slos_serve.client import (
    AsyncClient,
    Chunk,
    Client,
    Completion,
    Decision,
    HealthStatus,
    Started,
)
from slos_serve.errors import Rejected, SloServeError

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def client(sim_cluster) -> Iterator[Client]:
    with Client(sim_cluster.target, timeout=30) as c:
        yield c


# ------------------------------------------------------------------- streaming --


@pytest.mark.parametrize("max_tokens", [1, 2, 20])
@pytest.mark.parametrize("mode", ["greedy", "seeded"])
def test_stream_is_started_chunks_completion_with_exact_tokens(
    client: Client, max_tokens: int, mode: str
) -> None:
    sampling = GREEDY if mode == "greedy" else SEEDED
    prompt = prompt_ids(37, offset=max_tokens)
    expected = sim_tokens(prompt, max_tokens, sampling.get("seed"))

    events = list(client.stream(prompt, max_tokens=max_tokens, **sampling))

    assert isinstance(events[0], Started)
    assert isinstance(events[-1], Completion)
    middle = events[1:-1]
    assert middle and all(isinstance(e, Chunk) for e in middle)
    started, done = events[0], events[-1]
    assert started.prompt_tokens == len(prompt)
    assert started.tier == "loose"  # the built-in default tier
    assert started.prefill_worker and started.decode_worker

    streamed = [t for e in middle for t in e.token_ids]
    assert streamed == expected  # the first token is sent once, nothing lost or reordered
    assert done.token_ids == expected
    assert done.completion_tokens == max_tokens
    assert done.prompt_tokens == len(prompt)
    assert done.finish_reason == "length"
    assert done.request_id and done.request_id == started.request_id


def test_text_prompt_and_unseeded_sampling(client: Client) -> None:
    """A text prompt is tokenized by the coordinator; sampling without a seed still works
    (prefill and decode must draw the first token alike, so the coordinator seeds it)."""
    out = client.generate("def fib(n):\n    return", max_tokens=12, temperature=1.0)
    assert out.prompt_tokens > 0
    assert out.completion_tokens == len(out.token_ids) == 12
    assert all(0 <= t < SIM_VOCAB for t in out.token_ids)
    assert out.finish_reason == "length"


# --------------------------------------------------------------------- metrics --


def test_latency_measurements_are_consistent_and_slo_met_at_zero_load(client: Client) -> None:
    n = 20
    t0 = time.perf_counter()
    out = client.generate(prompt_ids(50), max_tokens=n, tier="loose", **GREEDY)
    client_ms = 1000 * (time.perf_counter() - t0)

    assert out.completion_tokens == n
    assert 0 < out.ttft_ms <= out.e2e_ms <= client_ms
    assert out.tpot_ms > 0
    assert math.isclose(out.tpot_ms, (out.e2e_ms - out.ttft_ms) / (n - 1), rel_tol=1e-3,
                        abs_tol=1e-3)
    assert (out.tier, out.ttft_slo_ms, out.tpot_slo_ms) == ("loose", 4000.0, 200.0)
    assert out.ttft_met and out.tpot_met and out.slo_met


def test_single_token_request_has_zero_tpot(client: Client) -> None:
    out = client.generate(prompt_ids(10), max_tokens=1, tier="loose", **GREEDY)
    assert out.completion_tokens == 1
    assert out.tpot_ms == 0.0
    assert 0 < out.ttft_ms <= out.e2e_ms
    assert out.slo_met


def test_impossible_ttft_is_reported_missed(client: Client) -> None:
    events = list(client.stream(prompt_ids(10), max_tokens=5, ttft_ms=0.001, **GREEDY))
    started, out = events[0], events[-1]
    # the planner cannot meet it: served best effort (the default policy), and it says why
    assert started.decision is Decision.BEST_EFFORT and started.reason
    assert out.decision is Decision.BEST_EFFORT
    assert out.completion_tokens == 5
    assert out.ttft_slo_ms == pytest.approx(0.001)
    assert out.ttft_ms > 0.001
    assert not out.ttft_met
    assert not out.slo_met


def test_request_that_cannot_be_admitted_and_asks_to_reject_is_resource_exhausted(
    client: Client,
) -> None:
    with pytest.raises(Rejected) as info:
        client.generate(prompt_ids(10), max_tokens=5, ttft_ms=0.001, on_reject="reject")
    assert info.value.code_name == "RESOURCE_EXHAUSTED"
    assert "rejected by the planner" in info.value.details and "TTFT" in info.value.details
    assert_serves(client)


def test_feasible_request_is_admitted(client: Client) -> None:
    events = list(client.stream(prompt_ids(10), max_tokens=3, tier="tight", **GREEDY))
    assert events[0].decision is Decision.ADMITTED and events[0].reason == ""
    assert events[-1].decision is Decision.ADMITTED and events[-1].slo_met


# ---------------------------------------------------------- abort and cancel --


def test_abort_rpc_ends_the_stream_with_abort(client: Client) -> None:
    rid = "abort-me-1"
    prompt = prompt_ids(20, offset=5)
    stream = client.stream(prompt, max_tokens=LONG, request_id=rid, **GREEDY)
    it = iter(stream)
    assert isinstance(next(it), Started)
    assert isinstance(next(it), Chunk)
    assert isinstance(next(it), Chunk)  # in decode now

    assert client.abort(rid) is True
    rest = list(it)
    done = rest[-1]
    assert isinstance(done, Completion)
    assert done.finish_reason == "abort"
    assert 2 <= done.completion_tokens < LONG
    assert done.completion_tokens == len(done.token_ids)
    assert done.token_ids == sim_tokens(prompt, len(done.token_ids), None)
    assert not done.slo_met

    assert client.abort(rid) is False  # no longer in flight
    wait_for(lambda: all_idle(client.cluster_info()), 10, "workers idle after the abort")
    assert_serves(client)


def test_abort_of_unknown_id_returns_false(client: Client) -> None:
    assert client.abort("no-such-request") is False


def test_client_cancel_frees_the_workers(client: Client) -> None:
    prompt = prompt_ids(64, offset=7)
    stream = client.stream(prompt, max_tokens=LONG, **GREEDY)
    got: list[int] = []
    for event in stream:
        if isinstance(event, Chunk):
            got.extend(event.token_ids)
            if len(got) >= 3:
                break  # leaving the loop cancels the RPC
    assert got == sim_tokens(prompt, len(got), None)
    assert stream.done and stream.completion is None  # cancelled: no Completion

    wait_for(lambda: all_idle(client.cluster_info()), 10,
             "active_requests/running/kv_blocks_used back to 0 on every worker")
    assert_serves(client)


def test_load_report_sees_a_running_request(client: Client) -> None:
    """The load report does see a running request (so the idle checks above can fail)."""
    with client.stream(prompt_ids(30, offset=3), max_tokens=LONG, **GREEDY) as stream:
        it = iter(stream)
        assert isinstance(next(it), Started)
        wait_for(lambda: busy_decode_workers(client.cluster_info()) == 1, 10,
                 "a decode worker reporting the request")
    wait_for(lambda: all_idle(client.cluster_info()), 10, "workers idle after the cancel")


def test_duplicate_request_id_in_flight_is_already_exists(client: Client) -> None:
    rid = "dup-1"
    prompt = prompt_ids(16, offset=11)
    n = 400  # >= 1.6 s of simulated steps: still running when the duplicate arrives
    stream = client.stream(prompt, max_tokens=n, request_id=rid, **GREEDY)
    it = iter(stream)
    assert isinstance(next(it), Started)  # the first request is in flight now

    with pytest.raises(SloServeError) as info:
        client.generate(prompt_ids(4), max_tokens=2, request_id=rid)
    assert info.value.code_name == "ALREADY_EXISTS"
    assert "request_id" in info.value.details

    rest = list(it)  # the first request is undisturbed
    done = rest[-1]
    assert isinstance(done, Completion)
    assert done.request_id == rid
    assert done.token_ids == sim_tokens(prompt, n, None)

    again = client.generate(prompt, max_tokens=2, request_id=rid, **GREEDY)  # free again
    assert again.request_id == rid and again.completion_tokens == 2


# ----------------------------------------------------------------- concurrency --


def test_64_concurrent_requests_all_complete(client: Client, sim_cluster) -> None:
    n = 64
    wait_for(lambda: all_healthy(client.cluster_info(), 4), 20, "4 healthy workers")

    async def main() -> list[Completion]:
        async with AsyncClient(sim_cluster.target, timeout=60) as c:
            return await asyncio.gather(*(
                c.generate(prompt_ids(10 + i, offset=i), max_tokens=4 + i % 13,
                           request_id=f"conc-{i}", **(GREEDY if i % 2 else SEEDED))
                for i in range(n)
            ))

    outs = asyncio.run(main())
    assert len(outs) == n
    assert len({o.request_id for o in outs}) == n
    for i, out in enumerate(outs):
        seed = None if i % 2 else SEEDED["seed"]
        assert out.request_id == f"conc-{i}"
        assert out.finish_reason == "length"
        assert out.token_ids == sim_tokens(prompt_ids(10 + i, offset=i), 4 + i % 13, seed)
    # Round-robin spread them over both workers of each role.
    assert len({o.prefill_worker for o in outs}) == 2
    assert len({o.decode_worker for o in outs}) == 2


# --------------------------------------------------------- a prefill worker dies --


@pytest.fixture
def fragile_cluster(model_dir: str):
    """A cluster of its own (2 prefill + 1 decode) for the test that kills a worker; not
    supervised, so the killed worker stays down (test_supervision_sim.py: restarts)."""
    from slos_serve.up import ClusterSpec, LocalCluster

    cluster = LocalCluster(ClusterSpec(model=model_dir, engine="sim", prefill=2, decode=1,
                                       restart=False))
    cluster.start(timeout_s=120, progress=False)
    try:
        # start() returns once the coordinator is SERVING, which needs only ONE healthy
        # worker per role; a worker the coordinator's first poll missed joins only after
        # gRPC's reconnect backoff. This test needs both prefill workers in rotation.
        with Client(cluster.target, timeout=10) as c:
            wait_for(lambda: all_healthy(c.cluster_info(), 3), 20,
                     "the coordinator to see every worker healthy")
        yield cluster
    finally:
        cluster.stop()


def test_requests_survive_a_killed_prefill_worker(fragile_cluster) -> None:
    """Requests in flight on a prefill worker that dies, and every request after, complete.

    The victim is first stopped (SIGSTOP), so that the coordinator still counts it healthy
    (its load poll waits for a 2 s timeout) while new requests are routed to it; then it is
    killed (SIGKILL) with those requests waiting on it: they must be retried elsewhere.
    """
    victim = next(p for p in fragile_cluster.procs if p.name == "prefill-0")
    survivor = next(p for p in fragile_cluster.procs if p.name == "prefill-1")
    target = fragile_cluster.target

    def check(out: Completion, prompt: list[int], n: int) -> None:
        assert out.finish_reason == "length"
        assert out.token_ids == sim_tokens(prompt, n, None)

    async def main() -> list[str]:
        async with AsyncClient(target, timeout=30) as c:
            warm = await asyncio.gather(*(
                c.generate(prompt_ids(20, offset=i), max_tokens=3, **GREEDY) for i in range(4)))
            assert {o.prefill_worker for o in warm} == {victim.address, survivor.address}

            prompts = [prompt_ids(300, offset=100 + i) for i in range(8)]
            streams, firsts = await streams_over_a_killed_worker(c, victim, prompts, 5)
            for s, p in zip(streams, prompts, strict=True):
                assert s.completion is not None
                check(s.completion, p, 5)

            later = [prompt_ids(200, offset=200 + i) for i in range(24)]
            outs = await asyncio.gather(*(c.generate(p, max_tokens=4, **GREEDY) for p in later))
            for out, p in zip(outs, later, strict=True):
                check(out, p, 4)
            return [e.prefill_worker for e in firsts]

    first_picks = asyncio.run(main())
    # The scenario did happen: requests were routed to the victim, then served elsewhere.
    assert victim.address in first_picks, first_picks

    with Client(target, timeout=30) as c:
        def victim_marked_down() -> bool:
            by_address = {w.address: w for w in c.cluster_info().workers}
            return not by_address[victim.address].healthy and by_address[survivor.address].healthy

        wait_for(victim_marked_down, 10, "the coordinator to mark the killed worker unhealthy")
        assert c.health() is HealthStatus.SERVING
        prompt = prompt_ids(12, offset=77)
        assert c.generate(prompt, max_tokens=6, **GREEDY).token_ids == sim_tokens(prompt, 6, None)
