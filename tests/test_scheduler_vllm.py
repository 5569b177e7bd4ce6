"""SloScheduler inside a real vLLM engine: per-tier speculation caps and EDF prefill.

ONE engine (kv_transfer off, ngram speculation K=4, scheduler "slos", the measured CPU
performance model) is shared by the module: an engine start costs ~30-40 s here. The
colocated reference engine (tests/conftest.py) runs, once per session, before it starts.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import time
from pathlib import Path

import pytest
from conftest import GREEDY
from test_slo_policy import CPU_LIKE_PROFILE

from slos_serve.core.policy import RequestSlo
from slos_serve.core.worker_plan import TierSpec, WorkerPlan

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / ".cache" / "profile-cpu.json"
TIERS = (
    TierSpec(tpot_ms=30.0, spec_tokens=4, interval_ms=30.0),
    TierSpec(tpot_ms=300.0, spec_tokens=0, interval_ms=300.0),
)


class Shared:
    def __init__(self, engine, loop, steps: Path, profile: Path) -> None:
        self.engine, self.loop, self.steps, self.profile = engine, loop, steps, profile

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def step_samples(self, offset: int = 0) -> list[dict]:
        """The scheduler's step recorder (SLOS_PROFILE_PATH): one JSON line per step."""
        with open(self.steps) as f:
            f.seek(offset)
            return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def engine(model_dir: str, reference, tmp_path_factory) -> Shared:
    # (`reference` first: its engine has exited before this one starts)
    from slos_serve.engine.side_channel import PROFILE_PATH_ENV
    from slos_serve.engine.vllm_engine import VllmEngine

    tmp = tmp_path_factory.mktemp("scheduler")
    profile = PROFILE
    if not profile.exists():  # a fresh clone: the copy of a measured CPU profile
        profile = tmp / "profile.json"
        profile.write_text(json.dumps(CPU_LIKE_PROFILE))
    steps = tmp / "steps.jsonl"
    steps.touch()
    saved = {k: os.environ.get(k) for k in ("VLLM_CPU_KVCACHE_SPACE", PROFILE_PATH_ENV)}
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    os.environ[PROFILE_PATH_ENV] = str(steps)
    # chunked prefill on (a mixed worker's case; these requests are greedy, so vLLM's CPU
    # seeded-chunk failure that makes VllmEngine turn chunking off on CPU cannot occur)
    eng = VllmEngine(model_dir, kv_transfer=False, speculative_tokens=4, scheduler="slos",
                     perf_profile=str(profile), chunked_prefill=True)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(eng.start())
        yield Shared(eng, loop, steps, profile)
    finally:
        loop.run_until_complete(eng.shutdown())
        loop.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _slo(tier: str, tpot_ms: float, ttft_s: float) -> RequestSlo:
    return RequestSlo(ttft_deadline_unix=time.time() + ttft_s, tpot_ms=tpot_ms,
                      best_effort=False, spec_tokens=0, tier=tier, stages=())


async def _run(eng, request, first_seen: list[str] | None = None) -> list[int]:
    tokens: list[int] = []
    async for out in eng.generate(request):
        if first_seen is not None and out.token_ids and request.request_id not in first_seen:
            first_seen.append(request.request_id)
        tokens = out.token_ids
    return tokens


def _idle_load(eng, timeout_s: float = 10.0):
    """The engine's load report once it shows the engine idle (the stats file is published
    at most every 50 ms while busy, and at once when the engine falls idle)."""
    deadline = time.monotonic() + timeout_s
    while True:
        load = eng.load()
        if (load.running == 0 and load.waiting == 0) or time.monotonic() > deadline:
            return load
        time.sleep(0.02)


def test_speculation_is_capped_per_tier_and_greedy_outputs_are_unchanged(
    engine, prompts, reference
) -> None:
    from slos_serve.engine import EngineRequest

    eng = engine.engine
    eng.set_plan(WorkerPlan(plan_time_unix=time.time(), step_token_budget=0, tiers=TIERS,
                            pace=False))
    # The scheduler re-reads the plan file at most every PLAN_POLL_S (20 ms): let a poll
    # interval pass, so the requests' first steps already see this plan.
    time.sleep(0.1)
    requests = []
    for i, prompt in enumerate(prompts):
        tight = i % 2 == 0
        requests.append(EngineRequest(
            request_id=f"spec-{i}", prompt_token_ids=prompt, max_tokens=GREEDY["max_tokens"],
            temperature=0.0, ignore_eos=True,
            slo=_slo("tight" if tight else "loose", 30.0 if tight else 300.0, 5.0),
        ))

    async def run_all():
        return await asyncio.gather(*(_run(eng, r) for r in requests))

    outs = engine.run(run_all())
    for i, (got, want) in enumerate(zip(outs, reference["greedy"], strict=True)):
        assert got == want, f"prompt {i} ({requests[i].slo.tier}): output differs"

    load = _idle_load(eng)
    assert load.scheduler == "slos"
    assert load.last_step_ms > 0
    spec = {t.tier: t for t in load.spec}
    assert spec["tight"].tpot_ms == 30.0 and spec["loose"].tpot_ms == 300.0
    assert spec["tight"].spec_tokens == 4 and spec["loose"].spec_tokens == 0
    assert spec["tight"].steps > 0 and spec["loose"].steps > 0
    assert spec["tight"].drafted > 0, spec
    assert spec["loose"].drafted == 0, spec
    assert 0 <= spec["tight"].accepted <= spec["tight"].drafted
    total = sum(t.drafted for t in load.spec)
    assert load.spec_acceptance == pytest.approx(sum(t.accepted for t in load.spec) / total)


def test_tight_deadlines_are_prefilled_before_long_loose_prompts(engine, model_dir) -> None:
    import argparse

    from slos_serve.engine import EngineRequest
    from slos_serve.tokenizer import load_tokenizer

    eng = engine.engine
    ids = load_tokenizer(model_dir).encode(inspect.getsource(argparse))
    n_loose, n_tight, long = 6, 3, 1000
    assert len(ids) >= n_loose * long + 200
    loose = [
        EngineRequest(request_id=f"loose-{i}", prompt_token_ids=ids[i * long:(i + 1) * long],
                      max_tokens=1, temperature=0.0, slo=_slo("loose", 300.0, 60.0))
        for i in range(n_loose)
    ]
    base = n_loose * long
    tight = [
        EngineRequest(request_id=f"tight-{i}",
                      prompt_token_ids=ids[base + 40 * i: base + 40 * i + 24],
                      max_tokens=1, temperature=0.0, slo=_slo("tight", 30.0, 0.5))
        for i in range(n_tight)
    ]
    order: list[str] = []

    async def run_all():
        # loose first, then tight, all in the same moment
        await asyncio.gather(*(_run(eng, r, order) for r in loose + tight))

    engine.run(run_all())
    assert sorted(order) == sorted(r.request_id for r in loose + tight)
    for r in tight:
        ahead = [x for x in order[: order.index(r.request_id)] if x.startswith("loose")]
        # only loose prefills that had started before the tight ones arrived may be ahead
        assert len(ahead) <= 2, order


def test_a_long_prompt_is_chunked_so_a_tight_decoders_steps_keep_its_tpot(
    engine, model_dir
) -> None:
    """The step budget: while a 30 ms decoder runs, a 1500-token prompt is prefilled in
    chunks whose steps the performance model predicts within 30 ms (vLLM alone takes it in
    one step of ~150 ms here)."""
    import argparse

    from slos_serve.core.perf_model import BatchShape
    from slos_serve.core.perf_model import load as load_model
    from slos_serve.engine import EngineRequest
    from slos_serve.tokenizer import load_tokenizer

    eng = engine.engine
    eng.set_plan(WorkerPlan(plan_time_unix=time.time(), tiers=TIERS))
    ids = load_tokenizer(model_dir).encode(inspect.getsource(argparse))
    offset = engine.steps.stat().st_size
    decoder = EngineRequest("budget-dec", ids[7000:7100], max_tokens=300, temperature=0.0,
                            ignore_eos=True, slo=_slo("tight", 30.0, 5.0))
    prompt = EngineRequest("budget-long", ids[8000:9500], max_tokens=1, temperature=0.0,
                           slo=_slo("loose", 300.0, 60.0))

    async def scenario():
        decoding = asyncio.Event()

        async def decode():
            n = 0
            async for out in eng.generate(decoder):
                n = len(out.token_ids)
                if n >= 3:
                    decoding.set()
            return n

        task = asyncio.ensure_future(decode())
        await decoding.wait()
        long_out = await _run(eng, prompt)
        return long_out, await task

    long_out, n = engine.run(scenario())
    assert len(long_out) == 1 and n == 300
    model = load_model(engine.profile)
    mixed = [s for s in engine.step_samples(offset)
             if s["prefill_tokens"] and s["decode_tokens"] + s["verify_tokens"]]
    assert len(mixed) >= 2, "the long prompt was not split while the decoder ran"
    for s in mixed:
        assert s["prefill_tokens"] < 1500
        shape = BatchShape(*(s[k] for k in ("prefill_tokens", "decode_tokens", "verify_tokens",
                                            "num_requests", "context_tokens", "spec_steps")))
        assert model.predict(shape) <= 0.030 + 1e-3, s
