"""The tiny model's tokenizer: byte-level BPE trained on the corpus.

Vocabulary 2048, wrapped as a ``transformers.PreTrainedTokenizerFast`` so vLLM loads it
like any hub tokenizer. Byte-level means every string round-trips exactly.
"""

from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from slos_serve.model.recipe import (
    BOS,
    CHAT_TEMPLATE,
    EOS,
    MAX_MODEL_LEN,
    PAD,
    SPECIAL_TOKENS,
    VOCAB_SIZE,
)


def train_tokenizer(texts: list[str]) -> Any:
    """Trains the byte-level BPE tokenizer and wraps it for `transformers` (and vLLM).

    The post-processor prepends BOS, as LLaMA tokenizers do, so prompts sent to vLLM
    look like the training windows (which all start with BOS).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        chat_template=CHAT_TEMPLATE,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=MAX_MODEL_LEN,
        # Byte-level decoding is already exact; the "clean-up" would alter code like " ,".
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )
