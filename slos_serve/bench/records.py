"""Per-request records of a live run, their SLO verdicts, and records.jsonl. Pure.

Every system is judged the same way, on the client, from the arrival time of every token
(`slos_serve.core.stages.StageTracker`, the coordinator's own per-stage accounting, replayed
over the client's times): stage 0 of a call is judged on TTFT (first token - the call's
send time) and TPOT ((last - first) / (tokens - 1)); a stage that continues a call on TPOT
from the previous stage's last token. A request attains iff it finished (no error, every
call sent and ended by length/stop, not rejected) and every stage met its SLO. The systems'
own verdicts (the slos-serve clusters report them) are kept beside, as `server`, for reference.

Times in a record are seconds from the start of the run (`arrival`: scheduled, `sent`:
actual send of call 0) or milliseconds (`ttft_ms`, `tpot_ms`, `e2e_ms`, `itl_ms`). TTFT runs
from the actual send: the load generator's lateness is reported separately (loadgen check).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slos_serve.bench.workload import BenchRequest, ttft_objective
from slos_serve.core.stages import StageSpec, StageTracker

OK_FINISH = ("length", "stop")


@dataclass
class CallResult:
    """What the load generator saw of one call."""

    sent: float  # s from the start of the run
    token_times: list[float] = field(default_factory=list)  # one per token
    finish_reason: str = ""
    error: str = ""
    decision: str = ""  # admitted / best_effort / rejected ("admitted" for vllm serve)
    server: dict[str, Any] | None = None  # the system's own measurements and verdicts


def add_tokens(call: CallResult, n: int, t: float) -> None:
    """n tokens arrived together at t."""
    call.token_times.extend([t] * n)


def _groups(times: list[float]) -> Iterator[tuple[int, float]]:
    """(tokens, time) per chunk: tokens that arrived together share a time."""
    i = 0
    while i < len(times):
        j = i
        while j < len(times) and times[j] == times[i]:
            j += 1
        yield j - i, times[i]
        i = j


def judge_call(specs: Sequence[StageSpec], call: CallResult) -> list[dict[str, Any]]:
    """Per-stage results of one call, from its token times."""
    tracker = StageTracker(list(specs), call.sent)
    for n, t in _groups(call.token_times):
        tracker.add(n, "", t)
    out = []
    for k, (spec, res) in enumerate(zip(specs, tracker.results(), strict=True)):
        reached = res.tokens > 0
        out.append({
            "tokens": res.tokens,
            "expected_tokens": spec.max_tokens,
            "ttft_ms": res.first_token_ms if (k == 0 and reached) else None,
            "tpot_ms": res.tpot_ms if reached else None,
            "ttft_slo_ms": None if k else ttft_objective(spec),
            "tpot_slo_ms": spec.tpot_ms,
            # a stage never reached is judged missed here (StageTracker says "nothing was
            # promised"; a benchmark request that stopped early did not attain)
            "met": bool(res.met and res.tokens >= min(1, spec.max_tokens)),
        })
    return out


def make_record(
    system: str, scenario: str, rate: float, request: BenchRequest, calls: list[CallResult],
    *, skipped: bool = False, extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON record of one workload request (see the module docstring)."""
    stages: list[dict[str, Any]] = []
    for k, call in enumerate(request.calls):
        if k < len(calls):
            stages += judge_call(call.stages, calls[k])
        else:
            stages += [{"tokens": 0, "expected_tokens": s.max_tokens, "ttft_ms": None,
                        "tpot_ms": None, "ttft_slo_ms": ttft_objective(s),
                        "tpot_slo_ms": s.tpot_ms, "met": False} for s in call.stages]
    error = next((c.error for c in calls if c.error), "")
    if skipped and not error:
        error = "not sent: the run stopped early"
    decisions = [c.decision for c in calls if c.decision]
    decision = "rejected" if "rejected" in decisions else (
        "best_effort" if "best_effort" in decisions else (decisions[0] if decisions else ""))
    finished = (not skipped and len(calls) == len(request.calls) and not error
                and decision != "rejected"
                and all(c.finish_reason in OK_FINISH for c in calls))
    times = [t for c in calls for t in c.token_times]
    sent0 = calls[0].sent if calls else None
    ttft_ms = e2e_ms = tpot_ms = None
    if calls and calls[0].token_times:
        ttft_ms = 1000 * (calls[0].token_times[0] - sent0)
        e2e_ms = 1000 * (times[-1] - sent0)
        tpot_ms = (e2e_ms - ttft_ms) / (len(times) - 1) if len(times) > 1 else 0.0
    itl = [1000 * (b - a) for c in calls
           for a, b in zip(c.token_times, c.token_times[1:], strict=False)]
    rec = {
        "system": system,
        "scenario": scenario,
        "rate": rate,
        "id": request.id,
        "tier": request.tier,
        "kind": request.kind,
        "arrival": request.arrival,
        "sent": sent0,
        "lateness_ms": None if sent0 is None else 1000 * (sent0 - request.arrival),
        "prompt_tokens": [len(c.new_prompt) for c in request.calls],
        "output_tokens": request.output_tokens,
        "completion_tokens": len(times),
        "ttft_ms": ttft_ms,
        "tpot_ms": tpot_ms,
        "e2e_ms": e2e_ms,
        "itl_ms": [round(x, 3) for x in itl],
        "token_times": [round(t, 6) for t in times],
        "calls": [{"sent": c.sent, "tokens": len(c.token_times), "finish_reason":
                   c.finish_reason, "error": c.error, "decision": c.decision,
                   "server": c.server} for c in calls],
        "decision": decision,
        "finish_reason": calls[-1].finish_reason if calls else "",
        "error": error,
        "stages": stages,
        "finished": finished,
        "attained": finished and all(s["met"] for s in stages),
    }
    if extra:
        rec.update(extra)
    return rec


def write_records(path: Path, records: Iterable[dict[str, Any]], append: bool = True) -> None:
    with open(path, "a" if append else "w") as f:
        for rec in records:
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")


def read_records(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
