from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    ADMITTED: _ClassVar[Decision]
    BEST_EFFORT: _ClassVar[Decision]
    REJECTED: _ClassVar[Decision]

class OnReject(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ON_REJECT_DEFAULT: _ClassVar[OnReject]
    SERVE_BEST_EFFORT: _ClassVar[OnReject]
    REJECT: _ClassVar[OnReject]
DECISION_UNSPECIFIED: Decision
ADMITTED: Decision
BEST_EFFORT: Decision
REJECTED: Decision
ON_REJECT_DEFAULT: OnReject
SERVE_BEST_EFFORT: OnReject
REJECT: OnReject

class SamplingParams(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_p", "seed", "stop", "ignore_eos")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    ignore_eos: bool
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., ignore_eos: _Optional[bool] = ...) -> None: ...

class Slo(_message.Message):
    __slots__ = ("tier", "ttft_ms", "tpot_ms")
    TIER_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    TPOT_MS_FIELD_NUMBER: _ClassVar[int]
    tier: str
    ttft_ms: float
    tpot_ms: float
    def __init__(self, tier: _Optional[str] = ..., ttft_ms: _Optional[float] = ..., tpot_ms: _Optional[float] = ...) -> None: ...

class Stage(_message.Message):
    __slots__ = ("slo", "max_tokens", "until")
    SLO_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    slo: Slo
    max_tokens: int
    until: str
    def __init__(self, slo: _Optional[_Union[Slo, _Mapping]] = ..., max_tokens: _Optional[int] = ..., until: _Optional[str] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("request_id", "text", "token_ids", "sampling", "slo", "stages", "on_reject")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    SLO_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    ON_REJECT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    token_ids: TokenIds
    sampling: SamplingParams
    slo: Slo
    stages: _containers.RepeatedCompositeFieldContainer[Stage]
    on_reject: OnReject
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Union[TokenIds, _Mapping]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., slo: _Optional[_Union[Slo, _Mapping]] = ..., stages: _Optional[_Iterable[_Union[Stage, _Mapping]]] = ..., on_reject: _Optional[_Union[OnReject, str]] = ...) -> None: ...

class Started(_message.Message):
    __slots__ = ("decision", "tier", "ttft_slo_ms", "tpot_slo_ms", "prefill_worker", "decode_worker", "prompt_tokens", "reason")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    TTFT_SLO_MS_FIELD_NUMBER: _ClassVar[int]
    TPOT_SLO_MS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_WORKER_FIELD_NUMBER: _ClassVar[int]
    DECODE_WORKER_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    tier: str
    ttft_slo_ms: float
    tpot_slo_ms: float
    prefill_worker: str
    decode_worker: str
    prompt_tokens: int
    reason: str
    def __init__(self, decision: _Optional[_Union[Decision, str]] = ..., tier: _Optional[str] = ..., ttft_slo_ms: _Optional[float] = ..., tpot_slo_ms: _Optional[float] = ..., prefill_worker: _Optional[str] = ..., decode_worker: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class TokenChunk(_message.Message):
    __slots__ = ("token_ids", "text")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ...) -> None: ...

class StageResult(_message.Message):
    __slots__ = ("tokens", "tpot_ms", "tpot_slo_ms", "slo_met", "tier", "first_token_ms", "ttft_slo_ms")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TPOT_MS_FIELD_NUMBER: _ClassVar[int]
    TPOT_SLO_MS_FIELD_NUMBER: _ClassVar[int]
    SLO_MET_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_SLO_MS_FIELD_NUMBER: _ClassVar[int]
    tokens: int
    tpot_ms: float
    tpot_slo_ms: float
    slo_met: bool
    tier: str
    first_token_ms: float
    ttft_slo_ms: float
    def __init__(self, tokens: _Optional[int] = ..., tpot_ms: _Optional[float] = ..., tpot_slo_ms: _Optional[float] = ..., slo_met: _Optional[bool] = ..., tier: _Optional[str] = ..., first_token_ms: _Optional[float] = ..., ttft_slo_ms: _Optional[float] = ...) -> None: ...

class Final(_message.Message):
    __slots__ = ("finish_reason", "prompt_tokens", "completion_tokens", "ttft_ms", "tpot_ms", "e2e_ms", "ttft_met", "tpot_met", "slo_met", "decision", "stages", "prefill_worker", "decode_worker", "failovers", "resumes")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    TPOT_MS_FIELD_NUMBER: _ClassVar[int]
    E2E_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_MET_FIELD_NUMBER: _ClassVar[int]
    TPOT_MET_FIELD_NUMBER: _ClassVar[int]
    SLO_MET_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    PREFILL_WORKER_FIELD_NUMBER: _ClassVar[int]
    DECODE_WORKER_FIELD_NUMBER: _ClassVar[int]
    FAILOVERS_FIELD_NUMBER: _ClassVar[int]
    RESUMES_FIELD_NUMBER: _ClassVar[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float
    tpot_ms: float
    e2e_ms: float
    ttft_met: bool
    tpot_met: bool
    slo_met: bool
    decision: Decision
    stages: _containers.RepeatedCompositeFieldContainer[StageResult]
    prefill_worker: str
    decode_worker: str
    failovers: int
    resumes: int
    def __init__(self, finish_reason: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., ttft_ms: _Optional[float] = ..., tpot_ms: _Optional[float] = ..., e2e_ms: _Optional[float] = ..., ttft_met: _Optional[bool] = ..., tpot_met: _Optional[bool] = ..., slo_met: _Optional[bool] = ..., decision: _Optional[_Union[Decision, str]] = ..., stages: _Optional[_Iterable[_Union[StageResult, _Mapping]]] = ..., prefill_worker: _Optional[str] = ..., decode_worker: _Optional[str] = ..., failovers: _Optional[int] = ..., resumes: _Optional[int] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("request_id", "started", "chunk", "final")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    started: Started
    chunk: TokenChunk
    final: Final
    def __init__(self, request_id: _Optional[str] = ..., started: _Optional[_Union[Started, _Mapping]] = ..., chunk: _Optional[_Union[TokenChunk, _Mapping]] = ..., final: _Optional[_Union[Final, _Mapping]] = ...) -> None: ...

class AbortRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class AbortResponse(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: _Optional[bool] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SloTier(_message.Message):
    __slots__ = ("name", "ttft_ms", "tpot_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    TPOT_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    ttft_ms: float
    tpot_ms: float
    def __init__(self, name: _Optional[str] = ..., ttft_ms: _Optional[float] = ..., tpot_ms: _Optional[float] = ...) -> None: ...

class ModelInfoResponse(_message.Message):
    __slots__ = ("model", "max_model_len", "vocab_size", "tiers", "default_tier")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TIER_FIELD_NUMBER: _ClassVar[int]
    model: str
    max_model_len: int
    vocab_size: int
    tiers: _containers.RepeatedCompositeFieldContainer[SloTier]
    default_tier: str
    def __init__(self, model: _Optional[str] = ..., max_model_len: _Optional[int] = ..., vocab_size: _Optional[int] = ..., tiers: _Optional[_Iterable[_Union[SloTier, _Mapping]]] = ..., default_tier: _Optional[str] = ...) -> None: ...

class ClusterInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterInfoResponse(_message.Message):
    __slots__ = ("workers", "scheduler")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    scheduler: str
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ..., scheduler: _Optional[str] = ...) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("address", "role", "healthy", "load", "draining")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    address: str
    role: str
    healthy: bool
    load: LoadReport
    draining: bool
    def __init__(self, address: _Optional[str] = ..., role: _Optional[str] = ..., healthy: _Optional[bool] = ..., load: _Optional[_Union[LoadReport, _Mapping]] = ..., draining: _Optional[bool] = ...) -> None: ...

class AddWorkerRequest(_message.Message):
    __slots__ = ("address", "role")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    address: str
    role: str
    def __init__(self, address: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class RemoveWorkerRequest(_message.Message):
    __slots__ = ("address", "drain_timeout_s")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DRAIN_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    address: str
    drain_timeout_s: float
    def __init__(self, address: _Optional[str] = ..., drain_timeout_s: _Optional[float] = ...) -> None: ...

class MembershipResponse(_message.Message):
    __slots__ = ("changed", "cut", "workers")
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    CUT_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    changed: bool
    cut: int
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    def __init__(self, changed: _Optional[bool] = ..., cut: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ...) -> None: ...

class StageSlo(_message.Message):
    __slots__ = ("tpot_ms", "max_tokens", "until")
    TPOT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    tpot_ms: float
    max_tokens: int
    until: str
    def __init__(self, tpot_ms: _Optional[float] = ..., max_tokens: _Optional[int] = ..., until: _Optional[str] = ...) -> None: ...

class WorkerSlo(_message.Message):
    __slots__ = ("ttft_deadline_unix", "tpot_ms", "best_effort", "spec_tokens", "stages", "tier")
    TTFT_DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    TPOT_MS_FIELD_NUMBER: _ClassVar[int]
    BEST_EFFORT_FIELD_NUMBER: _ClassVar[int]
    SPEC_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    ttft_deadline_unix: float
    tpot_ms: float
    best_effort: bool
    spec_tokens: int
    stages: _containers.RepeatedCompositeFieldContainer[StageSlo]
    tier: str
    def __init__(self, ttft_deadline_unix: _Optional[float] = ..., tpot_ms: _Optional[float] = ..., best_effort: _Optional[bool] = ..., spec_tokens: _Optional[int] = ..., stages: _Optional[_Iterable[_Union[StageSlo, _Mapping]]] = ..., tier: _Optional[str] = ...) -> None: ...

class TierSpec(_message.Message):
    __slots__ = ("tpot_ms", "spec_tokens", "interval_ms")
    TPOT_MS_FIELD_NUMBER: _ClassVar[int]
    SPEC_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    tpot_ms: float
    spec_tokens: int
    interval_ms: float
    def __init__(self, tpot_ms: _Optional[float] = ..., spec_tokens: _Optional[int] = ..., interval_ms: _Optional[float] = ...) -> None: ...

class WorkerPlan(_message.Message):
    __slots__ = ("plan_time_unix", "step_token_budget", "tiers", "pace")
    PLAN_TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    STEP_TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    PACE_FIELD_NUMBER: _ClassVar[int]
    plan_time_unix: float
    step_token_budget: int
    tiers: _containers.RepeatedCompositeFieldContainer[TierSpec]
    pace: bool
    def __init__(self, plan_time_unix: _Optional[float] = ..., step_token_budget: _Optional[int] = ..., tiers: _Optional[_Iterable[_Union[TierSpec, _Mapping]]] = ..., pace: _Optional[bool] = ...) -> None: ...

class WorkerPlanAck(_message.Message):
    __slots__ = ("applied",)
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    def __init__(self, applied: _Optional[bool] = ...) -> None: ...

class TierSpecStats(_message.Message):
    __slots__ = ("tpot_ms", "tier", "steps", "drafted", "accepted", "spec_tokens")
    TPOT_MS_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    DRAFTED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    SPEC_TOKENS_FIELD_NUMBER: _ClassVar[int]
    tpot_ms: float
    tier: str
    steps: int
    drafted: int
    accepted: int
    spec_tokens: int
    def __init__(self, tpot_ms: _Optional[float] = ..., tier: _Optional[str] = ..., steps: _Optional[int] = ..., drafted: _Optional[int] = ..., accepted: _Optional[int] = ..., spec_tokens: _Optional[int] = ...) -> None: ...

class PrefillRequest(_message.Message):
    __slots__ = ("request_id", "prompt_token_ids", "sampling", "slo", "hand_off")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    SLO_FIELD_NUMBER: _ClassVar[int]
    HAND_OFF_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: SamplingParams
    slo: WorkerSlo
    hand_off: bool
    def __init__(self, request_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., slo: _Optional[_Union[WorkerSlo, _Mapping]] = ..., hand_off: _Optional[bool] = ...) -> None: ...

class KvHandoff(_message.Message):
    __slots__ = ("remote_engine_id", "remote_request_id", "remote_host", "remote_port", "remote_block_ids", "remote_num_tokens", "tp_size", "dcp_size", "pp_size", "transfer_mode", "extra_json")
    REMOTE_ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    REMOTE_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REMOTE_HOST_FIELD_NUMBER: _ClassVar[int]
    REMOTE_PORT_FIELD_NUMBER: _ClassVar[int]
    REMOTE_BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    REMOTE_NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TP_SIZE_FIELD_NUMBER: _ClassVar[int]
    DCP_SIZE_FIELD_NUMBER: _ClassVar[int]
    PP_SIZE_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_MODE_FIELD_NUMBER: _ClassVar[int]
    EXTRA_JSON_FIELD_NUMBER: _ClassVar[int]
    remote_engine_id: str
    remote_request_id: str
    remote_host: str
    remote_port: int
    remote_block_ids: _containers.RepeatedCompositeFieldContainer[BlockIds]
    remote_num_tokens: int
    tp_size: int
    dcp_size: int
    pp_size: int
    transfer_mode: str
    extra_json: str
    def __init__(self, remote_engine_id: _Optional[str] = ..., remote_request_id: _Optional[str] = ..., remote_host: _Optional[str] = ..., remote_port: _Optional[int] = ..., remote_block_ids: _Optional[_Iterable[_Union[BlockIds, _Mapping]]] = ..., remote_num_tokens: _Optional[int] = ..., tp_size: _Optional[int] = ..., dcp_size: _Optional[int] = ..., pp_size: _Optional[int] = ..., transfer_mode: _Optional[str] = ..., extra_json: _Optional[str] = ...) -> None: ...

class BlockIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class PrefillResponse(_message.Message):
    __slots__ = ("first_token_id", "first_text", "finish_reason", "handoff", "queue_ms", "compute_ms")
    FIRST_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    first_token_id: int
    first_text: str
    finish_reason: str
    handoff: KvHandoff
    queue_ms: float
    compute_ms: float
    def __init__(self, first_token_id: _Optional[int] = ..., first_text: _Optional[str] = ..., finish_reason: _Optional[str] = ..., handoff: _Optional[_Union[KvHandoff, _Mapping]] = ..., queue_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("request_id", "prompt_token_ids", "sampling", "slo", "handoff", "first_token_id", "first_text", "local", "resume_token_ids")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    SLO_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_TEXT_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: SamplingParams
    slo: WorkerSlo
    handoff: KvHandoff
    first_token_id: int
    first_text: str
    local: bool
    resume_token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, request_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., slo: _Optional[_Union[WorkerSlo, _Mapping]] = ..., handoff: _Optional[_Union[KvHandoff, _Mapping]] = ..., first_token_id: _Optional[int] = ..., first_text: _Optional[str] = ..., local: _Optional[bool] = ..., resume_token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class DecodeResponse(_message.Message):
    __slots__ = ("token_ids", "text", "finish_reason")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    finish_reason: str
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., finish_reason: _Optional[str] = ...) -> None: ...

class WorkerAbortRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class WorkerAbortResponse(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: _Optional[bool] = ...) -> None: ...

class LoadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoadReport(_message.Message):
    __slots__ = ("role", "running", "waiting", "kv_blocks_total", "kv_blocks_used", "kv_usage", "steps", "mean_step_ms", "spec_acceptance", "active_requests", "draining", "spec", "scheduler", "last_step_ms", "perf_model", "model_error", "model_samples", "handoff_p50_ms", "handoff_p99_ms", "handoff_count")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_USED_FIELD_NUMBER: _ClassVar[int]
    KV_USAGE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    MEAN_STEP_MS_FIELD_NUMBER: _ClassVar[int]
    SPEC_ACCEPTANCE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_MS_FIELD_NUMBER: _ClassVar[int]
    PERF_MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_P50_MS_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_P99_MS_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_COUNT_FIELD_NUMBER: _ClassVar[int]
    role: str
    running: int
    waiting: int
    kv_blocks_total: int
    kv_blocks_used: int
    kv_usage: float
    steps: int
    mean_step_ms: float
    spec_acceptance: float
    active_requests: int
    draining: bool
    spec: _containers.RepeatedCompositeFieldContainer[TierSpecStats]
    scheduler: str
    last_step_ms: float
    perf_model: PerfModelSpec
    model_error: float
    model_samples: int
    handoff_p50_ms: float
    handoff_p99_ms: float
    handoff_count: int
    def __init__(self, role: _Optional[str] = ..., running: _Optional[int] = ..., waiting: _Optional[int] = ..., kv_blocks_total: _Optional[int] = ..., kv_blocks_used: _Optional[int] = ..., kv_usage: _Optional[float] = ..., steps: _Optional[int] = ..., mean_step_ms: _Optional[float] = ..., spec_acceptance: _Optional[float] = ..., active_requests: _Optional[int] = ..., draining: _Optional[bool] = ..., spec: _Optional[_Iterable[_Union[TierSpecStats, _Mapping]]] = ..., scheduler: _Optional[str] = ..., last_step_ms: _Optional[float] = ..., perf_model: _Optional[_Union[PerfModelSpec, _Mapping]] = ..., model_error: _Optional[float] = ..., model_samples: _Optional[int] = ..., handoff_p50_ms: _Optional[float] = ..., handoff_p99_ms: _Optional[float] = ..., handoff_count: _Optional[int] = ...) -> None: ...

class PerfModelSpec(_message.Message):
    __slots__ = ("features", "pieces", "name")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    PIECES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedScalarFieldContainer[str]
    pieces: _containers.RepeatedCompositeFieldContainer[ModelPiece]
    name: str
    def __init__(self, features: _Optional[_Iterable[str]] = ..., pieces: _Optional[_Iterable[_Union[ModelPiece, _Mapping]]] = ..., name: _Optional[str] = ...) -> None: ...

class ModelPiece(_message.Message):
    __slots__ = ("weights", "bias")
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    weights: _containers.RepeatedScalarFieldContainer[float]
    bias: float
    def __init__(self, weights: _Optional[_Iterable[float]] = ..., bias: _Optional[float] = ...) -> None: ...

class WorkerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("role", "engine", "model", "max_model_len", "block_size", "engine_id", "max_spec_tokens", "scheduler")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_SPEC_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    role: str
    engine: str
    model: str
    max_model_len: int
    block_size: int
    engine_id: str
    max_spec_tokens: int
    scheduler: str
    def __init__(self, role: _Optional[str] = ..., engine: _Optional[str] = ..., model: _Optional[str] = ..., max_model_len: _Optional[int] = ..., block_size: _Optional[int] = ..., engine_id: _Optional[str] = ..., max_spec_tokens: _Optional[int] = ..., scheduler: _Optional[str] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("timeout_s",)
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    timeout_s: float
    def __init__(self, timeout_s: _Optional[float] = ...) -> None: ...

class DrainResponse(_message.Message):
    __slots__ = ("remaining",)
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    remaining: int
    def __init__(self, remaining: _Optional[int] = ...) -> None: ...
