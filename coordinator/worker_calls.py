"""The coordinator's calls to its workers for one request: prefill and decode (or one local
call that does both on a mixed worker), with failover to another worker, and the request's
Abort RPC reaching the calls in flight.

No request is lost to one worker's failure (any status but a client mistake that another
worker would repeat, NOT_RETRIED, or the request's own abort / cancellation):
- a call that failed before the request had a token (a prefill; a local request before
  its first token) is sent again to another worker that serves it (a *failover*);
- a decode stream that failed after tokens were sent is *resumed* on another decode-capable
  worker: a local DecodeRequest carrying the tokens so far (`resume_token_ids`), which that
  worker recomputes as prompt + tokens and continues from (vLLM's
  kv_load_failure_policy=recompute, at cluster level). Under greedy sampling the output is
  the undisturbed one, token for token; the client sees no token twice and none skipped.
A worker the pool finds unreachable has its calls cancelled (WorkerPool.drop_calls): they
fail over at once instead of waiting for a transport timeout. The request ends with
UNAVAILABLE (NoWorker) only when no worker of the role is left to try (after SPARE_WAIT_S
for one to be healthy again: a worker that was only unreachable may serve once it answers).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc

from coordinator.pool import WorkerHandle, WorkerPool
from proto import slos_serve_pb2 as pb

log = logging.getLogger(__name__)

# The request's own fault: another worker would answer the same. Never retried.
NOT_RETRIED = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE})
# Statuses that say the worker itself is gone (not only this call): out of routing until
# its next good health poll.
UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# When no other worker of the role is healthy, wait this long for one (an unreachable one
# back: on an overloaded machine every worker may miss a poll at once) before giving up.
SPARE_WAIT_S = 2.0
MAX_ATTEMPTS = 8  # calls per request and side, failovers included


RELEASE_TIMEOUT_S = 2.0


class Aborted(Exception):
    """The request was aborted through the Abort RPC."""


class NoWorker(Exception):
    """No healthy worker of the role was left to take the call (the message says which
    role, and which worker failed with what)."""


@dataclass
class InFlight:
    """A request in flight: its calls (for Abort), and who served it (for its Final)."""

    calls: list = field(default_factory=list)
    aborted: bool = False
    tier: str | None = None  # set once Started is sent (metrics: in flight until done)
    final: pb.Final | None = None  # the Final sent, if any
    record: pb.Final | None = None  # how far it got, sent or not (the request log's)
    prefill_worker: str = ""  # the workers that actually served (after any failover)
    decode_worker: str = ""
    failovers: int = 0  # calls sent again before the request's first token
    resumes: int = 0  # decode streams resumed after tokens were sent
    handoff_at: WorkerHandle | None = None  # the prefill worker holding the hand-off's KV
    routed: tuple[str, ...] = ()  # the workers first chosen (a drain waits for them too)

    def abort(self) -> None:
        self.aborted = True
        self.cancel_calls()

    def cancel_calls(self) -> None:
        """No-op for calls already done; frees worker resources if we were cancelled."""
        for call in self.calls:
            call.cancel()


def task_cancelling() -> bool:
    """True when this task itself is being cancelled (the client went away)."""
    task = asyncio.current_task()
    return bool(task is not None and task.cancelling())


class _WorkerFailed(Exception):
    """A call failed because of its worker (retry elsewhere); `detail` says how."""

    def __init__(self, detail: str, unreachable: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.unreachable = unreachable  # (may serve again once healthy: not excluded)


def _failure(err: BaseException, worker: WorkerHandle, live: InFlight) -> _WorkerFailed:
    """What a call's exception means: Aborted (the Abort RPC), the exception itself (the
    client went away; a client mistake), or a worker failure to retry elsewhere."""
    if live.aborted:
        raise Aborted() from None
    if isinstance(err, asyncio.CancelledError):
        if task_cancelling():
            raise err
        # Not our task, not Abort: the pool cancelled the calls of a worker it lost.
        return _WorkerFailed("unreachable (health poll failed)", True)
    assert isinstance(err, grpc.RpcError)
    if err.code() in NOT_RETRIED:
        raise err
    unreachable = err.code() in UNREACHABLE
    if unreachable:
        worker.healthy = False
    return _WorkerFailed(f"{err.code().name}: {err.details()}", unreachable)


async def _spare(pool: WorkerPool, kind: str, refused: set[str], attempts: int
                 ) -> WorkerHandle | None:
    """A healthy worker serving `kind` that has not refused the call (one that was only
    unreachable may take it once healthy again), waiting up to SPARE_WAIT_S for one."""
    deadline = time.monotonic() + SPARE_WAIT_S
    while attempts < MAX_ATTEMPTS:
        worker = pool.pick(kind, exclude=refused)
        if worker is not None or time.monotonic() >= deadline:
            return worker
        await asyncio.sleep(0.05)
    return None


async def prefill(
    pool: WorkerPool, request: pb.PrefillRequest, worker: WorkerHandle | None, live: InFlight
) -> pb.PrefillResponse:
    """Prefill on `worker`; if it fails, on the next healthy prefill-capable one, until
    one serves or none is left (NoWorker)."""
    refused: set[str] = set()
    failed, attempts = "none was healthy", 0
    while worker is not None:
        attempts += 1
        call = worker.stub.Prefill(request)
        live.calls.append(call)
        worker.calls.add(call)
        try:
            response = await call
            live.prefill_worker = worker.address
            return response
        except (asyncio.CancelledError, grpc.RpcError) as err:
            failure = _failure(err, worker, live)
        finally:
            worker.calls.discard(call)
        failed = f"{worker.address} failed: {failure.detail}"
        if not failure.unreachable:
            refused.add(worker.address)
        worker = await _spare(pool, "prefill", refused, attempts)
        log.warning("request %s: prefill on %s; trying %s", request.request_id, failed,
                    worker.address if worker else "none (none left)")
        if worker is not None:
            live.failovers += 1
    raise NoWorker(f"no healthy prefill worker left to retry on after {failed}")


async def decode(
    pool: WorkerPool,
    request: pb.DecodeRequest,
    worker: WorkerHandle,
    live: InFlight,
    sofar: list[int],
    resume_slo: Callable[[], pb.WorkerSlo] | None = None,
) -> AsyncIterator[pb.DecodeResponse]:
    """Streams from `worker`; if it fails, goes on from another worker (module docstring):
    a local request without a token yet is sent again to another mixed worker, anything
    else is resumed from `sofar` (the request's tokens the client has: the caller extends
    it with each message's tokens before asking for the next), with `resume_slo()`'s SLO
    (a multi-stage request: the stages still ahead) if given."""
    refused: set[str] = set()
    attempts = 0
    while True:
        attempts += 1
        call = worker.stub.Decode(request)
        live.calls.append(call)
        worker.calls.add(call)
        live.decode_worker = worker.address
        if request.local and not request.resume_token_ids:
            live.prefill_worker = worker.address
        try:
            async for out in call:
                yield out
            return
        except (asyncio.CancelledError, grpc.RpcError) as err:
            failure = _failure(err, worker, live)
        finally:
            worker.calls.discard(call)
        failed = f"{worker.address} failed: {failure.detail}"
        if request.local and not sofar:
            kind, what = "mixed", "serve it"
        else:
            kind, what = "decode", f"resume on (after {len(sofar)} tokens)"
            if len(sofar) >= request.sampling.max_tokens:  # every token is out already
                yield pb.DecodeResponse(finish_reason="length")
                return
        if not failure.unreachable:
            refused.add(worker.address)
        spare = await _spare(pool, kind, refused, attempts)
        if spare is None:
            raise NoWorker(f"no healthy {kind} worker left to {what} after {failed}")
        log.warning("request %s: decode on %s; %s %s", request.request_id, failed,
                    "resuming on" if kind == "decode" else "trying", spare.address)
        if kind == "decode":
            live.resumes += 1
            request = resume_request(request, sofar,
                                     resume_slo() if resume_slo is not None else None)
        else:
            live.failovers += 1
        worker = spare


def resume_request(request: pb.DecodeRequest, sofar: list[int],
                   slo: pb.WorkerSlo | None = None) -> pb.DecodeRequest:
    """`request` as a resume: local (no hand-off to pull), recomputing prompt + `sofar`
    (with `slo` instead of the request's, if given)."""
    return pb.DecodeRequest(
        request_id=request.request_id,
        prompt_token_ids=request.prompt_token_ids,
        sampling=request.sampling,
        slo=slo if slo is not None else request.slo,
        local=True,
        resume_token_ids=sofar,
    )


_releases: set[asyncio.Task] = set()


def release_handoff(live: InFlight, request_id: str) -> None:
    """Tells the prefill worker that holds this request's hand-off to free its KV now (an
    Abort, in the background): the request ended before its decode read the KV (cancelled,
    aborted, failed) or was resumed elsewhere by recompute. Without it the KV waited for
    the connector's 30 s lease. Freeing what was already read is a no-op there."""
    worker, live.handoff_at = live.handoff_at, None
    if worker is None:
        return

    async def send() -> None:
        try:
            await worker.stub.Abort(pb.WorkerAbortRequest(request_id=request_id),
                                    timeout=RELEASE_TIMEOUT_S)
        except grpc.RpcError as err:  # a dead worker holds nothing any more
            log.info("request %s: no KV release on %s: %s", request_id, worker.address,
                     err.code().name)

    task = asyncio.get_running_loop().create_task(send())
    _releases.add(task)
    task.add_done_callback(_releases.discard)
