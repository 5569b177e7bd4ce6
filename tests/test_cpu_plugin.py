"""The vLLM general plugin (kv_transfer/cpu_plugin.py): NixlConnector on vLLM's CPU
platform, the KV-transfer core choice and NIXL's progress thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

_PLUGIN_PROBE = textwrap.dedent(
    """
    import json, os
    import vllm.plugins
    from kv_transfer import cpu_plugin
    assert cpu_plugin.status() is None
    vllm.plugins.load_general_plugins()  # what vLLM does in each process it starts
    after_load = cpu_plugin.status()
    cpu_plugin.register()  # a second call is a no-op
    from vllm.platforms import current_platform
    from vllm.distributed.kv_transfer.kv_connector.v1.nixl import utils
    core = min(os.sched_getaffinity(0))
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(core)  # an engine bound to one core
    os.sched_setaffinity(0, {core})
    kv_cores = current_platform.discover_numa_topology()
    print(json.dumps({
        "after_load": after_load,
        "status": cpu_plugin.status(),
        "platform": current_platform.device_type,
        "cpu": list(utils._NIXL_SUPPORTED_DEVICE.get("cpu", ())),
        "cuda": list(utils._NIXL_SUPPORTED_DEVICE.get("cuda", ())),
        "kv_cores": kv_cores,
        "core": core,
    }))
    """
)


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="Linux only")
def test_plugin_loaded_by_vllm_makes_nixl_accept_cpu() -> None:
    """Through the installed entry point, in a fresh interpreter, as vLLM's processes do."""
    out = subprocess.run(
        [sys.executable, "-c", _PLUGIN_PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["platform"] != "cpu":
        assert result["after_load"] == "not-cpu"
        return
    assert result["after_load"] == "armed"
    assert result["status"] in ("not-needed", "added")
    assert "cpu" in result["cpu"]
    assert result["cuda"] == ["cuda", "cpu"]  # other entries untouched
    # NixlConnector may move its thread only within the engine's own binding
    assert result["kv_cores"] in ([], [[result["core"]]])


class _FakePlatform:
    """Stands in for vLLM's platform object (the plugin patches its class)."""

    def __init__(self, device_type: str) -> None:
        self.device_type = device_type

    def is_cpu(self) -> bool:
        return self.device_type == "cpu"

    @classmethod
    def get_nixl_supported_devices(cls) -> dict[str, tuple[str, ...]]:
        return {"weird": ("x",)}

    @classmethod
    def discover_numa_topology(cls) -> list[list[int]]:
        return [[0, 1], [2, 3]]


class _FakeAgentConfig:
    """NIXL's bindings' `nixlAgentConfig`, as `nixl_agent.__init__` fills it in."""

    pthrDelay = -1


def _fake_nixl_utils() -> Any:
    """vLLM's `nixl_utils` as the plugin sees it: a lazy loader of NIXL's agent config
    (which, like vLLM's, stores what it loaded in the module), defined in a fake NIXL API
    module whose `nixlBind` holds the bindings' config class."""
    mod = type(sys)("fake_vllm_nixl_utils")
    api = type(sys)("fake_nixl_api")
    api.nixlBind = type(sys)("fake_nixl_bindings")
    api.nixlBind.nixlAgentConfig = _FakeAgentConfig

    def real_config(**kwargs: Any) -> dict[str, Any]:
        cfg = api.nixlBind.nixlAgentConfig()
        cfg.pthrDelay = 0  # what NIXL's Python API hard-codes
        return {"enable_prog_thread": True, "pthrDelay": cfg.pthrDelay, **kwargs}

    real_config.__module__ = api.__name__
    sys.modules[api.__name__] = api

    def load(name: str) -> Any:
        mod.nixl_agent_config = real_config
        return real_config

    mod._load_nixl_attr = load
    return mod


@pytest.fixture
def fresh_plugin(monkeypatch: pytest.MonkeyPatch) -> Any:
    import vllm.platforms

    from kv_transfer import cpu_plugin

    monkeypatch.setattr(cpu_plugin, "_state", None)
    monkeypatch.delitem(sys.modules, cpu_plugin.NIXL_UTILS_MODULE, raising=False)
    monkeypatch.setitem(sys.modules, cpu_plugin.NIXL_AGENT_MODULE, _fake_nixl_utils())
    monkeypatch.delitem(sys.modules, cpu_plugin.NIXL_WORKER_MODULE, raising=False)
    monkeypatch.delenv(cpu_plugin.PROGRESS_THREAD_ENV, raising=False)

    def use(device_type: str) -> type:
        cls = type("FakePlatform", (_FakePlatform,), {})
        monkeypatch.setattr(vllm.platforms, "_current_platform", cls(device_type))
        return cls

    return cpu_plugin, use


def test_plugin_is_a_noop_off_cpu(fresh_plugin: Any) -> None:
    plugin, use = fresh_plugin
    cls = use("cuda")
    plugin.register()
    assert plugin.status() == "not-cpu"
    assert cls.get_nixl_supported_devices() == {"weird": ("x",)}
    assert cls.discover_numa_topology() == [[0, 1], [2, 3]]


def test_plugin_adds_cpu_when_a_build_refuses_it(
    fresh_plugin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin, use = fresh_plugin
    cls = use("cpu")
    plugin.register()
    plugin.register()  # idempotent: wraps once
    assert plugin.status() == "armed"
    # A vLLM build whose static table lacks cpu, mid-import of its utils module:
    static = {"cuda": ("cuda", "cpu"), "cpu": ()}
    fake_utils = type(sys)("fake_nixl_utils")
    fake_utils._NIXL_SUPPORTED_DEVICE = static  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, plugin.NIXL_UTILS_MODULE, fake_utils)
    static.update(cls.get_nixl_supported_devices())  # what utils.py does
    assert static == {"cuda": ("cuda", "cpu"), "cpu": ("cpu",), "weird": ("x",)}
    assert plugin.status() == "added"


def test_plugin_gives_the_progress_thread_a_poll_timeout_when_asked(
    fresh_plugin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`poll`: NIXL's progress thread stays on, with a non-zero poll timeout (0 makes it
    spin on the engine's core)."""
    plugin, use = fresh_plugin
    monkeypatch.setenv(plugin.PROGRESS_THREAD_ENV, "poll")
    use("cpu")
    utils = sys.modules[plugin.NIXL_AGENT_MODULE]
    plugin.register()
    config = utils.nixl_agent_config
    assert config(num_threads=4) == {"enable_prog_thread": True,
                                     "pthrDelay": plugin.PROGRESS_POLL_US, "num_threads": 4}
    assert utils.nixl_agent_config is config  # still the wrapper after the lazy load


def test_plugin_creates_nixl_agents_without_the_progress_thread_on_cpu(
    fresh_plugin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default on CPU: no progress thread (engine steps poll NIXL)."""
    plugin, use = fresh_plugin
    use("cpu")
    utils = sys.modules[plugin.NIXL_AGENT_MODULE]
    plugin.register()
    config = utils.nixl_agent_config
    assert config(num_threads=4) == {"enable_prog_thread": False, "pthrDelay": 0,
                                     "num_threads": 4}
    assert config(enable_prog_thread=True)["enable_prog_thread"] is True  # explicit wins


def test_plugin_keeps_nixls_busy_progress_thread_when_asked_or_off_cpu(
    fresh_plugin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin, use = fresh_plugin
    utils = sys.modules[plugin.NIXL_AGENT_MODULE]
    use("cuda")
    plugin.register()
    assert not hasattr(utils, "nixl_agent_config")
    monkeypatch.setattr(plugin, "_state", None)
    monkeypatch.setenv(plugin.PROGRESS_THREAD_ENV, "busy")
    use("cpu")
    plugin.register()
    assert not hasattr(utils, "nixl_agent_config")


def test_plugin_rejects_an_unknown_progress_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    from kv_transfer import cpu_plugin

    monkeypatch.setenv(cpu_plugin.PROGRESS_THREAD_ENV, "sometimes")
    with pytest.raises(ValueError, match=cpu_plugin.PROGRESS_THREAD_ENV):
        cpu_plugin.progress_mode()
    for old, new in (("0", "off"), ("1", "busy"), ("", "off"), ("poll", "poll")):
        monkeypatch.setenv(cpu_plugin.PROGRESS_THREAD_ENV, old)
        assert cpu_plugin.progress_mode() == new


def test_plugin_kv_core_choice() -> None:
    from kv_transfer.cpu_plugin import _kv_cores

    nodes = [[0, 1], [2, 3]]
    assert _kv_cores(nodes, "auto", {0}) == nodes  # vLLM reserved those cores itself
    assert _kv_cores(nodes, "nobind", {0, 1, 2, 3}) == []
    assert _kv_cores(nodes, "0", {0}) == [[0]]
    assert _kv_cores(nodes, "1-2", {1, 2}) == [[1], [2]]
    assert _kv_cores(nodes, "5", {5}) == []


# ---------------------------------------------------------------- kv-bench



_AGENT_CPU_PROBE = """
import sys, time, types
from nixl._api import nixl_agent, nixl_agent_config
fake = types.ModuleType("vllm.distributed.nixl_utils")
def load(name):
    fake.nixl_agent_config = nixl_agent_config
    return nixl_agent_config
fake._load_nixl_attr = load
sys.modules["vllm.distributed.nixl_utils"] = fake
from kv_transfer import cpu_plugin
cpu_plugin._patch_progress_thread()
config = getattr(fake, "nixl_agent_config", nixl_agent_config)  # busy: not wrapped
agent = nixl_agent("probe", config(backends=["UCX"]))
wall, cpu = time.monotonic(), time.process_time()
time.sleep(1.5)
print((time.process_time() - cpu) / (time.monotonic() - wall))
"""


def _idle_agent_cpu(mode: str) -> float:
    """CPU seconds per second of an idle process holding one real NIXL agent."""
    out = subprocess.run([sys.executable, "-c", _AGENT_CPU_PROBE], capture_output=True,
                         text=True, timeout=120, check=True,
                         env={**os.environ, "SLOS_NIXL_PROGRESS_THREAD": mode})
    return float(out.stdout.strip().splitlines()[-1])


def test_the_polled_progress_thread_sleeps_where_nixls_default_spins() -> None:
    """Real NIXL agents: with the plugin's poll timeout the progress thread waits in poll()
    (measured here: 0.02 of a core), where NIXL's own default spins (1.0 of a core)."""
    polled, busy = _idle_agent_cpu("poll"), _idle_agent_cpu("busy")
    print(f"idle NIXL agent: {polled:.3f} of a core polled, {busy:.3f} busy")
    assert polled < 0.25 * busy, (polled, busy)
