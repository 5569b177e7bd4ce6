"""PNG plots from records alone (matplotlib, Agg backend: no display needed).

- attainment.png: attainment against rate, one line per system, one panel per scenario;
- cdf-<scenario>.png: TTFT and TPOT CDFs per tier (rows), one line per system and rate;
- timeline-<scenario>.png: the run at the highest rate, one panel per system: per request
  a thin line from send to first token, a thick one from first to last token, coloured by
  verdict (met / missed / failed), with a tier-coloured tick at the send time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

VERDICT_COLORS = {"met": "tab:green", "missed": "tab:red", "failed": "tab:gray"}
LINESTYLES = ("-", "--", ":", "-.")


def _verdict(r: dict[str, Any]) -> str:
    if not r["finished"]:
        return "failed"
    return "met" if r["attained"] else "missed"


def _scenarios(records: Sequence[dict[str, Any]]) -> list[str]:
    return sorted({r["scenario"] for r in records})


def _systems(records: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["system"] for r in records))


def attainment_plot(summary: Sequence[dict[str, Any]], path: Path) -> Path:
    scenarios = sorted({s["scenario"] for s in summary})
    fig, axes = plt.subplots(1, len(scenarios), figsize=(5 * len(scenarios), 3.6),
                             squeeze=False)
    for ax, sc in zip(axes[0], scenarios, strict=True):
        by_system: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for s in summary:
            if s["scenario"] == sc:
                by_system[s["system"]].append((s["rate"], 100 * s["attainment"]))
        for system, pts in by_system.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=system)
        ax.axhline(90, color="gray", lw=0.8, ls="--")
        ax.set(title=sc, xlabel="rate (req/s)", ylabel="SLO attainment (%)", ylim=(-2, 102))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cdf(ax: Any, xs: Sequence[float], **kw: Any) -> None:
    if not xs:
        return
    x = np.sort(np.asarray(xs, dtype=float))
    ax.step(x, np.arange(1, len(x) + 1) / len(x), where="post", **kw)


def cdf_plot(records: Sequence[dict[str, Any]], scenario: str, path: Path) -> Path:
    rs = [r for r in records if r["scenario"] == scenario and r["finished"]]
    tiers = sorted({r["tier"] for r in records if r["scenario"] == scenario})
    systems = _systems(records)
    rates = sorted({r["rate"] for r in rs})
    colors = {s: f"C{i}" for i, s in enumerate(systems)}
    fig, axes = plt.subplots(len(tiers), 2, figsize=(10, 3.2 * len(tiers)), squeeze=False)
    for row, tier in zip(axes, tiers, strict=True):
        for system in systems:
            for k, rate in enumerate(rates):
                mine = [r for r in rs if r["tier"] == tier and r["system"] == system
                        and r["rate"] == rate]
                style = {"color": colors[system], "ls": LINESTYLES[k % len(LINESTYLES)],
                         "label": f"{system} @ {rate:g}/s"}
                _cdf(row[0], [r["ttft_ms"] for r in mine if r["ttft_ms"] is not None], **style)
                _cdf(row[1], [r["tpot_ms"] for r in mine if r["tpot_ms"] is not None], **style)
        slos = [r["stages"][0] for r in records if r["tier"] == tier and r["stages"]]
        for ax, metric in zip(row, ("TTFT", "TPOT"), strict=True):
            key = "ttft_slo_ms" if metric == "TTFT" else "tpot_slo_ms"
            vals = [s[key] for s in slos if s[key]]
            if vals:  # the SLO (median over requests: TTFT SLOs grow with the prompt)
                ax.axvline(float(np.median(vals)), color="gray", ls="--", lw=0.8)
            ax.set(title=f"{scenario} / {tier}: {metric}", xlabel=f"{metric} (ms)",
                   ylabel="fraction of requests", ylim=(0, 1.02))
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
            ax.grid(alpha=0.3)
        row[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def timeline_plot(records: Sequence[dict[str, Any]], scenario: str, path: Path,
                  rate: float | None = None) -> Path:
    rs = [r for r in records if r["scenario"] == scenario]
    rate = rate if rate is not None else max(r["rate"] for r in rs)
    rs = [r for r in rs if r["rate"] == rate]
    systems = _systems(rs)
    tiers = sorted({r["tier"] for r in rs})
    tier_colors = {t: f"C{i + 4}" for i, t in enumerate(tiers)}
    per_system = max(1, len(rs) // max(1, len(systems)))
    fig, axes = plt.subplots(len(systems), 1, squeeze=False, sharex=True,
                             figsize=(11, len(systems) * (1.4 + min(0.06 * per_system, 6))))
    for ax, system in zip(axes[:, 0], systems, strict=True):
        mine = sorted((r for r in rs if r["system"] == system), key=lambda r: r["arrival"])
        for y, r in enumerate(mine):
            color = VERDICT_COLORS[_verdict(r)]
            start = r["sent"] if r["sent"] is not None else r["arrival"]
            times = r["token_times"]
            ax.plot([r["arrival"]], [y], "|", color=tier_colors[r["tier"]], ms=6)
            if times:
                ax.plot([start, times[0]], [y, y], color=color, lw=0.8)
                ax.plot([times[0], times[-1]], [y, y], color=color, lw=2.5)
        ax.set(title=f"{system}: {scenario} at {rate:g} req/s", ylabel="request")
        ax.grid(alpha=0.3, axis="x")
    handles = [plt.Line2D([], [], color=c, lw=2.5, label=v) for v, c in VERDICT_COLORS.items()]
    handles += [plt.Line2D([], [], color=c, marker="|", ls="", label=f"tier {t}")
                for t, c in tier_colors.items()]
    axes[0, 0].legend(handles=handles, fontsize=7, loc="upper left", ncol=len(handles))
    axes[-1, 0].set_xlabel("time since start of run (s): send -> first token -> last token")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def all_plots(records: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]],
              out_dir: Path) -> list[Path]:
    """Every plot of a run; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [attainment_plot(summary, out_dir / "attainment.png")]
    for sc in _scenarios(records):
        paths.append(cdf_plot(records, sc, out_dir / f"cdf-{sc}.png"))
        paths.append(timeline_plot(records, sc, out_dir / f"timeline-{sc}.png"))
    return paths
