"""The prompt corpus: Python standard-library sources as the model's own token ids.

Real text of the kind the tiny model was trained on (so it continues code), tokenized with
the model's tokenizer exactly as vLLM loads it; prompts are cut from it (`workload.cut_prompt`).
"""

from __future__ import annotations

import importlib
import inspect
from functools import lru_cache

from slos_serve.tokenizer import load_tokenizer

MODULES = ("argparse", "inspect", "textwrap", "json.decoder", "json.encoder", "difflib",
           "dataclasses", "functools", "string", "fractions")


@lru_cache(maxsize=2)
def load_corpus(model_dir: str) -> tuple[int, ...]:
    """Token ids of the corpus (tens of thousands: every prompt fits, cut at many offsets)."""
    text = "\n\n".join(inspect.getsource(importlib.import_module(m)) for m in MODULES)
    ids = load_tokenizer(model_dir).encode(text, add_special_tokens=False, verbose=False)
    return tuple(int(t) for t in ids)
