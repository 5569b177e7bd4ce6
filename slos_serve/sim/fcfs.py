"""One engine's FCFS continuous-batching scheduler, after vLLM v1's (vllm/v1/core/sched).

Each step: first the running requests in admission order (a decode token each, or the next
chunk of a prompt still being prefilled), then waiting requests first-come first-served while
the token budget, `max_num_seqs` and free KV memory allow. KV is reserved as tokens are
scheduled; when a running request cannot grow, the most recently admitted running request is
preempted and recomputed later (vLLM's default RECOMPUTE preemption, FCFS priority).

Requests whose KV was computed elsewhere (a disaggregated decode worker) wait in the same queue;
admission reserves their KV and starts the transfer, after which they decode.

With `spec_len` s > 0 every decode verifies s draft tokens (vLLM's fixed-length speculative
decoding, `num_speculative_tokens`): it costs 1 + s tokens of the step's budget and reserves KV
for 1 + s tokens; as vLLM does, the drafts are cut to the tokens the request still generates and
to the budget left. The cluster draws how many are accepted (`SimConfig.spec_alpha`), the same
acceptance model the planner's systems get.

Used as is by the `vllm` baseline (budget 2048), `vllm-spec` (the same with speculation) and
`sarathi` (budget sized to the tightest TPOT: its stall-free batching puts decodes first, which
this order already does), and on the decode workers of `distserve`.
"""

from __future__ import annotations

from collections import deque

from slos_serve.sim.core import Batch, Cluster, SimRequest, Worker

# vLLM 0.32 defaults on A100 for the OpenAI server (vllm/engine/arg_utils.py):
VLLM_MAX_NUM_BATCHED_TOKENS = 2048
VLLM_MAX_NUM_SEQS = 256


class FcfsEngine:
    """FCFS chunked-prefill continuous batching on one worker."""

    def __init__(
        self,
        cluster: Cluster,
        worker: Worker,
        budget: int = VLLM_MAX_NUM_BATCHED_TOKENS,
        max_seqs: int = VLLM_MAX_NUM_SEQS,
        spec_len: int = 0,
    ) -> None:
        self.c = cluster
        self.w = worker
        self.budget = budget
        self.max_seqs = max_seqs
        self.spec_len = spec_len
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.transferring = 0

    @property
    def load(self) -> int:
        """Requests this engine holds (its router's join-shortest-queue key)."""
        return len(self.waiting) + len(self.running) + self.transferring

    def add(self, r: SimRequest) -> None:
        self.waiting.append(r)

    def remove(self, r: SimRequest) -> None:
        if r in self.running:
            self.running.remove(r)

    def kv_arrived(self, r: SimRequest) -> None:
        self.transferring -= 1
        self.running.append(r)

    def drafts(self, r: SimRequest, budget: int) -> int:
        """Draft tokens r verifies this step: `spec_len`, cut to what r still generates beyond
        the one token a step always yields, and to the budget left after that token."""
        return max(0, min(self.spec_len, r.remaining_output - 1, budget - 1))

    def _preempt(self, victim: SimRequest) -> None:
        self.running.remove(victim)
        self.c.free(victim)
        victim.todo_prefill += victim.context
        victim.context = 0
        victim.phase = "prefill"
        self.waiting.appendleft(victim)

    def step(self) -> Batch | None:
        b = Batch()
        budget = self.budget
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            r = self.running[i]
            drafts = 0 if r.todo_prefill > 0 else self.drafts(r, budget)
            n = min(r.todo_prefill, budget) if r.todo_prefill > 0 else 1 + drafts
            self_preempted = False
            while not self.c.alloc(r, self.w, r.context + n):
                victim = self.running[-1]
                self._preempt(victim)
                preempted = True
                if victim is r:
                    self_preempted = True
                    break
            if self_preempted:
                break
            if r.todo_prefill > 0:
                b.prefill.append((r, n))
            else:
                b.decode.append((r, drafts))
            budget -= n
            i += 1
        while self.waiting and not preempted and budget > 0 and len(self.running) < self.max_seqs:
            r = self.waiting[0]
            if r.phase == "kvwait":  # computed elsewhere: reserve, then pull the KV
                if not self.c.alloc(r, self.w, r.context):
                    break
                self.waiting.popleft()
                self.transferring += 1
                self.c.start_transfer(r, self.w, r.extra.get("kv_tokens", r.context))
                continue
            n = min(r.todo_prefill, budget)
            if not self.c.alloc(r, self.w, r.context + n):
                break
            self.waiting.popleft()
            self.running.append(r)
            b.prefill.append((r, n))
            budget -= n
        return b if b else None
