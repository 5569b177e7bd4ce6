"""The one module that subclasses vLLM's scheduler (vLLM 0.32; not a public API).

vLLM runs the scheduler inside its engine-core process, out of the worker's
reach. This subclass publishes a small load snapshot (queue, KV blocks, step
times) to a file the worker reads, because vLLM emits scheduler statistics
only with outputs: once a request is aborted and the engine falls idle, the
freed KV blocks would otherwise never be reported.

Optional (off unless SLOS_PROFILE_PATH is set): a sample recorder that appends one
JSON line per executed step, the batch's composition and its seconds (wall; the
model worker's CPU and core-wait seconds), for `slos-serve profile` to fit the
performance model on.

Keep everything that touches vLLM's scheduler internals here, small.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from vllm.v1.core.sched.scheduler import Scheduler

STATS_PATH_ENV = "SLOS_ENGINE_STATS_PATH"
PROFILE_PATH_ENV = "SLOS_PROFILE_PATH"
_PUBLISH_INTERVAL_S = 0.05


def batch_composition(output: Any, requests: Any) -> dict[str, int]:
    """A step's batch, read from a SchedulerOutput (token counts as before the step):
    prefill (prompt or recomputed tokens), decode (one per plain decode request), verify
    (draft + 1 per request with scheduled_spec_decode_tokens), KV context tokens (sum of
    the scheduled requests' num_computed_tokens) and spec_steps (longest draft)."""
    done = {r.req_id: r.num_computed_tokens for r in output.scheduled_new_reqs}
    cached = output.scheduled_cached_reqs
    done.update(zip(cached.req_ids, cached.num_computed_tokens, strict=False))
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


def _child_pids() -> list[int]:
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


def _sched_ns(pids: list[int]) -> list[tuple[int, int]]:
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


class _StepRecorder:
    """Times each executed step from the end of schedule() to update_from_output():
    wall seconds, and the model workers' CPU seconds and seconds spent waiting for a
    core (other processes holding it), which stretch wall time on a shared machine."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._workers: list[int] | None = None
        self._pending: dict[int, tuple[Any, dict[str, int], float, list]] = {}  # id(output)

    def started(self, output: Any, requests: Any) -> None:
        if len(self._pending) > 64:  # steps that never completed: forget them
            self._pending.clear()
        if self._workers is None:
            self._workers = _child_pids()
        shape = batch_composition(output, requests)
        ns = _sched_ns(self._workers)
        self._pending[id(output)] = (output, shape, time.perf_counter(), ns)

    def finished(self, output: Any) -> None:
        entry = self._pending.pop(id(output), None)
        if entry is None or entry[0] is not output:
            return
        sample: dict[str, Any] = {**entry[1], "seconds": time.perf_counter() - entry[2]}
        if self._workers:  # the slowest worker bounds the step
            deltas = [(max(0, r1 - r0), max(0, w1 - w0)) for (r0, w0), (r1, w1)
                      in zip(entry[3], _sched_ns(self._workers), strict=True)]
            sample["cpu_seconds"] = max(d[0] for d in deltas) / 1e9
            sample["wait_seconds"] = max(d[1] for d in deltas) / 1e9
        with open(self.path, "a") as f:
            f.write(json.dumps(sample) + "\n")


class SloScheduler(Scheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stats_path = os.environ.get(STATS_PATH_ENV)
        self._steps = 0
        self._step_time_total = 0.0
        self._step_started: float | None = None
        self._last_publish = 0.0
        path = os.environ.get(PROFILE_PATH_ENV)
        self._recorder = _StepRecorder(path) if path else None
        self._publish(force=True)

    def schedule(self, *args: Any, **kwargs: Any):
        output = super().schedule(*args, **kwargs)
        if output.total_num_scheduled_tokens > 0:
            self._step_started = time.perf_counter()
            if self._recorder is not None:
                self._recorder.started(output, self.requests)
        return output

    def update_from_output(self, *args: Any, **kwargs: Any):
        if self._recorder is not None:
            self._recorder.finished(args[0] if args else kwargs.get("scheduler_output"))
        if self._step_started is not None:
            self._steps += 1
            self._step_time_total += time.perf_counter() - self._step_started
            self._step_started = None
        outputs = super().update_from_output(*args, **kwargs)
        self._publish(force=not self.has_requests())
        return outputs

    def finish_requests(self, *args: Any, **kwargs: Any):
        result = super().finish_requests(*args, **kwargs)
        self._publish(force=True)
        return result

    def _publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._stats_path or (not force and now - self._last_publish < _PUBLISH_INTERVAL_S):
            return
        self._last_publish = now
        pool = self.kv_cache_manager.block_pool
        total = pool.num_gpu_blocks - 1  # block 0 is vLLM's reserved null block
        running, waiting = self.get_request_counts()
        stats = {
            "running": running,
            "waiting": waiting,
            "kv_blocks_total": total,
            "kv_blocks_used": max(0, total - pool.get_num_free_blocks()),
            "steps": self._steps,
            "mean_step_ms": 1000 * self._step_time_total / self._steps if self._steps else 0.0,
            "time": time.time(),
        }
        tmp = f"{self._stats_path}.tmp"
        with open(tmp, "w") as f:
            json.dump(stats, f)
        os.replace(tmp, self._stats_path)
