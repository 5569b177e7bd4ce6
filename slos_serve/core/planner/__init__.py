"""Multi-SLO planner: SLOs-Serve's soft-admission DP, extended to disaggregated pools.

One pure function, plan(Snapshot) -> Plan, used by the simulator and the live coordinator.

Modules: records (the input and output records, and `plan_request`, the one way a request
becomes a PlanRequest), context (per-plan TPOT tiers and the decode configuration cache),
load (a worker's reservations, with can_admit/admit check-act pairs), dp (the admission DP),
schedule (the predicted batches of one worker), layout (conditional disaggregation: local or
hand-off per request, roles that follow the load), steps (plan() as a sequence of named steps).

Formulation. Objective: the number of requests that meet their SLOs (profit 1 each). A new
request is admitted iff, by the performance model, it and every request admitted before meet
their TTFT and TPOT: (a) its prefill worker can finish its prompt before its TTFT deadline in
earliest-deadline-first order, (b) its decode worker can sustain every admitted request's TPOT
tier forever after (a decode configuration exists, see slos_serve/core/spec.py), (c) the KV blocks
of the admitted requests fit. Admitted requests are never dropped (soft admission control);
declined ones become best effort (leftover budget only) or are rejected, by their own
`on_reject`.

DP, per prefill-capable worker (as the paper): candidates and already-admitted prompts sorted
by deadline; states keyed by admitted counts per TPOT tier, each a Pareto set of (prefill
tokens so far, KV blocks). Admitting request n needs tokens <= budget(deadline_n | counts),
where, with (u, p) the batch period and prefill tokens per batch of the decode configuration
for those counts and b <= u the predicted time of such a batch (shorter than u when the
batch token limit binds; batches run back to back while prefill waits), budget = k * p +
(the most prefill tokens that one more batch carrying the worst-case decode part ends within
the time left), k = floor((deadline - start) / b): a deadline shorter than a batch still
gets a smaller, faster batch (slos_serve/core/spec.py, prefill_within). On a prefill worker the
budget does not depend on decoding (u = b = time of a max_batch_tokens batch, p =
max_batch_tokens), so states collapse to the admitted count. Mixed workers (colocated mode)
keep the tier vector. KV: each request reserves its context plus a fraction
(Snapshot.kv_output_reserve; 1 = its peak) of the output it still expects.

Where it departs from the paper, and why:
- Disaggregation: a request needs a prefill (or mixed) worker and a decode (or mixed) worker.
  The prefill DP runs first; the decode side is then assigned greedily in deadline order
  (try decode worker (start + i) mod D, then the next). A decode pool has no deadline
  ordering to exploit, only the sustained-TPOT and KV checks, so a greedy pass suffices.
- Adaptive layout (Snapshot.adaptive_layout, layout.py): all workers may be mixed; a request
  prefills and decodes on one worker or hands its KV off to another, and workers turn to pure
  prefill or decode (draining first) where the model predicts the cluster prefills faster.
- Routing: each new request i first tries worker (route_start + i) mod R. Rather than one DP
  per request and try, each worker runs one DP over all requests routed to it this round;
  requests it declines move on to their next worker; earlier rounds' admissions stay fixed.
  At most R rounds; the DP still chooses the best subset on each worker.
- Budgets assume every admitted request on a mixed worker decodes from now on, in every
  batch at its worst (conservative). To match the partial batch of the budget, the emitted
  schedule caps a batch that finishes a committed prompt so it is predicted to end by that
  prompt's deadline, and runs batches back to back while prefill waits (decoders pace batches
  at u only when none does). The budget ignores the cost of such cuts before the last one
  (one batch's fixed cost each); the repair below catches the rare resulting misses.
- KV: reserving less than the peak (kv_output_reserve < 1) is an overcommit, not a guarantee:
  the workers evict best-effort requests first when memory runs out.
- Admitted prompts already predicted late are kept, their lateness is not charged to new
  requests (the DP allows them the excess they already had) and no batch claims them.
- The emitted schedule is checked: if a newly admitted prompt is predicted late (the model's
  per-batch features differ from the DP's budget), the largest new admission due no later is
  declined (Moore-Hodgson) and the schedule emitted again.
- Decode cadence: EDF with token-bucket pacing: a request's next verify step is due one
  interval (E(spec) * TPOT) after its previous due time; batches are paced at the period u
  (back to back while prefill waits); a request is served when it cannot wait for the next
  batch, so loose tiers skip batches.
- Best-effort requests are not re-considered for admission in later plans.
- KV transfer time is not on the TTFT path (the prefill worker emits the first token), but it
  is on the TPOT path: a handed-off request waits Snapshot.handoff_delay (live: 0 for now,
  see coordinator/admission.py; the workers' measured p99 is reported) for its KV, and its
  decode worker must absorb that wait within its TPOT over
  the tokens it expects (PlanContext.absorbs_handoff), or the request decodes where it is
  prefilled, or is declined.
"""

from __future__ import annotations

from slos_serve.core.planner.records import (
    Action,
    DecodePlan,
    Layout,
    OnReject,
    Phase,
    Plan,
    PlannedBatch,
    PlanRequest,
    PlanWorker,
    PrefillSchedule,
    Role,
    Snapshot,
    State,
    TierCadence,
    Verdict,
    WorkerRole,
    plan_request,
)
from slos_serve.core.planner.schedule import PREFILL_HORIZON
from slos_serve.core.planner.shares import engine_plan
from slos_serve.core.planner.steps import plan

__all__ = [
    "PREFILL_HORIZON", "Action", "DecodePlan", "Layout", "OnReject", "Phase", "Plan", "PlanRequest",
    "PlanWorker", "PlannedBatch", "PrefillSchedule", "Role", "Snapshot", "State", "TierCadence",
    "Verdict", "WorkerRole", "engine_plan", "plan", "plan_request",
]
