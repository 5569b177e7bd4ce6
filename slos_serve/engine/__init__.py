"""Engines the workers run: vLLM (the real one) and a simulated one (labelled as such)."""

from slos_serve.engine.base import (
    Engine,
    EngineInfo,
    EngineLoad,
    EngineOutput,
    EngineRequest,
)

__all__ = [
    "Engine", "EngineInfo", "EngineLoad", "EngineOutput", "EngineRequest", "create_engine",
]


def create_engine(kind: str, **kwargs) -> Engine:
    """Builds an engine by name; vLLM is imported only when asked for."""
    if kind == "vllm":
        from slos_serve.engine.vllm_engine import VllmEngine

        return VllmEngine(**kwargs)
    if kind == "sim":
        from slos_serve.engine.sim_engine import SimEngine

        return SimEngine(**kwargs)
    raise ValueError(f"unknown engine {kind!r} (expected 'vllm' or 'sim')")
