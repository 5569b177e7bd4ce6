"""`slos-serve up` with real vLLM engines (1 prefill + 1 decode), as a user runs it.

Slow: checks greedy equality with a colocated engine through the launched
cluster, then that SIGTERM leaves no process behind.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest
from conftest import GREEDY

from slos_serve.client import Client
from slos_serve.up import free_port

pytestmark = pytest.mark.slow


def _wait_for_line(proc: subprocess.Popen, needle: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if needle in line:
            return line
        if not line and proc.poll() is not None:
            raise AssertionError(f"`slos-serve up` exited early with {proc.returncode}")
    raise AssertionError(f"no {needle!r} within {timeout_s} s")


def test_up_serves_colocated_equal_outputs_and_stops_cleanly_on_sigterm(
    model_dir, prompts, reference, tmp_path
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "slos_serve.cli", "up", "--model", model_dir,
         "--prefill", "1", "--decode", "1", "--port", str(port), "--http-port",
         str(free_port()), "--log-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    started: list[psutil.Process] = []
    try:
        _wait_for_line(proc, "serving at", 600)
        started = psutil.Process(proc.pid).children(recursive=True)
        # coordinator + 2 workers, and each worker's vLLM engine core
        assert len(started) >= 5, [p.cmdline()[:4] for p in started]
        with Client(f"127.0.0.1:{port}", timeout=120) as client:
            for prompt, expected in zip(prompts, reference["greedy"], strict=True):
                got = client.generate(prompt, **GREEDY)
                assert got.token_ids == expected, f"prompt of {len(prompt)} tokens"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:  # the test failed before SIGTERM: still clean up
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    deadline = time.monotonic() + 10
    alive = [p for p in started if _alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in started if _alive(p)]
    assert not alive, f"left running after SIGTERM: {[p.pid for p in alive]}"


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
