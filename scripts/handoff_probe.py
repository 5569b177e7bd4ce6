"""Hand-off probe: how long a tight request waits for its KV pull under a loaded prefill engine.

The burst of tests/test_slo_live.py (LOOSE_N loose 1500-token prompts, then 10 tight 150-token
ones), on a live 1 prefill + 1 decode cluster with the planner, ROUNDS times; the tight
requests are streamed, and for each the gap from its first token (the prefill's) to its second
(the first decode step after the KV pull) and its TPOT are printed as percentiles.

    .venv/bin/python scripts/handoff_probe.py [LOOSE_N [ROUNDS]]
    SLOS_NIXL_PROGRESS_THREAD=poll .venv/bin/python scripts/handoff_probe.py 48 3

Run nothing else timed at the same time.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from slos_serve.client import AsyncClient, Chunk
from slos_serve.tokenizer import load_tokenizer
from slos_serve.up import ClusterSpec, LocalCluster

MODEL = os.environ.get("SLOS_TEST_MODEL", ".cache/tiny-llama")
TIERS = {"default": "loose", "tiers": {"tight": {"ttft_ms": 2500.0, "tpot_ms": 80.0},
                                       "loose": {"ttft_ms": 60000.0, "tpot_ms": 600.0}}}


async def tight(client: AsyncClient, prompt: list[int]) -> tuple[float, list[float]]:
    """Send time and every token's arrival time of one streamed tight request."""
    times: list[float] = []
    sent = time.monotonic()
    async with client.stream(prompt, max_tokens=24, tier="tight", temperature=0.0,
                             ignore_eos=True) as stream:
        async for event in stream:
            if isinstance(event, Chunk):
                times += [time.monotonic()] * len(event.token_ids)
    return sent, times


async def bursts(target: str, corpus: list[int], loose_n: int, rounds: int) -> list:
    def cut(i: int, n: int) -> list[int]:
        start = (i * 97) % (len(corpus) - n)
        return corpus[start:start + n]

    out = []
    async with AsyncClient(target, timeout=300) as client:
        for r in range(rounds):
            loose = [asyncio.create_task(client.generate(
                cut(r * 1000 + i, 1500), max_tokens=8, tier="loose", temperature=0.8,
                ignore_eos=True)) for i in range(loose_n)]
            await asyncio.sleep(0.05)
            out += await asyncio.gather(*(tight(client, cut(r * 1000 + loose_n + i, 150))
                                          for i in range(10)))
            await asyncio.gather(*loose)
    return out


def main() -> None:
    loose_n = int(sys.argv[1]) if len(sys.argv) > 1 else 48
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    text = "".join(inspect.getsource(m) for m in (json.decoder, json.encoder, textwrap,
                                                   inspect))
    corpus = load_tokenizer(MODEL).encode(text)
    tmp = Path(tempfile.mkdtemp())
    (tmp / "tiers.json").write_text(json.dumps(TIERS))
    spec = ClusterSpec(model=MODEL, prefill=1, decode=1, engine="vllm", spec_tokens=4,
                       tiers=str(tmp / "tiers.json"), scheduler="slos",
                       log_dir=str(tmp / "logs"))
    with LocalCluster(spec) as cluster:
        results = asyncio.run(bursts(cluster.target, corpus, loose_n, rounds))
    done = [(sent, t) for sent, t in results if len(t) > 1]
    figures = {
        "ttft": [1000 * (t[0] - sent) for sent, t in done],
        "first -> second token": [1000 * (t[1] - t[0]) for _, t in done],
        "tpot": [1000 * (t[-1] - t[0]) / (len(t) - 1) for _, t in done],
    }
    mode = os.environ.get("SLOS_NIXL_PROGRESS_THREAD") or "off (default)"
    print(f"NIXL progress {mode}: {len(done)} tight requests, {loose_n} loose per burst")
    for name, values in figures.items():
        a = np.array(values)
        print(f"  {name}: p50 {np.percentile(a, 50):.1f}  p90 {np.percentile(a, 90):.1f}  "
              f"max {a.max():.1f} ms")


if __name__ == "__main__":
    main()
