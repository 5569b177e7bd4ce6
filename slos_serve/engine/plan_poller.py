"""The scheduler's end of the plan file: re-read when it changed, at most every 20 ms."""

from __future__ import annotations

import logging
import os
import time

from slos_serve.core.worker_plan import WorkerPlan
from slos_serve.engine.side_channel import read_plan

log = logging.getLogger(__name__)

PLAN_POLL_S = 0.02


class PlanPoller:
    """One stat() per PLAN_POLL_S at most; the file is read only when it changed."""

    def __init__(self, path: str | None, interval_s: float = PLAN_POLL_S) -> None:
        self.path = path or None
        self._interval_s = interval_s
        self._signature: tuple[int, int, int] | None = None
        self._checked = 0.0

    def poll(self) -> tuple[WorkerPlan, dict[str, int]] | None:
        """The plan and stage switches, when the file changed since the last poll and is
        usable (an unusable one is logged; the caller keeps its previous plan)."""
        if not self.path:
            return None
        now = time.monotonic()
        if now - self._checked < self._interval_s:
            return None
        self._checked = now
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        signature = (st.st_mtime_ns, st.st_ino, st.st_size)
        if signature == self._signature:
            return None
        self._signature = signature
        try:
            return read_plan(self.path)
        except (OSError, ValueError) as exc:
            log.warning("plan file %s unusable, keeping the previous plan: %s", self.path, exc)
            return None
