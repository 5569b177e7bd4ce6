"""The `slos` systems' own acceptance measurements, per TPOT tier: what the planner plans on.

The live coordinator plans on the acceptance its workers measure (spec_stats.planning_alphas over
their TierStats); the simulated systems do the same from the verify steps they run, instead
of being told the acceptance rate the simulator draws with (SimConfig.spec_alpha, an oracle).
A verify step of s drafts that yields n tokens accepted n - 1 drafts; the verifier examined
those and, if n - 1 < s, the one it rejected (the per-token trials of E(n)'s model).
"""

from __future__ import annotations

from slos_serve.core import spec_stats
from slos_serve.sim.core import Batch, SimRequest


class AcceptanceCounter:
    """Accepted drafts and trials per TPOT tier, from each worker's finished batches."""

    def __init__(self) -> None:
        self.counts: dict[float, list[int]] = {}  # TPOT s -> [accepted, trials]
        # per worker, its running batch's verify steps: (request, drafts, segment, generated)
        self._running: dict[int, list[tuple[SimRequest, int, int, int]]] = {}

    def started(self, worker: int, batch: Batch) -> None:
        self._running[worker] = [(r, s, r.segment, r.generated) for r, s in batch.decode
                                 if s > 0]

    def finished(self, worker: int) -> None:
        """Worker's batch has ended (called before its next one starts; idempotent)."""
        for r, s, segment, before in self._running.pop(worker, ()):
            after = r.generated if r.segment == segment else r.req.segments[segment].output_tokens
            accepted = after - before - 1
            if accepted < 0:  # preempted before its step ran
                continue
            c = self.counts.setdefault(r.req.segments[segment].tpot_slo, [0, 0])
            c[0] += accepted
            c[1] += accepted + (1 if accepted < s else 0)

    def alphas(self) -> tuple[dict[float, float], float]:
        """(Snapshot.spec_alpha, Snapshot.default_alpha): the lower bounds to plan on."""
        return spec_stats.planning_alphas((t, a, n) for t, (a, n) in self.counts.items())
