"""The open-loop load generator: sends requests' calls at their arrival times, one asyncio loop.

Open loop: a request is sent at its scheduled arrival whatever the system's state (no
concurrency cap), as the paper's and vLLM's `bench serve` load is. A dispatcher sleeps
until each arrival and starts the request's task; the task records the actual send time
(lateness = sent - scheduled, reported by `bench loadgen-check`), every token's arrival
time, and runs follow-up calls (tool stages) `gap_s` after the previous call's last token.

Bounds: a request gives up after `request_timeout_s`; once everything is sent, in-flight
requests get `drain_s` more, then are cancelled (recorded as failed). With `miss_budget`
(capacity probes) the run stops as soon as more requests missed than the budget allows:
the rest are cancelled or never sent, and all of those count as missed.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tqdm import tqdm

from slos_serve.bench.records import OK_FINISH, CallResult, make_record
from slos_serve.bench.workload import BenchRequest, follow_up_prompt
from slos_serve.core.stages import StageSpec


class Driver(Protocol):
    """Sends one call to a system and records what comes back."""

    async def call(
        self, prompt: list[int], stages: Sequence[StageSpec], result: CallResult,
        clock: Callable[[], float],
    ) -> list[int]:
        """Stream one call: add every token's arrival (`records.add_tokens(result, n,
        clock())`), set result.decision / finish_reason / server; return the output
        token ids. Raise on failure (the load generator records the error)."""
        ...


@dataclass
class LoadResult:
    records: list[dict[str, Any]]
    wall_s: float  # from the start to the last request's end
    stopped_early: bool
    sent: int


class LoadRun:
    """The state of one run: its clock, every call's result, the records of finished
    requests, and the miss count that stops a capacity probe early."""

    def __init__(self, driver: Driver, total: int, *, system: str, scenario: str, rate: float,
                 max_context: int, request_timeout_s: float, miss_budget: int | None,
                 extra: dict[str, Any] | None, progress: bool) -> None:
        self.driver = driver
        self.system, self.scenario, self.rate = system, scenario, rate
        self.max_context = max_context
        self.request_timeout_s = request_timeout_s
        self.miss_budget = miss_budget
        self.extra = extra
        self.t0 = time.perf_counter()
        self.calls_of: dict[int, list[CallResult]] = {}
        self.records: dict[int, dict[str, Any]] = {}
        self.stop = asyncio.Event()
        self.misses = 0
        self.bar = tqdm(total=total, desc=f"{system} {scenario} @{rate:g}/s", unit="req",
                        file=sys.stderr, disable=not progress, leave=False, mininterval=1.0)

    def clock(self) -> float:
        return time.perf_counter() - self.t0

    async def send(self, request: BenchRequest) -> None:
        """Sends the request's calls in turn (follow-ups `gap_s` after the previous call's
        last token); stops at the first call that fails or does not finish normally."""
        calls: list[CallResult] = self.calls_of.setdefault(request.id, [])
        prompt: list[int] = []
        out: list[int] = []
        for k, c in enumerate(request.calls):
            if k:
                await asyncio.sleep(c.gap_s)
                prompt = follow_up_prompt(prompt, out, c.new_prompt, c.max_tokens,
                                          self.max_context)
            else:
                prompt = list(c.new_prompt)
            res = CallResult(sent=self.clock())
            calls.append(res)
            try:
                out = await asyncio.wait_for(
                    self.driver.call(prompt, c.stages, res, self.clock), self.request_timeout_s)
            except asyncio.CancelledError:
                res.error = res.error or "cancelled: the run ended before the request did"
                raise
            except Exception as exc:  # noqa: BLE001 - recorded, counted as a miss
                res.error = f"{type(exc).__name__}: {exc}"[:500]
                return
            if res.finish_reason not in OK_FINISH:
                return

    def record(self, request: BenchRequest, *, skipped: bool = False) -> dict[str, Any]:
        return make_record(self.system, self.scenario, self.rate, request,
                           [] if skipped else self.calls_of.get(request.id, []),
                           skipped=skipped, extra=self.extra)

    def finished(self, request: BenchRequest) -> None:
        """A request's task ended: its record, and the early stop once too many missed."""
        rec = self.record(request)
        self.records[request.id] = rec
        if not rec["attained"]:
            self.misses += 1
            if self.miss_budget is not None and self.misses > self.miss_budget:
                self.stop.set()
        self.bar.update()
        self.bar.set_postfix(missed=self.misses, refresh=False)

    async def dispatch(self, requests: Sequence[BenchRequest], tasks: list[asyncio.Task]) -> None:
        """Starts each request's task at its arrival time (into `tasks`, which the caller
        cancels whatever happens), until the run stops early."""
        for request in requests:
            delay = request.arrival - self.clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.stop.is_set():
                break
            task = asyncio.create_task(self.send(request))
            task.add_done_callback(lambda _t, r=request: self.finished(r))
            tasks.append(task)

    async def drain(self, tasks: list[asyncio.Task], drain_s: float) -> None:
        """Waits up to `drain_s` for the requests still in flight, or the early stop."""
        pending = [t for t in tasks if not t.done()]
        if not pending or self.stop.is_set():
            return
        waiter = asyncio.create_task(self.stop.wait())
        deadline = self.clock() + drain_s
        while pending and not self.stop.is_set() and self.clock() < deadline:
            await asyncio.wait([*pending, waiter], timeout=deadline - self.clock(),
                               return_when=asyncio.FIRST_COMPLETED)
            pending = [t for t in pending if not t.done()]
        waiter.cancel()

    def results(self, requests: Sequence[BenchRequest], sent: int) -> list[dict[str, Any]]:
        """One record per request, in order; those never sent are recorded as skipped."""
        for request in requests[:sent]:  # a callback not run yet (cannot happen; be safe)
            if request.id not in self.records:
                self.records[request.id] = self.record(request)
        for request in requests[sent:]:
            self.records[request.id] = self.record(request, skipped=True)
        return [self.records[r.id] for r in requests]


async def run_load(
    requests: Sequence[BenchRequest],
    driver: Driver,
    *,
    system: str,
    scenario: str,
    rate: float,
    max_context: int,
    request_timeout_s: float = 300.0,
    drain_s: float = 120.0,
    miss_budget: int | None = None,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> LoadResult:
    """Runs `requests` against a driver; one record per request (see `records`)."""
    run = LoadRun(driver, len(requests), system=system, scenario=scenario, rate=rate,
                  max_context=max_context, request_timeout_s=request_timeout_s,
                  miss_budget=miss_budget, extra=extra, progress=progress)
    tasks: list[asyncio.Task] = []
    try:
        await run.dispatch(requests, tasks)
        await run.drain(tasks, drain_s)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # let the done callbacks run
        run.bar.close()
    wall = run.clock()
    return LoadResult(run.results(requests, len(tasks)), wall, run.stop.is_set(), len(tasks))
