"""The TTFTs to expect: what bounds the batch period (Snapshot.ttft_outlook).

A long batch period buys prefill throughput, but a prompt that arrives while a full batch
runs waits for the rest of it before its own batch begins; tight TTFTs that can arrive (a
returning tool call's second turn, a short prompt) therefore bound the period. Who sees the
arrivals (the live coordinator, the simulator) tracks them here: per arrival, its slack is
its TTFT less its prompt's own prefill time alone (the performance model). The outlook is
the distribution of the slacks of recent arrivals (the last WINDOW_S seconds, at most
MAX_SAMPLES of them) and the prompt tokens arriving per second: how often batches run full.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from slos_serve.core.perf_model import BatchShape, PerfModel

WINDOW_S = 30.0
MAX_SAMPLES = 512
QUANTILES = 10  # the outlook keeps this many quantiles of the slacks
SLACK_STEP_S = 0.002  # slacks are rounded down to this, rates to RATE_STEP (plans cache)
RATE_STEP = 0.1  # relative


@dataclass(frozen=True, slots=True)
class TtftOutlook:
    """Recent arrivals as the period bound sees them (spec.ttft_miss)."""

    slacks: tuple[float, ...]  # equally likely slacks (s) of an arriving prompt, ascending
    prompt_tokens_per_s: float  # prompt tokens arriving per second, whole cluster


class TtftWindow:
    """Slacks and prompt tokens of the arrivals in a sliding window."""

    def __init__(self, model: PerfModel, window_s: float = WINDOW_S) -> None:
        self.model = model
        self.window_s = window_s
        self._seen: deque[tuple[float, float, int]] = deque(maxlen=MAX_SAMPLES)

    def observe(self, now: float, ttft_s: float, prompt_tokens: int) -> None:
        """A prompt with TTFT `ttft_s` (from its arrival) arrived, or will arrive, at `now`."""
        tokens = max(prompt_tokens, 1)
        own = self.model.predict(BatchShape(prefill_tokens=tokens, num_requests=1))
        self._seen.append((now, ttft_s - own, tokens))

    def outlook(self, now: float) -> TtftOutlook | None:
        """The window ending at `now` (None: no arrival in it)."""
        while self._seen and self._seen[0][0] < now - self.window_s:
            self._seen.popleft()
        if not self._seen:
            return None
        slacks = sorted(s for _, s, _ in self._seen)
        n = len(slacks)
        picks = [slacks[min(n - 1, (2 * i + 1) * n // (2 * QUANTILES))] for i in range(QUANTILES)]
        span = max(now - self._seen[0][0], 1.0)
        rate = sum(t for _, _, t in self._seen) / span
        return TtftOutlook(
            tuple(math.floor(s / SLACK_STEP_S) * SLACK_STEP_S for s in picks),
            _round_rate(rate),
        )


def _round_rate(rate: float) -> float:
    """rate rounded up to a step of RATE_STEP on a log scale (1, 1.1, 1.21, ...)."""
    if rate <= 0:
        return 0.0
    return (1 + RATE_STEP) ** math.ceil(math.log(rate) / math.log(1 + RATE_STEP))
