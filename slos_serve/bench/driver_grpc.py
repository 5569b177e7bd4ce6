"""Driver for a slos-serve coordinator (the `slos*` systems and `vllm-pd`): the SDK's AsyncClient.

Every call is greedy (temperature 0) with ignore_eos, so outputs have exactly the planned
length, and carries explicit ttft_ms / tpot_ms (one stage) or one `StageSpec` per stage
(reasoning: thinking, then answer). The coordinator's own measurements and per-stage
verdicts are kept in `result.server`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from slos_serve.bench.records import CallResult, add_tokens
from slos_serve.bench.workload import ttft_objective
from slos_serve.client import AsyncClient, Chunk, Completion, Started
from slos_serve.client import StageSpec as SdkStage
from slos_serve.core.stages import StageSpec
from slos_serve.errors import Rejected


def slo_kwargs(stages: Sequence[StageSpec]) -> dict:
    """The SDK arguments that carry a call's objectives."""
    if len(stages) == 1:
        s = stages[0]
        return {"ttft_ms": ttft_objective(s), "tpot_ms": s.tpot_ms}
    last = len(stages) - 1
    return {"stages": [SdkStage(max_tokens=0 if i == last else s.max_tokens,
                                ttft_ms=ttft_objective(s), tpot_ms=s.tpot_ms)
                       for i, s in enumerate(stages)]}


class GrpcDriver:
    """One AsyncClient (one channel) for every call; create and use it inside one loop."""

    def __init__(self, target: str, timeout_s: float = 600.0) -> None:
        self.client = AsyncClient(target, timeout=timeout_s)

    async def call(
        self, prompt: list[int], stages: Sequence[StageSpec], result: CallResult,
        clock: Callable[[], float],
    ) -> list[int]:
        out: list[int] = []
        stream = self.client.stream(
            prompt, max_tokens=sum(s.max_tokens for s in stages), temperature=0.0,
            ignore_eos=True, **slo_kwargs(stages))
        try:
            async for ev in stream:
                if isinstance(ev, Chunk):
                    add_tokens(result, len(ev.token_ids), clock())
                    out.extend(ev.token_ids)
                elif isinstance(ev, Started):
                    result.decision = ev.decision.value
                elif isinstance(ev, Completion):
                    result.finish_reason = ev.finish_reason
                    result.server = {
                        "ttft_ms": ev.ttft_ms, "tpot_ms": ev.tpot_ms, "e2e_ms": ev.e2e_ms,
                        "slo_met": ev.slo_met, "decision": ev.decision.value,
                        "stages": [{"tokens": s.tokens, "tpot_ms": s.tpot_ms,
                                    "first_token_ms": s.first_token_ms, "slo_met": s.slo_met}
                                   for s in ev.stages],
                    }
        except Rejected:
            result.decision = "rejected"
            raise
        finally:
            stream.cancel()
        return out

    async def close(self) -> None:
        await self.client.close()
