"""The vLLM engine arguments of our processes, built in one place.

The workers' engines (`VllmEngine`) and the profiler's (`slos-serve profile`) must be the
same kind of engine, so that the profile measures the steps the workers run: float32,
eager, our scheduler subclass, the same ngram speculation. Pure argument building: vLLM
is imported only to ask which platform this is (`serving_chunked_prefill`).
"""

from __future__ import annotations

from typing import Any

from kv_transfer.config import kv_transfer_config
from slos_serve.engine.kv_release import WORKER_EXTENSION

SCHEDULER_CLS = "slos_serve.engine.vllm_scheduler.SloScheduler"
# With chunked prefill off, every prompt must fit one step: at least this many tokens.
MIN_UNCHUNKED_BATCH_TOKENS = 2048


def ngram_speculation(num_tokens: int) -> dict[str, Any] | None:
    """vLLM's `speculative_config` for prompt-lookup (ngram) drafts; None when off."""
    if num_tokens <= 0:
        return None
    return {
        "method": "ngram",
        "num_speculative_tokens": num_tokens,
        "prompt_lookup_max": 4,
        "prompt_lookup_min": 2,
    }


def serving_chunked_prefill(requested: bool | None) -> bool | None:
    """Chunked prefill for an engine serving seeded sampled requests: `requested`, or if
    None, vLLM's default (on) where seeded sampling survives a split prompt, else off.

    Why: on the CPU platform vLLM 0.32 rewinds a seeded request's torch.Generator with
    set_offset after sampling a split prompt's chunk, which CPU generators do not support
    (the engine dies), and the coordinator seeds every sampled request. The plugin
    `slos_serve.engine.seeded_sampling` makes that rewind work; only a vLLM whose model
    runner it cannot find keeps chunking off.
    """
    if requested is not None:
        return requested
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return None
    from slos_serve.engine.seeded_sampling import supported

    return None if supported() else False


def engine_kwargs(
    *,
    model: str,
    max_model_len: int,
    seed: int,
    scheduler: str,
    dtype: str = "float32",
    chunked_prefill: bool | None = None,
    max_num_batched_tokens: int | None = None,
    kv_transfer: bool = False,
    speculative_tokens: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments of vLLM's `EngineArgs` (and `LLM`) for one of our engines.

    `scheduler`: "slos" (vLLM's priority policy, which the SLO-aware execution orders
    requests with) or "vllm" (fcfs: vLLM's own decisions). `chunked_prefill`: None leaves
    vLLM's default; False also sizes a step to hold a whole prompt unless
    `max_num_batched_tokens` is given. `extra`: further `EngineArgs` keywords, applied last.
    """
    kwargs: dict[str, Any] = dict(
        model=model,
        dtype=dtype,
        enforce_eager=True,
        max_model_len=max_model_len,
        seed=seed,
        scheduler_cls=SCHEDULER_CLS,
        scheduling_policy="priority" if scheduler == "slos" else "fcfs",
        disable_log_stats=True,
    )
    if chunked_prefill is not None:
        kwargs["enable_chunked_prefill"] = chunked_prefill
        if not chunked_prefill:
            kwargs["max_num_batched_tokens"] = max(MIN_UNCHUNKED_BATCH_TOKENS, max_model_len)
    if max_num_batched_tokens is not None:
        kwargs["max_num_batched_tokens"] = max_num_batched_tokens
    if kv_transfer:
        # A hand-off whose prefill worker died cannot be pulled: recompute the prompt here
        # (vLLM's default, "fail", ended the request early with finish_reason "error").
        kwargs["kv_transfer_config"] = kv_transfer_config(load_failure_policy="recompute")
        kwargs["worker_extension_cls"] = WORKER_EXTENSION  # release_handoffs
    if (speculation := ngram_speculation(speculative_tokens)) is not None:
        kwargs["speculative_config"] = speculation
    kwargs.update(extra or {})
    return kwargs
