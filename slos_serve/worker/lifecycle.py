"""A worker's life beside its request handling: who is watching it, and its engine's death.

- `WatchedHealth`: the standard health service, counting its Watch streams. The
  coordinator watches every worker's health; when the last watcher's stream ends (the
  coordinator died: the kernel closed its connections), the hand-offs this worker holds
  KV for have no reader any more and are released (prefill_worker/held.py).
- `watch_engine`: an engine whose process died (vLLM's EngineCore killed or crashed)
  turns the worker NOT_SERVING at once, lets the calls in flight end with UNAVAILABLE,
  and stops the worker with ENGINE_DEAD_EXIT, for its supervisor (`slos-serve up`) to
  restart it. A worker left SERVING on a dead engine failed half of the cluster's
  requests with no end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from grpc_health.v1 import _async as health_async
from grpc_health.v1.health_pb2 import HealthCheckResponse

from slos_serve.engine import Engine

log = logging.getLogger(__name__)

ENGINE_DEAD_EXIT = 3  # the worker's exit code when its engine died
ENGINE_POLL_S = 0.2
STATUS_GRACE_S = 1.0  # time for the calls in flight to get their UNAVAILABLE


class WatchedHealth(health_async.HealthServicer):
    def __init__(self) -> None:
        super().__init__()
        self.watchers = 0
        self.on_unwatched: Callable[[], Awaitable[object]] | None = None
        self._tasks: set[asyncio.Task] = set()

    async def Watch(self, request, context) -> None:  # noqa: N802 - gRPC's name
        self.watchers += 1
        try:
            await super().Watch(request, context)
        finally:
            self.watchers -= 1
            if self.watchers == 0 and self.on_unwatched is not None:
                task = asyncio.get_running_loop().create_task(self.on_unwatched())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)


async def watch_engine(engine: Engine, health: health_async.HealthServicer,
                       services: Iterable[str], stop: asyncio.Event) -> str:
    """Returns why the engine died ("" if the worker stopped first), after turning every
    service NOT_SERVING and setting `stop`."""
    while not stop.is_set():
        reason = engine.dead()
        if reason:
            log.error("%s: NOT_SERVING; stopping (exit %d) to be restarted", reason,
                      ENGINE_DEAD_EXIT)
            for name in services:
                await health.set(name, HealthCheckResponse.NOT_SERVING)
            await asyncio.sleep(STATUS_GRACE_S)
            stop.set()
            return reason
        await asyncio.sleep(ENGINE_POLL_S)
    return ""
