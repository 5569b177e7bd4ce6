"""Helpers of the tests that run a real cluster on the SIMULATED engine
(test_coordinator_sim.py, test_coordinator_sim_requests.py).

Every process is real (coordinator, prefill and decode workers, gRPC on loopback); only the
engines are simulated (slos_serve/engine/sim_engine.py), so tokens are known in advance:
a request's tokens are `sim_tokens(prompt_ids, n, seed)`, a function of the whole context.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import time
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from slos_serve.client import AsyncClient, AsyncGenerateStream, Client, ClusterInfo, Started
from slos_serve.engine import sim_engine
from slos_serve.engine.sim_engine import SimEngine

# The workers build their SimEngine without a vocab_size (slos_serve/worker/main.py), so the
# engine's default is the vocabulary its tokens are drawn from.
SIM_VOCAB: int = inspect.signature(SimEngine).parameters["vocab_size"].default
MAX_MODEL_LEN = 2048  # the workers' --max-model-len default
LONG = 1500  # max_tokens of a request that runs for seconds (>= 4 ms per simulated step)

GREEDY = {"temperature": 0.0}
SEEDED = {"temperature": 0.8, "top_p": 0.9, "seed": 1234}


def prompt_ids(n: int, offset: int = 0) -> list[int]:
    """A deterministic prompt of n token ids, all inside the vocabulary."""
    return [3 + (offset * 131 + 7 * i) % 1900 for i in range(n)]


def sim_tokens(prompt: list[int], n: int, seed: int | None) -> list[int]:
    return sim_engine.sim_tokens(prompt, n, seed, SIM_VOCAB)


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def all_idle(info: ClusterInfo) -> bool:
    return all(
        w.load is not None
        and w.load.active_requests == 0
        and w.load.running == 0
        and w.load.waiting == 0
        and w.load.kv_blocks_used == 0
        for w in info.workers
    )


def all_healthy(info: ClusterInfo, n: int) -> bool:
    return len(info.workers) == n and all(w.healthy for w in info.workers)


def busy_decode_workers(info: ClusterInfo) -> int:
    return sum(
        1 for w in info.workers
        if w.role == "decode" and w.load is not None and w.load.active_requests > 0
        and w.load.running > 0
    )


def assert_serves(client: Client, offset: int = 99) -> None:
    """The cluster still serves a valid request, correctly."""
    prompt = prompt_ids(9, offset)
    out = client.generate(prompt, max_tokens=3, **GREEDY)
    assert out.finish_reason == "length"
    assert out.token_ids == sim_tokens(prompt, 3, None)


# ---------------------------------------------------------------- metrics --

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """One process's /metrics, as Prometheus would read it."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum over the samples named `name` whose labels include `labels` (0 if none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


async def streams_over_a_killed_worker(
    client: AsyncClient, victim, prompts: list[list[int]], max_tokens: int
) -> tuple[list[AsyncGenerateStream], list[Started]]:
    """Greedy streams of `prompts` started while the cluster process `victim` is stopped
    (SIGSTOP: the coordinator still counts it healthy, its load poll waits for a timeout,
    and routes requests to it), then the victim killed (SIGKILL) with those requests waiting
    on it; the streams, read to their ends, and their Started events."""
    os.killpg(victim.popen.pid, signal.SIGSTOP)
    try:
        streams = [client.stream(p, max_tokens=max_tokens, **GREEDY) for p in prompts]
        iters = [s.__aiter__() for s in streams]
        firsts = await asyncio.gather(*(it.__anext__() for it in iters))
        assert all(isinstance(e, Started) for e in firsts)
    finally:
        os.killpg(victim.popen.pid, signal.SIGKILL)
        victim.popen.wait(timeout=10)

    async def finish(it) -> None:
        async for _ in it:
            pass

    await asyncio.gather(*(finish(it) for it in iters))
    return streams, firsts
