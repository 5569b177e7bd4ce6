"""`slos-serve make-model DIR`: builds the tiny local LLaMA model and its tokenizer.

The machines this project runs on have no network apart from package registries, so
no model can be downloaded from a hub. Instead we build one from text every Python
install carries: a fixed list of the standard library's own ``.py`` files.

* Tokenizer: byte-level BPE (``tokenizers``), vocabulary 2048, trained on that text and
  wrapped as a ``transformers.PreTrainedTokenizerFast``, so vLLM loads it like any hub
  tokenizer. Byte-level means every string round-trips exactly.
* Model: a 3.4 M-parameter ``LlamaForCausalLM`` (4 layers, hidden 256, GQA 4/2 heads,
  ``max_position_embeddings`` 2048), trained briefly on the same text. Random weights
  babble one token over and over, which makes n-gram speculative decoding look
  unrealistically good; we want code-like output and realistic acceptance. A few
  minutes of CPU training from scratch do not get there, so the embeddings and LM head
  are first fitted directly to the corpus's bigram statistics (`bigram_init`: an SVD
  and a few full-batch steps, seconds), and the short training run builds on that.
  Training windows are 512 tokens long so that prompts of several hundred tokens are in
  distribution.

The build is deterministic (fixed seeds, deterministic torch algorithms, fixed data
order) and cached: ``slos_build.json`` in DIR records a hash of the recipe (every
hyper-parameter, the corpus contents and the library versions that shape the
weights), and a DIR holding a build with the same hash is reused at once. A build is
written to a temporary sibling directory and renamed into place, so an interrupted
build never leaves a half-written model behind.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

DEFAULT_MODEL_DIR = Path(".cache/tiny-llama")
STAMP_NAME = "slos_build.json"
# Bump when the build changes in a way the recipe below does not capture.
RECIPE_VERSION = 2

# Standard-library files used as the corpus: present (as plain modules) in Python
# 3.10-3.13 and mostly ordinary code. Missing files are skipped; the recipe hash records
# what was actually read, so a different Python simply means a different (cached) build.
CORPUS_FILES: tuple[str, ...] = tuple(
    sorted(
        """
        abc.py argparse.py ast.py base64.py bisect.py calendar.py cmd.py codecs.py
        collections/__init__.py colorsys.py configparser.py contextlib.py copy.py csv.py
        dataclasses.py difflib.py dis.py enum.py filecmp.py fnmatch.py fractions.py
        functools.py gettext.py glob.py heapq.py hmac.py inspect.py ipaddress.py
        json/__init__.py json/decoder.py json/encoder.py keyword.py linecache.py
        logging/__init__.py mimetypes.py numbers.py operator.py optparse.py os.py pickle.py
        pprint.py queue.py random.py sched.py secrets.py selectors.py shlex.py shutil.py
        socket.py statistics.py string.py subprocess.py tempfile.py textwrap.py
        threading.py tokenize.py trace.py traceback.py types.py typing.py uuid.py
        warnings.py weakref.py
        """.split()
    )
)

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, PAD)  # ids 0, 1, 2
VOCAB_SIZE = 2048
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

# Training on top of the bigram initialisation (see `bigram_init`): 240 steps of 2048
# tokens, about 0.8 of an epoch of the ~0.63 M-token corpus. Sized so the whole build takes
# about 2 minutes on an idle 2-core machine (the budget is ~3 minutes).
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

Log = Callable[[str], None]


def _print(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------- corpus and recipe


def corpus_paths() -> list[Path]:
    """The corpus files that exist in this Python's standard library, in fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [root / rel for rel in CORPUS_FILES if (root / rel).is_file()]


def load_corpus() -> list[str]:
    """Reads the corpus; decoding errors are replaced rather than fatal, for odd installs."""
    return [p.read_text(encoding="utf-8", errors="replace") for p in corpus_paths()]


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
                      "special_tokens": list(SPECIAL_TOKENS)},
        "corpus": corpus,
        "versions": versions,
    }


def recipe_hash(rec: dict[str, Any]) -> str:
    """A stable digest of `recipe(...)`: what the cache stamp compares."""
    return hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()


def read_stamp(model_dir: Path) -> dict[str, Any] | None:
    """The build stamp of `model_dir`, or None if there is no readable one."""
    try:
        return json.loads((model_dir / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(model_dir: Path, want_hash: str) -> bool:
    """Whether `model_dir` holds a finished build of the recipe `want_hash`."""
    stamp = read_stamp(model_dir)
    if not stamp or stamp.get("recipe_hash") != want_hash:
        return False
    needed = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    return all((model_dir / name).is_file() for name in needed)


# ---------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str]) -> Any:
    """Trains the byte-level BPE tokenizer and wraps it for `transformers` (and vLLM).

    The post-processor prepends BOS, as LLaMA tokenizers do, so prompts sent to vLLM
    look like the training windows (which all start with BOS).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

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
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=MAX_MODEL_LEN,
        # Byte-level decoding is already exact; the "clean-up" would alter code like " ,".
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )


# ---------------------------------------------------------------- training


@contextlib.contextmanager
def _deterministic_torch(seed: int) -> Iterator[None]:
    """Seeds torch, enables deterministic algorithms and caps threads; restores all after.

    Restoring matters because `build_model` may run inside a longer-lived process
    (the test session).
    """
    import torch

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


def _lr_factor(step: int, total: int) -> float:
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
    import torch

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


def train_model(token_ids: list[int], *, train_steps: int, seed: int, log: Log) -> Any:
    """Creates the LLaMA model from `seed`, bigram-initialises it and trains it on
    random windows of `token_ids`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**MODEL_CONFIG)
    config._attn_implementation = "sdpa"  # faster than eager here, and also deterministic
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    data = torch.tensor(token_ids, dtype=torch.long)
    seq_len, batch = TRAIN["seq_len"], TRAIN["batch_size"]
    log(f"make-model: {n_params / 1e6:.2f} M parameters, {len(data)} corpus tokens, "
        f"{train_steps} steps of {batch}x{seq_len} tokens")
    bigram_init(model, data, log)

    # The embeddings and head already hold the bigram fit: a 10x smaller learning rate
    # keeps it while the blocks learn (measured: slightly better than one rate for all).
    groups: dict[tuple[float, float], list[Any]] = {}
    for name, param in model.named_parameters():
        lr = TRAIN["lr"] * (TRAIN["head_lr_mult"] if name.endswith(
            ("embed_tokens.weight", "lm_head.weight")) else 1.0)
        decay = TRAIN["weight_decay"] if param.dim() >= 2 else 0.0
        groups.setdefault((lr, decay), []).append(param)
    opt = torch.optim.AdamW(
        [{"params": ps, "lr": lr, "peak_lr": lr, "weight_decay": wd}
         for (lr, wd), ps in groups.items()],
        betas=TRAIN["betas"], foreach=False,
    )
    gen = torch.Generator().manual_seed(seed + 1)
    bos = torch.full((batch, 1), MODEL_CONFIG["bos_token_id"], dtype=torch.long)
    offsets = torch.arange(seq_len - 1)
    model.train()
    start = time.monotonic()
    every = max(1, min(20, train_steps // 10))
    recent: list[float] = []
    for step in range(train_steps):
        factor = _lr_factor(step, train_steps)
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


# ---------------------------------------------------------------- build


def _pid_alive(pid: int) -> bool:
    """Whether `pid` runs on this host: temp dirs of live builds must not be removed."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(out_dir: Path) -> None:
    """Removes temp dirs left by builds of `out_dir` that were killed (their pid is gone)."""
    pattern = re.compile(rf"^\.{re.escape(out_dir.name)}\.(?:tmp|old)-(\d+)-")
    for entry in out_dir.parent.iterdir():
        m = pattern.match(entry.name)
        if m and entry.is_dir() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Hides the one-shard "Writing model shards" bar, which only clutters the build log."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _make_readable(model_dir: Path) -> None:
    """Gives the build normal permissions: mkdtemp makes 0700 dirs, some writers 0600 files.

    Engines may run as another user than the one who ran `make model`.
    """
    umask = os.umask(0)
    os.umask(umask)
    model_dir.chmod(0o777 & ~umask)
    for p in model_dir.iterdir():
        if p.is_file():
            p.chmod(0o666 & ~umask)


def _files_sha256(model_dir: Path) -> dict[str, str]:
    """File digests for the stamp, so a corrupted or hand-edited build can be spotted."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(model_dir.iterdir())
        if p.is_file() and p.name != STAMP_NAME
    }


def build_model(
    out_dir: Path,
    *,
    train_steps: int = DEFAULT_TRAIN_STEPS,
    seed: int = 0,
    force: bool = False,
    log: Log | None = _print,
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
    if not force and _is_complete(out_dir, want):  # the common case: no lock needed
        say(f"make-model: {out_dir} is up to date (cached, recipe {want[:12]})")
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Test sessions and `make` targets may build the same DIR at the same time: one
    # builds, the others wait and then find it cached.
    with _build_lock(out_dir, say):
        return _build_locked(out_dir, rec, want, train_steps=train_steps, seed=seed,
                             force=force, say=say)


@contextlib.contextmanager
def _build_lock(out_dir: Path, say: Log) -> Iterator[None]:
    """An exclusive flock on a hidden sibling file of `out_dir`, released on exit."""
    import fcntl

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


def _build_locked(
    out_dir: Path, rec: dict[str, Any], want: str, *, train_steps: int, seed: int,
    force: bool, say: Log,
) -> Path:
    """`build_model` once it holds the build lock of `out_dir`."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileExistsError(f"{out_dir} exists and is not a directory")
        if not force and _is_complete(out_dir, want):
            say(f"make-model: {out_dir} is up to date (cached, recipe {want[:12]})")
            return out_dir
        if any(out_dir.iterdir()) and read_stamp(out_dir) is None:
            raise FileExistsError(
                f"{out_dir} is not empty and holds no {STAMP_NAME}: not replacing it; "
                "remove it or choose another directory"
            )

    t0 = time.monotonic()
    _remove_stale_temps(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{os.getpid()}-",
                                dir=out_dir.parent))
    try:
        say(f"make-model: building into {out_dir} (recipe {want[:12]})")
        texts = load_corpus()
        with _deterministic_torch(seed):
            tokenizer = train_tokenizer(texts)
            eos = MODEL_CONFIG["eos_token_id"]
            token_ids: list[int] = []
            # The raw backend: no BOS per file, and no warning about files longer than 2048.
            for enc in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False):
                token_ids += enc.ids + [eos]
            say(f"make-model: tokenizer trained ({tokenizer.backend_tokenizer.get_vocab_size()}"
                f" tokens, {sum(map(len, texts)) / len(token_ids):.2f} chars/token)")
            model = train_model(token_ids, train_steps=train_steps, seed=seed, log=say)
            final_loss = _eval_loss(model, token_ids)
        with _quiet_progress_bars():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        _make_readable(tmp)
        files = _files_sha256(tmp)
        stamp = {
            "recipe_hash": want,
            "recipe": rec,
            "files_sha256": files,
            "final_loss": final_loss,
            "build_seconds": round(time.monotonic() - t0, 1),
        }
        # Written last: its presence marks a complete build.
        (tmp / STAMP_NAME).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
        _install(tmp, out_dir, want)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size_mb = sum(p.stat().st_size for p in out_dir.iterdir()) / 1e6
    say(f"make-model: wrote {out_dir} ({size_mb:.1f} MB, eval loss {final_loss:.3f}) "
        f"in {time.monotonic() - t0:.0f} s")
    return out_dir


def _eval_loss(model: Any, token_ids: list[int]) -> float:
    """Mean loss over a few fixed windows: a quick, deterministic quality number for logs."""
    import torch

    seq_len = TRAIN["seq_len"]
    n = max(1, min(8, (len(token_ids) - 1) // seq_len))
    stride = (len(token_ids) - seq_len) // n
    bos = MODEL_CONFIG["bos_token_id"]
    x = torch.tensor(
        [[bos] + token_ids[i * stride : i * stride + seq_len - 1] for i in range(n)]
    )
    with torch.no_grad():
        return round(float(model(input_ids=x, labels=x).loss), 4)


def _install(tmp: Path, out_dir: Path, want: str) -> None:
    """Moves the finished build `tmp` to `out_dir`, replacing an older build there.

    Each rename is atomic; if another process installed the same recipe meanwhile,
    its copy is kept and ours discarded.
    """
    old: Path | None = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-{os.getpid()}-",
                                    dir=out_dir.parent))
        os.rename(out_dir, old / "model")
    try:
        os.rename(tmp, out_dir)
    except OSError:
        if _is_complete(out_dir, want):  # a concurrent build of the same recipe won
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `slos-serve make-model`."""
    parser.add_argument(
        "dir", nargs="?", type=Path, default=DEFAULT_MODEL_DIR,
        help=f"output directory (default: {DEFAULT_MODEL_DIR})",
    )
    parser.add_argument(
        "--train-steps", type=int, default=DEFAULT_TRAIN_STEPS,
        help=f"training steps after the bigram initialisation (default: {DEFAULT_TRAIN_STEPS})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and data order")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")


def run(args: argparse.Namespace) -> int:
    """Entry point of `slos-serve make-model`; returns the exit status."""
    # Idle OpenMP threads must sleep, not spin: on a small machine shared with engines and
    # tests, spinning threads made training 3-4x slower. Only effective before torch loads.
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Turn SIGTERM into SystemExit so that the temporary build directory is removed.
    previous = None
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        previous = signal.signal(
            signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        build_model(args.dir, train_steps=args.train_steps, seed=args.seed, force=args.force)
    except (FileExistsError, ValueError) as exc:
        print(f"slos-serve make-model: {exc}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0
