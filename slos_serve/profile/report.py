"""The profile command's printed report: what was measured, the fit, its scores, and
predicted vs measured step times for a few typical batches."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

from slos_serve.core.perf_model import BatchShape, FitReport
from slos_serve.profile.fitting import ProfileResult
from slos_serve.profile.samples import CLOCK_HELP, SHAPE_FIELDS, Sample

GroupKey = tuple[int, int, int, int]  # prefill, decode, verify tokens; requests


def pick_typical(groups: dict[GroupKey, list[Sample]]) -> list[GroupKey]:
    """One batch composition of each typical kind, the most sampled first."""
    rows = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    picks: list[GroupKey] = []

    def pick(cond: Callable[[GroupKey], bool]) -> None:
        for key, _grp in rows:
            if key not in picks and cond(key):
                picks.append(key)
                return

    pick(lambda k: k[0] == 0 and k[1] + k[2] > 0 and k[3] == 1)  # one decode
    pick(lambda k: k[0] == 0 and k[2] > 0)  # speculative verify
    pick(lambda k: k[0] == 0 and k[3] >= 16)  # a large decode batch
    pick(lambda k: 0 < k[0] <= 256 and k[1] + k[2] == 0)  # small prefill
    pick(lambda k: k[0] >= 1024 and k[1] + k[2] == 0)  # large prefill
    pick(lambda k: k[0] >= 128 and k[1] + k[2] > 0)  # mixed
    return picks


def comparison_table(report: FitReport, samples: list[Sample]) -> list[str]:
    """Predicted vs measured for a few shapes (median of the samples of each shape,
    context tokens aside)."""
    groups: dict[GroupKey, list[Sample]] = {}
    for s, t in samples:
        key = (s.prefill_tokens, s.decode_tokens, s.verify_tokens, s.num_requests)
        groups.setdefault(key, []).append((s, t))
    out = [f"{'prefill':>7} {'decode':>6} {'verify':>6} {'reqs':>4} {'context':>7} "
           f"{'n':>3} {'measured ms':>11} {'predicted ms':>12} {'err':>6}"]
    model = report.model
    for key in pick_typical(groups):
        grp = groups[key]
        ctx = int(statistics.median(s.context_tokens for s, _ in grp))
        measured = statistics.median(t for _, t in grp)
        shape = BatchShape(key[0], key[1], key[2], key[3], ctx, max(s.spec_steps for s, _ in grp))
        pred = model.predict(shape)
        out.append(f"{key[0]:>7} {key[1]:>6} {key[2]:>6} {key[3]:>4} {ctx:>7} {len(grp):>3} "
                   f"{measured * 1e3:>11.2f} {pred * 1e3:>12.2f} "
                   f"{(pred - measured) / measured:>+6.0%}")
    return out


def print_report(result: ProfileResult, args: argparse.Namespace, out: Path) -> None:
    report, model = result.report, result.report.model
    meta = model.meta
    if meta["simulated"]:
        print("SIMULATED engine (SimTiming timing model; no model ran)")
    else:
        print(f"vLLM engine: {meta['engine_version']}, {Path(args.model).name}, "
              f"{meta['machine']['cpu']} core {meta['cpu_bind']}, "
              f"{meta['duration_s']:.0f} s")
    print(f"{meta['samples']} step samples {meta['kinds']}; {len(result.outliers)} outliers "
          f"set aside (> {args.outlier_factor:g}x off a first fit)")
    print(f"clock {args.clock}: {CLOCK_HELP[args.clock]}")
    print(f"held-out R^2 = {report.r2:.3f}, max relative error = {report.max_rel_err:.1%} "
          f"({report.test_samples} held out, {report.train_samples} fitted); "
          f"R^2 over all samples incl. outliers = {result.r2_all:.3f}")
    if len(meta.get("r2_by_clock", {})) > 1:
        print("held-out R^2 of the same fit by clock: " + ", ".join(
            f"{k} {v:.3f}" for k, v in meta["r2_by_clock"].items()))
    if "wall_over_ready" in meta:
        w = meta["wall_over_ready"]
        print(f"other processes stretched steps by x{w['median']:.2f} (median), "
              f"x{w['p90']:.2f} (p90) while measuring")
    for p in model.pieces:
        terms = " + ".join(f"{w:.3g}*{n}" for w, n in zip(p.weights, SHAPE_FIELDS, strict=True)
                           if w)
        print(f"  piece: {terms or '0'} + {p.bias:.3g} s")
    print("\n".join(comparison_table(report, result.samples)))
    print(f"saved {out}")
