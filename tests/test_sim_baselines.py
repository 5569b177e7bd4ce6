"""The vLLM baselines beside `vllm`: fixed-length speculation (`vllm-spec*`) and the V0
scheduler (`vllm-v0`): what a step holds, KV reserved, preemption order."""

from __future__ import annotations

import pytest

from slos_serve.core.perf_model import load_profile
from slos_serve.sim.baselines import ColocatedFcfs, vllm_spec, vllm_v0
from slos_serve.sim.core import Batch, Cluster, SimConfig, Worker
from slos_serve.sim.request import SimRequest
from slos_serve.sim.simulator import SYSTEMS, simulate
from slos_serve.sim.workloads import Request, Segment, WorkloadSpec, build_workload

MODEL = load_profile("opt-13b-a100")


def _engine(system: ColocatedFcfs, kv: int | None = None):
    c = Cluster(SimConfig(kv_capacity_tokens=kv), MODEL, ["mixed"], system, "opt-13b-a100")
    system.setup(c)
    return c, system.engines[0]


def _decoding(c: Cluster, w: Worker, rid: int, context: int, left: int) -> SimRequest:
    """A request decoding on w with `context` tokens of KV and `left` tokens still to come."""
    req = Request(rid, 0.0, "t", (Segment(context, left + 1, 10.0, 1.0),))
    r = SimRequest(req, phase="decode", context=context, generated=1)
    assert c.alloc(r, w, context)
    return r


def test_spec_drafts_are_cut_to_remaining_output_and_budget() -> None:
    c, e = _engine(vllm_spec(3))
    r = _decoding(c, e.w, 0, 100, left=10)
    assert e.drafts(r, budget=2048) == 3
    assert e.drafts(r, budget=3) == 2  # one token of the budget is the step's own
    assert e.drafts(r, budget=1) == 0
    assert e.drafts(_decoding(c, e.w, 1, 100, left=2), budget=2048) == 1


def test_spec_step_verifies_drafts_and_reserves_their_kv() -> None:
    c, e = _engine(vllm_spec(3))
    r, short = _decoding(c, e.w, 0, 100, left=10), _decoding(c, e.w, 1, 50, left=1)
    e.running += [r, short]
    b = e.step()
    assert b.decode == [(r, 3), (short, 0)]
    assert r.kv_alloc == 104 and short.kv_alloc == 51
    assert b.shape().verify_tokens == 4


def test_plain_vllm_verifies_nothing() -> None:
    c, e = _engine(SYSTEMS["vllm"]())
    r = _decoding(c, e.w, 0, 100, left=10)
    e.running.append(r)
    assert e.step().decode == [(r, 0)] and r.kv_alloc == 101


def _lone_request_e2e(system: str, alpha: float) -> float:
    reqs = [Request(0, 0.0, "t", (Segment(200, 300, 10.0, 1.0),))]
    res = simulate(reqs, system, SimConfig(spec_alpha=alpha), MODEL, "opt-13b-a100")
    return res.results[0].e2e


def test_speculation_pays_only_when_drafts_are_accepted() -> None:
    plain = _lone_request_e2e("vllm", 0.8)
    assert _lone_request_e2e("vllm-spec2", 0.8) < 0.8 * plain
    assert _lone_request_e2e("vllm-spec2", 0.0) > plain  # verifying costs, accepting nothing


class Recorder:
    """Wraps a system and keeps every batch it starts."""

    def __init__(self, system: ColocatedFcfs) -> None:
        self.inner, self.batches = system, []
        self.name = system.name

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def next_batch(self, w: Worker) -> Batch | None:
        b = self.inner.next_batch(w)
        if b:
            self.batches.append(([r.id for r, _ in b.prefill], [r.id for r, _ in b.decode]))
        return b


def _batches(system: ColocatedFcfs, reqs: list[Request]) -> list[tuple[list, list]]:
    rec = Recorder(system)
    Cluster(SimConfig(), MODEL, ["mixed"], rec, "opt-13b-a100").run(reqs)
    return rec.batches


def _staggered() -> list[Request]:
    return [Request(i, 0.3 * i, "t", (Segment(300, 40, 10.0, 1.0),)) for i in range(4)]


def test_v0_never_mixes_prefill_and_decode_and_prefills_first() -> None:
    batches = _batches(vllm_v0(), _staggered())
    assert all(not (p and d) for p, d in batches)
    for k, (p, _) in enumerate(batches[1:], 1):
        if p:  # a prompt that arrived while others decoded stalls them for a step
            assert batches[k - 1][1], "a prefill step follows decode steps"
    assert sum(len(p) for p, _ in batches) == 4
    mixed = _batches(SYSTEMS["vllm"](), _staggered())
    assert any(p and d for p, d in mixed)  # V1 (chunked prefill) mixes them


def _waiting(e, rid: int, prompt: int) -> SimRequest:
    r = SimRequest(Request(rid, 0.0, "t", (Segment(prompt, 5, 10.0, 1.0),)), phase="prefill",
                   todo_prefill=prompt)
    e.add(r)
    return r


def test_v0_batches_whole_prompts_up_to_the_token_budget() -> None:
    c, e = _engine(vllm_v0())
    running = _decoding(c, e.w, 9, 100, left=5)
    e.running.append(running)
    a, b, third = (_waiting(e, i, 900) for i in range(3))
    assert e.step().prefill == [(a, 900), (b, 900)]  # a third prompt would pass 2048 tokens
    assert e.step().prefill == [(third, 900)]  # waiting prompts go before the running decode
    step = e.step()
    assert not step.prefill and step.decode[0] == (running, 0)


def test_v0_admits_a_prompt_only_above_the_watermark() -> None:
    c, e = _engine(vllm_v0(), kv=10_000)
    r = _waiting(e, 0, 9_950)
    assert e.step() is None  # 50 tokens would stay free, less than 1 % (100)
    r.todo_prefill = 9_900
    assert e.step().prefill == [(r, 9_900)]


def test_v0_preempts_the_newest_running_request_by_recompute() -> None:
    c, e = _engine(vllm_v0(), kv=300)
    old, new = _decoding(c, e.w, 0, 150, left=5), _decoding(c, e.w, 1, 150, left=5)
    e.running += [old, new]
    b = e.step()
    assert b.decode == [(old, 0)] and e.running == [old]
    assert list(e.waiting) == [new] and new.todo_prefill == 150 and new.context == 0
    assert new.kv_alloc == 0 and old.kv_alloc == 151


@pytest.mark.parametrize("system", ["vllm-v0", "vllm-spec2"])
def test_baselines_serve_every_tool_request(system: str) -> None:
    reqs = build_workload(WorkloadSpec("tool", 2.0, 30, seed=3))
    res = simulate(reqs, system, SimConfig(), MODEL, "opt-13b-a100")
    assert res.summary.unfinished == 0 and res.summary.attainment > 0.5
