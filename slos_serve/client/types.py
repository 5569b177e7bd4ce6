"""The SDK's results and stream events, and their translation from the protobuf contract.

(The request side, `GenerateOptions` and `StageSpec`, is in `slos_serve.client.request`.)

Results are plain dataclasses, not protobuf messages, so callers can compare, print,
serialise (`to_dict`) and construct them in tests without knowing the wire format, and so a
change in the proto's layout stays inside this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

from proto import slos_serve_pb2 as pb
from slos_serve.errors import ProtocolError

T = TypeVar("T")


class Decision(str, Enum):
    """What the coordinator's planner decided for a request."""

    UNSPECIFIED = "unspecified"
    ADMITTED = "admitted"  # served with its SLO as the target
    BEST_EFFORT = "best_effort"  # served, but the SLO is not promised
    REJECTED = "rejected"  # not served

    @classmethod
    def from_proto(cls, value: int) -> Decision:
        return _DECISION_FROM_PB.get(value, cls.UNSPECIFIED)


_DECISION_FROM_PB = {
    pb.DECISION_UNSPECIFIED: Decision.UNSPECIFIED,
    pb.ADMITTED: Decision.ADMITTED,
    pb.BEST_EFFORT: Decision.BEST_EFFORT,
    pb.REJECTED: Decision.REJECTED,
}


class HealthStatus(str, Enum):
    """grpc.health.v1 serving status, by name."""

    UNKNOWN = "UNKNOWN"
    SERVING = "SERVING"
    NOT_SERVING = "NOT_SERVING"
    SERVICE_UNKNOWN = "SERVICE_UNKNOWN"


# --------------------------------------------------------------- stream events --


@dataclass(frozen=True)
class Started:
    """First stream event: the planner's decision and the SLO the request is held to."""

    request_id: str
    decision: Decision
    tier: str
    ttft_slo_ms: float
    tpot_slo_ms: float
    prefill_worker: str = ""
    decode_worker: str = ""
    prompt_tokens: int = 0
    reason: str = ""  # why the planner decided as it did (e.g. why best effort)


@dataclass(frozen=True)
class Chunk:
    """Newly generated tokens and their text (the text may be empty mid-character)."""

    token_ids: list[int]
    text: str


@dataclass(frozen=True)
class StageResult:
    """Measured outcome of one stage of a multi-stage request."""

    tokens: int
    tpot_ms: float
    tpot_slo_ms: float
    slo_met: bool
    tier: str = ""
    first_token_ms: float = 0.0  # from the stage's start to its first token
    ttft_slo_ms: float = 0.0  # judged for the first stage only


@dataclass(frozen=True)
class Completion:
    """The last stream event and `generate`'s result: the whole output and its verdict.

    Times are the coordinator's measurements. `tier`, `ttft_slo_ms`, `tpot_slo_ms` come
    from the Started event, so a Completion alone says what it was held to; the workers are
    those that served (Final's; after a failover not Started's first choice), `failovers`
    and `resumes` how often a worker failed under the request and another went on.
    """

    request_id: str
    text: str
    token_ids: list[int]
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
    stages: list[StageResult] = field(default_factory=list)
    tier: str = ""
    ttft_slo_ms: float = 0.0
    tpot_slo_ms: float = 0.0
    prefill_worker: str = ""
    decode_worker: str = ""
    failovers: int = 0
    resumes: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (enums as their string values)."""
        d = dataclasses.asdict(self)
        d["decision"] = self.decision.value
        return d


Event = Started | Chunk | Completion
"""A stream event: one Started, then Chunks, then one Completion."""

# What a Completion repeats of its Started event (the workers: when Final names none, as a
# coordinator before Final named them).
SLO_FROM_STARTED = ("tier", "ttft_slo_ms", "tpot_slo_ms")
WORKERS = ("prefill_worker", "decode_worker")


def from_message(cls: type[T], msg: Any, **given: Any) -> T:
    """A result dataclass from a proto message: `given` values, the rest copied field by
    field from the message's fields of the same name."""
    return cls(**{f.name: given[f.name] if f.name in given else getattr(msg, f.name)
                  for f in dataclasses.fields(cls)})  # type: ignore[arg-type]


class StreamAssembler:
    """Turns GenerateResponse messages into events and checks the stream contract.

    Shared by the sync and async streams so both enforce the same rules: exactly one Started
    first, Chunks, exactly one Final last. A violation raises `ProtocolError` rather than
    being papered over, because a coordinator bug (a duplicated first token, say) is
    something the caller must see.
    """

    def __init__(self) -> None:
        self.request_id = ""
        self.started: Started | None = None
        self.completion: Completion | None = None
        self._text: list[str] = []
        self._ids: list[int] = []

    def feed(self, msg: pb.GenerateResponse) -> Event:
        if msg.request_id and not self.request_id:
            self.request_id = msg.request_id
        if self.completion is not None:
            raise ProtocolError("message after Final")
        kind = msg.WhichOneof("kind")
        if kind == "started":
            if self.started is not None:
                raise ProtocolError("second Started message")
            s = msg.started
            self.started = from_message(Started, s, request_id=self.request_id,
                                        decision=Decision.from_proto(s.decision))
            return self.started
        if self.started is None:
            raise ProtocolError(f"{kind or 'empty'} message before Started")
        if kind == "chunk":
            ids = list(msg.chunk.token_ids)
            self._ids.extend(ids)
            self._text.append(msg.chunk.text)
            return Chunk(token_ids=ids, text=msg.chunk.text)
        if kind == "final":
            f = msg.final
            decision = Decision.from_proto(f.decision)
            if decision is Decision.UNSPECIFIED:
                decision = self.started.decision
            started = self.started
            self.completion = from_message(
                Completion, f, request_id=self.request_id, text="".join(self._text),
                token_ids=list(self._ids), decision=decision,
                prompt_tokens=f.prompt_tokens or started.prompt_tokens,
                stages=[from_message(StageResult, st) for st in f.stages],
                **{k: getattr(started, k) for k in SLO_FROM_STARTED},
                **{k: getattr(f, k) or getattr(started, k) for k in WORKERS},
            )
            return self.completion
        raise ProtocolError("message with no kind set")

    def end_without_final(self) -> ProtocolError:
        """The error for a stream that closed OK before its Final message."""
        return ProtocolError(
            "stream ended without a Final message"
            + ("" if self.started else " (and without Started)")
        )


# ------------------------------------------------------------------ info calls --


@dataclass(frozen=True)
class SloTier:
    """A named latency objective of the coordinator's tier table."""

    name: str
    ttft_ms: float
    tpot_ms: float


@dataclass(frozen=True)
class ModelInfo:
    """The served model and the SLO tiers requests may name."""

    model: str
    max_model_len: int
    vocab_size: int
    tiers: list[SloTier]
    default_tier: str

    @classmethod
    def from_proto(cls, m: pb.ModelInfoResponse) -> ModelInfo:
        tiers = [SloTier(t.name, t.ttft_ms, t.tpot_ms) for t in m.tiers]
        return cls(model=m.model, max_model_len=m.max_model_len, vocab_size=m.vocab_size,
                   tiers=tiers, default_tier=m.default_tier)


@dataclass(frozen=True)
class LoadReport:
    """A worker's load, as last reported to the coordinator."""

    role: str = ""
    running: int = 0
    waiting: int = 0
    kv_blocks_total: int = 0
    kv_blocks_used: int = 0
    kv_usage: float = 0.0
    steps: int = 0
    mean_step_ms: float = 0.0
    spec_acceptance: float = 0.0
    active_requests: int = 0
    draining: bool = False
    model_error: float = 0.0  # live relative error of the engine's performance model
    handoff_p50_ms: float = 0.0  # recent hand-off waits (decode side; count 0: none)
    handoff_p99_ms: float = 0.0
    handoff_count: int = 0

    @classmethod
    def from_proto(cls, m: pb.LoadReport) -> LoadReport:
        return from_message(cls, m)


@dataclass(frozen=True)
class WorkerStatus:
    """One worker of the cluster, as the coordinator sees it."""

    address: str
    role: str
    healthy: bool
    load: LoadReport | None

    @classmethod
    def from_proto(cls, m: pb.WorkerStatus) -> WorkerStatus:
        return cls(
            address=m.address,
            role=m.role,
            healthy=m.healthy,
            load=LoadReport.from_proto(m.load) if m.HasField("load") else None,
        )


@dataclass(frozen=True)
class ClusterInfo:
    """The coordinator's workers and the scheduler it runs."""

    workers: list[WorkerStatus]
    scheduler: str

    @classmethod
    def from_proto(cls, m: pb.ClusterInfoResponse) -> ClusterInfo:
        return cls(workers=[WorkerStatus.from_proto(w) for w in m.workers], scheduler=m.scheduler)
