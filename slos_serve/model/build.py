"""`build_model`: the tiny model and tokenizer built into a directory, or found there cached.

One build: read the corpus, train the tokenizer, tokenize the corpus, train the model,
save both into a temporary directory, stamp it, install it. Builds of one directory are
serialised by a lock; a directory holding a build of the same recipe is reused at once.

`bpe` and `train` (transformers, torch) are imported in `write_model_files`: torch must load
after `make-model` has set its OpenMP environment, and `slos-serve --help` stays fast.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from slos_serve.model.corpus import corpus_token_ids, load_corpus
from slos_serve.model.recipe import (
    DEFAULT_TRAIN_STEPS,
    MODEL_CONFIG,
    STAMP_NAME,
    Log,
    recipe,
    recipe_hash,
)
from slos_serve.model.store import (
    build_lock,
    files_sha256,
    install,
    is_complete,
    make_readable,
    make_temp_dir,
    read_stamp,
    remove_stale_temps,
    write_stamp,
)


def print_progress(msg: str) -> None:
    print(msg, flush=True)


def build_model(
    out_dir: Path,
    *,
    train_steps: int = DEFAULT_TRAIN_STEPS,
    seed: int = 0,
    force: bool = False,
    log: Log | None = print_progress,
) -> Path:
    """Builds (or reuses) the tiny model and tokenizer in `out_dir`; returns its path.

    Returns at once if `out_dir` already holds a build of the same recipe, unless
    `force`. Refuses to replace a non-empty directory that is not one of our builds,
    so a typo in DIR cannot delete unrelated files.
    """
    say: Log = log or (lambda _msg: None)
    out_dir = Path(out_dir).resolve()
    if train_steps < 0:
        raise ValueError("train_steps must be >= 0")
    rec = recipe(train_steps, seed)
    want = recipe_hash(rec)
    if not force and is_complete(out_dir, want):  # the common case: no lock needed
        say(f"make-model: {out_dir} is up to date (cached, recipe {want[:12]})")
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Test sessions and `make` targets may build the same DIR at the same time: one
    # builds, the others wait and then find it cached.
    with build_lock(out_dir, say):
        if is_cached(out_dir, want, force=force, say=say):
            return out_dir
        return build_into(out_dir, rec, want, train_steps=train_steps, seed=seed, say=say)


def is_cached(out_dir: Path, want: str, *, force: bool, say: Log) -> bool:
    """Whether `out_dir` already holds the build `want` (and `force` is off); raises if
    `out_dir` is something a build must not replace."""
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    if not force and is_complete(out_dir, want):
        say(f"make-model: {out_dir} is up to date (cached, recipe {want[:12]})")
        return True
    if any(out_dir.iterdir()) and read_stamp(out_dir) is None:
        raise FileExistsError(
            f"{out_dir} is not empty and holds no {STAMP_NAME}: not replacing it; "
            "remove it or choose another directory"
        )
    return False


def build_into(
    out_dir: Path, rec: dict[str, Any], want: str, *, train_steps: int, seed: int, say: Log,
) -> Path:
    """Builds the recipe `rec` in a temporary sibling of `out_dir` and installs it there;
    the caller holds the build lock."""
    t0 = time.monotonic()
    remove_stale_temps(out_dir)
    tmp = make_temp_dir(out_dir, "tmp")
    try:
        say(f"make-model: building into {out_dir} (recipe {want[:12]})")
        final_loss = write_model_files(tmp, train_steps=train_steps, seed=seed, say=say)
        make_readable(tmp)
        write_stamp(tmp, {
            "recipe_hash": want,
            "recipe": rec,
            "files_sha256": files_sha256(tmp),
            "final_loss": final_loss,
            "build_seconds": round(time.monotonic() - t0, 1),
        })
        install(tmp, out_dir, want)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size_mb = sum(p.stat().st_size for p in out_dir.iterdir()) / 1e6
    say(f"make-model: wrote {out_dir} ({size_mb:.1f} MB, eval loss {final_loss:.3f}) "
        f"in {time.monotonic() - t0:.0f} s")
    return out_dir


def write_model_files(tmp: Path, *, train_steps: int, seed: int, say: Log) -> float:
    """Trains the tokenizer and the model and saves both into `tmp`; returns the model's
    evaluation loss."""
    from slos_serve.model import bpe, train

    texts = load_corpus()
    with train.deterministic_torch(seed):
        tokenizer = bpe.train_tokenizer(texts)
        token_ids = corpus_token_ids(tokenizer, texts, MODEL_CONFIG["eos_token_id"])
        say(f"make-model: tokenizer trained ({tokenizer.backend_tokenizer.get_vocab_size()}"
            f" tokens, {sum(map(len, texts)) / len(token_ids):.2f} chars/token)")
        model = train.train_model(token_ids, train_steps=train_steps, seed=seed, log=say)
        final_loss = train.eval_loss(model, token_ids)
    with train.quiet_progress_bars():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return final_loss
