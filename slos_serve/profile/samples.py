"""The scheduler's sample recorder file, read back: one step per JSON line -> (BatchShape, s).

Which step time a sample carries is its clock: "wall", "ready" or "cpu" (`CLOCK_HELP`).
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from slos_serve.core.perf_model import BatchShape

SHAPE_FIELDS = tuple(f.name for f in fields(BatchShape))
CLOCKS = ("wall", "ready", "cpu")
CLOCK_HELP = {
    "wall": "wall seconds from the end of schedule() to update_from_output()",
    "ready": "wall seconds less the time the model worker waited for its core "
             "(runnable while other processes held it): the step on a core of its own",
    "cpu": "the model worker's CPU seconds",
}

Sample = tuple[BatchShape, float]  # a step's batch and its time (s) by one clock


def step_seconds(record: dict, clock: str = "wall") -> float:
    """A step's time by `clock`: "wall" seconds; "ready": wall seconds less the time the
    model worker waited for its core while other processes held it; "cpu": the worker's
    CPU seconds. Records without the worker's figures give wall seconds for all three."""
    wall = float(record["seconds"])
    if clock == "ready" and "wait_seconds" in record:
        return max(wall - float(record["wait_seconds"]), 1e-6)
    if clock == "cpu" and "cpu_seconds" in record:
        return max(float(record["cpu_seconds"]), 1e-6)
    return wall


def to_sample(record: dict, clock: str = "wall") -> Sample:
    """A recorder record (dict) -> (BatchShape, seconds by `clock`)."""
    shape = BatchShape(**{k: int(record.get(k, 0)) for k in SHAPE_FIELDS})
    return shape, step_seconds(record, clock)


def parse_sample(line: str, clock: str = "wall") -> Sample:
    """One JSON line of the scheduler's sample recorder -> (BatchShape, seconds)."""
    return to_sample(json.loads(line), clock)


def read_records(path: str | Path, skip: int = 0) -> list[dict]:
    """The recorder file's JSON lines, after its first `skip` lines (e.g. the warm-up)."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines[skip:] if line.strip()]


def read_samples(path: str | Path, skip: int = 0, clock: str = "wall") -> list[Sample]:
    """(BatchShape, seconds) samples of a recorder file, after its first `skip` lines."""
    return [to_sample(r, clock) for r in read_records(path, skip)]


def count_lines(path: Path) -> int:
    """Lines in the recorder file so far (0 before it exists)."""
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0
