"""Batch execution-time model: T(batch) = max_i (w_i . features + b_i), in seconds.

Roofline-style (SLOs-Serve, scheduler/batch_timer.py): a batch is either bound by a fixed
per-step cost (weights, launch; memory-bound small batches) or by work that grows with its
tokens (compute-bound large batches); a maximum of linear pieces captures both. Features are
the batch's composition so that the same model times prefill chunks, decode steps and
speculative verification: see FEATURES.

scipy (most of a second to import) is imported by the fitting functions only: the planner and
the simulator use a fitted model and never load it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

FEATURES = (
    "prefill_tokens",  # prompt tokens computed in this batch
    "decode_tokens",  # one per decoding request without speculation
    "verify_tokens",  # tokens a speculative verify step checks (drafts + 1 per request)
    "num_requests",
    "context_tokens",  # KV tokens already cached that the batch's attention reads
    "spec_steps",  # longest draft in the batch (draft model steps run before verification)
)
PROFILE_DIR = Path(__file__).parent / "profiles"


@dataclass(frozen=True)
class BatchShape:
    prefill_tokens: int = 0
    decode_tokens: int = 0
    verify_tokens: int = 0
    num_requests: int = 0
    context_tokens: int = 0
    spec_steps: int = 0

    def features(self) -> tuple[float, ...]:
        return (
            self.prefill_tokens,
            self.decode_tokens,
            self.verify_tokens,
            self.num_requests,
            self.context_tokens,
            self.spec_steps,
        )


@dataclass
class Piece:
    weights: tuple[float, ...]  # one per FEATURES entry
    bias: float

    def at(self, x: tuple[float, ...]) -> float:
        w = self.weights
        return (
            w[0] * x[0] + w[1] * x[1] + w[2] * x[2] + w[3] * x[3] + w[4] * x[4] + w[5] * x[5]
        ) + self.bias


@dataclass
class PerfModel:
    pieces: list[Piece]
    name: str = ""
    source: str = ""
    r2: float | None = None  # on held-out samples, when fitted here
    max_rel_err: float | None = None
    meta: dict = field(default_factory=dict)

    def predict(self, shape: BatchShape) -> float:
        x = shape.features()
        return max(p.at(x) for p in self.pieces)

    def predict_tokens(self, tokens: int, spec_steps: int = 0, num_requests: int = 0) -> float:
        """Time of a batch of `tokens` generic tokens (all counted as prefill tokens)."""
        return self.predict(BatchShape(tokens, 0, 0, num_requests, 0, spec_steps))

    def prefill_capacity(self, seconds: float, base: BatchShape = BatchShape()) -> int:
        """Largest number of prefill tokens that can join `base` within `seconds`;
        -1 if `base` alone does not fit. Used to size per-batch token budgets."""
        x = base.features()
        best = math.inf
        for p in self.pieces:
            rest = p.at(x)
            if rest > seconds + 1e-12:
                return -1
            wp = p.weights[0]
            if wp > 0:
                best = min(best, (seconds - rest) / wp)
        return int(best) if best != math.inf else 1 << 30

    def zero_load_prefill(self, prompt_tokens: int, chunk: int | None = None) -> float:
        """Time to prefill one prompt on an idle engine (TTFT tiers are multiples of it)."""
        if not chunk or chunk >= prompt_tokens:
            return self.predict(BatchShape(prefill_tokens=prompt_tokens, num_requests=1))
        total, done = 0.0, 0
        while done < prompt_tokens:
            n = min(chunk, prompt_tokens - done)
            total += self.predict(BatchShape(prefill_tokens=n, num_requests=1, context_tokens=done))
            done += n
        return total

    def zero_load_decode(self, context_tokens: int = 0) -> float:
        """One decode step of a single request on an idle engine."""
        shape = BatchShape(decode_tokens=1, num_requests=1, context_tokens=context_tokens)
        return self.predict(shape)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = list(FEATURES)
        return d

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, d: dict) -> PerfModel:
        names = d.get("features", list(FEATURES))
        pieces = []
        for p in d["pieces"]:
            w = p["weights"]
            if isinstance(w, dict):  # {"prefill_tokens": 7e-5, ...}: missing features weigh 0
                w = [float(w.get(f, 0.0)) for f in FEATURES]
            else:
                by_name = dict(zip(names, w, strict=True))
                w = [float(by_name.get(f, 0.0)) for f in FEATURES]
            pieces.append(Piece(tuple(w), float(p["bias"])))
        return cls(
            pieces=pieces,
            name=d.get("name", ""),
            source=d.get("source", ""),
            r2=d.get("r2"),
            max_rel_err=d.get("max_rel_err"),
            meta=d.get("meta", {}),
        )

    @classmethod
    def load(cls, path: str | Path) -> PerfModel:
        return cls.from_dict(json.loads(Path(path).read_text()))


def load(path: str | Path) -> PerfModel:
    return PerfModel.load(path)


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


def load_profile(name: str) -> PerfModel:
    """A shipped profile by name (e.g. "opt-13b-a100"), or a path to a JSON file."""
    path = PROFILE_DIR / f"{name}.json"
    if not path.exists():
        if Path(name).exists():
            return PerfModel.load(name)
        raise KeyError(f"unknown profile {name!r}; shipped: {', '.join(list_profiles())}")
    return PerfModel.load(path)


# ---------------------------------------------------------------- fitting


@dataclass
class FitReport:
    model: PerfModel
    r2: float  # held-out
    max_rel_err: float  # held-out, |pred - y| / y
    train_samples: int
    test_samples: int


def _design(shapes: list[BatchShape]) -> np.ndarray:
    x = np.array([s.features() for s in shapes], dtype=float).reshape(-1, len(FEATURES))
    return np.hstack([x, np.ones((len(shapes), 1))])


def _nnls_piece(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative error (every weight is a cost, so >= 0;
    dividing by y keeps short batches as important as long ones)."""
    from scipy.optimize import nnls

    scale = 1.0 / np.maximum(y, 1e-9)
    col = np.maximum(np.abs(a).max(axis=0), 1e-12)
    coef, _ = nnls(a * scale[:, None] / col, y * scale)
    return coef / col


def _predict_pieces(coefs: np.ndarray, a: np.ndarray) -> np.ndarray:
    return (a @ coefs.T).max(axis=1)


def _loss_grad(
    flat: np.ndarray, a: np.ndarray, y: np.ndarray, scale: np.ndarray
) -> tuple[float, np.ndarray]:
    """Mean squared relative error of max-of-linear pieces and its (sub)gradient in the
    scaled variables: each sample pulls only on the piece that binds for it."""
    coefs = flat.reshape(-1, a.shape[1])
    vals = a @ coefs.T
    arg = vals.argmax(axis=1)
    pred = vals[np.arange(len(y)), arg]
    inv = 1.0 / np.maximum(y, 1e-9)
    err = (pred - y) * inv
    g = np.zeros_like(coefs)
    w = 2.0 * err * inv / len(y)
    for p in range(coefs.shape[0]):
        m = arg == p
        g[p] = w[m] @ a[m]
    return float((err**2).mean()), g.ravel() * scale


def _score(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return r2, float((np.abs(pred - y) / np.maximum(y, 1e-9)).max())


def _splits(a: np.ndarray) -> list[np.ndarray]:
    """Ways to split the training steps into two groups, each the start of one piece: by
    batch tokens (a small-batch floor and a compute-bound slope), and steps with a prompt
    against steps without (prefill-bound and decode-bound). One split alone sometimes led
    the refinement to a second piece no better than the first (R^2 0.76 where the other
    start gives 0.93-0.96 on the same engine)."""
    tokens = a[:, :3].sum(axis=1)
    small = tokens <= np.median(tokens)
    with_prompt = a[:, 0] > 0
    return [m for m in (small, with_prompt) if 2 <= m.sum() <= len(m) - 2]


def _two_pieces(a: np.ndarray, y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Two pieces started from one least-squares fit per group, refined jointly with
    L-BFGS-B on relative squared error."""
    from scipy.optimize import minimize

    x0 = np.concatenate([_nnls_piece(a[m], y[m]) for m in (mask, ~mask)])
    scale = np.maximum(np.abs(x0), 1e-9)
    res = minimize(lambda z: _loss_grad(z * scale, a, y, scale), x0 / scale, jac=True,
                   method="L-BFGS-B", bounds=[(0, None)] * len(x0))
    return (res.x * scale).reshape(2, -1)


def fit(
    samples: list[tuple[BatchShape, float]],
    pieces: int = 2,
    holdout: float = 0.2,
    seed: int = 0,
    name: str = "fitted",
) -> FitReport:
    """Fit max-of-linear pieces to (shape, seconds) samples; score on a held-out split.

    One piece by non-negative least squares; a second piece (a small-batch floor or a
    compute-bound slope) is refined jointly with L-BFGS-B on relative squared error and kept
    only if it lowers the training error.
    """

    if len(samples) < 4:
        raise ValueError("need at least 4 samples to fit and hold some out")
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(samples))
    n_test = max(1, int(len(samples) * holdout))
    test, train = idx[:n_test], idx[n_test:]
    a = _design([s for s, _ in samples])
    y = np.array([t for _, t in samples], dtype=float)
    a_tr, y_tr = a[train], y[train]

    one = _nnls_piece(a_tr, y_tr)[None, :]
    coefs = one

    def loss(flat: np.ndarray) -> float:
        pred = _predict_pieces(flat.reshape(-1, a.shape[1]), a_tr)
        return float((((pred - y_tr) / np.maximum(y_tr, 1e-9)) ** 2).mean())

    if pieces >= 2 and len(train) >= 2 * a.shape[1]:
        best = min((_two_pieces(a_tr, y_tr, mask) for mask in _splits(a_tr)),
                   key=lambda two: loss(two.ravel()), default=None)
        if best is not None and loss(best.ravel()) < loss(one.ravel()) * 0.98:
            coefs = best

    r2, max_rel = _score(y[test], _predict_pieces(coefs, a[test]))
    model = PerfModel(
        pieces=[Piece(tuple(float(v) for v in c[:-1]), float(c[-1])) for c in coefs],
        name=name,
        source=f"fitted on {len(train)} samples, scored on {len(test)} held out",
        r2=r2,
        max_rel_err=max_rel,
    )
    return FitReport(model, r2, max_rel, len(train), len(test))
