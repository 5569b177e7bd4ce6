"""A performance model that learns: the profile, corrected online from the steps an engine runs.

The profile (`slos-serve profile`) times an engine alone on its core; live, the core is
shared (gRPC streaming, other engines, other processes) and steps stretch. `OnlineModel`
starts from the profiled PerfModel and refits a correction of it on every step observed
(the batch's composition, the same features the profile fits on, and its measured seconds):

    T(x) = alpha * profile(x) + delta . x + beta

alpha scales every piece of the profile (a core shared with other work slows everything),
delta and beta add a linear term to every piece (one cost grown: a prefill slope, a fixed
per-step cost). Adding the same linear term to each piece keeps the profile's maximum of
pieces, so the learned model is a PerfModel again: the type the planner and the engines'
schedulers already take.

The fit is weighted least squares on relative error (each step weighs 1 / profile(x)^2: by
the profile's prediction, not the measured seconds, or the steps before a slowdown would
outweigh the slower ones after it) with exponential forgetting (a step's weight halves every
`half_life` steps) and a ridge pull towards the profile (alpha 1, the rest 0) that does not
decay, so features the recent steps do not vary stay where the profile put them (no
covariance wind-up). Memory is its sufficient statistics (an 8x8 matrix): bounded whatever
the number of steps.

Guards: fewer than `min_samples` steps, a singular system, a fit that is not finite, or a fit
whose recent error exceeds the profile's: the profile is in force. Learned weights are
clamped at 0 (every feature is a cost), so predictions are never negative.

`error` is the live prediction error: an EWMA of |predicted - measured| / measured, each
prediction made by the model in force BEFORE the step was used to refit it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from slos_serve.core.perf_model import FEATURES, BatchShape, PerfModel, Piece

DIMS = len(FEATURES) + 2  # the profile's prediction, the features, a constant
PRIOR = np.array([1.0] + [0.0] * (DIMS - 1))
FALLBACK_MARGIN = 1.1  # the profile is back in force when the fit errs this much more than it


@dataclass(frozen=True, slots=True)
class LearningOptions:
    half_life: float = 32.0  # steps after which a step weighs half
    ridge: float = 2.0  # pull towards the profile, in steps' worth of evidence
    min_samples: int = 16  # steps before the learned model may be used
    refit_every: int = 8  # steps between refits (the solve is the costly part)
    error_alpha: float = 0.05  # EWMA weight of one step in the live error
    publish_tolerance: float = 0.03  # a refit is published once it moves a prediction so much

    @property
    def forgetting(self) -> float:
        return 0.5 ** (1.0 / self.half_life)


class OnlineModel:
    """The profile corrected from observed steps; `model` is the one to plan with."""

    def __init__(self, prior: PerfModel, options: LearningOptions = LearningOptions()) -> None:
        self.prior = prior
        self.options = options
        self.samples = 0  # steps observed
        self.error = 0.0  # live relative error of the model in force (see the module doc)
        self.prior_error = 0.0  # ... of the profile alone, on the same steps
        self.fit_error = 0.0  # ... of the latest fit, published or not
        self._a = np.zeros((DIMS, DIMS))
        self._b = np.zeros(DIMS)
        self._mean_z = np.zeros(DIMS)  # recent compositions, for publish decisions
        self._theta = PRIOR.copy()  # the latest fit
        self._fitted: PerfModel = prior
        self._model: PerfModel = prior  # in force
        self._published = PRIOR.copy()
        self._lam = options.forgetting
        self._count = 0.0  # steps observed, forgotten as their weights are

    @property
    def model(self) -> PerfModel:
        """The model in force: the profile, or the last published fit."""
        return self._model

    @property
    def learned(self) -> bool:
        return self._model is not self.prior

    def observe(self, shape: BatchShape, seconds: float) -> None:
        """One executed step: its composition and measured seconds."""
        if not (seconds > 0 and math.isfinite(seconds)):
            return
        x = shape.features()
        base = self.prior.predict(shape)
        self._track_errors(shape, base, seconds)
        z = np.array((base, *x, 1.0))
        w = 1.0 / max(base * base, 1e-18)
        lam = self._lam
        self._a *= lam
        self._a += w * np.outer(z, z)
        self._b *= lam
        self._b += (w * seconds) * z
        self._mean_z += (1.0 - lam) * (z - self._mean_z)
        self._count = lam * self._count + 1.0
        self.samples += 1
        opts = self.options
        if self.samples >= opts.min_samples and self.samples % opts.refit_every == 0:
            self._refit(z)

    def _track_errors(self, shape: BatchShape, base: float, seconds: float) -> None:
        a = self.options.error_alpha if self.samples else 1.0
        fit = base if self._fitted is self.prior else self._fitted.predict(shape)
        used = base if self._model is self.prior else fit
        self.error += a * (abs(used - seconds) / seconds - self.error)
        self.prior_error += a * (abs(base - seconds) / seconds - self.prior_error)
        self.fit_error += a * (abs(fit - seconds) / seconds - self.fit_error)

    def _refit(self, last_z: np.ndarray) -> None:
        theta = self._solve()
        if theta is None:
            return
        self._theta = theta
        self._fitted = self._as_model(theta)
        if self.fit_error > FALLBACK_MARGIN * self.prior_error + 1e-3:
            self._model = self.prior  # the fit predicts worse than the profile lately
            self._published = PRIOR.copy()
            return
        if self._moved(theta, last_z) or self._model is self.prior:
            self._model, self._published = self._fitted, theta

    def _solve(self) -> np.ndarray | None:
        """argmin sum_k lam^k w_k (z_k . t - y_k)^2 + ridge * |D (t - PRIOR)|^2, D scaling each
        parameter by its recent excitation, solved in the scaled coordinates."""
        diag = np.diag(self._a)
        weight = max(float(self._a[-1, -1]), 1e-300)  # sum of weights (the constant column)
        scale = np.sqrt(np.maximum(diag / weight, 1e-300))
        excited = diag > 1e-12 * weight
        a = self._a / np.outer(scale, scale)
        b = self._b / scale
        prior = PRIOR * scale
        ridge = self.options.ridge * weight / max(self._count, 1.0)  # per step's weight
        m = a + ridge * np.eye(DIMS)
        try:
            u = np.linalg.solve(m, b + ridge * prior)
        except np.linalg.LinAlgError:
            return None
        theta = np.where(excited, u / scale, PRIOR)
        return theta if np.all(np.isfinite(theta)) else None

    def _moved(self, theta: np.ndarray, last_z: np.ndarray) -> bool:
        """Whether the fit moves the prediction of the recent compositions (their mean, and
        the last step) by more than the publish tolerance."""
        tol = self.options.publish_tolerance
        for z in (self._mean_z, last_z):
            old = float(z @ self._published)
            if abs(float(z @ theta) - old) > tol * max(abs(old), 1e-9):
                return True
        return False

    def _as_model(self, theta: np.ndarray) -> PerfModel:
        alpha, delta, beta = max(float(theta[0]), 0.0), theta[1:-1], float(theta[-1])
        pieces = [
            Piece(tuple(max(alpha * w + float(d), 0.0) for w, d in zip(p.weights, delta,
                                                                     strict=True)),
                  max(alpha * p.bias + beta, 0.0))
            for p in self.prior.pieces
        ]
        return PerfModel(
            pieces=pieces,
            name=f"{self.prior.name or 'profile'} (learned)",
            source=f"refitted online from {self.samples} steps on {self.prior.name or 'a profile'}",
            meta={"learned_from": self.prior.name, "samples": self.samples},
        )
