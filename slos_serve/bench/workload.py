"""From a workload (the simulator's scenarios, or a trace) to the calls the load generator sends.

Pure: no I/O but reading a trace CSV through the workloads module.

Mapping of the workloads' segments to calls (the live systems take one prompt per call):

- Segment 0 starts call 0 with a prompt of `prompt_tokens` real token ids cut from a corpus.
- A later segment *without* a new prompt (reasoning's answer) is another SLO stage of the
  same call: the SDK's `StageSpec(max_tokens=..., ttft_ms, tpot_ms)`, one call carrying
  max_tokens = the sum of its segments' outputs (vLLM serve: one request, judged per stage on
  the client from token arrival times).
- A later segment *with* a new prompt (tool calling: the tool's response) is a follow-up call,
  sent `gap_s` after the previous call's last token, with prompt = previous prompt +
  previous output + `prompt_tokens` new corpus tokens, clipped from the front so that
  prompt + max_tokens <= max_context. Its TTFT is judged from its own send time.

SLOs: the workload's tiers are sized for the paper's GPUs (TTFT = factor x zero-load
prefill of OPT-13B on A100, TPOT absolute); `slo_scale` multiplies both so that they fit
this machine (see `auto_slo_scale`). Each call carries explicit ttft_ms / tpot_ms.

A stage within a call is the core's stage SLO type, `slos_serve.core.stages.StageSpec`
(tier: the request's; `max_tokens`: the stage's output tokens), which the records judge
it with. A stage without a TTFT objective (one that continues a call) has `ttft_ms`
`NO_TTFT` (infinity); `ttft_objective` turns that back into "none" where it is sent or
recorded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from slos_serve.core.stages import StageSpec
from slos_serve.sim.workloads import (
    REFERENCE_DECODE_STEP_S,
    TIERS,
    Request,
    TraceOptions,
    WorkloadSpec,
    build_workload,
    reference_zero_load,
)

DEFAULT_MAX_CONTEXT = 2048  # the workers' and vllm serve's --max-model-len here
NO_TTFT = math.inf  # a stage's ttft_ms when it has no TTFT objective
LOOSE_MS = 1e6  # objectives every system meets: for requests whose SLOs play no part


def ttft_objective(stage: StageSpec) -> float | None:
    """The stage's TTFT objective (ms) as sent and recorded: None where it has none."""
    return None if math.isinf(stage.ttft_ms) else stage.ttft_ms


def tier_priority(stage: StageSpec) -> int:
    """vLLM's request priority for a call (smaller: scheduled first, `vllm-serve-priority`):
    the rank of its tier's tightest TPOT among the workload tiers' (0: the tightest); a stage
    of no workload tier (zero-load probes) comes after them all."""
    tpots = sorted({min(s.tpot_s for s in t.segments) for t in TIERS.values()})
    tier = TIERS.get(stage.tier)
    return len(tpots) if tier is None else tpots.index(min(s.tpot_s for s in tier.segments))


def loose_stage(max_tokens: int) -> StageSpec:
    """One stage of `max_tokens` tokens under objectives every system meets (zero-load
    probes, overhead checks)."""
    return StageSpec(tier="", ttft_ms=LOOSE_MS, tpot_ms=LOOSE_MS, max_tokens=max_tokens)


@dataclass(frozen=True)
class Call:
    """One request on the wire. For call 0 `new_prompt` is the whole prompt; for a follow-up
    it is appended to the previous call's prompt and output."""

    new_prompt: tuple[int, ...]
    stages: tuple[StageSpec, ...]
    gap_s: float = 0.0

    @property
    def max_tokens(self) -> int:
        return sum(s.max_tokens for s in self.stages)


@dataclass(frozen=True)
class BenchRequest:
    """One workload request as the load generator sends it: its calls with scaled SLOs."""

    id: int
    arrival: float  # s from the start of the run
    tier: str
    kind: str  # the workload profile (chatbot, coding, ...)
    calls: tuple[Call, ...]

    @property
    def output_tokens(self) -> int:
        return sum(c.max_tokens for c in self.calls)

    @property
    def stages(self) -> list[StageSpec]:
        return [s for c in self.calls for s in c.stages]


@dataclass(frozen=True)
class WorkloadOptions:
    """What the bench command line says about the workload (rate is set per run)."""

    scenario: str = "coding"
    requests: int = 40
    duration_s: float | None = None  # arrivals after this are not sent
    seed: int = 0
    burstiness: float = 1.0
    trace: str | None = None
    time_scale: float = 1.0
    max_context: int = DEFAULT_MAX_CONTEXT
    max_output: int | None = None  # clip every stage's output (load-generator checks)


def workload_requests(opts: WorkloadOptions, rate: float | None) -> list[Request]:
    """The simulator's requests for one run. With a trace, `rate` (if set) overrides the
    time scale so that the replay's mean rate is `rate`."""
    topts = TraceOptions(time_scale=opts.time_scale, max_context=opts.max_context,
                         rate=rate if opts.trace else None)
    spec = WorkloadSpec(opts.scenario, rate or 1.0, opts.requests, seed=opts.seed,
                        burstiness=opts.burstiness, trace=opts.trace, trace_opts=topts,
                        max_context=opts.max_context)
    reqs = build_workload(spec)
    if opts.duration_s is not None:
        reqs = [r for r in reqs if r.arrival <= opts.duration_s]
    if opts.max_output:
        reqs = [replace(r, segments=tuple(replace(s, output_tokens=min(s.output_tokens,
                                                                     opts.max_output))
                                        for s in r.segments)) for r in reqs]
    return reqs


def mean_rate(arrivals: Sequence[float]) -> float:
    """Requests per second of an arrival sequence (n - 1 gaps over the span)."""
    if len(arrivals) < 2:
        return 0.0
    span = max(arrivals) - min(arrivals)
    return (len(arrivals) - 1) / span if span > 0 else math.inf


def cut_prompt(corpus: Sequence[int], n: int, key: int) -> tuple[int, ...]:
    """n consecutive corpus tokens at a position that depends on `key` (deterministic)."""
    if n <= 0:
        return ()
    if len(corpus) <= n:
        reps = n // max(1, len(corpus)) + 1
        return tuple((list(corpus) * reps)[:n])
    start = (key * 7919) % (len(corpus) - n)
    return tuple(corpus[start:start + n])


def to_calls(req: Request, corpus: Sequence[int], slo_scale: float) -> tuple[Call, ...]:
    """The calls of one workload request (see the module docstring for the mapping)."""
    calls: list[tuple[tuple[int, ...], list[StageSpec], float]] = []
    for j, st in enumerate(req.segments):
        slo = StageSpec(
            tier=req.tier,
            ttft_ms=NO_TTFT if st.ttft_slo is None else 1000 * st.ttft_slo * slo_scale,
            tpot_ms=1000 * st.tpot_slo * slo_scale,
            max_tokens=st.output_tokens,
        )
        if j == 0 or st.prompt_tokens > 0:
            prompt = cut_prompt(corpus, st.prompt_tokens, req.id * 8 + j)
            calls.append((prompt, [slo], st.gap_s if j else 0.0))
        else:
            calls[-1][1].append(slo)
    return tuple(Call(p, tuple(s), g) for p, s, g in calls)


def to_bench_requests(
    requests: Sequence[Request], corpus: Sequence[int], slo_scale: float
) -> list[BenchRequest]:
    """Every workload request as calls with scaled SLOs, in arrival order."""
    return [
        BenchRequest(r.id, r.arrival, r.tier, r.scenario or r.tier,
                       to_calls(r, corpus, slo_scale))
        for r in sorted(requests, key=lambda r: r.arrival)
    ]


def follow_up_prompt(
    prev_prompt: Sequence[int], prev_output: Sequence[int], new: Sequence[int],
    max_tokens: int, max_context: int,
) -> list[int]:
    """A follow-up call's prompt: the conversation so far plus the new tokens, its oldest
    tokens dropped so that prompt + max_tokens fits the context."""
    prompt = [*prev_prompt, *prev_output, *new]
    keep = max(1, max_context - max_tokens)
    return prompt[-keep:]


# ---------------------------------------------------------------- SLO scale


def reference_ttft_s(prompt_tokens: int) -> float:
    """Zero-load prefill time of the paper's hardware (OPT-13B TP2 on A100)."""
    return reference_zero_load().prefill_s(max(1, prompt_tokens))


def auto_slo_scale(samples: Sequence[tuple[int, float, float]]) -> float:
    """The SLO scale from zero-load measurements on the system under test.

    `samples`: (prompt tokens, TTFT s, TPOT s) of requests sent one at a time. The scale is
    the largest of measured / reference (TTFT against the reference zero-load prefill of the
    same prompt, TPOT against the reference zero-load decode step), so that the workload's
    tiers mean on this machine what they mean on the paper's: a TTFT SLO is its tier's
    factor (3-5x) times this machine's zero-load TTFT, a TPOT SLO at least as loose relative
    to this machine's decode step as the tier is to A100's (50 ms vs 31.8 ms). A zero-load
    request then meets its SLO with a margin of 3x (TTFT) and >= 1.5x (TPOT). Rounded up to
    two significant digits.
    """
    if not samples:
        raise ValueError("no zero-load samples")
    ratios = []
    for prompt, ttft, tpot in samples:
        ratios.append(ttft / reference_ttft_s(prompt))
        if tpot > 0:
            ratios.append(tpot / REFERENCE_DECODE_STEP_S)
    return round_up_2(max(ratios))


def round_up_2(x: float) -> float:
    """x rounded up to two significant digits (0.1234 -> 0.13, 12.01 -> 13)."""
    if x <= 0:
        return x
    step = 10 ** (math.floor(math.log10(x)) - 1)
    return round(math.ceil(x / step - 1e-9) * step, 12)
