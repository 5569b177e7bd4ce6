"""One engine's scheduler as vLLM ran it before V1, with its defaults (chunked prefill off).

vLLM V0 (vllm/core/scheduler.py, `_schedule_default`, v0.6-v0.8) never mixes prefill and decode
in one step. While prompts wait and fit, a step prefills whole waiting prompts first-come
first-served, up to `max_num_batched_tokens` (V0 set it to max(max_model_len, 2048) when chunked
prefill was off: 2048 for OPT-13B's 2048-token context) and `max_num_seqs` counting the running
requests; the running requests do not decode in that step. A prompt is admitted only if its KV
fits while keeping the block manager's watermark (1 % of the blocks) free; the first prompt
that does not fit stops admission (FCFS). Otherwise the step decodes every running request, one
token each; when one cannot grow, the newest running request is preempted and recomputed later
(V0's default for single-sequence requests), ahead of the waiting prompts.

Approximations, in V0's favour: a later stage's prompt reuses the cached prefix (V0's prefix
caching was off by default; the simulator caches prefixes for every system alike), and a prompt
longer than the token budget (a recomputed request past 2048 tokens, which V0's 2048-token
context would have refused) runs alone rather than failing.
"""

from __future__ import annotations

from slos_serve.sim.core import Batch, SimRequest
from slos_serve.sim.fcfs import FcfsEngine

# vllm/core/block_manager.py: watermark=0.01 of the GPU blocks stays free when admitting prompts
V0_WATERMARK = 0.01


class V0Engine(FcfsEngine):
    """vLLM V0's default scheduler: prefill-only steps of whole prompts, else decode-only."""

    def step(self) -> Batch | None:
        return self.prefill_step() or self.decode_step()

    def can_admit(self, r: SimRequest, tokens: int) -> bool:
        """r's whole prompt fits in free KV with the watermark left over."""
        need = r.context + tokens - (r.kv_alloc if r.worker == self.w.idx else 0)
        return self.w.kv_free - need >= V0_WATERMARK * self.w.kv_capacity

    def prefill_step(self) -> Batch | None:
        b = Batch()
        total = 0
        while self.waiting and len(self.running) < self.max_seqs:
            r = self.waiting[0]
            n = r.todo_prefill
            if b.prefill and total + n > self.budget:
                break
            if not self.can_admit(r, n) or not self.c.alloc(r, self.w, r.context + n):
                break
            self.waiting.popleft()
            self.running.append(r)
            b.prefill.append((r, n))
            total += n
        return b if b else None

    def decode_step(self) -> Batch | None:
        b = Batch()
        i = 0
        while i < len(self.running) and len(b.decode) < self.budget:
            r = self.running[i]
            if not self.c.alloc(r, self.w, r.context + 1):
                self._preempt(self.running[-1])
                continue  # r itself may have been the newest: then i is past the end
            b.decode.append((r, 0))
            i += 1
        return b if b else None
