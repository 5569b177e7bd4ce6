"""The tiny model's weights: a LLaMA created from a seed, bigram-initialised, then trained.

Random weights babble one token over and over, which makes n-gram speculative decoding
look unrealistically good; we want code-like output and realistic acceptance. A few
minutes of CPU training from scratch do not get there, so the embeddings and LM head are
first fitted directly to the corpus's bigram statistics (`bigram_init`: an SVD and a few
full-batch steps, seconds), and the short training run builds on that. Training windows
are 512 tokens long so that prompts of several hundred tokens are in distribution.

Deterministic: fixed seeds, deterministic torch algorithms (`deterministic_torch`) and a
fixed data order.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from slos_serve.model.recipe import BIGRAM_INIT, MAX_THREADS, MODEL_CONFIG, TRAIN, Log


@contextlib.contextmanager
def deterministic_torch(seed: int) -> Iterator[None]:
    """Seeds torch, enables deterministic algorithms and caps threads; restores all after.

    Restoring matters because `build_model` may run inside a longer-lived process
    (the test session).
    """
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(max(1, min(MAX_THREADS, os.cpu_count() or 1)))
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)


def lr_factor(step: int, total: int) -> float:
    """Linear warm-up, then cosine decay to `min_lr_frac` of the peak."""
    warm, floor = TRAIN["warmup_steps"], TRAIN["min_lr_frac"]
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def bigram_init(model: Any, data: Any, log: Log) -> float:
    """Sets the embeddings and LM head so the untrained model already predicts bigrams.

    Why: from a random start, the ~3 minutes of CPU training we can afford only get
    this model just past the unigram plateau (loss ~5, greedy output "the the the"). The
    next-token statistics of the corpus, however, can be computed directly: with
    the residual blocks silent, logits = head @ rmsnorm(embed[prev]), so fitting
    `embed` and `head` to the smoothed bigram table is a small full-batch problem
    (an SVD of the centred log-probabilities, refined by a few Adam steps on the exact
    cross-entropy). Training then starts at bigram quality (~3.75) and spends its
    steps on what needs context. Returns the bigram cross-entropy reached.
    """
    vocab = MODEL_CONFIG["vocab_size"]
    hidden = MODEL_CONFIG["hidden_size"]
    eps = model.config.rms_norm_eps
    counts = torch.bincount(data[:-1] * vocab + data[1:], minlength=vocab * vocab)
    counts = counts.view(vocab, vocab).double()
    unigram = (counts.sum(0) + 1) / (counts.sum() + vocab)
    alpha = BIGRAM_INIT["smoothing"]
    logp = ((counts + alpha * unigram) / (counts.sum(1, keepdim=True) + alpha)).log()
    logp -= logp.mean(1, keepdim=True)  # softmax ignores row offsets; centring helps rank
    u, sv, vh = torch.linalg.svd(logp.float())
    emb = (u[:, :hidden] * sv[:hidden].sqrt()).contiguous().requires_grad_()
    head = (vh[:hidden].T * sv[:hidden].sqrt()).contiguous().requires_grad_()
    weights = (counts / counts.sum()).float()
    opt = torch.optim.Adam([emb, head], lr=BIGRAM_INIT["lr"], foreach=False)
    loss = torch.tensor(float("nan"))
    for _ in range(BIGRAM_INIT["steps"]):
        normed = emb * torch.rsqrt(emb.pow(2).mean(1, keepdim=True) + eps)
        loss = -(weights * torch.log_softmax(normed @ head.T, dim=1)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        # RMSNorm makes the embedding scale free; rms 1 keeps the blocks' first updates
        # small beside it, so early training does not wash the bigrams out.
        model.model.embed_tokens.weight.copy_(
            emb * torch.rsqrt(emb.pow(2).mean(1, keepdim=True) + eps))
        model.lm_head.weight.copy_(head)
        # Silent residual blocks at the start (each block is the identity): the model
        # is then exactly the bigram model, and the blocks learn what it lacks.
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    bigram_loss = loss.item()
    log(f"make-model: bigram initialisation, loss {bigram_loss:.3f}")
    return bigram_loss


def new_model(seed: int) -> Any:
    """The untrained LlamaForCausalLM of `MODEL_CONFIG`, its weights drawn from `seed`."""
    config = LlamaConfig(**MODEL_CONFIG)
    config._attn_implementation = "sdpa"  # faster than eager here, and also deterministic
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(torch.float32)


def make_optimizer(model: Any) -> Any:
    """AdamW with a 10x smaller learning rate for the embeddings and head.

    They already hold the bigram fit: the smaller rate keeps it while the blocks learn
    (measured: slightly better than one rate for all). Each group keeps its `peak_lr`
    for the schedule.
    """
    groups: dict[tuple[float, float], list[Any]] = {}
    for name, param in model.named_parameters():
        lr = TRAIN["lr"] * (TRAIN["head_lr_mult"] if name.endswith(
            ("embed_tokens.weight", "lm_head.weight")) else 1.0)
        decay = TRAIN["weight_decay"] if param.dim() >= 2 else 0.0
        groups.setdefault((lr, decay), []).append(param)
    return torch.optim.AdamW(
        [{"params": ps, "lr": lr, "peak_lr": lr, "weight_decay": wd}
         for (lr, wd), ps in groups.items()],
        betas=TRAIN["betas"], foreach=False,
    )


def train_model(token_ids: list[int], *, train_steps: int, seed: int, log: Log) -> Any:
    """Creates the LLaMA model from `seed`, bigram-initialises it and trains it on
    random windows of `token_ids`."""
    model = new_model(seed)
    n_params = sum(p.numel() for p in model.parameters())
    data = torch.tensor(token_ids, dtype=torch.long)
    seq_len, batch = TRAIN["seq_len"], TRAIN["batch_size"]
    log(f"make-model: {n_params / 1e6:.2f} M parameters, {len(data)} corpus tokens, "
        f"{train_steps} steps of {batch}x{seq_len} tokens")
    bigram_init(model, data, log)
    opt = make_optimizer(model)
    gen = torch.Generator().manual_seed(seed + 1)
    bos = torch.full((batch, 1), MODEL_CONFIG["bos_token_id"], dtype=torch.long)
    offsets = torch.arange(seq_len - 1)
    model.train()
    start = time.monotonic()
    every = max(1, min(20, train_steps // 10))
    recent: list[float] = []
    for step in range(train_steps):
        factor = lr_factor(step, train_steps)
        for group in opt.param_groups:
            group["lr"] = group["peak_lr"] * factor
        starts = torch.randint(0, len(data) - seq_len, (batch, 1), generator=gen)
        x = torch.cat([bos, data[starts + offsets]], dim=1)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), TRAIN["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        recent = (recent + [loss.item()])[-every:]
        if (step + 1) % every == 0 or step + 1 == train_steps:
            log(f"make-model: step {step + 1:4d}/{train_steps}  "
                f"loss {sum(recent) / len(recent):.3f}  ({time.monotonic() - start:.0f} s)")
    model.eval()
    return model


def eval_loss(model: Any, token_ids: list[int]) -> float:
    """Mean loss over a few fixed windows: a quick, deterministic quality number for logs."""
    seq_len = TRAIN["seq_len"]
    n = max(1, min(8, (len(token_ids) - 1) // seq_len))
    stride = (len(token_ids) - seq_len) // n
    bos = MODEL_CONFIG["bos_token_id"]
    x = torch.tensor(
        [[bos] + token_ids[i * stride : i * stride + seq_len - 1] for i in range(n)]
    )
    with torch.no_grad():
        return round(float(model(input_ids=x, labels=x).loss), 4)


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hides the one-shard "Writing model shards" bar, which only clutters the build log."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
