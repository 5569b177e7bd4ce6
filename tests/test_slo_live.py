"""SLO-aware execution on the live cluster (vLLM CPU engines, 1 prefill + 1 decode): slow.

One cluster with the planner (`--scheduler slos`) serves every test here but the last, which
stops it and runs the same burst on the same kind of cluster with `--scheduler vllm`
(round-robin, everything admitted, vLLM's own FCFS scheduling). Tests assert differences and
orderings, not absolute times: this machine is shared and noisy.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import GREEDY

from slos_serve.client import AsyncClient, Client, Completion, Decision
from slos_serve.up import ClusterSpec, LocalCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SPEC_TOKENS = 4
TIERS = {
    "default": "loose",
    "tight": {"ttft_ms": 2500.0, "tpot_ms": 80.0},
    "loose": {"ttft_ms": 60000.0, "tpot_ms": 600.0},
}
LOOSE_PROMPT, LOOSE_OUT = 1500, 8
TIGHT_N, TIGHT_PROMPT, TIGHT_OUT = 10, 150, 24
# The burst's loose prompts hold the prefill engine this many times the tight TTFT, at the
# prefill throughput measured when the module starts (`loose_n`): under FCFS the tight
# prompts queued behind them must miss their TTFT whatever the machine's speed.
QUEUE_FACTOR = 2.0
MEASURE_BATCH = 4

_results: dict[str, dict[str, float]] = {}


def _tiers_file(tmp: Path) -> str:
    data = {"default": TIERS["default"],
            "tiers": {k: v for k, v in TIERS.items() if k != "default"}}
    path = tmp / "tiers.json"
    path.write_text(json.dumps(data))
    return str(path)


def _spec(model_dir: str, tmp: Path, scheduler: str) -> ClusterSpec:
    return ClusterSpec(model=model_dir, prefill=1, decode=1, engine="vllm",
                       spec_tokens=SPEC_TOKENS, tiers=_tiers_file(tmp), scheduler=scheduler,
                       log_dir=str(tmp / f"logs-{scheduler}"))


@pytest.fixture(scope="module")
def corpus(model_dir: str) -> list[int]:
    """Real code as token ids: prompts are cut from it."""
    import json as json_module
    import textwrap

    from slos_serve.tokenizer import load_tokenizer

    text = "".join(inspect.getsource(m) for m in (json_module.decoder, json_module.encoder,
                                                  textwrap, inspect))
    return load_tokenizer(model_dir).encode(text)


@pytest.fixture(scope="module")
def slos_cluster(
    model_dir: str, reference, tmp_path_factory: pytest.TempPathFactory
) -> Iterator:
    # (`reference` first: its engine has exited before this cluster starts)
    cluster = LocalCluster(_spec(model_dir, tmp_path_factory.mktemp("slos"), "slos"))
    cluster.start(timeout_s=600, progress=False)
    yield cluster
    cluster.stop()  # idempotent: the last test stops it early


def measure_prefill_tokens_per_s(target: str, corpus: list[int]) -> float:
    """Zero-load prefill throughput through the cluster: MEASURE_BATCH loose-sized prompts
    at once, one output token each, best of two rounds."""

    async def round_s(client: AsyncClient, k: int) -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.gather(*(
            client.generate(corpus[(k * 31 + i * 89) % (len(corpus) - LOOSE_PROMPT):][
                :LOOSE_PROMPT], max_tokens=1, tier="loose", temperature=0.0)
            for i in range(MEASURE_BATCH)))
        return loop.time() - t0

    async def run() -> float:
        async with AsyncClient(target, timeout=120) as client:
            return min([await round_s(client, k) for k in range(2)])

    return MEASURE_BATCH * LOOSE_PROMPT / asyncio.run(run())


@pytest.fixture(scope="module")
def loose_n(slos_cluster, corpus: list[int]) -> int:
    """How many loose prompts the burst queues before the tight ones: enough to hold the
    prefill engine for QUEUE_FACTOR x the tight TTFT at the measured throughput."""
    tokens_per_s = measure_prefill_tokens_per_s(slos_cluster.target, corpus)
    queue_s = QUEUE_FACTOR * TIERS["tight"]["ttft_ms"] / 1000
    n = math.ceil(queue_s * tokens_per_s / LOOSE_PROMPT)
    print(f"prefill {tokens_per_s:.0f} tokens/s at zero load: {n} loose prompts of "
          f"{LOOSE_PROMPT} tokens hold it {n * LOOSE_PROMPT / tokens_per_s:.1f} s")
    return n


def burst(
    target: str, corpus: list[int], loose_n: int
) -> list[tuple[str, Completion | Exception]]:
    """`loose_n` long loose prompts, then TIGHT_N short tight ones, all at once."""

    async def one(client: AsyncClient, tier: str, i: int) -> tuple[str, Completion | Exception]:
        n, out = (LOOSE_PROMPT, LOOSE_OUT) if tier == "loose" else (TIGHT_PROMPT, TIGHT_OUT)
        start = (i * 97) % (len(corpus) - n)
        # the loose requests sample (the coordinator seeds them): vLLM's CPU build fails a
        # seeded request whose prompt is split into chunks, so this also checks that no
        # engine splits one (VllmEngine turns chunked prefill off on CPU)
        sampling = {"temperature": 0.8} if tier == "loose" else {"temperature": 0.0}
        try:
            return tier, await client.generate(corpus[start:start + n], max_tokens=out,
                                               tier=tier, ignore_eos=True, **sampling)
        except Exception as exc:  # counted as a miss, reported in the assertion message
            return tier, exc

    async def run() -> list[tuple[str, Completion | Exception]]:
        async with AsyncClient(target, timeout=300) as client:
            tasks = [asyncio.create_task(one(client, "loose", i)) for i in range(loose_n)]
            await asyncio.sleep(0.05)  # the loose prompts are queued first
            tasks += [asyncio.create_task(one(client, "tight", loose_n + i))
                      for i in range(TIGHT_N)]
            return await asyncio.gather(*tasks)

    return asyncio.run(run())


def attainment(results: list[tuple[str, Completion | Exception]], tier: str) -> float:
    mine = [r for t, r in results if t == tier]
    return sum(isinstance(r, Completion) and r.slo_met for r in mine) / len(mine)


def summary(results: list[tuple[str, Completion | Exception]]) -> str:
    parts = []
    for tier in ("tight", "loose"):
        done = [r for t, r in results if t == tier and isinstance(r, Completion)]
        ttft = sorted(r.ttft_ms for r in done)
        parts.append(f"{tier}: attainment {attainment(results, tier):.2f}, TTFT median "
                     f"{ttft[len(ttft) // 2]:.0f} ms, max {ttft[-1]:.0f} ms" if ttft else
                     f"{tier}: nothing completed")
    return "; ".join(parts)


def describe(results: list[tuple[str, Completion | Exception]]) -> str:
    rows = []
    for tier, r in results:
        if isinstance(r, Completion):
            rows.append(f"{tier}: {r.decision.value} ttft={r.ttft_ms:.0f} tpot={r.tpot_ms:.1f} "
                        f"met={r.slo_met}")
        else:
            rows.append(f"{tier}: {type(r).__name__}: {r}")
    return "\n".join(rows)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


# ------------------------------------------------------------------------- tests --


def test_cluster_runs_the_planner(slos_cluster) -> None:
    with Client(slos_cluster.target) as client:
        info = client.cluster_info()
        assert info.scheduler == "slos"
        out = client.generate([5, 6, 7, 8], max_tokens=4, tier="tight", temperature=0.0)
    assert out.decision is Decision.ADMITTED and out.completion_tokens == 4


def test_speculation_per_tier_shows_in_metrics_and_greedy_outputs_are_unchanged(
    slos_cluster, prompts: list[list[int]], reference
) -> None:
    """ngram speculation on (4 tokens): the planner sets each TPOT tier's length; the tight
    tier speculates more than the loose one (or neither, if acceptance is low), and greedy
    outputs equal those of a colocated engine without speculation."""
    async def run() -> list[Completion]:
        async with AsyncClient(slos_cluster.target, timeout=120) as client:
            return await asyncio.gather(*(
                client.generate(p, tier=("tight", "loose")[i % 2], **GREEDY)
                for k in range(2) for i, p in enumerate(prompts)))

    outs = asyncio.run(run())
    n = len(prompts)
    for i, out in enumerate(outs):
        assert out.token_ids == reference["greedy"][i % n], f"prompt {i % n} ({out.tier})"
    text = scrape(slos_cluster.metrics_urls()["decode-0"])
    cap = {t: metric(text, "slos_worker_spec_tokens", tier=t) for t in ("tight", "loose")}
    drafted = {t: metric(text, "slos_worker_spec_drafted_tokens_total", tier=t)
               for t in ("tight", "loose")}
    print(f"speculation: caps {cap}, drafted {drafted}")
    assert None not in cap.values() and None not in drafted.values(), text
    assert cap["tight"] > cap["loose"] or cap["tight"] == cap["loose"] == 0, (cap, drafted)
    assert drafted["tight"] >= drafted["loose"], (cap, drafted)


def test_simulated_and_live_attainment_agree_at_a_moderate_load(
    slos_cluster, corpus: list[int]
) -> None:
    """The same arrivals, lengths and tiers, live and in the simulator (slos system, 1P+1D,
    the performance model this cluster runs with): attainment within 10 points."""
    import numpy as np

    from slos_serve.core.perf_model import PerfModel
    from slos_serve.sim.core import SimConfig
    from slos_serve.sim.simulator import simulate_split
    from slos_serve.sim.workloads import Request, Segment

    rng = np.random.default_rng(7)
    n, rate = 30, 2.0
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    tiers = rng.choice(["tight", "loose"], n)
    prompts = rng.integers(100, 900, n)
    outputs = rng.integers(16, 48, n)
    requests = [
        Request(i, float(arrivals[i]), str(tiers[i]), (Segment(
            int(prompts[i]), int(outputs[i]), TIERS[tiers[i]]["ttft_ms"] / 1000,
            TIERS[tiers[i]]["tpot_ms"] / 1000),))
        for i in range(n)
    ]

    async def live() -> list[Completion | Exception]:
        async with AsyncClient(slos_cluster.target, timeout=120) as client:
            t0 = asyncio.get_running_loop().time()

            async def one(r: Request) -> Completion | Exception:
                await asyncio.sleep(max(0.0, t0 + r.arrival - asyncio.get_running_loop().time()))
                start = (r.id * 131) % (len(corpus) - r.prompt_tokens)
                try:
                    return await client.generate(
                        corpus[start:start + r.prompt_tokens], max_tokens=r.output_tokens,
                        tier=r.tier, temperature=0.0, ignore_eos=True)
                except Exception as exc:
                    return exc

            return await asyncio.gather(*(one(r) for r in requests))

    outs = asyncio.run(live())
    live_att = sum(isinstance(o, Completion) and o.slo_met for o in outs) / n
    profile = slos_cluster.spec.resolve_profile()
    cfg = SimConfig(workers=2, kv_capacity_tokens=16 * 4096, max_spec_len=SPEC_TOKENS,
                    spec_alpha=0.5)
    sim = simulate_split(requests, "slos-pd", cfg, PerfModel.load(profile), split=(1, 1))
    sim_att = sim.summary.attainment
    print(f"attainment at {rate} req/s: live {live_att:.2f}, simulated {sim_att:.2f}")
    assert abs(live_att - sim_att) <= 0.10, (
        f"live {live_att:.2f} vs simulated {sim_att:.2f}\n"
        + describe([(str(r.tier), o) for r, o in zip(requests, outs, strict=True)]))


def test_tight_tier_burst_with_the_planner(
    slos_cluster, corpus: list[int], loose_n: int
) -> None:
    results = burst(slos_cluster.target, corpus, loose_n)
    _results["slos"] = {t: attainment(results, t) for t in ("tight", "loose")}
    print(f"burst, --scheduler slos: {summary(results)}")
    failed = [r for _, r in results if not isinstance(r, Completion)]
    assert not failed, describe(results)  # sampled (seeded) requests served too
    assert _results["slos"]["tight"] >= 0.9, describe(results)


def test_tight_tier_burst_with_vllm_scheduling_falls_below(
    slos_cluster, model_dir: str, corpus: list[int], loose_n: int, tmp_path: Path
) -> None:
    if "slos" not in _results:
        pytest.fail("needs test_tight_tier_burst_with_the_planner's result (run the module)")
    slos_cluster.stop()  # one cluster at a time on this machine
    with LocalCluster(_spec(model_dir, tmp_path, "vllm")) as cluster:
        with Client(cluster.target) as client:
            assert client.cluster_info().scheduler == "vllm"
        results = burst(cluster.target, corpus, loose_n)
    vllm_tight = attainment(results, "tight")
    print(f"burst, --scheduler vllm: {summary(results)}")
    assert vllm_tight <= 0.5 and vllm_tight < _results["slos"]["tight"], (
        f"vllm {vllm_tight:.2f} vs slos {_results['slos']['tight']:.2f}\n" + describe(results))
