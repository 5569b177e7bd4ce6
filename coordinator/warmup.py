"""One hand-off over every (prefill, decode) pair before the cluster reports ready.

The first KV transfer between two engines opens their connection (NIXL's side-channel
handshake, the UCX endpoints, memory registration on the reading side). Measured here it
cost up to three prefill-engine steps on a fresh connection against one on a warm one, and
that wait lands in the first real request's TPOT. A tiny best-effort request per pair pays it
at start instead, and checks that KV actually moves between them before anyone relies on it.
"""

from __future__ import annotations

import itertools
import logging
import time

import grpc

from coordinator.pool import WorkerHandle, WorkerPool
from proto import slos_serve_pb2 as pb
from slos_serve.metrics import WARMUP_ID_PREFIX

log = logging.getLogger(__name__)

WARMUP_PROMPT = list(range(1, 17))  # one KV block on CPU engines
WARMUP_TIMEOUT_S = 60.0
_ids = itertools.count()


def cold_pairs(pool: WorkerPool, warm: set[tuple[str, str]], between_mixed: bool = False
               ) -> list[tuple[WorkerHandle, WorkerHandle]]:
    """Healthy (prefill, decode) pairs of two workers that may carry a hand-off and have not
    yet: a mixed worker on either side, two mixed ones only if `between_mixed` (the adaptive
    layout; otherwise a mixed worker serves its own requests locally)."""
    return [(p, d) for p in pool.serving("prefill") for d in pool.serving("decode")
            if p is not d and p.healthy and d.healthy and (p.address, d.address) not in warm
            and (between_mixed or "prefill" in (p.role, d.role) or "decode" in (p.role, d.role))]


async def hand_off_once(prefill: WorkerHandle, decode: WorkerHandle) -> float:
    """Prefill a tiny prompt on `prefill`, decode one more token on `decode` from its KV;
    the seconds it took."""
    rid = f"{WARMUP_ID_PREFIX}{next(_ids)}-{time.monotonic_ns()}"
    sampling = pb.SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
    slo = pb.WorkerSlo(best_effort=True)
    start = time.perf_counter()
    first = await prefill.stub.Prefill(
        pb.PrefillRequest(request_id=rid, prompt_token_ids=WARMUP_PROMPT, sampling=sampling,
                          slo=slo, hand_off=True),
        timeout=WARMUP_TIMEOUT_S)
    if first.finish_reason:  # ended at its first token: nothing to hand off
        return time.perf_counter() - start
    call = decode.stub.Decode(
        pb.DecodeRequest(request_id=rid, prompt_token_ids=WARMUP_PROMPT, sampling=sampling,
                         slo=slo, handoff=first.handoff, first_token_id=first.first_token_id,
                         first_text=first.first_text),
        timeout=WARMUP_TIMEOUT_S)
    async for _ in call:
        pass
    return time.perf_counter() - start


async def warm_up(pool: WorkerPool, warm: set[tuple[str, str]],
                  between_mixed: bool = False) -> None:
    """Warm every cold healthy pair (cold_pairs), one at a time (each pair's engines are idle
    then). A pair that fails is logged and tried again at the next readiness change."""
    for prefill, decode in cold_pairs(pool, warm, between_mixed):
        try:
            took = await hand_off_once(prefill, decode)
        except grpc.RpcError as err:
            log.warning("warm-up hand-off %s -> %s failed: %s %s", prefill.address,
                        decode.address, err.code().name, err.details())
            continue
        warm.add((prefill.address, decode.address))
        log.info("warm-up hand-off %s -> %s: %.0f ms", prefill.address, decode.address,
                 1000 * took)
