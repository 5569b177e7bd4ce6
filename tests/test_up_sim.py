"""`slos-serve up` as a user runs it: serves, and stops every process it started on a signal.

The cluster runs the SIMULATED engine, so this takes seconds, not minutes.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from slos_serve.client import Client, HealthStatus
from slos_serve.up import free_port

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 30


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _kill_leftovers(procs: list[psutil.Process]) -> None:
    """Test hygiene only: whatever survived a failed test is killed, by pid."""
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_up_serves_and_stops_everything_on_signal(model_dir: str, tmp_path: Path, sig) -> None:
    port, http_port = free_port(), free_port()
    stderr_path = tmp_path / "up.stderr"
    with open(stderr_path, "w") as stderr:
        up = subprocess.Popen(
            [sys.executable, "-m", "slos_serve.cli", "up", "--engine", "sim",
             "--model", model_dir, "--prefill", "1", "--decode", "1", "--port", str(port),
             "--http-port", str(http_port), "--log-dir", str(tmp_path / "logs"),
             "--timeout", str(START_TIMEOUT_S)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert up.stdout is not None
        for line in up.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT_S + 10
        serving = ""
        while not serving:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no 'serving at' line within {START_TIMEOUT_S + 10} s")
            if line is None:
                pytest.fail(f"`up` exited ({up.wait()}) before serving:\n"
                            f"{stderr_path.read_text()[-3000:]}")
            if "serving at" in line:
                serving = line
        assert f"127.0.0.1:{port}" in serving

        tree = psutil.Process(up.pid).children(recursive=True)
        names = [" ".join(p.cmdline()) for p in tree]
        assert len(tree) >= 3, names  # coordinator + 1 prefill + 1 decode
        for role in ("coordinator", "prefill-worker", "decode-worker"):
            assert any(role in n for n in names), (role, names)

        with Client(f"127.0.0.1:{port}", timeout=30) as client:
            assert client.health() is HealthStatus.SERVING
            out = client.generate([5, 6, 7, 8], max_tokens=5, temperature=0.0)
            assert out.completion_tokens == 5 and out.finish_reason == "length"
        # the OpenAI-compatible front is on by default, on the same request path
        body = {"prompt": [5, 6, 7, 8], "max_tokens": 5, "temperature": 0}
        answer = httpx.post(f"http://127.0.0.1:{http_port}/v1/completions", json=body,
                            timeout=30).json()
        assert answer["choices"][0]["text"] == out.text

        tree = psutil.Process(up.pid).children(recursive=True)  # again, with everything warm
        up.send_signal(sig)
        try:
            code = up.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`up` still running {STOP_TIMEOUT_S} s after {sig.name}")
        assert code == 0, stderr_path.read_text()[-3000:]

        survivors = [p.pid for p in tree if not _gone(p.pid)]
        assert survivors == [], f"processes left after {sig.name}: {survivors}"
        assert not psutil.pid_exists(up.pid) or _gone(up.pid)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(timeout=10)
        _kill_leftovers(tree)
        if up.stdout is not None:
            up.stdout.close()
