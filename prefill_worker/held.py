"""Hand-offs whose KV this prefill worker still holds for a decode worker to read.

A hand-off's KV stays in the prefill engine until the decode side reads it or the
connector's lease (30 s) ends. When nobody will read it, it is released at once
(slos_serve/engine/kv_release.py), by request id:
- the coordinator aborts the request (its client went away, or it failed over);
- every coordinator that watched this worker's health is gone (it died: its Watch
  streams end when its connections close), so no decode of these requests will start;
- the request ended at its first token (EOS, a stop string): released in `prefill`.
Releasing what was already read is a no-op, so the record errs on the side of keeping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

LEASE_S = 30.0  # NixlConnector's default lease: older records are freed by then anyway


class HeldKv:
    def __init__(self, release: Callable[[list[str]], Awaitable[int]]) -> None:
        """`release(engine request ids)`: the engine's Engine.release_handoffs."""
        self._release = release
        self._held: dict[str, tuple[str, float]] = {}  # request id -> (engine id, since)

    def __len__(self) -> int:
        return len(self._held)

    def record(self, request_id: str, engine_request_id: str) -> None:
        self._prune()
        if engine_request_id:
            self._held[request_id] = (engine_request_id, time.monotonic())

    async def release(self, request_id: str) -> int:
        entry = self._held.pop(request_id, None)
        return await self._release([entry[0]]) if entry else 0

    async def release_all(self, why: str) -> int:
        self._prune()
        ids = [engine_id for engine_id, _ in self._held.values()]
        self._held.clear()
        if not ids:
            return 0
        freed = await self._release(ids)
        log.info("released the KV of %d of %d held hand-off(s): %s", freed, len(ids), why)
        return freed

    def _prune(self) -> None:
        cutoff = time.monotonic() - LEASE_S
        for rid in [r for r, (_, since) in self._held.items() if since < cutoff]:
            del self._held[rid]
