"""The gRPC boundary: proto messages <-> the core's and the engines' types, both ways.

Every conversion between a wire message and a typed record lives here, so the roles
(coordinator, prefill and decode workers) handle typed records only: a request's SLO
(`RequestSlo` <-> `WorkerSlo`), a worker's plan (`WorkerPlan`), per-tier speculation
statistics (`TierStats`), an engine's load and facts, the KV hand-off (`KvHandoff`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any

from kv_transfer.metadata import JSON_KEYS, PROTO_KEYS, KvHandoff
from proto import slos_serve_pb2 as pb
from slos_serve.core.perf_model import FEATURES, PerfModel
from slos_serve.core.policy import RequestSlo
from slos_serve.core.spec_stats import TierStats
from slos_serve.core.stages import StageResult, StageSpec
from slos_serve.core.worker_plan import TierSpec, WorkerPlan
from slos_serve.engine import EngineInfo, EngineLoad, EngineRequest
from slos_serve.metrics import WaitSummary

# ------------------------------------------------------------ request SLO --


DECISION_NAMES = {pb.ADMITTED: "admitted", pb.BEST_EFFORT: "best_effort",
                  pb.REJECTED: "rejected"}  # as the HTTP front and the request log spell them


def slo_from_proto(slo: pb.WorkerSlo) -> RequestSlo:
    return RequestSlo(
        ttft_deadline_unix=slo.ttft_deadline_unix,
        tpot_ms=slo.tpot_ms,
        best_effort=slo.best_effort,
        spec_tokens=slo.spec_tokens,
        tier=slo.tier,
        stages=tuple(
            StageSpec(tpot_ms=s.tpot_ms, max_tokens=s.max_tokens, until=s.until)
            for s in slo.stages
        ),
    )


def slo_to_proto(slo: RequestSlo) -> pb.WorkerSlo:
    return pb.WorkerSlo(
        ttft_deadline_unix=slo.ttft_deadline_unix,
        tpot_ms=slo.tpot_ms,
        best_effort=slo.best_effort,
        spec_tokens=slo.spec_tokens,
        tier=slo.tier,
        stages=[_stage_slo(s) for s in slo.stages],
    )


def _stage_slo(s: StageSpec) -> pb.StageSlo:
    return pb.StageSlo(tpot_ms=s.tpot_ms or 0.0, max_tokens=s.max_tokens, until=s.until)


def resumed_slo(slo: pb.WorkerSlo, remaining: Sequence[StageSpec]) -> pb.WorkerSlo:
    """A multi-stage request's worker SLO for a resume: its stages from the current one
    (StageTracker.remaining), the current stage's TPOT in force."""
    resumed = pb.WorkerSlo()
    resumed.CopyFrom(slo)
    del resumed.stages[:]
    resumed.stages.extend(_stage_slo(s) for s in remaining)
    resumed.tpot_ms = remaining[0].tpot_ms or slo.tpot_ms
    return resumed


def engine_request(
    request_id: str,
    prompt_token_ids: Iterable[int],
    sampling: pb.SamplingParams,
    slo: RequestSlo,
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
        slo=slo,
    )


def stage_result_to_proto(r: StageResult) -> pb.StageResult:
    return pb.StageResult(
        tokens=r.tokens, tpot_ms=r.tpot_ms, tpot_slo_ms=r.tpot_slo_ms, slo_met=r.met,
        tier=r.tier, first_token_ms=r.first_token_ms, ttft_slo_ms=r.ttft_slo_ms,
    )


# ------------------------------------------------------------------- plan --


def plan_from_proto(plan: pb.WorkerPlan) -> WorkerPlan:
    """ValueError naming the field ("tiers[1].tpot_ms: ...") if a value is unusable."""
    return WorkerPlan(
        plan_time_unix=plan.plan_time_unix,
        step_token_budget=plan.step_token_budget,
        tiers=tuple(TierSpec(t.tpot_ms, t.spec_tokens, t.interval_ms) for t in plan.tiers),
        pace=plan.pace,
    )


def plan_to_proto(plan: WorkerPlan) -> pb.WorkerPlan:
    return pb.WorkerPlan(
        plan_time_unix=plan.plan_time_unix,
        step_token_budget=plan.step_token_budget,
        tiers=[pb.TierSpec(tpot_ms=t.tpot_ms, spec_tokens=t.spec_tokens,
                           interval_ms=t.interval_ms) for t in plan.tiers],
        pace=plan.pace,
    )


# ------------------------------------------------------- load and facts --


def _values(record: Any, *leave_out: str) -> dict[str, Any]:
    """A dataclass's fields by name (the proto message has fields of the same names)."""
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)
            if f.name not in leave_out}


def tier_stats_to_proto(s: TierStats) -> pb.TierSpecStats:
    return pb.TierSpecStats(**_values(s))


def tier_stats_from_proto(m: pb.TierSpecStats) -> TierStats:
    return TierStats(**{f.name: getattr(m, f.name) for f in dataclasses.fields(TierStats)})


def load_to_proto(
    load: EngineLoad, role: str, active_requests: int, draining: bool,
    handoffs: WaitSummary | None = None,
) -> pb.LoadReport:
    """`handoffs`: the worker's recent hand-off waits (its decode side; None: none)."""
    handoffs = handoffs or WaitSummary()
    return pb.LoadReport(
        **_values(load, "spec", "perf_model"),
        spec=[tier_stats_to_proto(t) for t in load.spec],
        perf_model=model_to_proto(load.perf_model) if load.perf_model is not None else None,
        kv_usage=load.kv_usage,
        role=role,
        active_requests=active_requests,
        draining=draining,
        handoff_p50_ms=1000 * handoffs.p50_s,
        handoff_p99_ms=1000 * handoffs.p99_s,
        handoff_count=handoffs.count,
    )


def model_to_proto(model: PerfModel) -> pb.PerfModelSpec:
    return pb.PerfModelSpec(
        features=list(FEATURES), name=model.name,
        pieces=[pb.ModelPiece(weights=list(p.weights), bias=p.bias) for p in model.pieces])


def model_from_proto(m: pb.PerfModelSpec) -> PerfModel:
    """ValueError if the model has no piece or a weight for a feature this build lacks
    (features this build has and the message lacks weigh 0)."""
    if not m.pieces:
        raise ValueError("perf_model.pieces: must not be empty")
    unknown = set(m.features) - set(FEATURES)
    if unknown:
        raise ValueError(f"perf_model.features: unknown {sorted(unknown)}")
    return PerfModel.from_dict({
        "features": list(m.features), "name": m.name,
        "pieces": [{"weights": list(p.weights), "bias": p.bias} for p in m.pieces]})


def reported_model(report: pb.LoadReport) -> PerfModel | None:
    """The model a worker's load report carries (None: none, or unusable)."""
    if not report.HasField("perf_model"):
        return None
    try:
        return model_from_proto(report.perf_model)
    except ValueError:
        return None


def info_to_proto(info: EngineInfo, role: str) -> pb.WorkerInfo:
    """(The coordinator knows the vocabulary from its tokenizer.)"""
    return pb.WorkerInfo(**_values(info, "kind", "vocab_size"), engine=info.kind, role=role)


# ------------------------------------------------------------- KV hand-off --
#
# Round trips are lossless: for a dict a vLLM prefill engine produces,
# `handoff_from_proto(handoff_to_proto(KvHandoff.from_vllm(d))).to_vllm() == d` (block ids
# come back as lists). Keys the proto has no field for travel in `extra_json`.


def handoff_to_proto(h: KvHandoff) -> pb.KvHandoff:
    extra = {k: getattr(h, k) for k in JSON_KEYS}
    extra.update(h.extra)
    return pb.KvHandoff(
        remote_engine_id=h.remote_engine_id,
        remote_request_id=h.remote_request_id,
        remote_host=h.remote_host,
        remote_port=h.remote_port,
        remote_block_ids=[pb.BlockIds(ids=g) for g in h.remote_block_ids],
        remote_num_tokens=h.remote_num_tokens,
        tp_size=h.tp_size,
        dcp_size=h.dcp_size,
        pp_size=h.pp_size,
        transfer_mode=h.transfer_mode,
        extra_json=json.dumps(extra, allow_nan=False),  # keeps key order
    )


def handoff_from_proto(msg: pb.KvHandoff) -> KvHandoff:
    """Parse and validate a `KvHandoff` message. Raises ValueError naming the field.

    proto3 scalars have no presence: an unset size (0) means vLLM's default 1, an
    unset transfer_mode means "pull"; unset strings, port or blocks are errors.
    """
    field = "kv_transfer_params.extra_json"
    try:
        extra = json.loads(msg.extra_json) if msg.extra_json else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"{field}: not valid JSON ({exc}) (got {msg.extra_json!r})") from None
    if not isinstance(extra, dict):
        raise ValueError(f"{field}: must be a JSON object (got {msg.extra_json!r})")
    for key in PROTO_KEYS:
        if key in extra:  # would silently override (or be overridden by) a field
            raise ValueError(f"{field}: must not repeat the field {key!r} (got {key!r})")
    params: dict[str, Any] = dict(extra)
    params.update(
        remote_engine_id=msg.remote_engine_id,
        remote_request_id=msg.remote_request_id,
        remote_host=msg.remote_host,
        remote_port=msg.remote_port or None,
        remote_block_ids=[list(b.ids) for b in msg.remote_block_ids],
        remote_num_tokens=msg.remote_num_tokens,
        tp_size=msg.tp_size or 1,
        dcp_size=msg.dcp_size or 1,
        pp_size=msg.pp_size or 1,
        transfer_mode=msg.transfer_mode or "pull",
    )
    return KvHandoff.from_vllm(params)
