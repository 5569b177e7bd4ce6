"""`up --ray local` on the SIMULATED engine: the coordinator and 2 prefill + 2 decode
workers as Ray actors (a Ray instance started for the module with small settings: 2 shared
cores here), serving through the gRPC SDK; `scale` adding and draining workers under Ray;
and a stop that leaves no actor, no placement group and no process behind.

One Ray start and one cluster for the module (a Ray start costs ~10-50 s on this machine).
"""

from __future__ import annotations

import asyncio
import os

import pytest
from sim_serving import GREEDY, all_healthy, prompt_ids, sim_tokens, wait_for

ray = pytest.importorskip("ray", reason="the `ray` extra is not installed")

from slos_serve.client import AsyncClient, Client  # noqa: E402

pytestmark = pytest.mark.timeout(300)

KEY = "ray-test-key"


@pytest.fixture(scope="module")
def cluster(model_dir: str):
    from slos_serve.ray_cluster import RayCluster
    from slos_serve.up import ClusterSpec

    spec = ClusterSpec(model=model_dir, engine="sim", prefill=2, decode=2, http=False,
                       api_key=KEY, start_timeout_s=180)
    cluster = RayCluster(spec, "local")
    try:
        cluster.start(progress=False)
        yield cluster
    finally:
        cluster.stop()
    assert not ray.is_initialized()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_serves_50_requests_through_the_sdk(cluster) -> None:
    assert cluster.target.split(":")[0] == ray.util.get_node_ip_address()  # the node's
    with Client(cluster.target, timeout=30, api_key=KEY) as c:
        wait_for(lambda: all_healthy(c.cluster_info(), 4), 20, "4 healthy workers")

    async def fifty():
        prompts = [prompt_ids(16, i) for i in range(50)]
        async with AsyncClient(cluster.target, timeout=60, api_key=KEY) as c:
            outs = await asyncio.gather(*(c.generate(p, max_tokens=8, **GREEDY)
                                          for p in prompts))
        return prompts, outs

    prompts, outs = asyncio.run(fifty())
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.token_ids == sim_tokens(prompt, 8, None)
    decoders = {o.decode_worker for o in outs}
    assert len(decoders) == 2  # both decode actors served


def test_scale_adds_and_drains_workers_under_ray(cluster) -> None:
    """A worker actor dies (killed: a crash, its child goes with it), `scale` adds one in
    its place (its name and placement group's reused) and drains a prefill worker away."""
    from slos_serve import ray_cluster

    attached = ray_cluster.attach(cluster.target)  # as `slos-serve scale` finds it
    assert attached.cluster_id == cluster.cluster_id
    crashed = attached.actors.pop(f"{cluster.cluster_id}-decode-1")
    crashed_at = ray.get(crashed.info.remote(), timeout=30)["address"]
    ray.kill(crashed)
    [added] = ray_cluster.add_workers(attached, "decode", 1)

    def healthy(c: Client) -> set[str]:
        return {w.address for w in c.cluster_info().workers if w.healthy}

    with Client(cluster.target, timeout=30, api_key=KEY) as c:
        wait_for(lambda: added in healthy(c) and crashed_at not in healthy(c)
                 and len(healthy(c)) == 4, 30, "the replacement routed to, the dead one not")
        removed = ray_cluster.remove_workers(attached, "prefill", 1, drain_timeout_s=20)
        assert [cut for _, cut in removed] == [0]
        members = {w.address for w in c.cluster_info().workers}
        assert added in members and removed[0][0] not in members
        decoders = set()
        for i in range(9):
            prompt = prompt_ids(12, 300 + i)
            out = c.generate(prompt, max_tokens=4, **GREEDY)
            assert out.token_ids == sim_tokens(prompt, 4, None)
            decoders.add(out.decode_worker)
    assert added in decoders and crashed_at not in decoders


def test_stop_leaves_no_actor_placement_group_or_process(cluster) -> None:
    from slos_serve.ray_cluster import NAMESPACE, cluster_actors

    actors = cluster_actors(cluster.cluster_id)  # those `scale` added (detached) too
    pids = [ray.get(a.info.remote(), timeout=30)["pid"] for a in actors.values()]
    assert len(pids) == 4 and all(_alive(p) for p in pids)  # coordinator, 1 + 2 workers
    cluster.stop_actors()
    assert cluster_actors(cluster.cluster_id) == {}
    assert not [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a.get("namespace") == NAMESPACE]
    groups = ray.util.placement_group_table()
    assert not [g for g in groups.values() if g.get("name", "").startswith(cluster.cluster_id)
                and g.get("state") != "REMOVED"], groups
    wait_for(lambda: not any(_alive(p) for p in pids), 15, "the children to exit")
    session = ray._private.worker.global_worker.node.session_name
    cluster.stop()
    assert not ray.is_initialized()
    wait_for(lambda: not _ray_processes(session), 30, "Ray's processes to exit")


def _ray_processes(session: str) -> list[int]:
    """The live processes of Ray session `session` (its raylet, GCS, workers)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if session in cmd and int(pid) != os.getpid() and _alive(int(pid)):
            out.append(int(pid))
    return out
