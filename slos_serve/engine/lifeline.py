"""vLLM general plugin: the processes vLLM starts for a worker die with it.

A worker killed with SIGKILL cannot stop its engine: vLLM's EngineCore, its VLLM::Worker
and multiprocessing's resource tracker lived on (~700 MB, minutes later), holding the
worker's NIXL side-channel port, so a worker restarted on the same ports never became ready
("ZMQError: Address already in use"). vLLM calls `register()` in every process it starts
(entry point `slos_serve_lifeline`, pyproject.toml); in each one below the worker process
(named by LIFELINE_ENV, which the worker sets before it starts its engine) it asks Linux
to SIGKILL the process when its parent dies (PR_SET_PDEATHSIG). EngineCore dies with the
worker, VLLM::Worker with EngineCore; the resource tracker exits when its pipe closes.
Elsewhere (no LIFELINE_ENV, another OS, the worker process itself) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

LIFELINE_ENV = "SLOS_LIFELINE_PID"  # the worker's pid: its descendants die with their parents
PR_SET_PDEATHSIG = 1


def register() -> None:
    anchor = os.environ.get(LIFELINE_ENV, "")
    if not anchor.isdigit() or not sys.platform.startswith("linux"):
        return
    if os.getpid() == int(anchor):
        return  # the worker itself: its launcher decides its fate
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)
