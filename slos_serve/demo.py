"""`slos-serve demo` (what `make run` runs): a real local cluster serving real requests.

Starts 1 prefill + 1 decode worker on vLLM with the coordinator, sends a few
prompts in two SLO tiers through the SDK, prints each completion with its
measured TTFT, TPOT and SLO verdict, and stops every process.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

PROMPTS = [
    ("tight", "def fibonacci(n):\n"),
    ("loose", "class Stack:\n    def __init__(self):\n"),
    ("tight", "import os\n\n\ndef list_files(path):\n"),
    ("loose", "def parse_args(argv):\n    parser = "),
    ("tight", "for i in range(10):\n"),
    ("loose", "def read_config(path):\n    with open(path) as f:\n"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory (see make-model)")
    parser.add_argument("--engine", choices=("vllm", "sim"), default="vllm")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--target", default=None,
                        help="use a running coordinator instead of starting a cluster")


async def _send_all(target: str, max_tokens: int) -> list:
    from slos_serve.client import AsyncClient

    async with AsyncClient(target, timeout=300) as client:
        # Seeded sampling: the prefill and decode engines must draw the first token alike.
        jobs = [
            client.generate(
                prompt, max_tokens=max_tokens, tier=tier, temperature=0.7, seed=i, ignore_eos=True
            )
            for i, (tier, prompt) in enumerate(PROMPTS)
        ]
        return await asyncio.gather(*jobs, return_exceptions=True)


def _report(results: list) -> int:
    failures = 0
    for (tier, prompt), result in zip(PROMPTS, results, strict=True):
        print("-" * 78)
        print(f"[{tier}] prompt: {prompt!r}")
        if isinstance(result, BaseException):
            failures += 1
            print(f"  ERROR: {result}")
            continue
        print(f"  completion: {result.text!r}")
        verdict = "met" if result.slo_met else "MISSED"
        print(
            f"  {result.completion_tokens} tokens | TTFT {result.ttft_ms:7.1f} ms "
            f"(SLO {result.ttft_slo_ms:.0f}) | TPOT {result.tpot_ms:6.1f} ms "
            f"(SLO {result.tpot_slo_ms:.0f}) | {result.decision.value} | SLO {verdict}"
        )
    print("-" * 78)
    met = sum(1 for r in results if not isinstance(r, BaseException) and r.slo_met)
    print(f"{len(results) - failures}/{len(results)} completed, {met} met their SLO")
    return 1 if failures else 0


def run(args: argparse.Namespace) -> int:
    if args.target:
        return _report(asyncio.run(_send_all(args.target, args.max_tokens)))
    from slos_serve.up import ClusterSpec, LocalCluster

    cluster = LocalCluster(ClusterSpec(model=args.model, engine=args.engine))
    print(f"starting a local cluster: coordinator + 1 prefill + 1 decode worker ({args.engine}); "
          f"logs in {cluster.log_dir}", file=sys.stderr)
    started = time.monotonic()
    try:
        cluster.start()
        print(f"sending {len(PROMPTS)} concurrent requests in tiers 'tight' and 'loose'",
              file=sys.stderr)
        code = _report(asyncio.run(_send_all(cluster.target, args.max_tokens)))
    except (RuntimeError, TimeoutError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()
        print(f"cluster stopped ({time.monotonic() - started:.0f} s in all)", file=sys.stderr)
    return code
