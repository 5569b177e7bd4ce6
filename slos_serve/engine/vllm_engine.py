"""The real engine: one vLLM AsyncLLM with NixlConnector for the KV hand-off."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from slos_serve.engine.base import EngineInfo, EngineLoad, EngineOutput, EngineRequest
from slos_serve.engine.vllm_scheduler import STATS_PATH_ENV

SCHEDULER_CLS = "slos_serve.engine.vllm_scheduler.SloScheduler"


class VllmEngine:
    """Wraps AsyncLLM. Created in the worker process; vLLM spawns its engine core."""

    def __init__(
        self,
        model: str,
        *,
        max_model_len: int = 2048,
        dtype: str = "float32",
        kv_transfer: bool = True,
        speculative_tokens: int = 0,
        seed: int = 0,
        extra_engine_args: dict[str, Any] | None = None,
    ) -> None:
        self._model = model
        self._max_model_len = max_model_len
        self._dtype = dtype
        self._kv_transfer = kv_transfer
        self._speculative_tokens = speculative_tokens
        self._seed = seed
        self._extra = dict(extra_engine_args or {})
        self._llm: Any = None
        self._stats_path = Path(tempfile.gettempdir()) / f"slos-engine-{uuid.uuid4().hex}.json"
        self.info = EngineInfo("vllm", model, max_model_len, 16, "")

    def _engine_args(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs

        from kv_transfer.config import kv_transfer_config

        kwargs: dict[str, Any] = dict(
            model=self._model,
            dtype=self._dtype,
            enforce_eager=True,
            max_model_len=self._max_model_len,
            seed=self._seed,
            scheduler_cls=SCHEDULER_CLS,
            disable_log_stats=True,
        )
        if self._kv_transfer:
            kwargs["kv_transfer_config"] = kv_transfer_config()
        if self._speculative_tokens > 0:
            kwargs["speculative_config"] = {
                "method": "ngram",
                "num_speculative_tokens": self._speculative_tokens,
                "prompt_lookup_max": 4,
                "prompt_lookup_min": 2,
            }
        kwargs.update(self._extra)
        return AsyncEngineArgs(**kwargs)

    async def start(self) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        os.environ[STATS_PATH_ENV] = str(self._stats_path)
        self._llm = AsyncLLM.from_engine_args(self._engine_args())
        config = self._llm.vllm_config
        self.info = EngineInfo(
            kind="vllm",
            model=self._model,
            max_model_len=config.model_config.max_model_len,
            block_size=config.cache_config.block_size,
            engine_id=(config.kv_transfer_config.engine_id if config.kv_transfer_config else ""),
            vocab_size=config.model_config.get_vocab_size(),
        )

    def _sampling_params(self, request: EngineRequest) -> Any:
        from vllm import SamplingParams

        extra: dict[str, Any] = {"slo": request.slo}
        if request.kv_transfer_params is not None:
            extra["kv_transfer_params"] = request.kv_transfer_params
        return SamplingParams(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            stop=request.stop or None,
            ignore_eos=request.ignore_eos,
            extra_args=extra,
        )

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        prompt = {"prompt_token_ids": list(request.prompt_token_ids)}
        params = self._sampling_params(request)
        # Closing this generator early (e.g. the RPC was cancelled) makes
        # AsyncLLM abort the request and free its KV blocks.
        async for out in self._llm.generate(prompt, params, request.request_id):
            completion = out.outputs[0]
            yield EngineOutput(
                token_ids=list(completion.token_ids),
                text=completion.text,
                finished=out.finished,
                finish_reason=completion.finish_reason if out.finished else None,
                kv_transfer_params=out.kv_transfer_params,
            )

    async def abort(self, request_id: str) -> bool:
        await self._llm.abort(request_id)
        return True

    def load(self) -> EngineLoad:
        try:
            stats = json.loads(self._stats_path.read_text())
        except (OSError, ValueError):
            return EngineLoad()
        return EngineLoad(
            running=stats["running"],
            waiting=stats["waiting"],
            kv_blocks_total=stats["kv_blocks_total"],
            kv_blocks_used=stats["kv_blocks_used"],
            steps=stats["steps"],
            mean_step_ms=stats["mean_step_ms"],
        )

    async def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
        self._stats_path.unlink(missing_ok=True)
