"""Requests/s and latency through `up --ray local` vs the local path, in one run,
SIMULATED engine.

    PYTHONPATH=$PWD python scripts/ray_vs_local.py --model .cache/tiny-llama [--seconds 20]

Each cluster (2 prefill + 2 decode simulated workers, the planner on: `up --ray local
--engine sim --prefill 2 --decode 2`'s RayCluster, and `up`'s LocalCluster) is started in
turn, warmed up, then measured twice: LATENCY_REQUESTS requests one at a time (the latency
a request sees on an idle cluster, p50 and p90 of end to end), then CONCURRENCY
closed-loop gRPC streams for --seconds (completed requests/s). The lines printed are each
path's figures and the ratios ray/local. Both clusters are on this machine, so the ratios
are what the Ray path costs (the actors only supervise: the request path is the same
processes, on the node's address instead of 127.0.0.1, with Ray's daemons on the cores).
Run it on a quiet machine: it prints the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import numpy as np

from slos_serve.client import AsyncClient
from slos_serve.up import ClusterSpec, LocalCluster


async def _drive(target: str, key: str, seconds: float, concurrency: int, max_tokens: int
                 ) -> float:
    done = 0

    async def loop(c: AsyncClient, k: int, until: float) -> None:
        nonlocal done
        i = 0
        while time.monotonic() < until:
            prompt = [3 + (k * 131 + 7 * j + i) % 1900 for j in range(32)]
            await c.generate(prompt, max_tokens=max_tokens, temperature=0.0)
            done += 1
            i += 1

    async with AsyncClient(target, timeout=60, api_key=key) as c:
        warm = time.monotonic() + 2.0
        await asyncio.gather(*(loop(c, k, warm) for k in range(concurrency)))
        done = 0
        started = time.monotonic()
        await asyncio.gather(*(loop(c, k, started + seconds) for k in range(concurrency)))
        return done / (time.monotonic() - started)


async def _latencies(target: str, key: str, n: int, max_tokens: int) -> list[float]:
    """End-to-end seconds of `n` requests sent one at a time (after as many to warm)."""
    out = []
    async with AsyncClient(target, timeout=60, api_key=key) as c:
        for i in range(2 * n):
            prompt = [3 + (11 * j + i) % 1900 for j in range(32)]
            started = time.perf_counter()
            await c.generate(prompt, max_tokens=max_tokens, temperature=0.0)
            if i >= n:
                out.append(time.perf_counter() - started)
    return out


def measure(cluster: LocalCluster, args: argparse.Namespace) -> dict[str, float]:
    cluster.start(progress=False)
    try:
        lat = np.array(asyncio.run(_latencies(cluster.target, cluster.api_key(),
                                              args.latency_requests, args.max_tokens)))
        rps = asyncio.run(_drive(cluster.target, cluster.api_key(), args.seconds,
                                 args.concurrency, args.max_tokens))
    finally:
        cluster.stop()
    return {"rps": rps, "p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--latency-requests", type=int, default=100,
                        help="requests sent one at a time for the latency figures")
    parser.add_argument("--ray-first", action="store_true", help="measure the Ray path first")
    args = parser.parse_args()
    from slos_serve.ray_cluster import RayCluster

    def spec() -> ClusterSpec:
        return ClusterSpec(model=args.model, engine="sim", prefill=2, decode=2, http=False,
                           api_key="bench", start_timeout_s=300)

    load_before = os.getloadavg()
    if args.ray_first:
        ray = measure(RayCluster(spec(), "local"), args)
        local = measure(LocalCluster(spec()), args)
    else:
        local = measure(LocalCluster(spec()), args)
        ray = measure(RayCluster(spec(), "local"), args)
    load_after = os.getloadavg()
    print(f"requests/s: local {local['rps']:.1f}, ray {ray['rps']:.1f}, ray/local "
          f"{ray['rps'] / local['rps']:.3f} ({args.concurrency} streams x {args.max_tokens} "
          f"tokens, {args.seconds:.0f} s each)")
    print(f"latency, one request at a time ({args.latency_requests} each, {args.max_tokens} "
          f"tokens): p50 local {local['p50'] * 1e3:.1f} ms, ray {ray['p50'] * 1e3:.1f} ms, "
          f"ray/local {ray['p50'] / local['p50']:.3f}; p90 local {local['p90'] * 1e3:.1f} ms, "
          f"ray {ray['p90'] * 1e3:.1f} ms, ray/local {ray['p90'] / local['p90']:.3f}")
    print(f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, "
          f"{os.cpu_count()} cores{'; Ray measured first' if args.ray_first else ''}")


if __name__ == "__main__":
    main()
