"""`slos-serve bench report DIR`: summary.json, the table and the plots from records.jsonl alone.

The plots (matplotlib, most of a second to import) are imported only when they are drawn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slos_serve.bench.records import read_records
from slos_serve.bench.summary import summarize, table


def render(out_dir: Path, plots: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Summarize `out_dir/records.jsonl`; write summary.json and the PNGs; print the table."""
    out_dir = Path(out_dir)
    records = read_records(out_dir / "records.jsonl")
    if not records:
        raise ValueError(f"{out_dir / 'records.jsonl'}: no records")
    summary = summarize(records)
    meta_path = out_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    data: dict[str, Any] = {
        "slo_scale": meta.get("slo_scale", records[0].get("slo_scale")),
        "zero_load": meta.get("zero_load", {}),
        "handoff": meta.get("handoff", {}),
        "runs": summary,
    }
    paths: list[Path] = []
    if plots:
        from slos_serve.bench.plots import all_plots

        paths = all_plots(records, summary, out_dir)
    data["plots"] = [str(p) for p in paths]
    (out_dir / "summary.json").write_text(json.dumps(data, indent=2))
    if not quiet:
        scale = data["slo_scale"]
        print(f"\n{len(records)} requests; SLO scale {scale if scale is not None else '?'}"
              "; attainment = attained / sent; goodput = attained req/s of the arrival window")
        print(table(summary))
        for system, h in sorted(data["handoff"].items()):
            if h:
                print(f"{system}: hand-off p50 {h['p50_ms']:.1f} ms, p99 {h['p99_ms']:.1f} ms "
                      "(the workers' recent hand-offs, at the end of its runs)")
        print(f"\nrecords: {out_dir / 'records.jsonl'}\nsummary: {out_dir / 'summary.json'}")
        for p in paths:
            print(f"plot: {p}")
    return data
