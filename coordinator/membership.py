"""Workers joining and leaving a running coordinator (the AddWorker / RemoveWorker RPCs).

Adding is the pool's `add`: the worker is routed to once its health polls say so, exactly
as the workers the coordinator started with. Removing drains first, so that no request is
lost to a scale-down:
1. the worker is marked draining: out of routing at once (the planner sees it no more, the
   round-robin skips it, failovers do not pick it);
2. the coordinator waits until no request in flight uses it: no call on it, no request
   routed to it (decided, not yet called), or whose prefill, decode or held hand-off KV is
   on it;
3. it asks the worker itself to Drain (the worker's own view: its engine's requests), for
   what is left of the timeout;
4. it leaves the membership. Requests still on it when the timeout passed ("cut") have their
   calls cancelled and fail over to another worker (coordinator/worker_calls.py): a resume,
   not a loss, as long as another worker serves their side.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from coordinator.frontend import Frontend
from coordinator.pool import WorkerHandle
from proto import slos_serve_pb2 as pb

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 60.0  # RemoveWorker's default
_SETTLE_S = 0.05  # poll period of the drain's wait


def uses(front: Frontend, worker: WorkerHandle) -> int:
    """Requests in flight that still need `worker`: routed to it, served by it, or with
    their hand-off's KV on it."""
    address = worker.address
    n = sum(1 for live in front.live.values()
            if address in (*live.routed, live.prefill_worker, live.decode_worker)
            or live.handoff_at is worker)
    return max(n, len(worker.calls))


def add(front: Frontend, address: str, role: str) -> pb.MembershipResponse:
    worker = front.pool.add(address, role)
    return pb.MembershipResponse(changed=worker is not None,
                                 workers=front.cluster_info().workers)


async def remove(front: Frontend, address: str, timeout_s: float = 0.0
                 ) -> pb.MembershipResponse:
    """Drains `address` (see the module's docstring), then removes it."""
    pool = front.pool
    worker = pool.get(address)
    if worker is None:
        return pb.MembershipResponse(changed=False, workers=front.cluster_info().workers)
    deadline = time.monotonic() + (timeout_s or DRAIN_TIMEOUT_S)
    worker.draining = True
    worker.healthy = False
    pool.changed.set()
    log.info("draining %s worker %s (%d requests on it)", worker.role, address,
             uses(front, worker))
    while uses(front, worker) and time.monotonic() < deadline:
        await asyncio.sleep(_SETTLE_S)
    left = deadline - time.monotonic()
    if left > 0:
        try:
            await worker.stub.Drain(pb.DrainRequest(timeout_s=left), timeout=left + 1.0)
        except grpc.RpcError as err:  # gone already: nothing of ours is on it
            log.info("worker %s did not drain itself: %s", address, err.code().name)
    cut = uses(front, worker)
    if cut:
        log.warning("worker %s: drain timed out with %d requests on it: they fail over",
                    address, cut)
    await pool.remove(address)
    return pb.MembershipResponse(changed=True, cut=cut, workers=front.cluster_info().workers)
