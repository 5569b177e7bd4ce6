"""The scheduler's end of the stats file: a load snapshot at most every 50 ms (at once when
forced: the engine fell idle, a request finished)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from slos_serve.engine.base import EngineLoad
from slos_serve.engine.side_channel import write_stats

PUBLISH_INTERVAL_S = 0.05


class StatsPublisher:
    def __init__(self, path: str | None, interval_s: float = PUBLISH_INTERVAL_S) -> None:
        self.path = path or None
        self._interval_s = interval_s
        self._last = 0.0

    def due(self, force: bool = False) -> bool:
        """Whether to publish now (the caller then builds the snapshot and `publish`es it)."""
        if not self.path:
            return False
        return force or time.monotonic() - self._last >= self._interval_s

    def publish(self, load: EngineLoad, diagnostics: Mapping[str, Any]) -> None:
        assert self.path is not None
        self._last = time.monotonic()
        write_stats(self.path, load, diagnostics)
