"""Supervision: a process of a running cluster that dies is restarted on its ports and serves
again; `slos-serve up` keeps serving through a worker's death and still stops everything.

Every process is real (coordinator, workers, gRPC on loopback); the engines are SIMULATED
(slos_serve/engine/sim_engine.py), so a restart takes about a second, not a model load.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from proto import slos_serve_pb2 as pb
from proto import slos_serve_pb2_grpc as pb_grpc
from slos_serve.client import Client, HealthStatus
from slos_serve.supervise import BACKOFF_CAP_S, backoff_s, group_members
from slos_serve.up import ClusterSpec, LocalCluster, free_port
from tests.sim_serving import GREEDY, all_healthy, prompt_ids, sim_tokens, wait_for

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent
RESTART_S = 30  # a sim worker restarts within ~2 s; the machine may be loaded


def test_backoff_doubles_from_half_a_second_up_to_its_cap() -> None:
    assert [backoff_s(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 16, 30]
    assert backoff_s(100) == BACKOFF_CAP_S


@pytest.fixture(scope="module")
def cluster(model_dir: str) -> Iterator[LocalCluster]:
    """2 prefill + 2 decode workers, supervised (the default)."""
    c = LocalCluster(ClusterSpec(model=model_dir, engine="sim", prefill=2, decode=2))
    c.start(timeout_s=120, progress=False)
    try:
        with Client(c.target, timeout=10) as client:
            wait_for(lambda: all_healthy(client.cluster_info(), 4), 20, "every worker healthy")
        yield c
    finally:
        c.stop()


def _proc(cluster: LocalCluster, name: str):
    return next(p for p in cluster.procs if p.name == name)


def _engine_steps(cluster: LocalCluster, name: str) -> int:
    """The worker's own count of engine steps (a restarted one counts from 0)."""
    with cluster.channel(name) as channel:  # mutual TLS, as the coordinator dials it
        return pb_grpc.WorkerStub(channel).GetLoad(pb.LoadRequest(), timeout=5).steps


def _kill_and_await_restart(cluster: LocalCluster, name: str) -> int:
    """kill -9 of the process `name` (its leader only, as the OOM killer does) while a
    stand-in for an engine process (a `sleep` in its process group, as vLLM's EngineCore
    is) lives: restarted with a new pid, and the old group is gone. Returns the old pid."""
    proc = _proc(cluster, name)
    before = cluster.restarts()[name]
    old = proc.pid
    orphan = subprocess.Popen(["sleep", "300"], process_group=old)
    try:
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: cluster.restarts()[name] == before + 1 and proc.pid != old,
                 RESTART_S, f"{name} restarted")
        assert orphan.wait(timeout=10) == -signal.SIGKILL  # killed with its group
        assert group_members(old) == []
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
    cmdline = psutil.Process(proc.pid).cmdline()  # the same command line: the same ports
    assert cmdline[cmdline.index("--port") + 1] == proc.address.rsplit(":", 1)[1]
    return old


def _serve_until(client: Client, address: str, side: str, rounds: int = 20) -> None:
    """Batches of requests until one was routed to `address` on `side`; all exact."""
    for r in range(rounds):
        prompts = [prompt_ids(40 + 7 * i, offset=1000 + 50 * r + i) for i in range(8)]
        outs = [client.generate(p, max_tokens=4, **GREEDY) for p in prompts]
        for out, p in zip(outs, prompts, strict=True):
            assert out.token_ids == sim_tokens(p, 4, None)
        if any(getattr(o, f"{side}_worker") == address for o in outs):
            return
    raise AssertionError(f"no request routed to {address} ({side}) in {rounds} rounds")


@pytest.mark.parametrize("name,side", [("decode-0", "decode"), ("prefill-1", "prefill")])
def test_a_killed_worker_is_restarted_on_its_ports_and_serves_again(
        cluster: LocalCluster, name: str, side: str) -> None:
    proc = _proc(cluster, name)
    _kill_and_await_restart(cluster, name)
    with Client(cluster.target, timeout=30) as client:
        wait_for(lambda: all_healthy(client.cluster_info(), 4), RESTART_S,
                 f"the coordinator to see {name} healthy again")
        assert client.health() is HealthStatus.SERVING
        _serve_until(client, proc.address, side)
    assert _engine_steps(cluster, proc.name) > 0  # the new process itself did the work
    assert f"----- restart 1 of {name} -----" in proc.log_path.read_text()  # one log, appended


def test_a_killed_coordinator_is_restarted_and_serves_again(cluster: LocalCluster) -> None:
    _kill_and_await_restart(cluster, "coordinator")

    def serving() -> bool:
        try:
            with Client(cluster.target, timeout=2) as c:
                return c.health() is HealthStatus.SERVING and all_healthy(c.cluster_info(), 4)
        except Exception:
            return False

    wait_for(serving, RESTART_S, "the restarted coordinator to serve")
    with Client(cluster.target, timeout=30) as client:
        prompt = prompt_ids(30, offset=4242)
        assert client.generate(prompt, max_tokens=5, **GREEDY).token_ids == sim_tokens(
            prompt, 5, None)


def test_a_process_that_dies_during_start_fails_the_start(model_dir: str) -> None:
    c = LocalCluster(ClusterSpec(model=model_dir, engine="sim", prefill=1, decode=1,
                                 extra_worker_args=["--no-such-flag"]))
    with pytest.raises(RuntimeError, match="during start"):
        c.start(timeout_s=60, progress=False)
    assert c.procs == [] and c.supervisor is None


# ------------------------------------------------------------------ the CLI --


def _lines(stream) -> queue.Queue[str | None]:
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _cmdline(p: psutil.Process) -> list[str]:
    """[] for a process gone or not reaped yet (a killed one, before its parent waits)."""
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_up_restarts_a_killed_worker_keeps_serving_and_stops_everything(
        model_dir: str, tmp_path: Path) -> None:
    port = free_port()
    stderr_path = tmp_path / "up.stderr"
    with open(stderr_path, "w") as stderr:
        up = subprocess.Popen(
            [sys.executable, "-m", "slos_serve.cli", "up", "--engine", "sim", "--model",
             model_dir, "--prefill", "1", "--decode", "2", "--port", str(port), "--no-http",
             "--log-dir", str(tmp_path / "logs"), "--timeout", "90"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert up.stdout is not None
    lines, seen = _lines(up.stdout), []
    tree: list[psutil.Process] = []
    try:
        while not any("serving at" in s for s in seen):
            line = lines.get(timeout=100)
            assert line is not None, f"`up` exited ({up.wait()}):\n{stderr_path.read_text()}"
            seen.append(line)
        target = f"127.0.0.1:{port}"
        victim = next(p for p in psutil.Process(up.pid).children()
                      if "decode-worker" in _cmdline(p))
        victim_port = victim.cmdline()[victim.cmdline().index("--port") + 1]
        victim.kill()

        def restarted() -> psutil.Process | None:
            return next((p for p in psutil.Process(up.pid).children()
                         if p.pid != victim.pid and "decode-worker" in _cmdline(p)
                         and victim_port in _cmdline(p)), None)

        wait_for(lambda: restarted() is not None, RESTART_S, "the decode worker restarted")
        assert up.poll() is None, stderr_path.read_text()
        with Client(target, timeout=30) as client:
            wait_for(lambda: all_healthy(client.cluster_info(), 3), RESTART_S, "all healthy")
            _serve_until(client, f"127.0.0.1:{victim_port}", "decode")
        log = stderr_path.read_text()
        assert "exited with code -9" in log and "restarted" in log, log

        tree = psutil.Process(up.pid).children(recursive=True)
        groups = {p.pid for p in tree}
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=40) == 0, stderr_path.read_text()[-3000:]
        assert [p.pid for p in tree if not _gone(p.pid)] == []
        assert all(group_members(g) == [] for g in groups)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(timeout=10)
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        up.stdout.close()
