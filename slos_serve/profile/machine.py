"""What a profile was measured on: the machine, the core, the model build, the libraries.

A profile is only reused (`cache.profile_matches`) for the same model build on the same
kind of machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from slos_serve.model.recipe import STAMP_NAME


def machine_info() -> dict[str, Any]:
    """Host name, CPU model, core count, platform and Python version of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "hostname": socket.gethostname(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def idle_ticks() -> dict[int, int]:
    """Idle (and iowait) clock ticks per core so far, from /proc/stat."""
    idle = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *vals = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            idle[int(name[3:])] = int(vals[3]) + int(vals[4])  # idle + iowait
    return idle


def pick_core(window_s: float = 1.0) -> str:
    """The core that was idle longest over `window_s` (others' engines may be bound to
    some cores of a shared machine); "0" where /proc/stat is unavailable."""
    try:
        before = idle_ticks()
        time.sleep(window_s)
        after = idle_ticks()
        allowed = os.sched_getaffinity(0)
    except (OSError, AttributeError):
        return "0"
    cores = [c for c in after if c in before and c in allowed]
    return str(max(cores, key=lambda c: after[c] - before[c])) if cores else "0"


def model_fingerprint(model_dir: str | Path) -> str:
    """Identifies a model build: its stamp's recipe hash, else hashes of its small files
    and the weights' sizes."""
    d = Path(model_dir)
    stamp = d / STAMP_NAME
    h = hashlib.sha256()
    try:
        s = json.loads(stamp.read_text())
        h.update(json.dumps(s.get("files_sha256") or s, sort_keys=True).encode())
        return h.hexdigest()[:16]
    except (OSError, ValueError):
        pass
    for p in sorted(d.glob("*")):
        if p.is_file():
            h.update(p.name.encode())
            if p.stat().st_size < 1 << 20:
                h.update(p.read_bytes())
            else:
                h.update(str(p.stat().st_size).encode())
    return h.hexdigest()[:16]


def package_version(*names: str) -> str:
    """"NAME VERSION" of the first of `names` that is installed, else "unknown"."""
    for name in names:
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return "unknown"
