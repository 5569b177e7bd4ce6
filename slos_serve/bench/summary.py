"""Summaries of records: attainment, goodput, latency percentiles; the printed table. Pure.

Definitions as in the simulator (`slos_serve.sim.metrics`): attainment = attained / sent
(rejected, failed, unfinished and never-sent requests count as missed); goodput = attained
requests per second of the arrival window (the last scheduled arrival; at least 1 s).
Percentiles are over finished requests (TTFT, TPOT of the whole request), per tier.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

Key = tuple[str, str, float]  # (system, scenario, rate)


def _pct(xs: Sequence[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


def _group(records: Iterable[dict[str, Any]]) -> dict[Key, list[dict[str, Any]]]:
    groups: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["system"], r["scenario"], float(r["rate"]))].append(r)
    return groups


def window_s(records: Sequence[dict[str, Any]]) -> float:
    """The arrival window of a run: its last scheduled arrival, at least 1 s."""
    return max([1.0, *(r["arrival"] for r in records)])


def stats(records: Sequence[dict[str, Any]], window: float) -> dict[str, Any]:
    """Attainment, goodput and percentiles of a set of requests."""
    done = [r for r in records if r["finished"]]
    ttft = [r["ttft_ms"] for r in done if r["ttft_ms"] is not None]
    tpot = [r["tpot_ms"] for r in done if r["tpot_ms"] is not None]
    attained = sum(bool(r["attained"]) for r in records)
    n = len(records)
    out: dict[str, Any] = {
        "sent": n,
        "attained": attained,
        "attainment": attained / n if n else 0.0,
        "goodput": attained / window if window > 0 else 0.0,
        "finished": len(done),
        "errors": sum(bool(r["error"]) for r in records),
        "decisions": dict(Counter(r["decision"] or "none" for r in records)),
    }
    for name, xs in (("ttft_ms", ttft), ("tpot_ms", tpot)):
        for q in (50, 90, 99):
            out[f"{name}_p{q}"] = _pct(xs, q)
    return out


def summarize(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (system, scenario, rate): overall and per-tier statistics."""
    out = []
    for (system, scenario, rate), rs in sorted(_group(records).items()):
        w = window_s(rs)
        tiers = sorted({r["tier"] for r in rs})
        out.append({
            "system": system,
            "scenario": scenario,
            "rate": rate,
            "window_s": w,
            **stats(rs, w),
            "tiers": {t: stats([r for r in rs if r["tier"] == t], w) for t in tiers},
        })
    return out


def _ms(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.0f}"


def table(summary: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table: one line per system/scenario/rate, one more per tier."""
    head = (f"{'system':<11} {'scenario':<13} {'rate':>5} {'tier':<9} {'sent':>4} "
            f"{'attain':>7} {'goodput':>7}  {'TTFT ms p50/p90/p99':>20}  "
            f"{'TPOT ms p50/p90/p99':>20}  decisions / errors")
    lines = [head, "-" * len(head)]
    for s in summary:
        rows = [("all", s)] + (list(s["tiers"].items()) if len(s["tiers"]) > 1 else [])
        for tier, st in rows:
            ttft = "/".join(_ms(st[f"ttft_ms_p{q}"]) for q in (50, 90, 99))
            tpot = "/".join(_ms(st[f"tpot_ms_p{q}"]) for q in (50, 90, 99))
            dec = ",".join(f"{k}:{v}" for k, v in sorted(st["decisions"].items()))
            first = tier == "all"
            lines.append(
                f"{s['system'] if first else '':<11} {s['scenario'] if first else '':<13} "
                f"{format(s['rate'], 'g') if first else '':>5} {tier:<9} {st['sent']:>4} "
                f"{100 * st['attainment']:>6.1f}% {st['goodput']:>7.2f}  {ttft:>20}  "
                f"{tpot:>20}  {dec} / {st['errors']}")
    return "\n".join(lines)
