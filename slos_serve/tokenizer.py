"""Loads the model's tokenizer (the coordinator tokenizes; engines detokenize).

`transformers` (seconds to import: it loads torch) is imported by `load_tokenizer` only.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer


@lru_cache(maxsize=4)
def load_tokenizer(model_dir: str) -> Any:
    """The Hugging Face tokenizer, exactly as vLLM loads it (special tokens included)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def load_detokenizer(model_dir: str) -> Callable[[list[int]], str]:
    """A decode function for the simulated engine.

    The `tokenizers` library loads in milliseconds where `transformers` takes
    seconds (it imports torch); a simulated worker only needs to decode.
    """
    path = Path(model_dir) / "tokenizer.json"
    if path.exists():
        return Tokenizer.from_file(str(path)).decode
    return load_tokenizer(model_dir).decode
