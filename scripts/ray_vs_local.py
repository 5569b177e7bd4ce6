"""Requests/s through `up --ray local` vs the local path, in one run, SIMULATED engine.

    PYTHONPATH=$PWD python scripts/ray_vs_local.py --model .cache/tiny-llama [--seconds 20]

Each cluster (2 prefill + 2 decode simulated workers, the planner on) is started in turn,
warmed up, then driven by CONCURRENCY closed-loop gRPC streams for --seconds; the line
printed is each one's completed requests/s and their ratio. Both clusters are on this
machine, so the ratio is what the Ray path costs per request (the actors only supervise:
the request path is the same processes, on the node's address instead of 127.0.0.1).
Run it on a quiet machine: it prints the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

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


def measure(cluster: LocalCluster, args: argparse.Namespace) -> float:
    cluster.start(progress=False)
    try:
        return asyncio.run(_drive(cluster.target, cluster.api_key(), args.seconds,
                                  args.concurrency, args.max_tokens))
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
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
    print(f"requests/s: local {local:.1f}, ray {ray:.1f}, ray/local {ray / local:.3f} "
          f"({args.concurrency} streams x {args.max_tokens} tokens, {args.seconds:.0f} s "
          f"each; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, "
          f"{os.cpu_count()} cores{'; Ray first' if args.ray_first else ''})")


if __name__ == "__main__":
    main()
