"""The step recorder (off unless PROFILE_PATH_ENV is set): one JSON line per executed step.

Each line holds the batch's composition (read from vLLM's SchedulerOutput) and its seconds:
wall, and the model workers' CPU and core-wait seconds (from /proc), for
`slos-serve profile` to fit the performance model on. It reads vLLM's objects by attribute
only, so it imports no vLLM.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

MAX_PENDING_STEPS = 64  # steps scheduled but never completed beyond this are forgotten


def computed_tokens(output: Any) -> dict[str, int]:
    """Each scheduled request's num_computed_tokens before the step (a SchedulerOutput)."""
    done = {r.req_id: r.num_computed_tokens for r in output.scheduled_new_reqs}
    cached = output.scheduled_cached_reqs
    done.update(zip(cached.req_ids, cached.num_computed_tokens, strict=False))
    return done


def batch_composition(output: Any, requests: Any) -> dict[str, int]:
    """A step's batch, read from a SchedulerOutput (token counts as before the step):
    prefill (prompt or recomputed tokens), decode (one per plain decode request), verify
    (draft + 1 per request with scheduled_spec_decode_tokens), KV context tokens (sum of
    the scheduled requests' num_computed_tokens) and spec_steps (longest draft)."""
    done = computed_tokens(output)
    keys = ("prefill_tokens", "decode_tokens", "verify_tokens", "context_tokens", "spec_steps")
    shape = dict.fromkeys(keys, 0)
    for req_id, n in output.num_scheduled_tokens.items():
        computed = done.get(req_id, 0)
        spec = len(output.scheduled_spec_decode_tokens.get(req_id, ()))
        req = requests.get(req_id)
        if req is not None and computed < req.num_prompt_tokens:
            shape["prefill_tokens"] += n
        else:
            shape["verify_tokens" if spec else "decode_tokens"] += n
        shape["context_tokens"] += computed
        shape["spec_steps"] = max(shape["spec_steps"], spec)
    shape["num_requests"] = len(output.num_scheduled_tokens)
    return shape


def child_pids() -> list[int]:
    """This process's children: vLLM's model workers (its CPU build always runs them in
    processes of their own). Empty where /proc does not tell."""
    pids: list[int] = []
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
    except OSError:
        return []
    return pids


def sched_ns(pids: list[int]) -> list[tuple[int, int]]:
    """(on-CPU ns, runnable-but-waiting ns) of each pid's main thread (/proc schedstat)."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                fields = f.read().split()
            out.append((int(fields[0]), int(fields[1])))
        except (OSError, ValueError, IndexError):
            out.append((0, 0))
    return out


@dataclass(slots=True)
class StartedStep:
    output: Any  # the SchedulerOutput (kept: its id() is the key)
    shape: dict[str, int]
    started: float  # perf_counter()
    workers_ns: list[tuple[int, int]]


class StepRecorder:
    """Times each executed step from the end of schedule() to update_from_output():
    wall seconds, and the model workers' CPU seconds and seconds spent waiting for a
    core (other processes holding it), which stretch wall time on a shared machine."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._workers: list[int] | None = None
        self._pending: dict[int, StartedStep] = {}  # by id(output)

    def started(self, output: Any, requests: Any) -> None:
        if len(self._pending) > MAX_PENDING_STEPS:
            self._pending.clear()
        if self._workers is None:
            self._workers = child_pids()
        shape = batch_composition(output, requests)
        ns = sched_ns(self._workers)
        self._pending[id(output)] = StartedStep(output, shape, time.perf_counter(), ns)

    def finished(self, output: Any) -> None:
        step = self._pending.pop(id(output), None)
        if step is None or step.output is not output:
            return
        sample: dict[str, Any] = {**step.shape, "seconds": time.perf_counter() - step.started}
        if self._workers:  # the slowest worker bounds the step
            deltas = [(max(0, r1 - r0), max(0, w1 - w0)) for (r0, w0), (r1, w1)
                      in zip(step.workers_ns, sched_ns(self._workers), strict=True)]
            sample["cpu_seconds"] = max(d[0] for d in deltas) / 1e9
            sample["wait_seconds"] = max(d[1] for d in deltas) / 1e9
        with open(self.path, "a") as f:
            f.write(json.dumps(sample) + "\n")
