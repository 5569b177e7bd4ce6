"""vLLM general plugin: seeded sampling that survives a prompt split into chunks, on CPU.

With chunked prefill, vLLM samples a token for every request in a step, also for a prompt
whose chunk does not reach its end, and throws that token away. For a seeded request it then
rewinds the request's `torch.Generator` by one draw: `gen.set_offset(gen.get_offset() - 4)`
(`GPUModelRunner._bookkeeping_sync`, vLLM 0.32). That is CUDA's Philox offset; a CPU
generator (Mersenne Twister) has no offset, so the call raises and the engine dies with the
first seeded request whose prompt is split. Every sampled request the coordinator sends is
seeded (prefill and decode workers must draw the same first token), so on CPU the engines
ran with chunked prefill off.

This plugin makes the rewind work on the CPU platform without touching vLLM's code: each
seeded request's generator becomes a `RewindableGenerator` (a `torch.Generator` that keeps
its state from before the step's draw), taken just before sampling; vLLM's `set_offset(...)`
call then restores that state. The draws a seeded request makes are exactly those of an
unsplit prompt, so outputs are equal split or not (tests/test_seeded_chunks.py).

Touches vLLM's model runner (not a public API): `_update_states` (after it, generators are
swapped) and `_sample` (before it, states are kept). Nothing happens on other platforms.
vLLM calls `register()` in each process it starts (`vllm.general_plugins` entry point
`slos_serve_cpu_sampling`, pyproject.toml); it is idempotent.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger("vllm.slos_serve.seeded_sampling")

RUNNER_MODULE = "vllm.v1.worker.cpu_model_runner"
OFFSET = 1 << 20  # what get_offset() reports: vLLM subtracts its per-draw step from it
_PATCH_MARK = "__slos_serve_seeded__"
_state: str | None = None  # None | "not-cpu" | "patched" | "no-runner"


class RewindableGenerator(torch.Generator):
    """A CPU generator that can be put back to where it was before the step's draw.

    `keep()` is called before each sampling step; `set_offset` (vLLM's rewind of a draw it
    discards) restores the kept state. `get_offset` reports a fixed value so that vLLM's
    arithmetic on it (offset minus the draw's size) stays valid."""

    kept: torch.Tensor | None = None  # the state before the step's draw (torch.Generator
    # takes its device in __new__, so there is no __init__ to set it in)

    @classmethod
    def copy_of(cls, gen: torch.Generator) -> RewindableGenerator:
        new = cls(gen.device)
        new.set_state(gen.get_state())
        return new

    def keep(self) -> None:
        self.kept = self.get_state()

    def get_offset(self) -> int:  # type: ignore[override]
        return OFFSET

    def set_offset(self, offset: int) -> RewindableGenerator:  # type: ignore[override]
        if offset >= OFFSET:  # not a rewind: nothing was drawn to undo
            return self
        if self.kept is None:
            raise RuntimeError("RewindableGenerator: rewind before any draw was kept")
        self.set_state(self.kept)
        return self


def swap_generators(runner: Any) -> None:
    """Make every CPU generator of the runner's batch (and its request states) rewindable."""
    batch = runner.input_batch
    for index, gen in list(batch.generators.items()):
        if isinstance(gen, RewindableGenerator) or gen.device.type != "cpu":
            continue
        new = RewindableGenerator.copy_of(gen)
        batch.generators[index] = new
        req_id = batch.req_ids[index]
        state = runner.requests.get(req_id) if req_id is not None else None
        if state is not None and state.generator is gen:
            state.generator = new


def keep_states(runner: Any) -> None:
    for gen in runner.input_batch.generators.values():
        if isinstance(gen, RewindableGenerator):
            gen.keep()


def _after(method: Callable[..., Any], hook: Callable[[Any], None]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        hook(self)
        return result

    setattr(wrapped, _PATCH_MARK, True)
    return wrapped


def _before(method: Callable[..., Any], hook: Callable[[Any], None]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        hook(self)
        return method(self, *args, **kwargs)

    setattr(wrapped, _PATCH_MARK, True)
    return wrapped


def patch_runner(runner_cls: type) -> None:
    """Install the swap (after `_update_states`) and the keep (before `_sample`)."""
    if getattr(runner_cls.__dict__.get("_sample"), _PATCH_MARK, False):
        return
    runner_cls._update_states = _after(runner_cls._update_states, swap_generators)
    runner_cls._sample = _before(runner_cls._sample, keep_states)


def supported() -> bool:
    """Whether this vLLM has the model runner the plugin patches (else chunking stays off)."""
    try:
        return importlib.util.find_spec(RUNNER_MODULE) is not None
    except ImportError:
        return False


def register() -> None:
    """Entry point of the `vllm.general_plugins` plugin `slos_serve_cpu_sampling`."""
    global _state
    if _state is not None:
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        _state = "not-cpu"
        return
    try:
        runner_module = importlib.import_module(RUNNER_MODULE)
    except ImportError:  # another vLLM layout: chunking stays off (vllm_args decides)
        _state = "no-runner"
        logger.warning("slos-serve plugin: %s not found; seeded chunked prefill unsupported",
                       RUNNER_MODULE)
        return
    patch_runner(runner_module.CPUModelRunner)
    _state = "patched"


def status() -> str | None:
    """What `register()` did in this process (for logs and tests)."""
    return _state
