"""Tests for `slos-serve make-model` (the slos_serve/model package).

Builds use `train_steps=2`: the recipe (tokenizer, config, seeding, caching, atomic
install) is the same as the real build, only the training is shorter. No vLLM engine
is started here; the engine tests load the real model built by `make model`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import signal
import stat
import threading
import time
from pathlib import Path

import pytest

from slos_serve import model as mm
from slos_serve.model import store
from slos_serve.model import train as model_train
from slos_serve.model.recipe import CHAT_TEMPLATE

STEPS = 2


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(parent: Path) -> list[str]:
    """Hidden entries next to builds other than their lock files: temp or old dirs."""
    return [p.name for p in parent.iterdir()
            if p.name.startswith(".") and not p.name.endswith(".lock")]


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two independent builds of the same recipe in two fresh directories."""
    root = tmp_path_factory.mktemp("models")
    a = mm.build_model(root / "a", train_steps=STEPS, seed=0, log=None)
    b = mm.build_model(root / "b", train_steps=STEPS, seed=0, log=None)
    return a, b


def test_build_is_deterministic(builds: tuple[Path, Path]) -> None:
    a, b = builds
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _sha(a / name) == _sha(b / name), name
    stamp_a, stamp_b = mm.read_stamp(a), mm.read_stamp(b)
    assert stamp_a is not None and stamp_b is not None
    assert stamp_a["files_sha256"] == stamp_b["files_sha256"]
    assert stamp_a["recipe_hash"] == stamp_b["recipe_hash"]


def test_layout_and_config(builds: tuple[Path, Path]) -> None:
    from safetensors import safe_open

    a, _ = builds
    names = {p.name for p in a.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", mm.STAMP_NAME} <= names
    config = json.loads((a / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["vocab_size"] == 2048
    assert config["max_position_embeddings"] == 2048
    assert config["num_key_value_heads"] == 2
    assert config["dtype"] == "float32"
    with safe_open(str(a / "model.safetensors"), framework="pt") as f:
        slices = [f.get_slice(name) for name in f.keys()]
        dtypes = {str(s.get_dtype()) for s in slices}
        n_params = sum(math.prod(s.get_shape()) for s in slices)
    assert dtypes == {"F32"}
    # The bigram initialisation already puts the model far below the unigram plateau
    # (~6.3); a random model would sit at ln(2048) = 7.6.
    stamp = mm.read_stamp(a)
    assert stamp is not None and stamp["final_loss"] < 4.2
    assert 3_000_000 < n_params < 4_000_000
    # Engines may run as another user: the build gets the umask's modes, not mkdtemp's 0700.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(a).st_mode) == 0o777 & ~umask
    assert stat.S_IMODE(os.stat(a / "model.safetensors").st_mode) == 0o666 & ~umask
    # No temporary directories left next to the build (only the lock file).
    assert _leftovers(a.parent) == []


TEXTS = [
    "def add(x: int, y: int) -> int:\n    return x + y\n",
    "class Foo(Bar):\n\tpass\n\n\n# trailing spaces   \n",
    "unicode: naïve café ✓ 日本語 🚀, punctuation ( , . ) !",
    "",
    "   leading spaces and a very_long_identifier_name_that_is_not_in_the_vocab = 1",
]


def test_tokenizer_round_trips(builds: tuple[Path, Path]) -> None:
    from transformers import AutoTokenizer

    a, _ = builds
    tok = AutoTokenizer.from_pretrained(a)
    assert len(tok) == 2048
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert (tok.bos_token_id, tok.eos_token_id) == (0, 1)
    assert tok.chat_template == CHAT_TEMPLATE  # chat clients of the HTTP front use it
    assert tok.model_max_length == 2048
    for text in TEXTS:
        ids = tok(text).input_ids
        assert ids[0] == tok.bos_token_id  # like LLaMA, and like the training windows
        assert tok.decode(ids, skip_special_tokens=True) == text
    # Code compresses well enough that a prompt of several hundred tokens is ordinary text.
    code = Path(mm.corpus_paths()[0]).read_text()[:4000]
    n = len(tok(code).input_ids)
    assert 300 < n < 2048


def test_cached_build_returns_quickly(builds: tuple[Path, Path]) -> None:
    a, _ = builds
    before = {p.name: os.stat(p).st_ino for p in a.iterdir()}
    stamp_mtime = (a / mm.STAMP_NAME).stat().st_mtime_ns
    messages: list[str] = []
    start = time.monotonic()
    assert mm.build_model(a, train_steps=STEPS, seed=0, log=messages.append) == a.resolve()
    assert time.monotonic() - start < 2.0
    assert any("cached" in m for m in messages)
    assert {p.name: os.stat(p).st_ino for p in a.iterdir()} == before
    assert (a / mm.STAMP_NAME).stat().st_mtime_ns == stamp_mtime


def test_cli_reports_cached(builds: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    a, _ = builds
    parser = argparse.ArgumentParser()
    mm.add_arguments(parser)
    args = parser.parse_args([str(a), "--train-steps", str(STEPS)])
    handler = signal.getsignal(signal.SIGTERM)
    assert mm.run(args) == 0
    assert "cached" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is handler  # the CLI's handler is undone


def test_force_rebuilds_in_place(builds: tuple[Path, Path]) -> None:
    _, b = builds
    weights = _sha(b / "model.safetensors")
    old_inode = os.stat(b / "model.safetensors").st_ino
    messages: list[str] = []
    mm.build_model(b, train_steps=STEPS, seed=0, force=True, log=messages.append)
    assert not any("cached" in m for m in messages)
    assert os.stat(b / "model.safetensors").st_ino != old_inode  # really rewritten
    assert _sha(b / "model.safetensors") == weights
    assert _leftovers(b.parent) == []


def test_recipe_hash_tracks_the_recipe() -> None:
    base = mm.recipe_hash(mm.recipe(STEPS, 0))
    assert base == mm.recipe_hash(mm.recipe(STEPS, 0))
    assert base != mm.recipe_hash(mm.recipe(STEPS + 1, 0))
    assert base != mm.recipe_hash(mm.recipe(STEPS, 1))


def test_stale_build_is_not_cached(builds: tuple[Path, Path]) -> None:
    a, _ = builds
    other = mm.recipe_hash(mm.recipe(STEPS + 1, 0))
    assert not store.is_complete(a, other)


def test_refuses_to_replace_foreign_directory(tmp_path: Path) -> None:
    target = tmp_path / "not-a-model"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        mm.build_model(target, train_steps=STEPS, force=True, log=None)
    assert (target / "notes.txt").read_text() == "keep me"


def test_interrupted_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    monkeypatch.setattr(model_train, "train_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mm.build_model(tmp_path / "m", train_steps=STEPS, log=None)
    assert not (tmp_path / "m").exists()
    assert _leftovers(tmp_path) == []
    # The build's global torch settings are restored for the rest of the process.
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.get_num_threads() == threads


def test_concurrent_build_waits_for_the_lock(builds: tuple[Path, Path], tmp_path: Path) -> None:
    """A second builder of the same DIR waits, then finds the first one's build cached."""
    a, _ = builds
    target = tmp_path / "shared"
    messages: list[str] = []
    result: list[Path] = []
    with store.build_lock(target, lambda _msg: None):
        worker = threading.Thread(
            target=lambda: result.append(
                mm.build_model(target, train_steps=STEPS, log=messages.append)))
        worker.start()
        deadline = time.monotonic() + 30
        while not any("waiting" in m for m in messages) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert any("waiting" in m for m in messages)
        assert not target.exists()
        shutil.copytree(a, target)  # what the lock holder would have built
    worker.join(timeout=60)
    assert result == [target.resolve()]
    assert any("cached" in m for m in messages)
