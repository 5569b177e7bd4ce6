"""`slos-serve demo` (what `make run` runs): a real local cluster serving real requests.

Starts 1 prefill + 1 decode worker on vLLM with the coordinator (the planner
on, ngram speculation on), sends a few prompts in two SLO tiers and one
two-stage "reasoning" request through the SDK, then one chat completion through the
OpenAI-compatible HTTP front with the `openai` SDK; prints each completion with the
planner's decision, its measured TTFT, TPOT and SLO verdict (per stage), and
stops every process. The first run measures the engine's performance profile
(about a minute) and caches it in .cache/profile-cpu.json.

The SDK is imported in `_send_all`, so that `slos-serve --help` (which imports every command
module) stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass

from slos_serve.config import Options, option
from slos_serve.up import ClusterSpec, LocalCluster

PROMPTS = [
    ("tight", "def fibonacci(n):\n"),
    ("loose", "class Stack:\n    def __init__(self):\n"),
    ("tight", "import os\n\n\ndef list_files(path):\n"),
    ("loose", "def parse_args(argv):\n    parser = "),
    ("tight", "for i in range(10):\n"),
    ("loose", "def read_config(path):\n    with open(path) as f:\n"),
    ("reasoning", "def is_prime(n):\n    # think first\n"),
]
# "reasoning": the first 16 tokens ("thinking") under the tight TPOT, the rest under the loose.
REASONING_THINK_TOKENS = 16
SPEC_TOKENS = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoArgs(Options):
    model: str = option(help="model directory (see make-model)")
    engine: str = option("vllm", choices=("vllm", "sim"))
    max_tokens: int = option(48)
    target: str | None = option(None, "use a running coordinator instead of starting a "
                                      "cluster")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    DemoArgs.add_arguments(parser)


async def _send_all(target: str, max_tokens: int) -> list:
    from slos_serve.client import AsyncClient, StageSpec

    def slo(tier: str) -> dict:
        if tier != "reasoning":
            return {"tier": tier}
        return {"stages": [StageSpec(max_tokens=REASONING_THINK_TOKENS, tier="tight"),
                           StageSpec(tier="loose")]}

    async with AsyncClient(target, timeout=300) as client:
        # Seeded sampling: the prefill and decode engines must draw the first token alike.
        jobs = [
            client.generate(
                prompt, max_tokens=max_tokens, temperature=0.7, seed=i, ignore_eos=True,
                **slo(tier),
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
        for i, st in enumerate(result.stages):
            print(f"    stage {i} [{st.tier}]: {st.tokens} tokens, TPOT {st.tpot_ms:6.1f} ms "
                  f"(SLO {st.tpot_slo_ms:.0f}) | {'met' if st.slo_met else 'MISSED'}")
    print("-" * 78)
    met = sum(1 for r in results if not isinstance(r, BaseException) and r.slo_met)
    print(f"{len(results) - failures}/{len(results)} completed, {met} met their SLO")
    return 1 if failures else 0


HTTP_PROMPT = "def add(a, b):\n"


def _send_http(base_url: str, model: str, max_tokens: int) -> int:
    """One streamed chat completion through the OpenAI-compatible front, with the official
    `openai` SDK and an SLO tier header: what any OpenAI client of the cluster sees."""
    import openai

    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    print("-" * 78)
    print(f"[HTTP, openai SDK, x-slo-tier: tight] chat: {HTTP_PROMPT!r}")
    try:
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": HTTP_PROMPT}],
            max_tokens=max_tokens, stream=True, extra_headers={"x-slo-tier": "tight"},
            extra_body={"ignore_eos": True, "seed": 7})
        chunks = list(stream)
    except openai.OpenAIError as exc:
        print(f"  ERROR: {exc}")
        return 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    decision = (chunks[0].model_extra or {}).get("slo", {})
    verdict = next(((c.model_extra or {}).get("slo", {}) for c in chunks
                    if c.choices and c.choices[0].finish_reason), {})
    print(f"  completion: {text!r}")
    print(f"  {decision.get('decision')} | TTFT {verdict.get('ttft_ms', 0):7.1f} ms "
          f"(SLO {decision.get('ttft_slo_ms', 0):.0f}) | TPOT {verdict.get('tpot_ms', 0):6.1f} "
          f"ms (SLO {decision.get('tpot_slo_ms', 0):.0f}) | SLO "
          f"{'met' if verdict.get('slo_met') else 'MISSED'}")
    return 0


def run(ns: argparse.Namespace) -> int:
    args = DemoArgs.from_args(ns)
    if args.target:
        return _report(asyncio.run(_send_all(args.target, args.max_tokens)))

    cluster = LocalCluster(ClusterSpec(model=args.model, engine=args.engine,
                                       spec_tokens=SPEC_TOKENS))
    print(f"starting a local cluster: coordinator (planner on) + 1 prefill + 1 decode worker "
          f"({args.engine}); logs in {cluster.log_dir}", file=sys.stderr)
    started = time.monotonic()
    try:
        cluster.start()
        print(f"sending {len(PROMPTS)} concurrent requests: tiers 'tight' and 'loose', and one "
              f"two-stage 'reasoning' request", file=sys.stderr)
        code = _report(asyncio.run(_send_all(cluster.target, args.max_tokens)))
        code |= _send_http(cluster.http_url, args.model, args.max_tokens)
    except (RuntimeError, TimeoutError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()
        print(f"cluster stopped ({time.monotonic() - started:.0f} s in all)", file=sys.stderr)
    return code
