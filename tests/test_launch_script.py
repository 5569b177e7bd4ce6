"""`scripts/launch-multi.sh` start / status / stop on this machine.

A 1 prefill + 1 decode cluster on the SIMULATED engine. The prefill worker's host is
`localhost` (run without ssh); the decode worker's is 127.0.0.2, another loopback address,
reached through $SSH set to a stand-in for ssh that runs the command here: so the ssh path
(quoting, the script on stdin, nohup in the background) is exercised without any network.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from slos_serve.client import Client

pytestmark = pytest.mark.timeout(110)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "launch-multi.sh"
START_TIMEOUT_S = 45

FAKE_SSH = """#!/bin/sh
# Stands in for ssh: records its arguments, drops the options, runs the command here.
printf '%s\\n' "$*" >> "$(dirname "$0")/ssh.log"
while [ $# -gt 0 ]; do case $1 in -o) shift 2 ;; -*) shift ;; *) break ;; esac; done
shift  # the host
exec sh -c "$*"
"""


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _loopback_alias_works() -> bool:
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
        return True
    except OSError:
        return False


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _ours(ports: list[int], leaders: set[int]) -> list[psutil.Process]:
    """Live processes of the cluster: in a recorded session, or serving one of its ports."""
    marks = [f"--port {p} " for p in ports]
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or []) + " "
            in_session = os.getsid(p.pid) in leaders
        except (psutil.Error, OSError):
            continue
        if (in_session or ("slos" in cmd and any(m in cmd for m in marks))) and _alive(p):
            found.append(p)
    return found


@dataclass
class Cluster:
    """The test cluster: its config file, ports, and how to run the launcher on it."""

    tmp_path: Path
    config: Path
    log_dir: Path
    env: dict[str, str]
    decode_host: str
    prefill_port: int
    decode_port: int
    coord_port: int

    @property
    def ports(self) -> list[int]:
        return [self.prefill_port, self.decode_port, self.coord_port]

    def launch(self, action: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(SCRIPT), action, str(self.config)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


def write_cluster(model_dir: str, tmp_path: Path) -> Cluster:
    """A 1 prefill + 1 decode cluster config on free ports, and the stand-in for ssh."""
    prefill_port, decode_port, coord_port, kv1, kv2 = _free_ports(5)
    decode_host = "127.0.0.2" if _loopback_alias_works() else "localhost"
    log_dir = tmp_path / "logs"
    fake_ssh = tmp_path / "fake-ssh"
    fake_ssh.write_text(FAKE_SSH)
    fake_ssh.chmod(0o755)
    config = tmp_path / "cluster.conf"
    config.write_text(
        "# test cluster\n"
        f"model = {model_dir}\n"
        f"command = {ROOT / '.venv' / 'bin' / 'slos-serve'}\n"
        f"log_dir = {log_dir}\n"
        "engine = sim   # SIMULATED engine\n"
        "coordinator_host = 127.0.0.1\n"
        f"coordinator_port = {coord_port}\n"
        f"start_timeout = {START_TIMEOUT_S}\n"
        "stop_timeout = 10\n"
        "\n"
        f"prefill localhost {prefill_port} {kv1}\n"
        f"decode  {decode_host} {decode_port} {kv2} 0\n"
    )
    env = {**os.environ, "SSH": f"{fake_ssh} -o BatchMode=yes"}
    return Cluster(tmp_path, config, log_dir, env, decode_host, prefill_port, decode_port,
                   coord_port)


def check_start(cluster: Cluster, leaders: set[int]) -> None:
    """`start`: the coordinator's address on stdout, three session leaders, one per role,
    the decode worker's started over (fake) ssh. The leaders' pids go to `leaders` as soon
    as they are known, for the clean-up."""
    started = cluster.launch("start", START_TIMEOUT_S * 2 + 15)
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip().splitlines()[-1] == f"127.0.0.1:{cluster.coord_port}"
    pid_files = sorted(cluster.log_dir.glob("*.pid"))
    assert len(pid_files) == 3, pid_files
    leaders.update(int(f.read_text()) for f in pid_files)
    procs = _ours(cluster.ports, leaders)
    names = [" ".join(p.cmdline()) for p in procs]
    for role in ("prefill-worker", "decode-worker", "coordinator"):
        assert any(role in n for n in names), (role, names)
    for pid in leaders:  # each leads its own session, so stop reaches all it spawns
        assert os.getsid(pid) == pid and os.getpgid(pid) == pid
    if cluster.decode_host != "localhost":
        assert (
            "-o BatchMode=yes 127.0.0.2 bash -s -- start"
            in (cluster.tmp_path / "ssh.log").read_text()
        )


def check_serves(cluster: Cluster) -> None:
    """A request through the coordinator, decoded on the (ssh-started) decode worker."""
    with Client(f"127.0.0.1:{cluster.coord_port}", timeout=30) as client:
        out = client.generate("def f():", max_tokens=4, temperature=0)
    assert out.completion_tokens == 4 and out.finish_reason == "length"
    assert out.decode_worker == f"{cluster.decode_host}:{cluster.decode_port}"


def check_status_running(cluster: Cluster) -> None:
    status = cluster.launch("status", 30)
    assert status.returncode == 0, status.stdout + status.stderr
    rows = [line for line in status.stdout.splitlines()[1:] if line.strip()]
    assert len(rows) == 3, status.stdout
    for row in rows:
        assert re.search(r"\srunning\s+SERVING$", row), row


def check_stop(cluster: Cluster, leaders: set[int]) -> None:
    """`stop`: no process of the cluster left, no pid file; `status` then says stopped."""
    stopped = cluster.launch("stop", 60)
    assert stopped.returncode == 0, stopped.stderr
    deadline = time.monotonic() + 5  # the last ones may still be being reaped
    while _ours(cluster.ports, leaders) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [(p.pid, " ".join(p.cmdline())) for p in _ours(cluster.ports, leaders)]
    assert left == [], f"processes left after stop: {left}"
    assert list(cluster.log_dir.glob("*.pid")) == []

    after = cluster.launch("status", 30)
    assert after.returncode == 1
    assert after.stdout.count("stopped") == 3, after.stdout


def clean_up(cluster: Cluster, leaders: set[int]) -> None:
    """Whatever a failed step left running: stopped by the launcher, then killed."""
    if _ours(cluster.ports, leaders):
        cluster.launch("stop", 60)
        for p in _ours(cluster.ports, leaders):  # test hygiene: by pid, never by name
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


def test_launch_multi_start_status_stop(model_dir: str, tmp_path: Path) -> None:
    cluster = write_cluster(model_dir, tmp_path)
    leaders: set[int] = set()
    try:
        check_start(cluster, leaders)
        check_serves(cluster)
        check_status_running(cluster)
        check_stop(cluster, leaders)
    finally:
        clean_up(cluster, leaders)
