"""One worker's share of a plan, in the form its engine's scheduler carries out
(slos_serve.core.worker_plan.WorkerPlan): the step token budget, per-tier speculation caps and
intervals, and whether loose decoders are paced. The live coordinator sends it to each worker;
the simulator hands it to its simulated engines, so both run the same rule."""

from __future__ import annotations

from slos_serve.core.planner.records import Plan
from slos_serve.core.worker_plan import TierSpec, WorkerPlan


def engine_plan(plan: Plan, worker_id: str, role: str, plan_time: float = 0.0) -> WorkerPlan:
    """Decode-capable workers: the decode plan's budget (0, the engine's own maximum, when
    even the admitted load is not sustainable), its tiers (ms), pacing on mixed workers.
    Prefill workers: the prefill schedule's per-batch budget."""
    dp = plan.decode.get(worker_id)
    if dp is not None:
        tiers = sorted((round(t.tpot * 1000, 3), t.spec_len, round(t.interval * 1000, 3))
                       for t in dp.tiers)
        return WorkerPlan(
            plan_time_unix=plan_time,
            step_token_budget=dp.step_token_budget if dp.feasible else 0,
            tiers=tuple(TierSpec(t, k, i) for t, k, i in tiers),
            pace=role == "mixed",
        )
    sched = plan.prefill.get(worker_id)
    if sched is not None:
        return WorkerPlan(plan_time_unix=plan_time, step_token_budget=sched.token_budget)
    return WorkerPlan(plan_time_unix=plan_time)
