"""Who serves a request, and what each worker's scheduler is told: one class per scheduler.

`PlannedRouting` ("slos"): the planner (coordinator/admission.py) decides every arrival
and re-plans as requests progress; each worker gets its share of the latest plan whenever
it changed (and now and then again, for a worker that restarted). `RoundRobinRouting`
("vllm", the baseline): everything admitted, workers in turn (each mixed worker is a server
of its own that serves its requests locally, as separate vLLM servers do; prefill and decode
workers a pair), the engines schedule as vLLM does. A route whose prefill and decode worker
are one worker is served there locally (Route.local: no hand-off). The service tells both
the same events (`first_token`, `progress`, `switch_stage`, `finish`, `moved`: a failover);
the baseline ignores them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from dataclasses import dataclass

import grpc

from coordinator.admission import Admission, WorkerView
from coordinator.pool import WorkerHandle, WorkerPool
from coordinator.validate import RequestSpec
from slos_serve.core.planner import Verdict
from slos_serve.core.worker_plan import WorkerPlan
from slos_serve.wire import plan_to_proto, reported_model, tier_stats_from_proto

log = logging.getLogger(__name__)

SLOW_PLAN_S = 0.05  # a plan taking longer holds every stream up: logged
REPLAN_INTERVAL_S = 0.25  # re-plan (decode cadences, speculation) this often while busy
RESEND_PLANS_S = 5.0  # resend unchanged plans this often (a restarted worker lost them)
SET_PLAN_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Route:
    """The decision on a request and the workers that serve it (None: none is healthy)."""

    decision: Verdict
    prefill: WorkerHandle | None
    decode: WorkerHandle | None

    @property
    def local(self) -> bool:
        """Prefill and decode on one (mixed) worker: one call, no KV hand-off."""
        return self.prefill is not None and self.prefill is self.decode


class RoundRobinRouting:
    scheduler = "vllm"

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self._turn = itertools.count()

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def decide(self, rid: str, spec: RequestSpec, received_unix: float,
               ttft_deadline_unix: float) -> Route:
        """The next server in turn: a healthy mixed worker (locally), or the prefill and
        decode pools (a hand-off, each pool in turn)."""
        admit = Verdict(rid, "admit", None, None, "")
        pool = self.pool
        servers: list[WorkerHandle | None] = [w for w in pool.of_role("mixed") if w.healthy]
        pair = all(any(w.healthy for w in pool.of_role(r)) for r in ("prefill", "decode"))
        if pair or not servers:
            servers.append(None)  # the pair's turn (with no server at all: its failure)
        server = servers[next(self._turn) % len(servers)]
        if server is not None:
            return Route(admit, server, server)
        mixed = {w.address for w in pool.of_role("mixed")}
        return Route(admit, pool.pick("prefill", exclude=mixed),
                     pool.pick("decode", exclude=mixed))

    def first_token(self, rid: str) -> None:
        pass

    def progress(self, rid: str, generated: int) -> None:
        pass

    def switch_stage(self, rid: str, tpot_ms: float) -> None:
        pass

    def finish(self, rid: str) -> None:
        pass

    def moved(self, rid: str, prefill: str, decode: str) -> None:
        pass


class PlannedRouting:
    scheduler = "slos"

    def __init__(self, pool: WorkerPool, admission: Admission) -> None:
        self.pool = pool
        self.admission = admission
        self._sent: dict[str, WorkerPlan] = {}  # by worker address
        self._tasks: set[asyncio.Task] = set()
        self._dirty = False
        self._loop_task: asyncio.Task | None = None

    def start(self) -> None:
        """Starts the periodic re-planning (needs a running event loop)."""
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._replan_loop())

    async def stop(self) -> None:
        for task in (self._loop_task, *self._tasks):
            if task is not None:
                task.cancel()
        self._loop_task = None

    # ------------------------------------------------------------ requests --

    def decide(self, rid: str, spec: RequestSpec, received_unix: float,
               ttft_deadline_unix: float) -> Route:
        """The planner's decision and workers (a named worker that is not healthy: the
        next healthy one of its role)."""
        started = (time.perf_counter(), time.thread_time())
        self.admission.set_workers(self._views())
        decision = self.admission.admit(
            rid, received_unix, ttft_deadline_unix, spec.tier.tpot_ms / 1000.0,
            len(spec.prompt_token_ids), spec.sampling.max_tokens, spec.on_reject,
        )
        _note_slow("admission", started, len(self.admission.requests))
        self._push_plans()
        if decision.action == "reject":
            return Route(decision, None, None)
        prefill, decode = self._workers(decision)
        self.admission.route_to(rid, prefill and prefill.address, decode and decode.address)
        return Route(decision, prefill, decode)

    def _workers(self, decision: Verdict) -> tuple[WorkerHandle | None, WorkerHandle | None]:
        """The verdict's workers; one that is not healthy (or not named): the next healthy
        one that serves its side, and for a local verdict the next mixed worker."""
        prefill = self._healthy(decision.prefill_worker)
        decode = self._healthy(decision.decode_worker)
        local = decision.prefill_worker is not None and (
            decision.prefill_worker == decision.decode_worker)
        if local and prefill is None and (spare := self.pool.pick("mixed")) is not None:
            return spare, spare
        return prefill or self.pool.pick("prefill"), decode or self.pool.pick("decode")

    def first_token(self, rid: str) -> None:
        self.admission.first_token(rid, time.time())
        self._dirty = True

    def progress(self, rid: str, generated: int) -> None:
        self.admission.progress(rid, generated)

    def switch_stage(self, rid: str, tpot_ms: float) -> None:
        self.admission.switch_stage(rid, tpot_ms / 1000.0, time.time())
        self._dirty = True

    def finish(self, rid: str) -> None:
        self.admission.finish(rid)
        self._dirty = True

    def moved(self, rid: str, prefill: str, decode: str) -> None:
        """A failover or resume: the request is on these workers now ("" = unchanged)."""
        self.admission.route_to(rid, prefill or None, decode or None)
        self._dirty = True

    # ------------------------------------------------------------ planning --

    def _views(self) -> list[WorkerView]:
        return [
            WorkerView(
                id=w.address,
                role=w.role,
                kv_blocks_total=w.load.kv_blocks_total,
                block_size=w.info.block_size or 16,
                max_spec_tokens=w.info.max_spec_tokens,
                spec=[tier_stats_from_proto(s) for s in w.load.spec],
                model=reported_model(w.load),
                handoff_p99_s=w.load.handoff_p99_ms / 1000.0,
            )
            for w in self.pool.workers
            if w.healthy and w.info is not None and not w.load.draining
        ]

    def _healthy(self, address: str | None) -> WorkerHandle | None:
        w = self.pool.get(address) if address else None
        return w if w is not None and w.healthy else None

    def _push_plans(self) -> None:
        """Sends each worker its share of the latest plan, when it changed (a worker that
        was down gets its share as soon as it is back: a restarted one has no plan)."""
        for wid in [wid for wid in self._sent if self._healthy(wid) is None]:
            del self._sent[wid]
        for wid, plan in self.admission.worker_plans().items():
            w = self._healthy(wid)
            if w is None or self._sent.get(wid) == plan:
                continue
            self._sent[wid] = plan
            task = asyncio.get_running_loop().create_task(self._send_plan(w, plan))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send_plan(self, worker: WorkerHandle, plan: WorkerPlan) -> None:
        message = plan_to_proto(dataclasses.replace(plan, plan_time_unix=time.time()))
        try:
            await worker.stub.SetPlan(message, timeout=SET_PLAN_TIMEOUT_S)
        except grpc.RpcError as err:
            self._sent.pop(worker.address, None)  # try again with the next plan
            log.debug("plan for %s not delivered: %s", worker.address, err.code())

    async def _replan_loop(self) -> None:
        """Re-plans while requests progress (decode cadences, speculative lengths) and
        resends plans now and then, so a restarted worker gets its share again."""
        resent = time.monotonic()
        while True:
            await asyncio.sleep(REPLAN_INTERVAL_S)
            try:
                if time.monotonic() - resent > RESEND_PLANS_S:
                    self._sent.clear()
                    resent = time.monotonic()
                    self._dirty = True
                if self._dirty:
                    self._dirty = False
                    started = (time.perf_counter(), time.thread_time())
                    self.admission.set_workers(self._views())
                    self.admission.replan(time.time())
                    _note_slow("re-plan", started, len(self.admission.requests))
                    self._push_plans()
            except Exception:  # a planning bug must not stop planning for good
                log.exception("re-planning failed")


def _note_slow(what: str, started: tuple[float, float], requests: int) -> None:
    """Logs a plan that held the event loop up; its CPU time tells planning (CPU ~ wall)
    from a coordinator starved of its core (CPU << wall)."""
    took = time.perf_counter() - started[0]
    if took > SLOW_PLAN_S:
        log.warning("%s took %.0f ms, %.0f ms of it on CPU (%d requests in flight): every "
                    "stream waited", what, 1000 * took, 1000 * (time.thread_time() - started[1]),
                    requests)
