"""The stages of one output and the one rule for where each ends. Pure.

A request has one stage, or several (reasoning: thinking tokens under a tight TPOT, then the
answer under a loose one; tool calling: the call, then the rest), each with its own SLO
(`StageSpec`). `StageTracker` holds the boundary rule, the same for every process that
follows a request's stages:

* stage i ends after its `max_tokens` output tokens (0: no count limit), or when its
  `until` string appears in the text produced since the stage began, whichever comes
  first; the last stage runs to the end of the request;
* output arrives in chunks (speculative decoding: several tokens at once, with their text
  as one string). A chunk that straddles a count boundary is split by token count; its
  text goes with its last token (the stage that token falls in looks for its `until` in
  it). A text boundary ends the stage with the chunk; the text after the `until` string
  is the next stage's first text.

The coordinator feeds every chunk with its arrival time and judges each stage
(`results`); the decode worker feeds the decoded text and tells its engine of `until`
switches; the engine's scheduler sees no text: it counts tokens and takes the worker's
switches (`force`).

Times: stage 0 starts when the request is received; its first token is the request's TTFT
and its TPOT is (last - first) / (tokens - 1). A later stage starts at the previous stage's
last token; each of its tokens counts as one interval, so TPOT = (last - start) / tokens.
Tokens that arrive together in one chunk share the chunk's time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal


@dataclass(frozen=True, slots=True)
class StageSpec:
    """One stage's SLO and extent. None objectives: not given (a client leaves them to its
    tier) or not judged; a resolved request (the coordinator's) has both."""

    tier: str = ""
    ttft_ms: float | None = None  # judged for stage 0 only (later stages start mid-stream)
    tpot_ms: float | None = None
    max_tokens: int = 0  # 0: until `until` (or the end)
    until: str = ""


@dataclass(frozen=True, slots=True)
class StageSwitch:
    """A stage that began within a chunk, and what ended the one before it."""

    index: int
    by: Literal["max_tokens", "until"]


@dataclass(slots=True)
class StageResult:
    tier: str
    tokens: int
    first_token_ms: float
    tpot_ms: float
    ttft_slo_ms: float  # 0: no objective
    tpot_slo_ms: float
    met: bool


@dataclass(slots=True)
class StageProgress:
    """One stage as far as it went: when it began, its first and last token, its tokens."""

    start: float
    first: float | None = None
    last: float | None = None
    tokens: int = 0


def _within(value: float, limit: float | None) -> bool:
    return limit is None or value <= limit


class StageTracker:
    """Where a request is among its stages (the boundary rule above), and each stage's
    progress for its verdict when the chunks come with their times."""

    def __init__(self, stages: Sequence[StageSpec], received: float = 0.0) -> None:
        if not stages:
            raise ValueError("a request has at least one stage")
        self.stages = tuple(stages)
        self.index = 0
        self._text = ""  # the current stage's text, where its `until` is looked for
        self._searched = 0  # where in it `until` may still begin
        self._progress: list[StageProgress | None] = [None] * len(self.stages)
        self._progress[0] = StageProgress(received)

    @property
    def current(self) -> StageSpec:
        return self.stages[self.index]

    @property
    def last_stage(self) -> bool:
        return self.index == len(self.stages) - 1

    def add(self, tokens: int, text: str = "", now: float = 0.0) -> list[StageSwitch]:
        """Account `tokens` output tokens (with their text) that arrived at `now`; the
        stages that began within them (empty: none; a chunk without tokens is ignored)."""
        switches: list[StageSwitch] = []
        if tokens <= 0:
            return switches
        while True:  # a chunk split by count always ends the stage its first part is in
            if tokens > 0:
                tokens = self._take(tokens, text, now)
            ended = self._ended()
            if ended is None:
                return switches
            carry, by = ended
            self._enter(self.index + 1, now, carry)
            switches.append(StageSwitch(self.index, by))

    def force(self, index: int, now: float = 0.0) -> None:
        """Stage `index` began (a switch seen elsewhere: the worker saw its `until`);
        its count starts from here."""
        self._enter(min(max(index, 0), len(self.stages) - 1), now, "")

    def _take(self, tokens: int, text: str, now: float) -> int:
        """Counts the chunk's tokens that fall in the current stage; returns the rest."""
        p = self._progress[self.index]
        assert p is not None
        spec = self.current
        take = tokens
        if not self.last_stage and spec.max_tokens > 0:
            take = min(tokens, spec.max_tokens - p.tokens)
        p.tokens += take
        p.first = now if p.first is None else p.first
        p.last = now
        if take == tokens:
            self._text += text  # the chunk's text goes with its last token
        return tokens - take

    def _ended(self) -> tuple[str, Literal["max_tokens", "until"]] | None:
        """(text carried into the next stage, what ended it) if the current stage is over."""
        if self.last_stage:
            return None
        spec = self.current
        if spec.until:
            pos = self._text.find(spec.until, self._searched)
            if pos >= 0:
                return self._text[pos + len(spec.until):], "until"
            self._searched = max(0, len(self._text) - len(spec.until) + 1)
        p = self._progress[self.index]
        if spec.max_tokens > 0 and p is not None and p.tokens >= spec.max_tokens:
            return "", "max_tokens"
        return None

    def _enter(self, index: int, now: float, text: str) -> None:
        self.index = index
        self._text, self._searched = text, 0
        self._progress[index] = StageProgress(now)

    def remaining(self) -> tuple[StageSpec, ...]:
        """The stages still ahead, the current one first with what is left of its
        max_tokens: what a worker resuming the request mid-stream is told (its stage 0)."""
        p = self._progress[self.index]
        spec = self.current
        if spec.max_tokens > 0 and not self.last_stage and p is not None:
            spec = replace(spec, max_tokens=max(1, spec.max_tokens - p.tokens))
        return (spec, *self.stages[self.index + 1:])

    def results(self) -> list[StageResult]:
        """One result per stage; a stage the request never reached has 0 tokens and is met
        (nothing was promised), except stage 0: no first token misses its TTFT."""
        out = []
        for i, spec in enumerate(self.stages):
            p = self._progress[i]
            ttft_slo = (spec.ttft_ms or 0.0) if i == 0 else 0.0
            tpot_slo = spec.tpot_ms or 0.0
            if p is None or p.tokens == 0 or p.first is None or p.last is None:
                out.append(StageResult(spec.tier, 0, 0.0, 0.0, spec.ttft_ms or 0.0, tpot_slo,
                                       i != 0))
                continue
            first_ms = 1000 * (p.first - p.start)
            if i == 0:
                tpot_ms = 1000 * (p.last - p.first) / (p.tokens - 1) if p.tokens > 1 else 0.0
                met = _within(first_ms, spec.ttft_ms) and _within(tpot_ms, spec.tpot_ms)
            else:
                tpot_ms = 1000 * (p.last - p.start) / p.tokens
                met = _within(tpot_ms, spec.tpot_ms)
            out.append(StageResult(spec.tier, p.tokens, first_ms, tpot_ms, ttft_slo, tpot_slo,
                                   met))
        return out

