"""The one module that subclasses vLLM's scheduler (vLLM 0.32; not a public API).

vLLM runs the scheduler inside its engine-core process, out of the worker's
reach. This subclass publishes a small load snapshot (queue, KV blocks, step
times) to a file the worker reads, because vLLM emits scheduler statistics
only with outputs: once a request is aborted and the engine falls idle, the
freed KV blocks would otherwise never be reported.

Keep everything that touches vLLM's scheduler internals here, small.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from vllm.v1.core.sched.scheduler import Scheduler

STATS_PATH_ENV = "SLOS_ENGINE_STATS_PATH"
_PUBLISH_INTERVAL_S = 0.05


class SloScheduler(Scheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stats_path = os.environ.get(STATS_PATH_ENV)
        self._steps = 0
        self._step_time_total = 0.0
        self._step_started: float | None = None
        self._last_publish = 0.0
        self._publish(force=True)

    def schedule(self, *args: Any, **kwargs: Any):
        output = super().schedule(*args, **kwargs)
        if output.total_num_scheduled_tokens > 0:
            self._step_started = time.perf_counter()
        return output

    def update_from_output(self, *args: Any, **kwargs: Any):
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
