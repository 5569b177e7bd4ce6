"""Shared fixtures: the tiny model, clusters (simulated and vLLM), reference outputs.

Engine starts cost ~30 s each here, so clusters are module-scoped and shared by
every test of a module; the colocated reference engine runs once per session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def model_dir() -> str:
    """The tiny local model (`make model` builds it; built here if missing)."""
    path = Path(os.environ.get("SLOS_TEST_MODEL", ROOT / ".cache" / "tiny-llama"))
    from slos_serve.model import build_model

    build_model(path)  # returns at once when the cached build is current
    return str(path)


@pytest.fixture(scope="module")
def sim_cluster(model_dir: str):
    """2 prefill + 2 decode workers on the SIMULATED engine (no model runs)."""
    from slos_serve.up import ClusterSpec, LocalCluster

    cluster = LocalCluster(ClusterSpec(model=model_dir, engine="sim", prefill=2, decode=2))
    cluster.start(timeout_s=120, progress=False)
    yield cluster
    cluster.stop()


def reference_outputs(
    model_dir: str, prompts: list[list[int]], sampling: list[dict], out_path: Path,
    engine: dict | None = None,
) -> list[list[int]]:
    """Token ids from ONE colocated vLLM engine (vLLM's defaults unless `engine` gives
    further `LLM` keywords; no KV transfer)."""
    script = ROOT / "tests" / "reference_engine.py"
    result = subprocess.run(
        [sys.executable, str(script), model_dir, str(out_path)],
        input=json.dumps({"prompts": prompts, "sampling": sampling, "engine": engine or {}}),
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    if result.returncode != 0:
        raise RuntimeError(f"reference engine failed:\n{result.stderr[-3000:]}")
    return json.loads(out_path.read_text())


# Varied prompt lengths, several longer than one KV block (16 tokens on CPU).
PROMPT_LENGTHS = (1, 5, 16, 17, 40, 100, 257, 600)
MAX_TOKENS = 24
GREEDY = {"max_tokens": MAX_TOKENS, "temperature": 0.0, "ignore_eos": True}
SEEDED = {"max_tokens": MAX_TOKENS, "temperature": 0.9, "top_p": 0.95, "seed": 1234,
          "ignore_eos": True}


@pytest.fixture(scope="session")
def prompts(model_dir: str) -> list[list[int]]:
    """Token-id prompts cut from real code, so the model continues code."""
    import inspect
    import json as json_module

    from slos_serve.tokenizer import load_tokenizer

    ids = load_tokenizer(model_dir).encode(inspect.getsource(json_module.decoder))
    return [ids[i * 7 : i * 7 + n] for i, n in enumerate(PROMPT_LENGTHS)]


@pytest.fixture(scope="session")
def reference(
    model_dir: str, prompts: list[list[int]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[list[int]]]:
    """Greedy and seeded outputs of one colocated engine, computed once per session."""
    out_path = tmp_path_factory.mktemp("reference") / "outputs.json"
    outs = reference_outputs(model_dir, prompts, [GREEDY, SEEDED], out_path)
    n = len(prompts)
    return {"greedy": outs[:n], "seeded": outs[n:]}
