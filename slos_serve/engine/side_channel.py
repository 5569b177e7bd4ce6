"""The worker <-> vLLM engine-core side channel: its one codec, for both of its ends.

vLLM runs the scheduler (vllm_scheduler.SloScheduler) in its engine-core process, out of
the worker's reach. VllmEngine (the worker's end) and the scheduler talk through files and
environment variables set before the engine starts; this module is the only place that
knows their form:

* PLAN_PATH_ENV: the coordinator's WorkerPlan for this engine and the stage switches the
  worker saw, one JSON file the worker replaces atomically and the scheduler polls:
  {"plan_time_unix", "step_token_budget", "tiers": [{"tpot_ms", "spec_tokens",
  "interval_ms"}], "pace", "stages": {request_id: stage_index}}.
* STATS_PATH_ENV: the scheduler's load snapshot (EngineLoad, its learned performance model
  included, plus a few diagnostics),
  published because vLLM emits scheduler statistics only with outputs: once a request is
  aborted and the engine falls idle, the freed KV blocks would otherwise never be reported.
* MODE_ENV: "slos" (default) carries out the plan; "vllm" leaves every decision to vLLM
  (the baseline: fcfs, no caps, no budget) and only publishes stats.
* PERF_PROFILE_ENV: a performance model (slos_serve.core.perf_model JSON) for step budgets.
* PROFILE_PATH_ENV: where the step recorder appends its samples (off when unset).
* Per request, SamplingParams.extra_args["slo"]: the RequestSlo and the worker's request id
  (vLLM's internal one has a suffix).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slos_serve.core.perf_model import PerfModel
from slos_serve.core.policy import RequestSlo
from slos_serve.core.spec_stats import TierStats
from slos_serve.core.stages import StageSpec
from slos_serve.core.worker_plan import TierSpec, WorkerPlan
from slos_serve.engine.base import EngineLoad

STATS_PATH_ENV = "SLOS_ENGINE_STATS_PATH"
PLAN_PATH_ENV = "SLOS_ENGINE_PLAN_PATH"
MODE_ENV = "SLOS_SCHEDULER_MODE"
PERF_PROFILE_ENV = "SLOS_PERF_PROFILE"
PROFILE_PATH_ENV = "SLOS_PROFILE_PATH"
SLO_KEY = "slo"  # the key of SamplingParams.extra_args


def write_atomically(path: str | Path, text: str) -> None:
    """The reader sees the old file or the new one, never a part."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------- plan --


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: must be a number, not {value!r}")
    return float(value)


def _integer(value: Any, name: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: must be an integer, not {value!r}")
    return value


def _tier(t: Any, name: str) -> TierSpec:
    if not isinstance(t, Mapping):
        raise ValueError(f"{name}: must be an object")
    return TierSpec(
        tpot_ms=_number(t.get("tpot_ms"), f"{name}.tpot_ms"),
        spec_tokens=_integer(t.get("spec_tokens", 0), f"{name}.spec_tokens"),
        interval_ms=_number(t.get("interval_ms", 0.0), f"{name}.interval_ms"),
    )


def _stages(d: Any) -> dict[str, int]:
    if not isinstance(d, Mapping):
        raise ValueError("stages: must be an object {request_id: stage_index}")
    out = {}
    for k, v in d.items():
        index = _integer(v, f"stages[{k!r}]")
        if index < 0:
            raise ValueError(f"stages[{k!r}]: must be >= 0, not {v!r}")
        out[str(k)] = index
    return out


def plan_from_json(d: Any) -> tuple[WorkerPlan, dict[str, int]]:
    """The plan and the stage switches; ValueError naming the field ("tiers[1].tpot_ms")."""
    if not isinstance(d, Mapping):
        raise ValueError(f"plan: must be an object, not {type(d).__name__}")
    tiers = d.get("tiers", [])
    if not isinstance(tiers, (list, tuple)):
        raise ValueError("tiers: must be a list")
    pace = d.get("pace", False)
    if not isinstance(pace, bool):
        raise ValueError(f"pace: must be true or false, not {pace!r}")
    plan = WorkerPlan(
        plan_time_unix=_number(d.get("plan_time_unix", 0.0), "plan_time_unix"),
        step_token_budget=_integer(d.get("step_token_budget", 0), "step_token_budget"),
        tiers=tuple(_tier(t, f"tiers[{i}]") for i, t in enumerate(tiers)),
        pace=pace,
    )
    return plan, _stages(d.get("stages") or {})


def plan_to_json(plan: WorkerPlan, stages: Mapping[str, int]) -> dict[str, Any]:
    return {
        "plan_time_unix": plan.plan_time_unix,
        "step_token_budget": plan.step_token_budget,
        "tiers": [
            {"tpot_ms": t.tpot_ms, "spec_tokens": t.spec_tokens, "interval_ms": t.interval_ms}
            for t in plan.tiers
        ],
        "pace": plan.pace,
        "stages": dict(stages),
    }


def write_plan(path: str | Path, plan: WorkerPlan, stages: Mapping[str, int]) -> None:
    write_atomically(path, json.dumps(plan_to_json(plan, stages)))


def read_plan(path: str | Path) -> tuple[WorkerPlan, dict[str, int]]:
    """OSError or ValueError if the file is missing or unusable."""
    with open(path) as f:
        return plan_from_json(json.load(f))


# ------------------------------------------------------------------ stats --


def write_stats(path: str | Path, load: EngineLoad, diagnostics: Mapping[str, Any]) -> None:
    """`diagnostics`: figures for a human reading the file (no reader depends on them)."""
    write_atomically(path, json.dumps({**dataclasses.asdict(load), **diagnostics}))


LOAD_FIELDS = frozenset(f.name for f in dataclasses.fields(EngineLoad)) - {"spec", "perf_model"}


def read_stats(path: str | Path) -> EngineLoad | None:
    """The last snapshot published (None: none yet, or unreadable)."""
    try:
        stats = json.loads(Path(path).read_text())
        spec = [TierStats(**s) for s in stats.get("spec", [])]
        model = stats.get("perf_model")
        return EngineLoad(**{k: v for k, v in stats.items() if k in LOAD_FIELDS}, spec=spec,
                          perf_model=PerfModel.from_dict(model) if model else None)
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return None


# ------------------------------------------------------------ request SLO --


def slo_to_extra_args(slo: RequestSlo, request_id: str) -> dict[str, Any]:
    """SamplingParams.extra_args["slo"] of a request."""
    return {
        "ttft_deadline_unix": slo.ttft_deadline_unix,
        "tpot_ms": slo.tpot_ms,
        "best_effort": slo.best_effort,
        "spec_tokens": slo.spec_tokens,
        "tier": slo.tier,
        "stages": [
            {"tpot_ms": s.tpot_ms or 0.0, "max_tokens": s.max_tokens, "until": s.until}
            for s in slo.stages
        ],
        "request_id": request_id,
    }


def slo_from_extra_args(d: Mapping[str, Any] | None) -> tuple[RequestSlo, str]:
    """The request's SLO and the worker's request id ("": not given). No data: no
    objective. TypeError / ValueError / AttributeError if the data is unusable."""
    if not d:
        return RequestSlo(), ""
    stages = tuple(
        StageSpec(tpot_ms=float(s.get("tpot_ms", 0.0) or 0.0),
                  max_tokens=int(s.get("max_tokens", 0) or 0),
                  until=str(s.get("until", "") or ""))
        for s in d.get("stages", ()) or ()
    )
    slo = RequestSlo(
        ttft_deadline_unix=float(d.get("ttft_deadline_unix", 0.0) or 0.0),
        tpot_ms=float(d.get("tpot_ms", 0.0) or 0.0),
        best_effort=bool(d.get("best_effort", False)),
        spec_tokens=int(d.get("spec_tokens", 0) or 0),
        tier=str(d.get("tier", "") or ""),
        stages=stages,
    )
    return slo, str(d.get("request_id", "") or "")
