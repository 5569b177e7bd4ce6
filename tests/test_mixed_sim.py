"""Mixed workers in the live cluster, fast: `slos-serve up --mixed N` on the SIMULATED engine.

A mixed worker prefills and decodes on one engine. A request routed to one mixed worker for
both is served there locally: one streaming call, no KV hand-off, the first token the first
chunk. Every process is real (coordinator, workers, gRPC on loopback); tokens are known in
advance (tests/sim_serving.py), so the streams are checked exactly.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator

import pytest
import sim_serving as sim

from slos_serve import cli
from slos_serve.client import AsyncClient, Chunk, Client, Completion, Started
from slos_serve.up import ClusterSpec, LocalCluster

pytestmark = pytest.mark.timeout(120)


def handoffs(cluster: LocalCluster) -> float:
    """KV hand-offs the cluster's workers have pulled so far."""
    return sum(sim.value(sim.scrape(url), "slos_worker_kv_handoff_seconds_count")
               for name, url in cluster.metrics_urls().items() if name != "coordinator")


def up(model_dir: str, *flags: str, warm_pairs: int) -> Iterator[LocalCluster]:
    """The cluster `slos-serve up --engine sim FLAGS` starts, every worker seen healthy and
    `warm_pairs` warm-up hand-offs done: the pairs that may carry one, none between mixed
    workers but under the adaptive layout."""
    args = cli.build_parser().parse_args(["up", "--engine", "sim", "--model", model_dir,
                                          *flags])
    cluster = LocalCluster(ClusterSpec.from_args(args, port=0, http_port=0))  # free ports
    cluster.start(timeout_s=90, progress=False)
    try:
        with Client(cluster.target, timeout=10) as c:
            n = sum(cluster.spec.counts().values())
            sim.wait_for(lambda: sim.all_healthy(c.cluster_info(), n), 20, "every worker healthy")
        sim.wait_for(lambda: handoffs(cluster) >= warm_pairs, 20, f"{warm_pairs} warm-ups")
        time.sleep(0.5)  # none beyond them
        assert handoffs(cluster) == warm_pairs
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module", params=[("auto", 2), ("fixed", 0)], ids=["auto", "fixed"])
def mixed2(model_dir: str, request) -> Iterator[LocalCluster]:
    """`up --mixed 2` (the adaptive layout by default: both pairs warmed at start) and
    `up --mixed 2 --layout fixed` (no hand-off ever, none warmed)."""
    layout, pairs = request.param
    yield from up(model_dir, "--mixed", "2", "--layout", layout, warm_pairs=pairs)


def stream(client: Client, prompt: list[int], n: int, sampling: dict) -> tuple[
        Started, list[Chunk], Completion]:
    events = list(client.stream(prompt, max_tokens=n, **sampling))
    started, *chunks, final = events
    assert isinstance(started, Started) and isinstance(final, Completion)
    assert all(isinstance(c, Chunk) for c in chunks)
    return started, chunks, final


@pytest.mark.parametrize("sampling", [sim.GREEDY, sim.SEEDED], ids=["greedy", "seeded"])
def test_mixed_workers_serve_every_request_locally(mixed2: LocalCluster, sampling) -> None:
    workers = {p.address for p in mixed2.procs if p.name.startswith("mixed-")}
    urls = {p.address: mixed2.metrics_urls()[p.name] for p in mixed2.procs
            if p.address in workers}
    before = {a: sim.scrape(u) for a, u in urls.items()}
    seed = sampling.get("seed")
    used = set()
    with Client(mixed2.target, timeout=30) as c:
        assert {w.role for w in c.cluster_info().workers} == {"mixed"}
        for i, n in enumerate([1, 2, 7, 20]):
            prompt = sim.prompt_ids(40 + i, offset=i)
            started, chunks, final = stream(c, prompt, n, sampling)
            assert started.prefill_worker == started.decode_worker in workers
            used.add(started.prefill_worker)
            want = sim.sim_tokens(prompt, n, seed)
            # the first token alone in the first chunk: TTFT ends there
            assert chunks[0].token_ids == want[:1]
            assert [t for ch in chunks for t in ch.token_ids] == want
            assert final.token_ids == want and final.completion_tokens == n
            assert final.finish_reason == "length" and final.slo_met
            assert 0 < final.ttft_ms <= final.e2e_ms
    if mixed2.spec.layout == "fixed":
        assert used == workers  # routing order: both workers serve
    # (adaptive: each prompt goes where it is prefilled soonest; between idle workers that
    # is the one whose learned model is faster, so sequential requests may all go there)
    after = {a: sim.scrape(u) for a, u in urls.items()}

    def served(rpc: str) -> float:
        return sum(sim.value(after[a], "slos_worker_requests_total", rpc=rpc, outcome="ok")
                   - sim.value(before[a], "slos_worker_requests_total", rpc=rpc, outcome="ok")
                   for a in workers)

    assert served("prefill") == served("decode") == 4
    pulled = sum(sim.value(after[a], "slos_worker_kv_handoff_seconds_count")
                 - sim.value(before[a], "slos_worker_kv_handoff_seconds_count") for a in workers)
    assert pulled == 0  # a local request moves no KV


@pytest.fixture
def fragile_mixed2(model_dir: str) -> Iterator[LocalCluster]:
    """`up --mixed 2 --layout fixed` of its own, for the test that kills a worker."""
    yield from up(model_dir, "--mixed", "2", "--layout", "fixed", warm_pairs=0)


def test_a_local_request_fails_over_to_the_other_mixed_worker(
        fragile_mixed2: LocalCluster) -> None:
    """A mixed worker dies with requests routed to it: they are served on the other one.

    Stopped first (SIGSTOP), so the coordinator still counts it healthy while requests are
    routed to it, then killed (SIGKILL) before any of them produced a token."""
    cluster = fragile_mixed2
    victim = next(p for p in cluster.procs if p.name == "mixed-0")

    async def main() -> list[str]:
        async with AsyncClient(cluster.target, timeout=30) as c:
            prompts = [sim.prompt_ids(30, offset=300 + i) for i in range(6)]
            streams, firsts = await sim.streams_over_a_killed_worker(c, victim, prompts, 4)
            for s, p in zip(streams, prompts, strict=True):
                assert s.completion is not None
                assert s.completion.token_ids == sim.sim_tokens(p, 4, None)
            return [e.prefill_worker for e in firsts]

    picks = asyncio.run(main())
    assert victim.address in picks, picks  # the scenario happened


def test_prefill_and_mixed_workers_together(model_dir: str) -> None:
    """`up --prefill 1 --mixed 1`: the prefill worker hands off to the mixed one, which
    also serves requests locally (the adaptive layout, by default with a mixed worker)."""
    for cluster in up(model_dir, "--prefill", "1", "--mixed", "1", warm_pairs=1):
        addr = {p.name: p.address for p in cluster.procs}
        routes = set()
        with Client(cluster.target, timeout=30) as c:
            assert sorted(w.role for w in c.cluster_info().workers) == ["mixed", "prefill"]
            for i in range(6):
                prompt = sim.prompt_ids(25, offset=50 + i)
                started, chunks, final = stream(c, prompt, 6, sim.GREEDY)
                assert started.decode_worker == addr["mixed-0"]  # the only one that decodes
                routes.add(started.prefill_worker)
                assert chunks[0].token_ids == sim.sim_tokens(prompt, 1, None)
                assert final.token_ids == sim.sim_tokens(prompt, 6, None)
        assert routes == {addr["prefill-0"], addr["mixed-0"]}  # hand-offs and local


def test_vllm_baseline_round_robins_over_mixed_workers(model_dir: str) -> None:
    """`--scheduler vllm --mixed 2`: each request served locally on the next worker in turn,
    as two vLLM servers would be."""
    for cluster in up(model_dir, "--mixed", "2", "--scheduler", "vllm", warm_pairs=0):
        workers = sorted(p.address for p in cluster.procs if p.name.startswith("mixed-"))
        picks = []
        with Client(cluster.target, timeout=30) as c:
            for i in range(6):
                prompt = sim.prompt_ids(20, offset=90 + i)
                started, chunks, final = stream(c, prompt, 5, sim.GREEDY)
                assert started.prefill_worker == started.decode_worker
                picks.append(started.prefill_worker)
                assert chunks[0].token_ids == sim.sim_tokens(prompt, 1, None)
                assert final.token_ids == sim.sim_tokens(prompt, 5, None)
        assert sorted(set(picks)) == workers
        assert all(a != b for a, b in itertools.pairwise(picks)), picks  # in turn


def test_up_worker_counts_and_layout_flags() -> None:
    parse = cli.build_parser().parse_args

    def spec(*flags: str) -> ClusterSpec:
        return ClusterSpec.from_args(parse(["up", "--model", "m", *flags]))

    assert spec().counts() == {"prefill": 1, "decode": 1, "mixed": 0}  # the default: 1P+1D
    assert spec("--mixed", "2").counts() == {"prefill": 0, "decode": 0, "mixed": 2}
    assert spec("--prefill", "1", "--mixed", "1").counts() == {
        "prefill": 1, "decode": 0, "mixed": 1}
    assert spec("--mixed", "1", "--decode", "2").counts() == {
        "prefill": 0, "decode": 2, "mixed": 1}
    assert spec().layout == "auto" and spec("--layout", "fixed").layout == "fixed"
    with pytest.raises(ValueError, match="prefills"):
        spec("--prefill", "0").counts()
    with pytest.raises(SystemExit):
        parse(["up", "--model", "m", "--layout", "sideways"])


# ------------------------------------------------------- the worker, in-process --


class Aborted(Exception):
    pass


class FakeContext:
    """grpc.aio.ServicerContext's abort: raises, as gRPC's does."""

    code = details = None

    async def abort(self, code, details):
        self.code, self.details = code, details
        raise Aborted(details)


def test_a_local_decode_streams_every_token_and_only_a_mixed_worker_takes_one() -> None:
    import grpc

    from proto import slos_serve_pb2 as pb
    from slos_serve.engine.sim_engine import SimEngine
    from slos_serve.worker.service import WorkerService

    prompt = sim.prompt_ids(33)
    request = pb.DecodeRequest(request_id="r", prompt_token_ids=prompt, local=True,
                               sampling=pb.SamplingParams(max_tokens=6, temperature=0.0))

    async def serve(role: str) -> tuple[list[pb.DecodeResponse], FakeContext]:
        engine = SimEngine()
        await engine.start()
        ctx = FakeContext()
        out = []
        try:
            async for r in WorkerService(role, engine).Decode(request, ctx):
                out.append(r)
        except Aborted:
            pass
        finally:
            await engine.shutdown()
        return out, ctx

    out, ctx = asyncio.run(serve("mixed"))
    assert ctx.code is None
    assert list(out[0].token_ids) == sim.sim_tokens(prompt, 1, None)  # the first token first
    assert [t for r in out for t in r.token_ids] == sim.sim_tokens(prompt, 6, None)
    assert out[-1].finish_reason == "length"
    for role in ("decode", "prefill"):
        out, ctx = asyncio.run(serve(role))
        assert out == [] and ctx.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "does not serve local requests" in ctx.details
