"""The real engine: one vLLM AsyncLLM with NixlConnector for the KV hand-off.

Its scheduler (vllm_scheduler.SloScheduler, in vLLM's engine-core process) is reached
through the side channel (slos_serve/engine/side_channel.py): the stats file it publishes
(load()), the plan file this wrapper writes (set_plan / set_stage), the scheduler mode and
the performance model's path.

vLLM is imported where it is used: the worker must set vLLM's environment before vLLM loads
(`worker.main.configure_environment`), and a simulated worker never loads it.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from slos_serve.core.policy import MODES
from slos_serve.core.worker_plan import WorkerPlan
from slos_serve.engine.base import (
    EngineInfo,
    EngineLoad,
    EngineOutput,
    EngineRequest,
    check_stage_index,
)
from slos_serve.engine.kv_release import RELEASE_METHOD
from slos_serve.engine.side_channel import (
    MODE_ENV,
    PERF_PROFILE_ENV,
    PLAN_PATH_ENV,
    SLO_KEY,
    STATS_PATH_ENV,
    read_stats,
    slo_to_extra_args,
    write_plan,
)
from slos_serve.engine.vllm_args import engine_kwargs, serving_chunked_prefill


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
        scheduler: str = "slos",
        perf_profile: str | None = None,
        chunked_prefill: bool | None = None,
        extra_engine_args: dict[str, Any] | None = None,
    ) -> None:
        """`scheduler`: "slos" (SLO-aware execution of the coordinator's plan, vLLM's
        priority policy) or "vllm" (vLLM's own fcfs decisions: the baseline).
        `perf_profile`: a performance model JSON the scheduler sizes step budgets with.
        `chunked_prefill`: None = vLLM's default (on), where seeded sampling survives a split
        prompt (on CPU, thanks to the seeded_sampling plugin: `serving_chunked_prefill`)."""
        if scheduler not in MODES:
            raise ValueError(f"scheduler must be one of {MODES}, not {scheduler!r}")
        self._scheduler = scheduler
        self._perf_profile = perf_profile
        self._chunked_prefill = chunked_prefill
        self._model = model
        self._max_model_len = max_model_len
        self._dtype = dtype
        self._kv_transfer = kv_transfer
        self._speculative_tokens = speculative_tokens
        self._seed = seed
        self._extra = dict(extra_engine_args or {})
        self._llm: Any = None
        stem = Path(tempfile.gettempdir()) / f"slos-engine-{uuid.uuid4().hex}"
        self._stats_path = stem.with_suffix(".json")
        self._plan_path = stem.with_suffix(".plan.json")
        self._plan: WorkerPlan | None = None  # the last plan set
        self._stages: dict[str, int] = {}  # stage overrides of live requests
        self.info = EngineInfo("vllm", model, max_model_len, 16, "")

    def _engine_args(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs

        return AsyncEngineArgs(**engine_kwargs(
            model=self._model, max_model_len=self._max_model_len, seed=self._seed,
            scheduler=self._scheduler, dtype=self._dtype,
            chunked_prefill=serving_chunked_prefill(self._chunked_prefill),
            kv_transfer=self._kv_transfer, speculative_tokens=self._speculative_tokens,
            extra=self._extra))

    async def start(self) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        # The engine core inherits these when vLLM starts it, just below.
        os.environ[STATS_PATH_ENV] = str(self._stats_path)
        os.environ[PLAN_PATH_ENV] = str(self._plan_path)
        os.environ[MODE_ENV] = self._scheduler
        if self._perf_profile:
            os.environ[PERF_PROFILE_ENV] = str(self._perf_profile)
        self._plan_path.unlink(missing_ok=True)
        if self._plan is not None or self._stages:
            self._write_plan()
        self._llm = AsyncLLM.from_engine_args(self._engine_args())
        config = self._llm.vllm_config
        self.info = EngineInfo(
            kind="vllm",
            model=self._model,
            max_model_len=config.model_config.max_model_len,
            block_size=config.cache_config.block_size,
            engine_id=(config.kv_transfer_config.engine_id if config.kv_transfer_config else ""),
            vocab_size=config.model_config.get_vocab_size(),
            max_spec_tokens=self._speculative_tokens,
            scheduler=self._scheduler,
        )
        await self._warm_up()

    async def _warm_up(self) -> None:
        """One short request before serving: the first steps pay one-off costs (the ngram
        proposer's JIT compilation, allocator growth) that would otherwise land on the
        first clients' TTFT and TPOT."""
        from vllm import SamplingParams

        ids = [5, 6, 7, 8] * 6  # repeats, so the ngram proposer finds drafts
        params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
        async for _ in self._llm.generate({"prompt_token_ids": ids}, params,
                                          f"warmup-{uuid.uuid4().hex}"):
            pass

    @staticmethod
    def _extra_args(request: EngineRequest) -> dict[str, Any]:
        # The scheduler keys stage overrides by the worker's id (vLLM adds a suffix to it).
        extra: dict[str, Any] = {SLO_KEY: slo_to_extra_args(request.slo, request.request_id)}
        if request.kv_transfer_params is not None:
            extra["kv_transfer_params"] = request.kv_transfer_params
        return extra

    def _sampling_params(self, request: EngineRequest) -> Any:
        from vllm import SamplingParams

        extra = self._extra_args(request)
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
        try:
            async for out in self._llm.generate(prompt, params, request.request_id):
                completion = out.outputs[0]
                yield EngineOutput(
                    token_ids=list(completion.token_ids),
                    text=completion.text,
                    finished=out.finished,
                    finish_reason=completion.finish_reason if out.finished else None,
                    kv_transfer_params=out.kv_transfer_params,
                )
        finally:
            if self._stages.pop(request.request_id, None) is not None:
                self._write_plan()

    def set_plan(self, plan: WorkerPlan) -> None:
        """The coordinator's plan; the scheduler picks it up at its next step (~20 ms)."""
        self._plan = plan
        self._write_plan()

    def set_stage(self, request_id: str, index: int) -> None:
        """Request `request_id` entered stage `index` (its `until` string was seen)."""
        if self._stages.get(request_id) == check_stage_index(index):
            return
        self._stages[request_id] = index
        self._write_plan()

    def _write_plan(self) -> None:
        write_plan(self._plan_path, self._plan or WorkerPlan(), self._stages)

    async def abort(self, request_id: str) -> bool:
        await self._llm.abort(request_id)
        return True

    def dead(self) -> str:
        llm = self._llm
        if llm is None or not llm.errored:
            return ""
        return f"vLLM engine core died ({type(llm.dead_error).__name__})"

    async def release_handoffs(self, engine_request_ids: list[str]) -> int:
        if self._llm is None or not engine_request_ids or self.dead():
            return 0
        held = await self._llm.collective_rpc(RELEASE_METHOD, timeout=5.0,
                                              args=(list(engine_request_ids),))
        return max(held, default=0)

    def load(self) -> EngineLoad:
        return read_stats(self._stats_path) or EngineLoad()

    async def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
        self._stats_path.unlink(missing_ok=True)
        self._plan_path.unlink(missing_ok=True)
