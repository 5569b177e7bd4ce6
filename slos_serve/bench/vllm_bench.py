"""vLLM's own `bench serve` (module `vllm.benchmarks.serve`), the harness users compare
OpenAI-compatible servers with, against any base URL; and `bench vllm-bench`: each system in
turn under it, side by side.

The `vllm` console script of the CPU wheel fails (it asks for the metadata of a package named
"vllm"), so `python -m slos_serve.bench.vllm_bench ARGS` is that command: vLLM's own argument
parser (`add_cli_args`) and `main`, nothing else. It runs in a subprocess of its own (vLLM's
imports and event loop stay out of the caller's), always with `--save-result --save-detailed`
into a named file, so its summary and per-request lists can be read back. Request i of a run
is sent with `x-request-id: PREFIX{i}` (vLLM does so for its datasets), which a slos-serve
front takes as the request id: its `--request-log` lines match vLLM's per-request figures.

A system served by several base URLs (`vllm-serve`: one `vllm serve` per core) is driven by
one `bench serve` per URL at the same time, each with its share of the rate and prompts;
their per-request figures are merged with vLLM's own formulas (`merged`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class VllmBenchRun:
    """One `bench serve` invocation's arguments (the ones this project sets)."""

    base_url: str
    model: str  # tokenizer dir, and the model id sent unless served_model_name
    result_file: Path
    backend: str = "openai"  # or openai-chat
    served_model_name: str | None = None
    num_prompts: int = 50
    request_rate: float = 10.0
    input_len: int = 128
    output_len: int = 32
    goodput: Sequence[str] = ()  # "ttft:MS", "tpot:MS"
    request_id_prefix: str = "vllm-bench-"
    seed: int = 0
    extra: Sequence[str] = field(default_factory=tuple)
    api_key: str | None = field(default=None, repr=False)  # vLLM sends $OPENAI_API_KEY

    def argv(self) -> list[str]:
        endpoint = "/v1/chat/completions" if self.backend == "openai-chat" else "/v1/completions"
        argv = ["--backend", self.backend, "--base-url", self.base_url.rstrip("/"),
                "--endpoint", endpoint, "--model", self.model, "--tokenizer", self.model,
                "--dataset-name", "random", "--random-input-len", str(self.input_len),
                "--random-output-len", str(self.output_len), "--num-prompts",
                str(self.num_prompts), "--request-rate", f"{self.request_rate:g}",
                "--seed", str(self.seed), "--ignore-eos", "--temperature", "0",
                "--request-id-prefix", self.request_id_prefix, "--disable-tqdm",
                "--save-result", "--save-detailed", "--result-dir",
                str(self.result_file.parent), "--result-filename", self.result_file.name]
        if self.served_model_name:
            argv += ["--served-model-name", self.served_model_name]
        if self.goodput:
            argv += ["--goodput", *self.goodput]
            # The objective the run is judged by, told to the server the way a user of a
            # slos-serve cluster tells it (llm-d's headers); vLLM's server ignores them.
            slo = dict(g.split(":", 1) for g in self.goodput)
            headers = [f"x-slo-{k}-ms={slo[k]}" for k in ("ttft", "tpot") if k in slo]
            if headers:
                argv += ["--header", *headers]
        return argv + list(self.extra)


def run_vllm_bench(run: VllmBenchRun, timeout_s: float = 900.0,
                   log: Path | None = None) -> dict[str, Any]:
    """vLLM's `bench serve` in a subprocess; its saved result JSON (with the per-request
    lists). RuntimeError with the output's tail if it fails."""
    run.result_file.parent.mkdir(parents=True, exist_ok=True)
    run.result_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "slos_serve.bench.vllm_bench", *run.argv()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    if run.api_key:
        env["OPENAI_API_KEY"] = run.api_key
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env,
                          stdin=subprocess.DEVNULL)
    if log is not None:
        log.write_text(done.stdout + done.stderr)
    if done.returncode != 0 or not run.result_file.exists():
        raise RuntimeError(f"vllm bench serve failed ({done.returncode}):\n"
                           + (done.stdout + done.stderr)[-3000:])
    return json.loads(run.result_file.read_text())


def per_request(result: dict[str, Any], prefix: str) -> dict[str, dict[str, Any]]:
    """vLLM's figures per request id (PREFIX{i}), from its detailed result: success, TTFT
    and TPOT (ms) as vLLM computes them (TPOT: (latency - TTFT) / (output tokens - 1))."""
    out = {}
    for i, (err, ttft, lat, n) in enumerate(zip(result["errors"], result["ttfts"],
                                                 result["latencies"], result["output_lens"],
                                                 strict=True)):
        ok = not err
        out[f"{prefix}{i}"] = {
            "success": ok, "output_tokens": n, "ttft_ms": 1e3 * ttft if ok else None,
            "tpot_ms": 1e3 * (lat - ttft) / (n - 1) if ok and n > 1 else None}
    return out


def merged(results: Sequence[dict[str, Any]], goodput: dict[str, float],
           percentile: float = 99.0) -> dict[str, Any]:
    """Several concurrent `bench serve` runs (one per URL) as one, by vLLM's formulas
    (serve.calculate_metrics): throughput over the longest run, goodput counting requests
    whose TTFT / TPOT (TPOT 0 for one token) / E2E are within the given ms."""
    duration = max(r["duration"] for r in results)
    ttfts, tpots, good, completed, failed = [], [], 0, 0, 0
    for r in results:
        for err, ttft, lat, n in zip(r["errors"], r["ttfts"], r["latencies"],
                                     r["output_lens"], strict=True):
            if err:
                failed += 1
                continue
            completed += 1
            tpot = (lat - ttft) / (n - 1) if n > 1 else 0.0
            ttfts.append(ttft)
            if n > 1:
                tpots.append(tpot)
            seen = {"ttft": ttft, "tpot": tpot, "e2el": lat}
            good += all(seen[k] <= v / 1e3 for k, v in goodput.items())
    p = f"{percentile:g}"
    return {"completed": completed, "failed": failed, "duration": duration,
            "request_throughput": completed / duration,
            "request_goodput": good / duration if goodput else None,
            "median_ttft_ms": 1e3 * float(np.median(ttfts or [0])),
            f"p{p}_ttft_ms": 1e3 * float(np.percentile(ttfts or [0], percentile)),
            "median_tpot_ms": 1e3 * float(np.median(tpots or [0])),
            f"p{p}_tpot_ms": 1e3 * float(np.percentile(tpots or [0], percentile))}


def parse_goodput(pairs: Sequence[str]) -> dict[str, float]:
    """vLLM's `--goodput KEY:MS ...` as a dict."""
    return {k: float(v) for k, v in (p.split(":", 1) for p in pairs)}


SUMMARY_KEYS = ("completed", "failed", "request_throughput", "request_goodput",
                "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms")


def bench_system(urls: Sequence[str], template: VllmBenchRun, out_dir: Path,
                 timeout_s: float = 900.0) -> dict[str, Any]:
    """`bench serve` against one system: its summary (SUMMARY_KEYS); vLLM's own figures for
    one URL, merged ones for several (one run per URL, each with its share)."""
    k = len(urls)
    runs = [replace(template, base_url=url, result_file=out_dir / f"vllm-bench-{i}.json",
                    num_prompts=template.num_prompts // k + (i < template.num_prompts % k),
                    request_rate=template.request_rate / k, seed=template.seed + i,
                    request_id_prefix=f"{template.request_id_prefix}{i}-" if k > 1
                    else template.request_id_prefix)
            for i, url in enumerate(urls)]
    with ThreadPoolExecutor(k) as pool:
        results = list(pool.map(lambda r: run_vllm_bench(
            r, timeout_s, r.result_file.with_suffix(".log")), runs))
    if k == 1:
        return {key: results[0].get(key) for key in SUMMARY_KEYS}
    return merged(results, parse_goodput(template.goodput))


def table(rows: dict[str, dict[str, Any]]) -> str:
    """One line per system: completed / failed, req/s, goodput, TTFT and TPOT."""
    head = (f"{'system':<22}{'ok/failed':>11}{'req/s':>8}{'goodput':>9}{'TTFT p50':>10}"
            f"{'p99':>9}{'TPOT p50':>10}{'p99':>8}  (ms; vLLM's bench serve)")
    lines = [head]
    for name, r in rows.items():
        good = r.get("request_goodput")
        done = f"{r['completed']}/{r['failed']}"
        goodput = "-" if good is None else f"{good:.2f}"
        lines.append(
            f"{name:<22}{done:>11}{r['request_throughput']:>8.2f}{goodput:>9}"
            f"{r['median_ttft_ms']:>10.1f}{r['p99_ttft_ms']:>9.1f}"
            f"{r['median_tpot_ms']:>10.2f}{r['p99_tpot_ms']:>8.2f}")
    return "\n".join(lines)


def run_systems(systems: Sequence[Any], template: VllmBenchRun, out_dir: Path,
                timeout_s: float = 900.0) -> dict[str, dict[str, Any]]:
    """Each system started in turn, driven by `bench serve`, stopped; the table's rows
    (written to OUT/vllm-bench.json too)."""
    rows: dict[str, dict[str, Any]] = {}
    for system in systems:
        system.start()
        try:
            urls, served = endpoints(system)
            t0 = time.perf_counter()
            run = replace(template, served_model_name=template.served_model_name or served)
            rows[system.name] = bench_system(urls, run, out_dir / system.name, timeout_s)
            print(f"{system.name}: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        finally:
            system.stop()
    (out_dir / "vllm-bench.json").write_text(json.dumps(rows, indent=2))
    return rows


def endpoints(system: Any) -> tuple[list[str], str | None]:
    """A started system's OpenAI base URLs and the model id they serve (None: --model)."""
    cluster = getattr(system, "cluster", None)
    if cluster is not None:
        if not cluster.http_url:
            raise RuntimeError(f"{system.name}: the cluster has no HTTP front")
        return [cluster.http_url], None
    return list(system.urls), getattr(system, "SERVED_NAME", None)


def main(argv: Sequence[str] | None = None) -> None:
    """vLLM's `vllm bench serve`, by its own parser and main."""
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as serve_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    serve_main(parser.parse_args(argv))


if __name__ == "__main__":
    main()
