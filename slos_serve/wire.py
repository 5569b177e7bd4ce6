"""Conversion from wire messages to engine requests, shared by both roles."""

from __future__ import annotations

from typing import Any

from proto import slos_serve_pb2 as pb
from slos_serve.engine import EngineRequest


def engine_request(
    request_id: str,
    prompt_token_ids: list[int],
    sampling: pb.SamplingParams,
    slo: pb.WorkerSlo,
    *,
    max_tokens: int | None = None,
    kv_transfer_params: dict[str, Any] | None = None,
) -> EngineRequest:
    return EngineRequest(
        request_id=request_id,
        prompt_token_ids=list(prompt_token_ids),
        max_tokens=max_tokens if max_tokens is not None else sampling.max_tokens,
        temperature=sampling.temperature if sampling.HasField("temperature") else 1.0,
        top_p=sampling.top_p if sampling.HasField("top_p") else 1.0,
        seed=sampling.seed if sampling.HasField("seed") else None,
        stop=list(sampling.stop),
        ignore_eos=sampling.ignore_eos,
        kv_transfer_params=kv_transfer_params,
        slo=engine_slo(slo),
    )


def engine_slo(slo: pb.WorkerSlo) -> dict[str, Any]:
    """WorkerSlo as the engine's scheduler reads it (SamplingParams.extra_args["slo"])."""
    return {
        "ttft_deadline_unix": slo.ttft_deadline_unix,
        "tpot_ms": slo.tpot_ms,
        "best_effort": slo.best_effort,
        "spec_tokens": slo.spec_tokens,
        "tier": slo.tier,
        "stages": [
            {"tpot_ms": s.tpot_ms, "max_tokens": s.max_tokens, "until": s.until}
            for s in slo.stages
        ],
    }


def engine_plan(plan: pb.WorkerPlan) -> dict[str, Any]:
    """WorkerPlan as Engine.set_plan takes it."""
    return {
        "plan_time_unix": plan.plan_time_unix,
        "step_token_budget": plan.step_token_budget,
        "tiers": [
            {"tpot_ms": t.tpot_ms, "spec_tokens": t.spec_tokens, "interval_ms": t.interval_ms}
            for t in plan.tiers
        ],
        "pace": plan.pace,
    }
