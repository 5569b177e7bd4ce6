"""Workloads: the SLOs-Serve paper's six scenarios, SLO tiers and arrival processes.

Used by both the simulator and the live benchmark, so a scenario means the same requests in
both. Everything is seeded: the same (scenario, rate, count, seed) gives the same requests.

Lengths. The paper draws prompts and outputs from public data sets; those are not downloaded
here. Each scenario instead samples lognormal lengths (median, sigma, clipped to a range) fitted
by hand to the published summary statistics of its source, so the *shape* (short chat prompts,
long summarization prompts, long reasoning outputs...) and rough means match. Approximations:

- chatbot: ShareGPT conversations as used by vLLM's and DistServe's benchmarks (prompt mean of
  a few hundred tokens with a long tail, output ~200-300 tokens).
- coding: HumanEval (OpenAI, 2021): function signature + docstring prompts of ~60-500 tokens
  (mean ~150), completions of ~50-300 tokens.
- summarization: arXiv summarization (Cohan et al., 2018): papers far longer than OPT's
  2048-token context, so prompts are truncated to ~1-2k tokens; abstracts of ~100-300 tokens.
- tool: ToolBench / ToolLLaMA (Qin et al., 2023), two segments: a long prompt carrying the tool
  documentation (~1k tokens) and a short function call (tight TPOT); then, after the tool
  runs (an exponential delay, mean 0.2 s, an assumption), the tool's response is prefilled as
  a new prompt and the answer decoded (loose TPOT).
- reasoning: s1K (Muennighoff et al., 2025) answered by DeepSeek-R1-Distill-Qwen-1.5B: short
  questions, a long thinking segment (tight TPOT), then a shorter answer (loose TPOT). Thinking
  traces of s1K run to many thousand tokens; they are clipped to 3k here so that the scenario
  fits the KV memory and context of the OPT-13B profile the paper's other scenarios use.
- mixed: chatbot, coding and summarization requests interleaved in equal shares, each with its
  own tier (the paper's "all at once" scenario).

SLO tiers follow the presets of the authors' code (reference/slos-serve.md): a TTFT SLO is a
multiple of the zero-load prefill time of the segment's new prompt tokens; a TPOT SLO is absolute
(calibrated on A100 + OPT-13B) or, with `tpot_mode="relative"`, the same multiple of the
measured zero-load decode step as on the reference hardware. The scenario -> tier mapping
(chatbot: HumanDcd, coding: FastDcd, summarization: FastPF, tool: FastTool, reasoning:
FastThink) is this project's reading of the presets' names.

Arrivals: Poisson; gamma inter-arrivals with a burstiness parameter (vLLM's `bench serve`
convention: shape = burstiness, 1 = Poisson, < 1 burstier); or replayed from an Azure LLM
inference trace CSV (`TIMESTAMP,ContextTokens,GeneratedTokens`), which then also supplies the
lengths.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np

# Zero-load decode step of OPT-13B TP2 on A100 (reference profile: 7.21e-5 * 1 + 0.0317 s).
# TPOT tiers are absolute at this step time; "relative" mode rescales them by step / this.
REFERENCE_DECODE_STEP_S = 0.0317721


@dataclass(frozen=True)
class Segment:
    """One segment of a request: prefill `prompt_tokens` new tokens, then decode `output_tokens`
    under the segment's own SLO. A segment with a prompt is a turn (tool calling's tool
    response starts one); one without continues the output under another TPOT (reasoning's
    answer after its thinking), as the live API's SLO stages do.

    `ttft_slo` (s) runs from the segment's start to its first token; None for a segment that just
    continues decoding (reasoning's answer). `tpot_slo` (s) bounds the segment's time per output
    token. `gap_s` is the external delay between the previous segment's end and this segment's
    start (a tool call executing); 0 for the first segment.
    """

    prompt_tokens: int
    output_tokens: int
    ttft_slo: float | None
    tpot_slo: float
    gap_s: float = 0.0


@dataclass(frozen=True)
class Request:
    """A request as sent: arrival time (s from the start), tier name and its segments."""

    id: int
    arrival: float
    tier: str
    segments: tuple[Segment, ...]
    scenario: str = ""

    @property
    def prompt_tokens(self) -> int:
        """Prompt of the first segment (what the client sends)."""
        return self.segments[0].prompt_tokens

    @property
    def output_tokens(self) -> int:
        """Tokens generated over all segments."""
        return sum(s.output_tokens for s in self.segments)

    @property
    def total_tokens(self) -> int:
        """Context length at the end: every prompt and output token of every segment."""
        return sum(s.prompt_tokens + s.output_tokens for s in self.segments)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prompt_tokens"] = self.prompt_tokens
        d["output_tokens"] = self.output_tokens
        return d


# ---------------------------------------------------------------- SLO tiers


@dataclass(frozen=True)
class SegmentSlo:
    """A segment's objective: TTFT factor over zero-load prefill (None: none), TPOT seconds."""

    ttft_factor: float | None
    tpot_s: float


@dataclass(frozen=True)
class Tier:
    """A named SLO preset: one SegmentSlo per segment."""

    name: str
    segments: tuple[SegmentSlo, ...]


TIERS: dict[str, Tier] = {
    t.name: t
    for t in (
        Tier("HumanDcd", (SegmentSlo(5.0, 0.100),)),
        Tier("FastDcd", (SegmentSlo(5.0, 0.050),)),
        Tier("FastPF", (SegmentSlo(3.0, 0.100),)),
        Tier("FastThink", (SegmentSlo(3.0, 0.050), SegmentSlo(None, 0.100))),
        Tier("FastTool", (SegmentSlo(3.0, 0.050), SegmentSlo(3.0, 0.100))),
    )
}


@dataclass(frozen=True)
class ZeroLoad:
    """Zero-load latencies of the serving hardware, used to turn tier factors into seconds.

    `prefill_s(n)`: time to prefill n tokens alone; `decode_step_s`: one decode step alone.
    """

    prefill_s: Callable[[int], float]
    decode_step_s: float = REFERENCE_DECODE_STEP_S
    tpot_mode: str = "absolute"  # or "relative": scale TPOT tiers to decode_step_s

    def tpot(self, tpot_s: float) -> float:
        if self.tpot_mode == "relative":
            return tpot_s * self.decode_step_s / REFERENCE_DECODE_STEP_S
        return tpot_s


def reference_zero_load() -> ZeroLoad:
    """OPT-13B TP2 on A100 (published fit: 7.21e-5 * N + 0.0317 s per batch)."""
    return ZeroLoad(prefill_s=lambda n: 7.21e-5 * n + 0.0317)


# ---------------------------------------------------------------- lengths


@dataclass(frozen=True)
class LogNormal:
    """Lognormal length: median, sigma (of log), clipped to [lo, hi]."""

    median: float
    sigma: float
    lo: int
    hi: int

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        x = rng.lognormal(math.log(self.median), self.sigma, size=n)
        return np.clip(np.rint(x), self.lo, self.hi).astype(int)


@dataclass(frozen=True)
class SegmentShape:
    """Length distributions of one segment (prompt None: no new prompt) and its tool delay."""

    output: LogNormal
    prompt: LogNormal | None = None
    gap_mean_s: float = 0.0


@dataclass(frozen=True)
class Profile:
    """One kind of request: its segments' shapes and the tier it is served under."""

    name: str
    tier: str
    segments: tuple[SegmentShape, ...]


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "chatbot",
            "HumanDcd",
            (SegmentShape(prompt=LogNormal(200, 1.0, 4, 1536),
                          output=LogNormal(180, 0.9, 4, 1024)),),
        ),
        Profile(
            "coding",
            "FastDcd",
            (SegmentShape(prompt=LogNormal(140, 0.45, 32, 600),
                          output=LogNormal(100, 0.6, 8, 512)),),
        ),
        Profile(
            "summarization",
            "FastPF",
            (
                SegmentShape(
                    prompt=LogNormal(1400, 0.35, 256, 1900), output=LogNormal(150, 0.5, 16, 400)
                ),
            ),
        ),
        Profile(
            "tool",
            "FastTool",
            (
                SegmentShape(
                    prompt=LogNormal(900, 0.3, 300, 1600), output=LogNormal(60, 0.5, 8, 256)
                ),
                SegmentShape(
                    prompt=LogNormal(150, 0.6, 16, 512),
                    output=LogNormal(100, 0.6, 8, 512),
                    gap_mean_s=0.2,
                ),
            ),
        ),
        Profile(
            "reasoning",
            "FastThink",
            (
                SegmentShape(
                    prompt=LogNormal(120, 0.6, 16, 1024), output=LogNormal(1200, 0.6, 64, 3000)
                ),
                SegmentShape(output=LogNormal(200, 0.5, 16, 600)),
            ),
        ),
    )
}

# scenario -> [(profile, share)]
SCENARIOS: dict[str, tuple[tuple[str, float], ...]] = {
    "chatbot": (("chatbot", 1.0),),
    "coding": (("coding", 1.0),),
    "summarization": (("summarization", 1.0),),
    "mixed": (("chatbot", 1 / 3), ("coding", 1 / 3), ("summarization", 1 / 3)),
    "tool": (("tool", 1.0),),
    "reasoning": (("reasoning", 1.0),),
}


# ---------------------------------------------------------------- arrivals


def gamma_arrivals(
    rate: float, burstiness: float, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Gamma inter-arrivals with mean 1/rate, shape = burstiness (vLLM bench convention)."""
    if rate <= 0 or burstiness <= 0:
        raise ValueError("rate and burstiness must be > 0")
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)
    return np.cumsum(gaps)


@dataclass(frozen=True)
class TraceRow:
    """One row of an Azure LLM inference trace: time (s from the first row) and lengths."""

    t: float
    context_tokens: int
    generated_tokens: int


def _parse_time(text: str) -> float:
    """Seconds from a float or an ISO-like datetime (the Azure traces use the latter)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    # Azure 2023 traces: "2023-11-16 18:15:46.6805900" (7 fraction digits; Python takes 6)
    head, _, frac = text.partition(".")
    base = datetime.fromisoformat(head.replace("T", " "))
    return base.timestamp() + (float("0." + frac) if frac else 0.0)


def load_trace(path: str | Path) -> list[TraceRow]:
    """Read an Azure-format CSV (`TIMESTAMP,ContextTokens,GeneratedTokens`), sorted by time."""
    rows: list[tuple[float, int, int]] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        need = ("timestamp", "contexttokens", "generatedtokens")
        missing = [c for c in need if c not in cols]
        if missing:
            raise ValueError(f"{path}: missing columns {missing} (have {reader.fieldnames})")
        for rec in reader:
            rows.append(
                (
                    _parse_time(rec[cols["timestamp"]]),
                    int(float(rec[cols["contexttokens"]])),
                    int(float(rec[cols["generatedtokens"]])),
                )
            )
    if not rows:
        raise ValueError(f"{path}: no rows")
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0]
    return [TraceRow(t - t0, c, g) for t, c, g in rows]


@dataclass(frozen=True)
class TraceOptions:
    """How a trace is replayed.

    time_scale multiplies every timestamp (0.5 = twice the rate); `rate`, when set, overrides it
    so the replay's mean rate is `rate` req/s. Lengths are multiplied by `length_scale`, then
    clipped so that prompt + output <= max_context (prompt first keeps >= 1 output token).
    """

    time_scale: float = 1.0
    rate: float | None = None
    max_context: int | None = None
    length_scale: float = 1.0
    limit: int | None = None


def trace_arrivals_and_lengths(
    rows: Sequence[TraceRow], opts: TraceOptions
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrival times, prompt and output lengths of a trace after scaling and clipping."""
    rows = list(rows[: opts.limit] if opts.limit else rows)
    t = np.array([r.t for r in rows], dtype=float)
    scale = opts.time_scale
    if opts.rate is not None:
        span = t[-1] - t[0]
        scale = (len(rows) - 1) / (opts.rate * span) if span > 0 and len(rows) > 1 else 1.0
    t = (t - t[0]) * scale
    prompt = np.maximum(1, np.rint(np.array([r.context_tokens for r in rows]) * opts.length_scale))
    out = np.maximum(1, np.rint(np.array([r.generated_tokens for r in rows]) * opts.length_scale))
    if opts.max_context:
        prompt = np.minimum(prompt, opts.max_context - 1)
        out = np.minimum(out, opts.max_context - prompt)
    return t, prompt.astype(int), out.astype(int)


# ---------------------------------------------------------------- building a workload


@dataclass(frozen=True)
class WorkloadSpec:
    """Everything that determines a workload's requests."""

    scenario: str
    rate: float
    num_requests: int
    seed: int = 0
    burstiness: float = 1.0  # gamma shape; 1 = Poisson
    trace: str | None = None
    trace_opts: TraceOptions = field(default_factory=TraceOptions)
    max_context: int | None = None


def _segment_slos(
    profile: Profile, prompts: list[int], zl: ZeroLoad
) -> list[tuple[float | None, float]]:
    tier = TIERS[profile.tier]
    out = []
    for slo, prompt in zip(tier.segments, prompts, strict=True):
        ttft = None if slo.ttft_factor is None else slo.ttft_factor * zl.prefill_s(max(prompt, 1))
        out.append((ttft, zl.tpot(slo.tpot_s)))
    return out


def _sample_profile(
    profile: Profile, seed: int, n: int
) -> list[list[tuple[int, int, float]]]:
    """n requests of a profile: per segment (prompt, output, gap). Each quantity has its own
    random stream, so request i's lengths do not depend on n (a capacity search changes n
    with the rate and must still see the same requests)."""
    tag = sum(ord(ch) for ch in profile.name)
    cols = []
    for j, shape in enumerate(profile.segments):
        streams = [np.random.default_rng([seed, tag, j, f]) for f in range(3)]
        prompt = shape.prompt.sample(streams[0], n) if shape.prompt else np.zeros(n, dtype=int)
        output = shape.output.sample(streams[1], n)
        gap = streams[2].exponential(shape.gap_mean_s, n) if shape.gap_mean_s > 0 else np.zeros(n)
        cols.append((prompt, output, gap))
    return [
        [(int(p[i]), int(o[i]), float(g[i])) for p, o, g in cols] for i in range(n)
    ]


def _fit_context(segments: list[tuple[int, int, float]], max_context: int | None) -> None:
    """Shrink outputs (last segment first), then the first prompt, to fit max_context in place."""
    if not max_context:
        return
    excess = sum(p + o for p, o, _ in segments) - max_context
    for i in reversed(range(len(segments))):
        if excess <= 0:
            return
        p, o, g = segments[i]
        cut = min(excess, o - 1)
        segments[i] = (p, o - cut, g)
        excess -= cut
    if excess > 0:
        p, o, g = segments[0]
        segments[0] = (max(1, p - excess), o, g)


def _split_output(profile: Profile, total: int) -> list[int]:
    """Split a trace's generated tokens over a profile's segments in proportion to their medians."""
    medians = [s.output.median for s in profile.segments]
    outs = [max(1, int(round(total * m / sum(medians)))) for m in medians]
    return outs


def build_workload(spec: WorkloadSpec, zl: ZeroLoad | None = None) -> list[Request]:
    """The requests of a workload, sorted by arrival. Deterministic in `spec`."""
    if spec.scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {spec.scenario!r}; choose from {sorted(SCENARIOS)}")
    zl = zl or reference_zero_load()
    mix = SCENARIOS[spec.scenario]
    if spec.trace:
        rows = load_trace(spec.trace)
        opts = replace(spec.trace_opts, limit=spec.trace_opts.limit or spec.num_requests)
        arrivals, t_prompt, t_out = trace_arrivals_and_lengths(rows, opts)
        n = len(arrivals)
    else:
        n = spec.num_requests
        arrivals = gamma_arrivals(
            spec.rate, spec.burstiness, n, np.random.default_rng([spec.seed, 1])
        )
    shares = np.array([s for _, s in mix])
    kinds = np.random.default_rng([spec.seed, 2]).choice(len(mix), size=n, p=shares / shares.sum())
    samples = {
        i: _sample_profile(PROFILES[name], spec.seed, n) for i, (name, _) in enumerate(mix)
    }
    reqs = []
    for i in range(n):
        profile = PROFILES[mix[kinds[i]][0]]
        segments = list(samples[int(kinds[i])][i])
        if spec.trace:
            outs = _split_output(profile, int(t_out[i]))
            segments = [(int(t_prompt[i]) if j == 0 else p, outs[j], g)
                      for j, (p, _, g) in enumerate(segments)]
        _fit_context(segments, spec.max_context or spec.trace_opts.max_context)
        slos = _segment_slos(profile, [p for p, _, _ in segments], zl)
        reqs.append(
            Request(
                id=i,
                arrival=float(arrivals[i]),
                tier=profile.tier,
                scenario=profile.name,
                segments=tuple(
                    Segment(p, o, ttft, tpot, g)
                    for (p, o, g), (ttft, tpot) in zip(segments, slos, strict=True)
                ),
            )
        )
    return reqs
