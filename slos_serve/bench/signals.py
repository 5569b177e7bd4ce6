"""Ctrl-C and SIGTERM: stop the run, then let the stopping finish undisturbed.

Both signals raise KeyboardInterrupt, so every `finally` / `__exit__` on the way up stops
the processes it started. While a system is being stopped (`stopping()`), further signals
only print a note: a second Ctrl-C must not leave half-stopped engines behind. (A signal
that lands while Python runs an at-fork or `__del__` hook is swallowed by Python; a second
one then stops the run.)
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_cleaning = 0


def _handler(signum: int, frame: object) -> None:
    if _cleaning:
        print("bench: stopping the processes it started; please wait", file=sys.stderr)
        return
    raise KeyboardInterrupt


def install() -> None:
    """Route SIGINT and SIGTERM through the handler (main thread only)."""
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def restore() -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def stopping() -> Iterator[None]:
    """A block that signals do not interrupt (stopping processes)."""
    global _cleaning
    _cleaning += 1
    try:
        yield
    finally:
        _cleaning -= 1
