"""Engines the workers run: vLLM (the real one) and a simulated one (labelled as such).

Neither module imports vLLM at import time: VllmEngine loads it when it starts.
"""

from collections.abc import Callable

from slos_serve.engine.base import (
    Engine,
    EngineInfo,
    EngineLoad,
    EngineOutput,
    EngineRequest,
    EngineRequestFailed,
    check_output,
)
from slos_serve.engine.sim_engine import SimEngine
from slos_serve.engine.vllm_engine import VllmEngine

__all__ = [
    "ENGINES", "Engine", "EngineInfo", "EngineLoad", "EngineOutput", "EngineRequest",
    "EngineRequestFailed", "check_output", "create_engine",
]

ENGINES: dict[str, Callable[..., Engine]] = {"vllm": VllmEngine, "sim": SimEngine}


def create_engine(kind: str, **kwargs) -> Engine:
    """Builds an engine by name ("vllm" or "sim")."""
    factory = ENGINES.get(kind)
    if factory is None:
        raise ValueError(f"unknown engine {kind!r} (expected 'vllm' or 'sim')")
    return factory(**kwargs)
