"""A measured profile kept for reuse: `ensure_profile` measures only when the cached one
was measured for another model build or another kind of machine (for `make run`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from slos_serve.core.perf_model import PerfModel
from slos_serve.profile.machine import machine_info, model_fingerprint
from slos_serve.profile.measure import log

DEFAULT_OUT = Path(".cache/profile-cpu.json")


def profile_matches(path: str | Path, model_dir: str | Path) -> bool:
    """True if `path` holds a vLLM profile measured for this model build on a machine
    like this one (same CPU model and core count)."""
    try:
        meta = PerfModel.load(path).meta
    except (OSError, ValueError, KeyError, TypeError):
        return False
    here, there = machine_info(), meta.get("machine") or {}
    return (
        meta.get("engine") == "vllm"
        and not meta.get("simulated")
        and meta.get("model_fingerprint") == model_fingerprint(model_dir)
        and (there.get("cpu"), there.get("cores")) == (here["cpu"], here["cores"])
    )


def ensure_profile(
    model_dir: str | Path,
    path: str | Path = DEFAULT_OUT,
    *,
    quick: bool = False,
    timeout_s: float = 600.0,
) -> Path:
    """The cached profile at `path` if it was measured for this model build on this kind
    of machine, else a new one measured with the vLLM engine in a subprocess (vLLM
    spawns processes and binds cores; the caller's process stays as it is)."""
    path = Path(path)
    if path.exists():
        if profile_matches(path, model_dir):
            return path
        log(f"{path} was measured for another model or machine: measuring again")
    cmd = [sys.executable, "-m", "slos_serve.cli", "profile", "--engine", "vllm",
           "--model", str(model_dir), "--out", str(path)]
    if quick:
        cmd.append("--quick")
    subprocess.run(cmd, check=True, timeout=timeout_s)
    return path
