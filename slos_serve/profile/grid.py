"""The workload grid the profiler runs on the engine, so that its steps vary.

Prefill-only batches of one or several prompts, decode batches of 1..64 running requests
at several context lengths (ngram speculation on, so verify tokens appear), and mixed
batches (a prompt joining running decodes). Prompts are real code, so that ngram drafts
and their acceptance look like a real workload's.
"""

from __future__ import annotations

import inspect
import json
import random
import textwrap
from dataclasses import dataclass, field

from slos_serve.tokenizer import load_tokenizer

MIN_PHASES = 9  # of the interleaved grid run whatever the time limit: 3 of each kind


@dataclass
class Phase:
    """Requests (prompt tokens, output tokens) started together, then `late` ones that
    join after `after` steps (a prompt arriving while others decode: a mixed batch)."""

    kind: str  # prefill | decode | mixed
    requests: list[tuple[int, int]]
    late: list[tuple[int, int]] = field(default_factory=list)
    after: int = 0

    def label(self) -> str:
        def group(reqs: list[tuple[int, int]]) -> str:
            return f"{len(reqs)}x{reqs[0][0]}" if reqs else "-"

        extra = f" + {group(self.late)} after {self.after} steps" if self.late else ""
        return f"{self.kind} {group(self.requests)}{extra}"


# Run before the grid: first runs of each size allocate; their steps are not samples.
WARM_UP = (Phase("prefill", [(256, 1)]), Phase("decode", [(64, 4)] * 4))


def grid(quick: bool, max_len: int = 2048, batch_tokens: int = 2048) -> list[Phase]:
    """The grid, interleaved by kind so that a time limit still leaves every kind."""
    longest = min(max_len - 1, batch_tokens)
    if quick:
        prompt_lens = [16, 128, 512, 1024, longest]
        multi = [(4, 64), (4, 256), (8, 200), (2, 1000)]
        decode = [(n, c) for n in (1, 4, 16, 32) for c in (32, 768)]
        mixed = [(n, 256, p) for n in (4, 16) for p in (128, 1024)]
        out_tokens, reps = 6, 1
    else:
        prompt_lens = [16, 64, 128, 256, 384, 512, 768, 1024, 1280, 1536, 1792, longest]
        multi = [(4, 64), (16, 32), (4, 256), (8, 200), (2, 512), (3, 600), (2, 1000),
                 (32, 64), (6, 300)]
        decode = [(n, c) for n in (1, 2, 4, 8, 16, 32, 64) for c in (32, 384, 1280)]
        mixed = [(n, c, p) for n in (2, 8, 32) for c in (64, 512) for p in (128, 512, 1536)]
        out_tokens, reps = 16, 3
    prefill = [Phase("prefill", [(p, 1)]) for p in prompt_lens for _ in range(reps)]
    prefill += [Phase("prefill", [(p, 1)] * n) for n, p in multi]
    decodes = [Phase("decode", [(c, out_tokens)] * n) for n, c in decode]
    mixes = [
        Phase("mixed", [(c, 4 + out_tokens)] * n, late=[(p, 1)], after=3)
        for n, c, p in mixed
    ]
    random.Random(0).shuffle(prefill)
    phases: list[Phase] = []
    groups = [prefill, decodes, mixes]
    while any(groups):
        for g in groups:
            if g:
                phases.append(g.pop(0))
    return phases


def code_tokens(model_dir: str) -> list[int]:
    """Real code as token ids (the model was trained on code, so ngram drafts and their
    acceptance look like a real workload's)."""
    text = "\n".join(inspect.getsource(m) for m in (json.decoder, json.encoder, textwrap))
    return list(load_tokenizer(model_dir).encode(text))


class PromptSource:
    """Prompts of any length cut from one token sequence at seeded random offsets."""

    def __init__(self, tokens: list[int], seed: int) -> None:
        self._tokens = tokens
        self._rng = random.Random(seed)

    def take(self, n: int) -> list[int]:
        src = self._tokens
        while len(src) < n + 1:
            src = src + src
        start = self._rng.randrange(0, len(src) - n)
        return src[start : start + n]
