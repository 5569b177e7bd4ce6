"""The coordinator's view of its workers: channels, health, load, round-robin picks.

A worker is *healthy* (routed to) while it answers its polls within POLL_TIMEOUT_S, its
standard health service says SERVING and it is not draining. One that stops answering
(a dead host, a SIGSTOP) is out of routing within POLL_INTERVAL_S + POLL_TIMEOUT_S and its
calls in flight are cancelled (`drop_calls`), so their requests fail over to another worker
(coordinator/worker_calls.py) at once; the channels' keepalive pings
(slos_serve/grpc_util.py) end its streams within about as long by themselves. A worker that
answers but is NOT_SERVING or draining keeps its calls: it is finishing them.

Membership changes at runtime (coordinator/membership.py: the AddWorker / RemoveWorker
RPCs): `add` connects a new worker (routed to once its polls say so), `remove` forgets one;
`draining` (set by a RemoveWorker) keeps a worker out of routing while it finishes. With
`drop_after_s`, a worker unreachable for that long leaves the membership by itself (under
Ray, a worker whose actor died); 0 keeps it, for a supervisor that restarts it in place.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proto import slos_serve_pb2 as pb
from proto import slos_serve_pb2_grpc as pb_grpc
from slos_serve.grpc_util import CHANNEL_OPTIONS, NODE_OPTIONS, open_channel

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.25
WATCH_RETRY_S = 0.5
POLL_TIMEOUT_S = 1.0  # a worker that does not answer a poll in this long is unreachable
SERVING = health_pb2.HealthCheckResponse.SERVING


# What a worker of each role serves: a mixed worker takes either side of a hand-off, and
# whole requests locally ("mixed": prefill and decode on it).
SERVES = {"prefill": ("prefill", "mixed"), "decode": ("decode", "mixed"), "mixed": ("mixed",)}


@dataclass
class WorkerHandle:
    address: str
    role: str
    channel: grpc.aio.Channel
    stub: pb_grpc.WorkerStub
    healthy: bool = False  # routed to: answers, SERVING, not draining
    info: pb.WorkerInfo | None = None
    load: pb.LoadReport = field(default_factory=pb.LoadReport)
    calls: set = field(default_factory=set)  # request calls in flight (worker_calls.py's)
    health: health_pb2_grpc.HealthStub | None = None
    draining: bool = False  # being removed: finishing its requests, routed no new ones
    unreachable_since: float | None = None  # monotonic(); None while it answers

    def drop_calls(self) -> None:
        """Cancels the calls in flight on this (lost) worker: their requests fail over."""
        for call in list(self.calls):
            call.cancel()
        self.calls.clear()


class WorkerPool:
    """Polls every worker's load report; a worker is healthy while it answers."""

    def __init__(self, prefill: list[str], decode: list[str], mixed: Sequence[str] = (),
                 poll_interval_s: float = POLL_INTERVAL_S,
                 credentials: grpc.ChannelCredentials | None = None,
                 drop_after_s: float = 0.0):
        """`credentials`: the node's mutual-TLS pair (slos_serve/tls.py); None: plaintext.
        `drop_after_s`: remove a worker unreachable this long (0: never)."""
        self._credentials = credentials
        self.drop_after_s = drop_after_s
        self.workers = [
            self._connect(addr, role)
            for role, addrs in (("prefill", prefill), ("decode", decode), ("mixed", mixed))
            for addr in addrs
        ]
        self._next = {role: itertools.count() for role in SERVES}
        self._interval = poll_interval_s
        self._task: asyncio.Task | None = None
        self._watches: dict[str, asyncio.Task] = {}
        self.changed = asyncio.Event()

    def _connect(self, address: str, role: str) -> WorkerHandle:
        channel = open_channel(address, self._credentials, [*CHANNEL_OPTIONS, *NODE_OPTIONS])
        return WorkerHandle(address, role, channel, pb_grpc.WorkerStub(channel),
                            health=health_pb2_grpc.HealthStub(channel))

    def add(self, address: str, role: str) -> WorkerHandle | None:
        """A new member (None: `address` is one already); routed to once a poll finds it
        healthy, like the workers it started with."""
        if role not in SERVES:
            raise ValueError(f"role {role!r}: one of {', '.join(SERVES)}")
        if self.get(address) is not None:
            return None
        worker = self._connect(address, role)
        self.workers.append(worker)
        if self._task is not None:  # started: poll and watch it as the others
            self._watches[address] = asyncio.get_running_loop().create_task(
                self._watch(worker))
        log.info("%s worker %s joined", role, address)
        self.changed.set()
        return worker

    async def remove(self, address: str) -> WorkerHandle | None:
        """Forgets a member at once (drain it first: coordinator/membership.py); its calls
        still in flight are cancelled, so their requests fail over. None: not a member."""
        worker = self.get(address)
        if worker is None:
            return None
        self.workers.remove(worker)
        worker.healthy = False
        worker.drop_calls()
        if (watch := self._watches.pop(address, None)) is not None:
            watch.cancel()
        await worker.channel.close()
        log.info("%s worker %s left", worker.role, address)
        self.changed.set()
        return worker

    def get(self, address: str) -> WorkerHandle | None:
        return next((w for w in self.workers if w.address == address), None)

    def of_role(self, role: str) -> list[WorkerHandle]:
        return [w for w in self.workers if w.role == role]

    def serving(self, kind: str) -> list[WorkerHandle]:
        """The workers that serve `kind` ("prefill", "decode", or "mixed": whole requests
        locally), whatever their own role (see SERVES)."""
        return [w for w in self.workers if w.role in SERVES[kind]]

    def pick(self, kind: str, exclude: set[str] = frozenset()) -> WorkerHandle | None:
        """Round-robin over the healthy workers that serve `kind` (the "vllm" scheduler's
        routing, and the fallback when the planner names no worker or a failed one)."""
        candidates = [w for w in self.serving(kind) if w.healthy and w.address not in exclude]
        if not candidates:
            return None
        return candidates[next(self._next[kind]) % len(candidates)]

    def ready(self) -> bool:
        """Some healthy worker takes prompts and some decodes (a mixed one does both)."""
        return all(any(w.healthy for w in self.serving(k)) for k in ("prefill", "decode"))

    async def _poll(self, worker: WorkerHandle) -> None:
        reachable, state = True, "healthy"
        try:
            if worker.info is None:
                info = await worker.stub.GetInfo(pb.WorkerInfoRequest(), timeout=POLL_TIMEOUT_S)
                if info.role not in (worker.role, "mixed"):  # a mixed worker may stand in
                    raise RuntimeError(f"{worker.address} is a {info.role} worker")
                worker.info = info
            assert worker.health is not None
            load, health = await asyncio.gather(
                worker.stub.GetLoad(pb.LoadRequest(), timeout=POLL_TIMEOUT_S),
                worker.health.Check(health_pb2.HealthCheckRequest(), timeout=POLL_TIMEOUT_S),
                return_exceptions=True)
            for answer in (load, health):
                if isinstance(answer, BaseException):
                    raise answer
            worker.load = load
            if health.status != SERVING:
                state = "not serving"
            elif load.draining or worker.draining:
                state = "draining"
        except grpc.RpcError:
            reachable, state = False, "unreachable"
        except RuntimeError as exc:
            log.error("%s", exc)
            state = "of the wrong role"
        if not reachable:
            worker.drop_calls()
            if worker.unreachable_since is None:
                worker.unreachable_since = time.monotonic()
        else:
            worker.unreachable_since = None
        healthy = state == "healthy"
        if healthy != worker.healthy:
            log.log(logging.INFO if healthy else logging.WARNING, "%s worker %s is %s",
                    worker.role, worker.address, state)
            worker.healthy = healthy
            if not healthy:
                worker.info = None  # read again when it answers: it may have restarted
            self.changed.set()

    async def refresh(self) -> None:
        await asyncio.gather(*(self._poll(w) for w in list(self.workers)))
        if self.drop_after_s > 0:
            now = time.monotonic()
            lost = [(w, now - w.unreachable_since) for w in self.workers
                    if w.unreachable_since is not None]
            for w, silent_s in lost:
                if silent_s > self.drop_after_s:
                    log.warning("%s worker %s unreachable for %.0f s: dropped", w.role,
                                w.address, silent_s)
                    await self.remove(w.address)

    async def _run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._interval)

    async def _watch(self, worker: WorkerHandle) -> None:
        """Keeps a health Watch open on `worker`, for two reasons. The worker knows a
        coordinator depends on it: when this process dies its streams end, and the worker
        frees the KV it holds for hand-offs nobody will read (prefill_worker/held.py). And
        a worker that turns NOT_SERVING (its engine died) is out of routing at once, not
        at the next poll."""
        assert worker.health is not None
        while True:
            try:
                async for answer in worker.health.Watch(health_pb2.HealthCheckRequest()):
                    if answer.status != SERVING and worker.healthy:
                        log.warning("%s worker %s is not serving", worker.role,
                                    worker.address)
                        worker.healthy = False
                        self.changed.set()
            except grpc.RpcError:
                pass  # unreachable: the polls say so; watch again when it answers
            await asyncio.sleep(WATCH_RETRY_S)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run())
        self._watches = {w.address: loop.create_task(self._watch(w)) for w in self.workers}

    async def close(self) -> None:
        for task in (self._task, *self._watches.values()):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(w.channel.close() for w in self.workers))
