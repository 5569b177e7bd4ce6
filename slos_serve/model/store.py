"""Where builds live on disk: the cache stamp, the build lock, and the atomic install.

A build is written to a temporary sibling directory and renamed into place, so an
interrupted build never leaves a half-written model behind; `STAMP_NAME`, written last,
marks a complete build of one recipe.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slos_serve.model.recipe import STAMP_NAME, Log

REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def read_stamp(model_dir: Path) -> dict[str, Any] | None:
    """The build stamp of `model_dir`, or None if there is no readable one."""
    try:
        return json.loads((model_dir / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None


def is_complete(model_dir: Path, want_hash: str) -> bool:
    """Whether `model_dir` holds a finished build of the recipe `want_hash`."""
    stamp = read_stamp(model_dir)
    if not stamp or stamp.get("recipe_hash") != want_hash:
        return False
    return all((model_dir / name).is_file() for name in REQUIRED_FILES)


@contextlib.contextmanager
def build_lock(out_dir: Path, say: Log) -> Iterator[None]:
    """An exclusive flock on a hidden sibling file of `out_dir`, released on exit."""
    lock_path = out_dir.parent / f".{out_dir.name}.lock"
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"make-model: waiting for another build of {out_dir}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs on this host: temp dirs of live builds must not be removed."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(out_dir: Path) -> None:
    """Removes temp dirs left by builds of `out_dir` that were killed (their pid is gone)."""
    pattern = re.compile(rf"^\.{re.escape(out_dir.name)}\.(?:tmp|old)-(\d+)-")
    for entry in out_dir.parent.iterdir():
        m = pattern.match(entry.name)
        if m and entry.is_dir() and not pid_alive(int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


def make_temp_dir(out_dir: Path, kind: str) -> Path:
    """A new hidden sibling of `out_dir` named after this process (`kind`: tmp or old), so
    `remove_stale_temps` can tell a live build's from a killed one's."""
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{kind}-{os.getpid()}-",
                                 dir=out_dir.parent))


def make_readable(model_dir: Path) -> None:
    """Gives the build normal permissions: mkdtemp makes 0700 dirs, some writers 0600 files.

    Engines may run as another user than the one who ran `make model`.
    """
    umask = os.umask(0)
    os.umask(umask)
    model_dir.chmod(0o777 & ~umask)
    for p in model_dir.iterdir():
        if p.is_file():
            p.chmod(0o666 & ~umask)


def files_sha256(model_dir: Path) -> dict[str, str]:
    """File digests for the stamp, so a corrupted or hand-edited build can be spotted."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(model_dir.iterdir())
        if p.is_file() and p.name != STAMP_NAME
    }


def write_stamp(model_dir: Path, stamp: dict[str, Any]) -> None:
    """Writes the stamp; called last, as its presence marks a complete build."""
    (model_dir / STAMP_NAME).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")


def install(tmp: Path, out_dir: Path, want: str) -> None:
    """Moves the finished build `tmp` to `out_dir`, replacing an older build there.

    Each rename is atomic; if another process installed the same recipe meanwhile,
    its copy is kept and ours discarded.
    """
    old: Path | None = None
    if out_dir.exists():
        old = make_temp_dir(out_dir, "old")
        os.rename(out_dir, old / "model")
    try:
        os.rename(tmp, out_dir)
    except OSError:
        if is_complete(out_dir, want):  # a concurrent build of the same recipe won
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
