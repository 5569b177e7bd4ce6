"""Runtime membership on the SIMULATED engine: workers removed (drained) and added while
requests are in flight, through the coordinator's AddWorker / RemoveWorker RPCs.

What must hold: a drain loses no request (each of the streams running through a drained
prefill and a drained decode worker completes with exactly the undisturbed greedy output,
none cut at a timeout, none failed over), no request started after the drain began is
routed to a drained worker, a worker added at runtime is routed to, and the membership RPCs
take the client service's API key like every other call.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from sim_serving import GREEDY, all_healthy, prompt_ids, sim_tokens, wait_for

from slos_serve import membership
from slos_serve.client import AsyncClient, Client, Completion, Started
from slos_serve.up import free_port

pytestmark = pytest.mark.timeout(180)

KEY = "membership-test-key"
STREAMS = 30
MAX_TOKENS = 120
SLOWDOWN = 3.0  # ~30 tokens/s a stream: the streams run for seconds, the drain waits on them


@pytest.fixture(scope="module")
def cluster(model_dir: str):
    from slos_serve.up import ClusterSpec, LocalCluster

    cluster = LocalCluster(ClusterSpec(model=model_dir, engine="sim", prefill=2, decode=2,
                                       http=False, restart=False, api_key=KEY,
                                       sim_slowdown=SLOWDOWN))
    cluster.start(timeout_s=120, progress=False)
    try:
        yield cluster
    finally:
        cluster.stop()


async def _stream(c: AsyncClient, prompt: list[int], rid: str) -> tuple[Started, Completion]:
    started = completion = None
    async for ev in c.stream(prompt, max_tokens=MAX_TOKENS, request_id=rid, **GREEDY):
        if isinstance(ev, Started):
            started = ev
        elif isinstance(ev, Completion):
            completion = ev
    assert started is not None and completion is not None
    return started, completion


def test_drain_under_load_loses_nothing_and_a_new_worker_joins(cluster) -> None:
    target, auth = cluster.target, cluster.auth_metadata()
    with Client(target, timeout=10, api_key=KEY) as c:
        wait_for(lambda: all_healthy(c.cluster_info(), 4), 20, "4 healthy workers")
        info = c.cluster_info()
    prefill0 = next(w.address for w in info.workers if w.role == "prefill")
    decode0 = next(w.address for w in info.workers if w.role == "decode")
    drained = {prefill0, decode0}

    async def scenario():
        prompts = [prompt_ids(40, i) for i in range(STREAMS)]
        async with AsyncClient(target, timeout=120, api_key=KEY) as c:
            tasks = [asyncio.create_task(_stream(c, p, f"m{i}")) for i, p in enumerate(prompts)]
            await asyncio.sleep(1.0)  # streams on every worker, prefills and decodes
            assert not any(t.done() for t in tasks), "streams ended before the drain"
            removals = [asyncio.create_task(membership.remove_worker(
                target, a, drain_timeout_s=60, metadata=auth)) for a in drained]
            await asyncio.sleep(0.3)  # the drains began: new requests go elsewhere
            late = [asyncio.create_task(_stream(c, prompt_ids(20, 500 + i), f"late{i}"))
                    for i in range(6)]
            answers = await asyncio.gather(*removals)
            return prompts, await asyncio.gather(*tasks), await asyncio.gather(*late), answers

    prompts, outcomes, late, answers = asyncio.run(scenario())
    for answer in answers:
        assert answer.changed and answer.cut == 0, answer
    members = {w.address for w in asyncio.run(membership.members(target, metadata=auth))}
    assert not members & drained and len(members) == 2
    on_drained = 0
    for prompt, (started, done) in zip(prompts, outcomes, strict=True):
        assert done.finish_reason == "length"
        assert done.token_ids == sim_tokens(prompt, MAX_TOKENS, None)
        assert done.failovers == 0 and done.resumes == 0  # drained, not cut
        on_drained += bool({started.prefill_worker, started.decode_worker} & drained)
    assert on_drained > 0, "no stream ran through a drained worker: nothing was tested"
    for started, done in late:
        assert not {started.prefill_worker, started.decode_worker} & drained
        assert done.finish_reason == "length"

    # A new decode worker (the argv `up` starts workers with) joins at runtime.
    port = free_port()
    proc = cluster._spawn("decode-new", cluster._worker_argv("decode", port, None,
                                                             free_port(), None))
    address = f"127.0.0.1:{port}"
    with Client(target, timeout=10, api_key=KEY) as c:
        wait_for(lambda: proc.popen.poll() is None and _answers(address, cluster), 30,
                 "the new worker's health")
        added = asyncio.run(membership.add_worker(target, address, "decode", metadata=auth))
        assert added.changed
        again = asyncio.run(membership.add_worker(target, address, "decode", metadata=auth))
        assert not again.changed  # a member already
        wait_for(lambda: all_healthy(c.cluster_info(), 3), 20, "the new worker routed to")
        decoders = set()
        for i in range(8):  # round robin over two decode workers (the planner's too)
            prompt = prompt_ids(12, 900 + i)
            out = c.generate(prompt, max_tokens=4, **GREEDY)
            assert out.token_ids == sim_tokens(prompt, 4, None)
            decoders.add(out.decode_worker)
    assert address in decoders


def _answers(address: str, cluster) -> bool:
    from slos_serve.grpc_util import check_health

    return asyncio.run(check_health(address, credentials=cluster.internal_credentials()))


def test_membership_rpcs_need_the_api_key(cluster) -> None:
    async def unauthenticated() -> grpc.StatusCode:
        try:
            await membership.add_worker(cluster.target, "127.0.0.1:1", "decode")
        except grpc.RpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    assert asyncio.run(unauthenticated()) == grpc.StatusCode.UNAUTHENTICATED
    bad_role = asyncio.run(_bad_role(cluster))
    assert bad_role == grpc.StatusCode.INVALID_ARGUMENT


async def _bad_role(cluster) -> grpc.StatusCode:
    try:
        await membership.add_worker(cluster.target, "127.0.0.1:1", "chef",
                                    metadata=cluster.auth_metadata())
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_an_unreachable_worker_leaves_the_membership_after_the_grace() -> None:
    """drop_after_s: a worker that never answers (its actor died) is removed; 0 keeps it."""
    from coordinator.pool import WorkerPool

    async def run(drop_after_s: float) -> list[str]:
        dead = f"127.0.0.1:{free_port()}"  # nothing listens there
        pool = WorkerPool([], [dead], poll_interval_s=0.05, drop_after_s=drop_after_s)
        pool.start()
        await asyncio.sleep(1.5)
        left = [w.address for w in pool.workers]
        await pool.close()
        return left

    assert asyncio.run(run(0.3)) == []
    assert len(asyncio.run(run(0.0))) == 1


def test_scale_cli_without_ray_drains_and_refuses_to_start_processes(cluster, capsys) -> None:
    from slos_serve.cli import main

    auth = cluster.auth_metadata()
    before = [w.address for w in asyncio.run(membership.members(cluster.target, metadata=auth))
              if w.role == "decode"]
    assert len(before) >= 2
    base = ["scale", "--coordinator", cluster.target, "--api-key", KEY]
    assert main([*base, "--decode", "+1"]) == 2  # no process started without Ray
    assert "needs --ray" in capsys.readouterr().err
    assert main([*base, "--decode", "-1", "--drain-timeout", "10"]) == 0
    out = capsys.readouterr().out
    after = [w.address for w in asyncio.run(membership.members(cluster.target, metadata=auth))
             if w.role == "decode"]
    assert after == before[:-1] and f"removed {before[-1]}" in out
