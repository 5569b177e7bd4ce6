"""Per-stage accounting of a streamed request: where each stage ends, and its verdict. Pure.

A request has one stage, or several (reasoning: thinking tokens under a tight TPOT, then the
answer under a loose one; tool calling: the call, then the rest). Stage i ends after its
`max_tokens` output tokens, or with the token whose text completes its `until` string,
whichever comes first; the last stage runs to the end of the request.

Times: stage 0 starts when the request is received; its first token is the request's TTFT
and its TPOT is (last - first) / (tokens - 1). A later stage starts at the previous stage's
last token; each of its tokens counts as one interval, so TPOT = (last - start) / tokens.
Tokens that arrive together in one chunk (speculative decoding) share the chunk's time.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StageSpec:
    tier: str
    ttft_ms: float  # judged for stage 0 only (later stages start mid-stream)
    tpot_ms: float
    max_tokens: int = 0  # 0: until `until` (or the end)
    until: str = ""


@dataclass
class StageResult:
    tier: str
    tokens: int
    first_token_ms: float
    tpot_ms: float
    ttft_slo_ms: float
    tpot_slo_ms: float
    met: bool


@dataclass
class _Progress:
    start: float
    first: float | None = None
    last: float | None = None
    tokens: int = 0
    text: str = ""


@dataclass
class StageTracker:
    stages: list[StageSpec]
    received: float
    _done: list[_Progress] = field(default_factory=list)
    _cur: _Progress | None = None

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a request has at least one stage")
        self._cur = _Progress(self.received)

    @property
    def index(self) -> int:
        return len(self._done)

    @property
    def current(self) -> StageSpec:
        return self.stages[self.index]

    def add(self, tokens: int, text: str, now: float) -> bool:
        """Account `tokens` output tokens (with their text) that arrived at `now`.
        True when a stage ended within them. A chunk that straddles a boundary is split
        by token count (only a count boundary can split one); a text boundary ends the
        stage with the chunk."""
        switched = False
        while tokens > 0:
            cur, spec = self._cur, self.current
            last_stage = self.index == len(self.stages) - 1
            take = tokens
            if not last_stage and spec.max_tokens > 0:
                take = min(tokens, spec.max_tokens - cur.tokens)
            cur.tokens += take
            cur.text += text if take == tokens else ""
            cur.first = now if cur.first is None else cur.first
            cur.last = now
            tokens -= take
            ends = not last_stage and (
                (spec.max_tokens > 0 and cur.tokens >= spec.max_tokens)
                or (spec.until and spec.until in cur.text)
            )
            if ends:
                self._done.append(cur)
                self._cur = _Progress(now)
                switched = True
                text = ""  # the rest of a split chunk: its text is not known per token
        return switched

    def results(self) -> list[StageResult]:
        """One result per stage; a stage the request never reached has 0 tokens and is met
        (nothing was promised)."""
        progress = [*self._done, self._cur]
        out = []
        for i, spec in enumerate(self.stages):
            p = progress[i] if i < len(progress) else None
            if p is None or p.tokens == 0 or p.first is None or p.last is None:
                missed_start = i == 0  # no first token at all: stage 0 missed its TTFT
                out.append(StageResult(spec.tier, 0, 0.0, 0.0, spec.ttft_ms, spec.tpot_ms,
                                       not missed_start))
                continue
            first_ms = 1000 * (p.first - p.start)
            if i == 0:
                tpot_ms = 1000 * (p.last - p.first) / (p.tokens - 1) if p.tokens > 1 else 0.0
                met = first_ms <= spec.ttft_ms and tpot_ms <= spec.tpot_ms
                ttft_slo = spec.ttft_ms
            else:
                tpot_ms = 1000 * (p.last - p.start) / p.tokens
                met = tpot_ms <= spec.tpot_ms
                ttft_slo = 0.0
            out.append(StageResult(spec.tier, p.tokens, first_ms, tpot_ms, ttft_slo,
                                   spec.tpot_ms, met))
        return out
