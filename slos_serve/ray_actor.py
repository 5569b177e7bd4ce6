"""One process of a cluster on Ray (`up --ray`): an actor that supervises a child process
running the usual entry point (`slos-serve coordinator` / `prefill-worker` / ...), with the
same command line LocalCluster builds (slos_serve/up.py's `worker_argv`,
`coordinator_argv`), so TLS, health, metrics, the lifeline and engines dying with their
worker behave as on one machine.

The actor runs on the node Ray placed it on (its placement group's bundle: one CPU, and one
GPU for a vLLM engine on a GPU node: Ray sets CUDA_VISIBLE_DEVICES, which the child and its
engine processes inherit); there it picks the node's address and ports free on that node
(the gRPC, metrics and NIXL side-channel ports), pins a vLLM engine on a CPU node to a core
no other actor of the node holds (a lock file per core, held for the actor's life), writes
the certificates and profile it was sent into a directory of its own, starts the child and
waits for it to answer; a worker then registers with the coordinator (AddWorker).

The child dies with the actor: it is started with SLOS_PARENT_PID (PR_SET_PDEATHSIG, see
slos_serve/supervise.py), so a killed actor (ray.kill, a lost node's processes) takes its
child, and the child its engines, with it. `stop()` stops it gracefully first.

Ray itself is imported only in the methods that need it (`ray.util.get_node_ip_address`):
the launcher wraps this class with `ray.remote` (slos_serve/ray_cluster.py).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import IO, Any, TypeVar

from slos_serve import membership, tls
from slos_serve.client.channel import TlsConfig
from slos_serve.config import API_KEY_ENV
from slos_serve.grpc_util import check_health
from slos_serve.supervise import Child, stop_groups
from slos_serve.up import ClusterSpec, coordinator_argv, free_port, worker_argv

T = TypeVar("T")
CORE_LOCKS = Path(tempfile.gettempdir()) / "slos-serve-cores"
DROP_AFTER_S = 30.0  # a worker unreachable this long leaves the membership (its actor died)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run in a thread of its own: Ray runs an actor's methods where an event loop
    is running already (asyncio.run refuses to nest). The child is launched on the calling
    thread, not here: its PR_SET_PDEATHSIG fires when the thread that started it ends."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class ServeProcess:
    """An actor owning one cluster process. `kind`: "coordinator", or a worker role."""

    def __init__(self, name: str, kind: str, spec: ClusterSpec, files: dict[str, bytes],
                 profile: str | None, coordinator: str = "", api_key: str = "",
                 gpu: bool = False) -> None:
        """`files`: the certificates (by file name) to write on this node; `profile`: a
        profile name, or `file:TEXT` (its JSON, written here); `coordinator`: the target a
        worker registers with."""
        self.name, self.kind, self.spec = name, kind, spec
        self.files, self.profile = files, profile
        self.coordinator, self.api_key, self.gpu = coordinator, api_key, gpu
        self.child: Child | None = None
        self.address = ""
        self._core_lock: IO[str] | None = None
        self.stopping = False  # stop() called: the child's exit is no failure

    # ------------------------------------------------------------ start --
    def start(self, timeout_s: float) -> dict[str, Any]:
        """Starts the child on this node and waits until it answers (a worker: until it is
        registered). Its address, metrics URL, log and pid."""
        import ray

        ip = ray.util.get_node_ip_address()
        s = self.spec
        bind = "0.0.0.0" if s.host == "0.0.0.0" else ip
        workdir = Path(tempfile.mkdtemp(prefix=f"slos-ray-{self.name}-"))
        tls_dir = self._write_certs(workdir / "tls")
        profile = self.profile
        if profile and profile.startswith("file:"):
            (workdir / "profile.json").write_text(profile[len("file:"):])
            profile = str(workdir / "profile.json")
        port = (s.port if self.kind == "coordinator" and s.port else free_port(bind))
        metrics_port = free_port(bind)
        env = {"PYTHONUNBUFFERED": "1"}
        mutual = tls_dir is not None and not s.insecure
        if self.kind == "coordinator":
            http_port = (s.http_port or free_port(bind)) if s.http else 0
            # `auto` means adaptive when there are mixed workers: the coordinator cannot
            # tell from its (empty) address lists, so it is told
            cs = replace(s, layout="adaptive") if s.layout == "auto" and s.mixed else s
            argv = coordinator_argv(cs, host=bind, port=port, metrics_port=metrics_port,
                                    http_port=http_port, profile=profile, workers={},
                                    tls_dir=str(tls_dir) if tls_dir else None, mutual=mutual,
                                    join=True, drop_after_s=DROP_AFTER_S)
            if self.api_key:
                env[API_KEY_ENV] = self.api_key
        else:
            http_port = 0
            cpu = self._claim_core() if (s.engine == "vllm" and s.bind_cpus
                                         and not self.gpu) else None
            argv = worker_argv(s, self.kind, host=bind, port=port, kv_port=free_port(bind),
                               cpu=cpu, metrics_port=metrics_port, profile=profile,
                               tls_dir=str(tls_dir) if mutual else None)
            from kv_transfer.config import ENV_SIDE_CHANNEL_HOST

            env[ENV_SIDE_CHANNEL_HOST] = ip  # NIXL's side channel: this node's address
        self.address = f"{ip}:{port}"
        self.child = Child(self.name, argv, workdir / f"{self.name}.log", env)
        self.child.launch()
        _run(self._wait_up(timeout_s, tls_dir, mutual))
        if self.kind != "coordinator" and self.coordinator:
            _run(membership.add_worker(
                self.coordinator, self.address, self.kind,
                credentials=self._client_credentials(tls_dir),
                metadata=membership.auth(self.api_key)))
        scheme = "https" if s.client_tls else "http"
        return {"address": self.address, "node": ip, "pid": self.child.pid,
                "metrics": f"http://{ip}:{metrics_port}/metrics",
                "http": f"{scheme}://{ip}:{http_port}" if http_port else "",
                "log": str(self.child.log_path)}

    def _write_certs(self, directory: Path) -> Path | None:
        if not self.files:
            return None
        directory.mkdir(parents=True, mode=0o700)
        for name, data in self.files.items():
            path = directory / name
            path.write_bytes(data)
            path.chmod(0o600)
        return directory

    def _client_credentials(self, tls_dir: Path | None):
        if not (self.spec.client_tls and tls_dir):
            return None
        return TlsConfig.from_files(root_certificates=tls_dir / tls.CA_CERT).credentials()

    async def _wait_up(self, timeout_s: float, tls_dir: Path | None, mutual: bool) -> None:
        """Until the child answers: a worker SERVING (its engine is up), the coordinator
        its ClusterInfo (it is NOT_SERVING until workers join)."""
        assert self.child is not None and self.child.popen is not None
        deadline = time.monotonic() + timeout_s
        node = tls.NodeTls.load(tls_dir) if (mutual and tls_dir) else None
        while True:
            if (code := self.child.popen.poll()) is not None:
                raise RuntimeError(f"{self.name} exited with code {code}; its log "
                                   f"({self.child.log_path}) ends with:\n{self.child.tail()}")
            if self.kind == "coordinator":
                try:
                    await membership.members(self.address,
                                             credentials=self._client_credentials(tls_dir),
                                             metadata=membership.auth(self.api_key))
                    return
                except Exception:  # noqa: BLE001 - not answering yet
                    pass
            elif await check_health(self.address, credentials=(
                    node.channel_credentials() if node else None), options=tls.NODE_OPTIONS):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not up after {timeout_s:.0f} s (log: "
                                   f"{self.child.log_path})")
            await asyncio.sleep(0.3)

    def _claim_core(self) -> int | None:
        """A core of this node no other live actor holds (an flock per core)."""
        CORE_LOCKS.mkdir(exist_ok=True)
        for core in range(os.cpu_count() or 1):
            lock = open(CORE_LOCKS / f"{core}.lock", "a")  # noqa: SIM115 - held for life
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            self._core_lock = lock
            return core
        return None  # more engines than cores: not pinned

    # ------------------------------------------------------------ watch --
    def info(self) -> dict[str, Any]:
        return {"address": self.address, "kind": self.kind, "name": self.name,
                "pid": self.child.pid if self.child else 0}

    def recipe(self) -> dict[str, Any]:
        """What `scale` needs to start another process of this cluster like this one."""
        return {"spec": self.spec, "files": self.files, "profile": self.profile,
                "api_key": self.api_key, "target": self.address}

    def exited(self) -> str:
        """'' while the child runs; else its exit code and its log's end."""
        popen = self.child.popen if self.child else None
        if self.stopping or popen is None or (code := popen.poll()) is None:
            return ""
        assert self.child is not None
        return f"{self.name} exited with code {code}; its log ends with:\n{self.child.tail()}"

    def stop(self) -> None:
        """SIGTERM the child's process group, SIGKILL what is left after the grace."""
        self.stopping = True
        if self.child is not None:  # the keys go; the log stays (the child wrote it)
            shutil.rmtree(self.child.log_path.parent / "tls", ignore_errors=True)
        if self.child is not None and self.child.popen is not None:
            stop_groups([self.child.popen])
        if self._core_lock is not None:
            self._core_lock.close()
            self._core_lock = None
