"""What a tiny-model build is made of: its hyper-parameters, and their hash for the cache.

Everything that shapes the built files is here, so `recipe()` can record all of it and a
cached build is reused only when nothing changed.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from slos_serve.model.corpus import corpus_paths

DEFAULT_MODEL_DIR = Path(".cache/tiny-llama")
STAMP_NAME = "slos_build.json"
# Bump when the build changes in a way the recipe below does not capture.
RECIPE_VERSION = 2

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, PAD)  # ids 0, 1, 2
VOCAB_SIZE = 2048
# A plain chat template ("role: content" lines, then "assistant:"), so chat clients and
# /v1/chat/completions work on the tiny model as on any instruction-tuned one.
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
                 "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
MAX_MODEL_LEN = 2048

MODEL_CONFIG: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": MAX_MODEL_LEN,
    "bos_token_id": SPECIAL_TOKENS.index(BOS),
    "eos_token_id": SPECIAL_TOKENS.index(EOS),
    "pad_token_id": SPECIAL_TOKENS.index(PAD),
    "tie_word_embeddings": False,
}

# Training on top of the bigram initialisation (see `train.bigram_init`): 240 steps of
# 2048 tokens, about 0.8 of an epoch of the ~0.63 M-token corpus. Sized so the whole build
# takes about 2 minutes on an idle 2-core machine (the budget is ~3 minutes).
DEFAULT_TRAIN_STEPS = 240
TRAIN: dict[str, Any] = {
    "seq_len": 512,  # every window starts with BOS, as a vLLM prompt does
    "batch_size": 4,
    "lr": 3e-3,
    "head_lr_mult": 0.1,  # embeddings and LM head: already fitted by the bigram init
    "min_lr_frac": 0.1,
    "warmup_steps": 20,
    "weight_decay": 0.1,
    "betas": (0.9, 0.95),
    "grad_clip": 1.0,
}
BIGRAM_INIT: dict[str, Any] = {"smoothing": 1.0, "steps": 60, "lr": 3e-2}
# Results were bit-identical with 1 and 2 threads here; more threads would only
# crowd the other processes on a small machine.
MAX_THREADS = 2

Log = Callable[[str], None]  # where a build's progress lines go


def recipe(train_steps: int, seed: int) -> dict[str, Any]:
    """Everything that determines the built files, as plain JSON-able data.

    Library versions are read from package metadata (not by importing torch), so the
    cached path stays fast.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    corpus = {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in corpus_paths()
    }
    versions = {}
    for dist in ("torch", "transformers", "tokenizers", "safetensors"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "recipe_version": RECIPE_VERSION,
        "seed": seed,
        "train_steps": train_steps,
        "train": TRAIN,
        "bigram_init": BIGRAM_INIT,
        "model": MODEL_CONFIG,
        "tokenizer": {"type": "byte-level-bpe", "vocab_size": VOCAB_SIZE,
                      "special_tokens": list(SPECIAL_TOKENS), "chat_template": CHAT_TEMPLATE},
        "corpus": corpus,
        "versions": versions,
    }


def recipe_hash(rec: dict[str, Any]) -> str:
    """A stable digest of `recipe(...)`: what the cache stamp compares."""
    return hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()
