"""From step samples to the profile: outliers set aside, the fit, its scores and its meta.

Which step time is fitted (`--clock`): by default "ready", the wall time less the time
the worker sat runnable while other processes held its core. On a machine shared with
other work those waits stretch steps at random (x2 for one step in ten was seen here);
"ready" is the step on a core of its own, and the meta gives the held-out R^2 of the
same fit on plain wall time and on CPU time too, and how much steps were stretched.
Samples more than `--outlier-factor` times off a first fit are set aside and counted.
"""

from __future__ import annotations

import argparse
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from slos_serve.core.perf_model import BatchShape, FitReport, PerfModel, fit
from slos_serve.profile.machine import machine_info, model_fingerprint
from slos_serve.profile.measure import log, measure_sim, measure_vllm
from slos_serve.profile.samples import CLOCK_HELP, CLOCKS, Sample, step_seconds, to_sample

KINDS = ("prefill", "decode", "verify", "mixed")


@dataclass
class ProfileResult:
    report: FitReport  # fitted and scored on `samples`
    samples: list[Sample]  # kept
    outliers: list[Sample]  # dropped before the fit
    r2_all: float  # the fitted model over every sample, outliers included


def kind_of(s: BatchShape) -> str:
    """Which of `KINDS` a batch is."""
    if s.prefill_tokens and (s.decode_tokens or s.verify_tokens):
        return "mixed"
    if s.prefill_tokens:
        return "prefill"
    return "verify" if s.verify_tokens else "decode"


def count_kinds(samples: list[Sample]) -> dict[str, int]:
    kinds = dict.fromkeys(KINDS, 0)
    for s, _ in samples:
        kinds[kind_of(s)] += 1
    return kinds


def r_squared(model: PerfModel, samples: list[Sample]) -> float:
    ys = [t for _, t in samples]
    mean = sum(ys) / len(ys)
    ss_tot = sum((y - mean) ** 2 for y in ys)
    ss_res = sum((model.predict(s) - t) ** 2 for s, t in samples)
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


def split_outliers(
    samples: list[Sample], factor: float, pieces: int = 2
) -> tuple[list[Sample], list[Sample]]:
    """Samples more than `factor` times off a first fit over all of them: on a shared
    machine, steps during which other processes held the engine's core (a 256-token
    prefill taking 1.5 s instead of 20 ms). They measure the neighbours, not the batch."""
    if factor <= 0:
        return samples, []
    first = fit(samples, pieces=pieces, holdout=0.0).model
    kept, dropped = [], []
    for s, t in samples:
        ratio = t / max(first.predict(s), 1e-9)
        (kept if 1.0 / factor <= ratio <= factor else dropped).append((s, t))
    return kept, dropped


def measure(args: argparse.Namespace, t0: float) -> tuple[list[dict], dict]:
    """The recorder's records and their meta, within the time limit."""
    if args.engine == "sim":
        return measure_sim(args)
    limit = args.time_limit_s or (55.0 if args.quick else 175.0)
    # leave time for vLLM's shutdown (up to ~6 s) and the fit
    return measure_vllm(args, deadline=t0 + limit - 9.0)


def compare_clocks(
    records: list[dict], args: argparse.Namespace, r2: float
) -> tuple[dict[str, float], dict | None]:
    """The held-out R^2 of the same fit on every clock the recorder measured, and how much
    other processes stretched the steps (None where the recorder measured wall time only)."""
    r2_by_clock = {args.clock: round(r2, 4)}
    if "wait_seconds" not in records[0]:
        return r2_by_clock, None
    for clock in CLOCKS:
        if clock != args.clock:
            kept, _ = split_outliers([to_sample(r, clock) for r in records],
                                     args.outlier_factor, args.pieces)
            r2_by_clock[clock] = round(fit(kept, pieces=args.pieces, seed=args.seed).r2, 4)
    stretch = sorted(step_seconds(r) / step_seconds(r, "ready") for r in records)
    return r2_by_clock, {
        "median": round(stretch[len(stretch) // 2], 3),
        "p90": round(stretch[int(len(stretch) * 0.9)], 3),
        "note": "how much other processes stretched step times while measuring",
    }


def describe_source(
    fitted: str, meta: dict, args: argparse.Namespace, machine: dict, when: str
) -> str:
    """The profile's `source`: what was measured where, then the fit's own description."""
    if meta["simulated"]:
        return (f"SIMULATED engine (SimTiming), no model ran; {fitted}; "
                f"slos-serve profile --engine sim, {when}")
    return (
        f"measured by slos-serve profile on {machine['hostname']} ({machine['cpu']}, "
        f"core {meta['cpu_bind']}), {meta['engine_version']}, model "
        f"{Path(args.model).name}, {'quick' if args.quick else 'full'} grid; "
        f"{fitted}; {when}"
    )


def profile_name(args: argparse.Namespace, meta: dict) -> str:
    model = Path(args.model).name if args.model else "sim"
    if meta["simulated"]:
        return f"{model}-SIMULATED"
    return f"{model}-vllm-cpu-{socket.gethostname()}"


def measure_and_fit(args: argparse.Namespace, t0: float | None = None) -> ProfileResult:
    """Measures (or, for the simulated engine, evaluates) and fits; the model's name,
    source and meta say what was measured where."""
    t0 = time.monotonic() if t0 is None else t0
    records, meta = measure(args, t0)
    every = [to_sample(r, args.clock) for r in records]
    if len(every) < 10:
        raise SystemExit(f"profile: only {len(every)} samples were recorded")
    samples, outliers = split_outliers(every, args.outlier_factor, args.pieces)
    log(f"fitting on {len(samples)} samples ({len(outliers)} outliers set aside)")
    report = fit(samples, pieces=args.pieces, seed=args.seed, name=profile_name(args, meta))
    r2_by_clock, stretch = compare_clocks(records, args, report.r2)
    if stretch is not None:
        meta["wall_over_ready"] = stretch
    meta["clock"] = args.clock
    meta["clock_meaning"] = CLOCK_HELP[args.clock]
    meta["r2_by_clock"] = r2_by_clock
    model = report.model
    machine = machine_info()
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    model.source = describe_source(model.source, meta, args, machine, when)
    r2_all = r_squared(model, every)
    meta.update(
        machine=machine,
        model=str(Path(args.model).resolve()) if args.model else None,
        model_fingerprint=model_fingerprint(args.model) if args.model else None,
        quick=bool(args.quick),
        measured_at=when,
        duration_s=round(time.monotonic() - t0, 1),
        samples=len(every),
        kinds=count_kinds(every),
        outliers=len(outliers),
        outlier_rule=f"more than {args.outlier_factor}x off a first fit" if outliers else None,
        train_samples=report.train_samples,
        test_samples=report.test_samples,
        r2_all_samples=round(r2_all, 4),
    )
    model.meta = meta
    return ProfileResult(report, samples, outliers, r2_all)
