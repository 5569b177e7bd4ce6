"""The open-loop load generator: sends a plan's calls at their arrival times, one asyncio loop.

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

from slos_serve.bench.plan import PlannedRequest, StageSlo, follow_up_prompt
from slos_serve.bench.records import OK_FINISH, CallResult, make_record


class Driver(Protocol):
    """Sends one call to a system and records what comes back."""

    async def call(
        self, prompt: list[int], stages: Sequence[StageSlo], result: CallResult,
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


async def run_load(
    plan: Sequence[PlannedRequest],
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
    """Run a plan against a driver; one record per planned request (see `records`)."""
    from tqdm import tqdm

    t0 = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - t0

    calls_of: dict[int, list[CallResult]] = {}
    records: dict[int, dict[str, Any]] = {}
    stop = asyncio.Event()
    misses = 0
    bar = tqdm(total=len(plan), desc=f"{system} {scenario} @{rate:g}/s", unit="req",
               file=sys.stderr, disable=not progress, leave=False, mininterval=1.0)

    async def one(p: PlannedRequest) -> None:
        calls: list[CallResult] = calls_of.setdefault(p.id, [])
        prompt: list[int] = []
        out: list[int] = []
        for k, c in enumerate(p.calls):
            if k:
                await asyncio.sleep(c.gap_s)
                prompt = follow_up_prompt(prompt, out, c.new_prompt, c.max_tokens, max_context)
            else:
                prompt = list(c.new_prompt)
            res = CallResult(sent=clock())
            calls.append(res)
            try:
                out = await asyncio.wait_for(driver.call(prompt, c.stages, res, clock),
                                             request_timeout_s)
            except asyncio.CancelledError:
                res.error = res.error or "cancelled: the run ended before the request did"
                raise
            except Exception as exc:  # noqa: BLE001 - recorded, counted as a miss
                res.error = f"{type(exc).__name__}: {exc}"[:500]
                return
            if res.finish_reason not in OK_FINISH:
                return

    def finished(p: PlannedRequest, task: asyncio.Task) -> None:
        nonlocal misses
        rec = make_record(system, scenario, rate, p, calls_of.get(p.id, []), extra=extra)
        records[p.id] = rec
        if not rec["attained"]:
            misses += 1
            if miss_budget is not None and misses > miss_budget:
                stop.set()
        bar.update()
        bar.set_postfix(missed=misses, refresh=False)

    tasks: list[asyncio.Task] = []
    try:
        for p in plan:
            delay = p.arrival - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop.is_set():
                break
            task = asyncio.create_task(one(p))
            task.add_done_callback(lambda t, p=p: finished(p, t))
            tasks.append(task)
        pending = [t for t in tasks if not t.done()]
        if pending and not stop.is_set():
            waiter = asyncio.create_task(stop.wait())
            deadline = clock() + drain_s
            while pending and not stop.is_set() and clock() < deadline:
                await asyncio.wait([*pending, waiter], timeout=deadline - clock(),
                                   return_when=asyncio.FIRST_COMPLETED)
                pending = [t for t in pending if not t.done()]
            waiter.cancel()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # let the done callbacks run
        bar.close()
    wall = clock()
    sent = len(tasks)
    for p in plan[:sent]:  # a callback not run yet (cannot happen after gather; be safe)
        if p.id not in records:
            records[p.id] = make_record(system, scenario, rate, p, calls_of.get(p.id, []),
                                        extra=extra)
    for p in plan[sent:]:
        records[p.id] = make_record(system, scenario, rate, p, [], skipped=True, extra=extra)
    return LoadResult([records[p.id] for p in plan], wall, stop.is_set(), sent)
