"""`slos-serve make-model DIR`: builds the tiny local LLaMA model and its tokenizer.

The machines this project runs on have no network apart from package registries, so
no model can be downloaded from a hub. Instead we build one from text every Python
install carries: a fixed list of the standard library's own ``.py`` files.

* Tokenizer: byte-level BPE (``tokenizers``), vocabulary 2048, trained on that text and
  wrapped as a ``transformers.PreTrainedTokenizerFast``, so vLLM loads it like any hub
  tokenizer. Byte-level means every string round-trips exactly.
* Model: a 3.4 M-parameter ``LlamaForCausalLM`` (4 layers, hidden 256, GQA 4/2 heads,
  ``max_position_embeddings`` 2048), bigram-initialised, then trained briefly on the
  same text (see `train`).

The build is deterministic (fixed seeds, deterministic torch algorithms, fixed data
order) and cached: ``slos_build.json`` in DIR records a hash of the recipe (every
hyper-parameter, the corpus contents and the library versions that shape the
weights), and a DIR holding a build with the same hash is reused at once. A build is
written to a temporary sibling directory and renamed into place, so an interrupted
build never leaves a half-written model behind.

Modules, one job each: `corpus` (the training text), `recipe` (hyper-parameters and their
hash), `bpe` (the tokenizer), `train` (the weights), `store` (stamp, lock, atomic
install), `build` (one build from start to end), `cli` (the command line).
"""

from __future__ import annotations

from slos_serve.model.build import build_model
from slos_serve.model.cli import add_arguments, run
from slos_serve.model.corpus import corpus_paths
from slos_serve.model.recipe import DEFAULT_MODEL_DIR, STAMP_NAME, recipe, recipe_hash
from slos_serve.model.store import read_stamp

__all__ = ["DEFAULT_MODEL_DIR", "STAMP_NAME", "add_arguments", "build_model", "corpus_paths",
           "read_stamp", "recipe", "recipe_hash", "run"]
