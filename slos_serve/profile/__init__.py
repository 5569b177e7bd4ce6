"""`slos-serve profile`: measure the engine's batch times and fit the performance model.

Modules, one job each: `cli` (the command line), `grid` (the workloads run on the engine),
`measure` (running them on vLLM, or evaluating the SIMULATED engine's timing model),
`samples` (the recorder's file read back), `fitting` (outliers, the fit, its meta),
`report` (the printed report), `machine` (what it was measured on), `cache` (reuse of a
measured profile: `ensure_profile`).
"""

from __future__ import annotations

from slos_serve.profile.cache import DEFAULT_OUT, ensure_profile
from slos_serve.profile.cli import add_arguments, main, run
from slos_serve.profile.fitting import split_outliers
from slos_serve.profile.machine import machine_info, model_fingerprint
from slos_serve.profile.samples import parse_sample, read_samples

__all__ = ["DEFAULT_OUT", "add_arguments", "ensure_profile", "machine_info", "main",
           "model_fingerprint", "parse_sample", "read_samples", "run",
           "split_outliers"]
