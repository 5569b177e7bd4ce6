"""`slos-serve up --ray ADDRESS`: the cluster's processes as Ray actors, on any node.

ADDRESS: `auto` (the running Ray cluster, `ray start` / KubeRay), `local` (a Ray instance
started for this run and stopped at its end: small settings, for one machine and tests),
or any address `ray.init` takes. Each process is an actor (slos_serve/ray_actor.py) in a
placement group of its own (one bundle: a CPU, and a GPU for a vLLM engine when the cluster
has GPUs), so the process and everything it spawns (vLLM's engine processes: plain child
processes) land on that bundle's node. The coordinator starts first (`--join`: it learns its
workers at runtime); each worker registers with it (AddWorker) once it answers, and one
whose actor dies is dropped after ray_actor.DROP_AFTER_S (unreachable). `scale` adds and
removes workers the same way (slos_serve/scale.py).

Names: actors and placement groups are named `CLUSTER-KIND-N` in the Ray namespace
NAMESPACE (CLUSTER: a fresh id per `up`), so `scale` finds a cluster's actors from its
coordinator's address, and stop() removes what `scale` added too. Actors `up` starts are
owned by it (they die with it); those `scale` adds are detached (they outlive `scale`)
and stop() kills them; an `up` killed with SIGKILL leaves them to `ray stop`.

Not here: restarts in place (a dead worker is replaced by `scale`, not restarted), and the
model directory and tier file must be at the same path on every node.

Ray is imported lazily, only here and in the actor's methods: the single-machine path
never loads it.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from slos_serve import membership, tls
from slos_serve.up import ClusterSpec, LocalCluster

NAMESPACE = "slos-serve"
# A node that declares `slos_<kind>` (`ray start --resources`; deploy/k8s's pods) takes that
# kind's processes and, where any node declares it, only it does: the coordinator lands on
# the head pod the Service selects, each engine worker on a pod of its group.
ROLE_RESOURCE = "slos_{kind}"
LOCAL_OBJECT_STORE = 128 * 1024**2  # `local`: the object store holds nothing big here
LOCAL_START_ATTEMPTS = 3
ACTOR_START_S = 600.0


def connect(address: str, spec_processes: int = 0) -> bool:
    """ray.init for ADDRESS (`local`: a Ray instance started for this process, stopped by
    ray.shutdown()); False when Ray was initialized already (the caller's to shut down)."""
    import ray

    if ray.is_initialized():
        return False
    if address == "local":
        for attempt in range(LOCAL_START_ATTEMPTS):
            try:
                # Logical CPUs: every process's bundle asks one; the sim engine barely uses it.
                ray.init(num_cpus=max(os.cpu_count() or 1, spec_processes + 4),
                         include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE,
                         log_to_driver=False, namespace=NAMESPACE,
                         # no idle Python workers started ahead: on 2 cores they slow the start
                         _system_config={"prestart_worker_first_driver": False,
                                         "enable_worker_prestart": False})
                return True
            except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for it
                # Ray gives its raylet 30 s to register with the GCS; an overloaded machine
                # can miss that (seen at load 20 on 2 cores): it cleans up, we try again.
                if "timed out during startup" not in str(exc) or (
                        attempt + 1 == LOCAL_START_ATTEMPTS):
                    raise
                ray.shutdown()
                print(f"Ray did not start ({exc}); trying again", file=sys.stderr)
    ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
    return True


def node_ips() -> list[str]:
    import ray

    return sorted({n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")})


class RayCluster(LocalCluster):
    """LocalCluster's interface (start, stop, target, http_url, credentials, metrics) over
    Ray actors."""

    def __init__(self, spec: ClusterSpec, address: str) -> None:
        super().__init__(spec)
        self.address = address
        self.cluster_id = uuid.uuid4().hex[:8]
        self.actors: dict[str, Any] = {}  # name -> actor handle (keeps them alive)
        self.info: dict[str, dict[str, Any]] = {}  # name -> what its start() returned
        self._connected = False  # we called ray.init (stop() calls ray.shutdown)
        self._gpu = False
        self._profile: str | None = None
        self.files: dict[str, bytes] = {}  # the certificates the actors write on their node
        self._reported: set[str] = set()

    # ------------------------------------------------------------ start --
    def _cert_hosts(self) -> list[str]:
        """Every node's address: the coordinator lands on any of them."""
        return [h for h in (self.spec.host, *node_ips()) if h not in ("0.0.0.0", "")]

    def _files(self) -> dict[str, bytes]:
        """The certificates every node gets (not the CA's key: it signs, nobody verifies
        with it)."""
        if self.tls_dir is None:
            return {}
        return {f: (self.tls_dir / f).read_bytes() for f in tls.FILES if f != tls.CA_KEY}

    def start(self, timeout_s: float | None = None, progress: bool = True) -> str:
        import ray

        s = self.spec
        if not s.model:
            raise ValueError("ClusterSpec.model: the coordinator needs a model directory")
        if Path(s.model).exists():  # the actors' working directories are not ours
            s.model = str(Path(s.model).resolve())
        if s.tiers and Path(s.tiers).exists():
            s.tiers = str(Path(s.tiers).resolve())
        counts = s.counts()
        self._connected = connect(self.address, sum(counts.values()) + 1)
        try:
            self._gpu = s.engine == "vllm" and ray.cluster_resources().get("GPU", 0) > 0
            self._make_certs()
            self.files = self._files()
            profile = s.resolve_profile()
            if profile and Path(profile).exists():  # shipped as text: nodes have no copy
                profile = "file:" + Path(profile).read_text()
            self._profile = profile
            timeout = timeout_s or s.start_timeout_s
            name = self._name("coordinator")
            coordinator = self.info[name] = ray.get(self._spawn_actor(name, "coordinator"),
                                                    timeout=timeout)
            self.target = coordinator["address"]
            self.http_url = coordinator["http"]
            names = [self._name(role, k) for role, n in counts.items() for k in range(n)]
            pending = {name: self._spawn_actor(name, name.split("-")[1]) for name in names}
            for name, ref in pending.items():
                self.info[name] = ray.get(ref, timeout=timeout)
            asyncio.run(self._wait_members(sum(counts.values()), timeout, progress))
        except BaseException:
            self.stop()
            raise
        if progress:
            nodes = sorted({i["node"] for i in self.info.values()})
            print(f"cluster ready on Ray ({len(nodes)} node(s): {', '.join(nodes)}): "
                  f"coordinator at {self.target}; process logs (on their nodes): "
                  + " ".join(f"{n.split('-', 1)[1]}={i['log']}" for n, i in self.info.items()),
                  file=sys.stderr)
        return self.target

    def _name(self, kind: str, k: int = 0) -> str:
        return f"{self.cluster_id}-{kind}" + ("" if kind == "coordinator" else f"-{k}")

    def _spawn_actor(self, name: str, kind: str, detached: bool = False) -> Any:
        """Creates `name`'s placement group and actor; the ref of its start()."""
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from slos_serve.ray_actor import ServeProcess

        gpu = self._gpu and kind != "coordinator"
        bundle = {"CPU": 1.0, **({"GPU": 1.0} if gpu else {})}
        role = ROLE_RESOURCE.format(kind=kind)
        if ray.cluster_resources().get(role, 0) > 0:  # nodes set aside for the role (k8s)
            bundle[role] = 1.0
        lifetime = "detached" if detached else None
        _remove_group(name)  # a dead actor's of that name (live ones' names are not reused)
        pg = placement_group([bundle], strategy="STRICT_PACK", name=name, lifetime=lifetime)
        ray.get(pg.ready(), timeout=ACTOR_START_S)
        actor = ray.remote(ServeProcess).options(
            name=name, namespace=NAMESPACE, lifetime=lifetime, max_restarts=0,
            num_cpus=1, num_gpus=1 if gpu else 0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                pg, placement_group_bundle_index=0,
                placement_group_capture_child_tasks=True),
        ).remote(name, kind, self.spec, self.files, self._profile,
                 coordinator=self.target if kind != "coordinator" else "",
                 api_key=self.api_key(), gpu=gpu)
        self.actors[name] = actor
        return actor.start.remote(self.spec.start_timeout_s)

    async def _wait_members(self, expected: int, timeout_s: float, progress: bool) -> None:
        """Ready means routable: the coordinator reports `expected` healthy workers."""
        deadline = time.monotonic() + timeout_s
        while not await self._coordinator_sees(expected):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the coordinator does not see {expected} healthy "
                                   f"workers after {timeout_s:.0f} s")
            await asyncio.sleep(0.3)

    async def _coordinator_sees(self, expected: int) -> bool:
        try:
            workers = await membership.members(self.target,
                                               credentials=self.client_credentials(),
                                               metadata=self.auth_metadata())
        except Exception:  # noqa: BLE001 - not answering (yet)
            return False
        return sum(w.healthy for w in workers) >= expected

    def client_credentials_from_files(self):
        """The client credentials from the certificates the actors got (`scale`: no
        TLS_DIR of its own); None: clients are plaintext."""
        if not (self.spec.client_tls and self.files):
            return None
        from slos_serve.client.channel import TlsConfig

        return TlsConfig(root_certificates=self.files[tls.CA_CERT]).credentials()

    # ------------------------------------------------------------ watch --
    def metrics_urls(self) -> dict[str, str]:
        return {name.split("-", 1)[1]: i["metrics"] for name, i in self.info.items()}

    def restarts(self) -> dict[str, int]:
        return {name.split("-", 1)[1]: 0 for name in self.info}

    def exited(self) -> str:
        """'' while the coordinator runs (a dead worker is reported once, and dropped by
        the coordinator: `scale` replaces it); else what happened to it."""
        import ray

        for name, actor in list(self.actors.items()):
            try:
                dead = ray.get(actor.exited.remote(), timeout=10)
            except ray.exceptions.GetTimeoutError:
                continue  # busy, not dead
            except ray.exceptions.RayActorError as exc:
                if not _named(name) and not name.endswith("-coordinator"):
                    del self.actors[name]  # killed: by `scale` (drained first) or a crash
                    self.info.pop(name, None)
                    print(f"{name}: its actor is gone (scaled down, or died: then the "
                          "coordinator drops it after 30 s unreachable)", file=sys.stderr)
                    continue
                dead = f"{name}'s actor died: {exc}"
            if not dead:
                continue
            if name.endswith("-coordinator"):
                return dead
            if name not in self._reported:
                self._reported.add(name)
                print(f"{dead}\n(the coordinator drops it; `slos-serve scale` adds another)",
                      file=sys.stderr)
        return ""

    # ------------------------------------------------------------- stop --
    def stop_actors(self) -> None:
        """The coordinator, then the workers (no new work reaches them): each child stopped
        gracefully, its actor killed, its placement group removed (those `scale` added
        too)."""
        import ray

        if ray.is_initialized():
            stop_cluster(self.cluster_id, self.actors)
        self.actors.clear()

    def stop(self) -> None:
        """stop_actors(), then ray.shutdown() if start() connected (`local`: that stops the
        Ray instance; else it disconnects)."""
        import ray

        self.stop_actors()
        if self._connected:
            ray.shutdown()
            self._connected = False


def _named(name: str) -> bool:
    import ray

    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def cluster_actors(cluster_id: str) -> dict[str, Any]:
    """The named actors of cluster `cluster_id`."""
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a.get("namespace") == NAMESPACE and a["name"].startswith(cluster_id + "-")]
    out = {}
    for name in names:
        try:
            out[name] = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            pass  # gone meanwhile
    return out


def stop_actor(name: str, actor: Any) -> None:
    """Stops its child gracefully, kills the actor, removes its placement group."""
    import ray

    try:
        ray.get(actor.stop.remote(), timeout=30)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        pass  # dead already, or stuck: the kill's PDEATHSIG stops the child
    ray.kill(actor, no_restart=True)
    _remove_group(name)


def _remove_group(name: str) -> None:
    from ray.util.placement_group import get_placement_group, remove_placement_group

    try:
        remove_placement_group(get_placement_group(name))
    except ValueError:
        pass  # none of that name


def stop_cluster(cluster_id: str, actors: dict[str, Any]) -> None:
    every = {**actors, **cluster_actors(cluster_id)}
    order = sorted(every, key=lambda n: not n.endswith("-coordinator"))  # coordinator first
    for name in order:
        stop_actor(name, every[name])
    import ray

    for group in ray.util.placement_group_table().values():  # dead actors' groups too
        if group.get("name", "").startswith(cluster_id + "-") and group.get("state") != "REMOVED":
            _remove_group(group["name"])


# ------------------------------------------------------------------ scale --
def attach(coordinator: str) -> RayCluster:
    """The cluster (of this Ray, connected already) whose coordinator is at `coordinator`."""
    import ray

    for entry in ray.util.list_named_actors(all_namespaces=True):
        name = entry["name"]
        if entry.get("namespace") != NAMESPACE or not name.endswith("-coordinator"):
            continue
        actor = ray.get_actor(name, namespace=NAMESPACE)
        recipe = ray.get(actor.recipe.remote(), timeout=30)
        if recipe["target"] != coordinator:
            continue
        cluster = RayCluster(recipe["spec"], "")
        cluster.cluster_id = name.rsplit("-", 1)[0]
        cluster.target, cluster.files = recipe["target"], recipe["files"]
        cluster._profile, cluster.spec.api_key = recipe["profile"], recipe["api_key"]
        cluster._gpu = (cluster.spec.engine == "vllm"
                        and ray.cluster_resources().get("GPU", 0) > 0)
        cluster.actors = cluster_actors(cluster.cluster_id)
        return cluster
    raise LookupError(f"no coordinator at {coordinator} in Ray namespace {NAMESPACE!r}")


def _index(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


def workers_of(cluster: RayCluster, role: str) -> list[str]:
    """The names of `role`'s worker actors, oldest first."""
    prefix = f"{cluster.cluster_id}-{role}-"
    return sorted((n for n in cluster.actors if n.startswith(prefix)), key=_index)


def add_workers(cluster: RayCluster, role: str, n: int, detached: bool = True) -> list[str]:
    """Starts `n` more `role` workers; each registers with the coordinator when it answers
    (detached: they outlive the caller, `scale`; the cluster's stop() kills them)."""
    import ray

    taken = [_index(name) for name in workers_of(cluster, role)]
    first = max(taken, default=-1) + 1
    names = [cluster._name(role, first + k) for k in range(n)]
    refs = {name: cluster._spawn_actor(name, role, detached=detached) for name in names}
    for name, ref in refs.items():
        cluster.info[name] = ray.get(ref, timeout=cluster.spec.start_timeout_s)
    return [cluster.info[name]["address"] for name in names]


def remove_workers(cluster: RayCluster, role: str, n: int, drain_timeout_s: float = 0.0
                   ) -> list[tuple[str, int]]:
    """Drains and removes the `n` newest `role` workers, then stops their actors: the
    (address, requests cut at the drain's timeout) of each."""
    import ray

    out = []
    for name in workers_of(cluster, role)[::-1][:n]:
        actor = cluster.actors.pop(name)
        address = ray.get(actor.info.remote(), timeout=30)["address"]
        answer = asyncio.run(membership.remove_worker(
            cluster.target, address, drain_timeout_s=drain_timeout_s,
            credentials=cluster.client_credentials_from_files(),
            metadata=cluster.auth_metadata()))
        stop_actor(name, actor)
        cluster.info.pop(name, None)
        out.append((address, answer.cut))
    return out
