"""Step samples to fit: from one offline vLLM engine running the grid, or from the
SIMULATED engine's timing model.

With vLLM, one `vllm.LLM` (vLLM runs its engine core and model worker in processes of
their own, the worker bound to one core) runs our scheduler subclass with its sample
recorder on (`SLOS_PROFILE_PATH`): every executed step appends its batch composition,
its wall seconds, and the model worker's CPU seconds and seconds spent waiting for its
core. The engine's arguments are the workers' (`slos_serve.engine.vllm_args`), with
vLLM's own scheduling decisions and no prefix caching, so every prompt token is computed.
vLLM is imported where an engine is built: the SIMULATED path and `--help` never load it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from itertools import count
from pathlib import Path
from typing import Any

from slos_serve.core.perf_model import BatchShape
from slos_serve.engine.side_channel import MODE_ENV, PROFILE_PATH_ENV
from slos_serve.engine.sim_engine import SimTiming
from slos_serve.engine.vllm_args import engine_kwargs, ngram_speculation
from slos_serve.profile.grid import MIN_PHASES, WARM_UP, Phase, PromptSource, code_tokens, grid
from slos_serve.profile.machine import package_version, pick_core
from slos_serve.profile.samples import count_lines, read_records

MODE = "vllm"  # measure vLLM's own steps: no SLO policy
MAX_NUM_SEQS = 64  # the grid's largest decode batch


def log(msg: str) -> None:
    print(f"[profile] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- vLLM


class PhaseRunner:
    """Runs phases of the grid on one engine, each until all its requests are done."""

    def __init__(self, engine: Any, prompts: PromptSource) -> None:
        self.engine = engine
        self.prompts = prompts
        self.ids = count()

    def add(self, reqs: list[tuple[int, int]]) -> None:
        from vllm import SamplingParams

        for n_prompt, n_out in reqs:
            params = SamplingParams(max_tokens=n_out, temperature=0.0, ignore_eos=True)
            self.engine.add_request(
                f"p{next(self.ids)}", {"prompt_token_ids": self.prompts.take(n_prompt)}, params
            )

    def run(self, phase: Phase) -> None:
        self.add(phase.requests)
        steps = 0
        while self.engine.has_unfinished_requests():
            self.engine.step()
            steps += 1
            if phase.late and steps == phase.after:
                self.add(phase.late)


def configure_environment(samples_path: Path, core: str, kv_cache_gib: int) -> None:
    """What vLLM reads when the engine starts (and in anything it spawns)."""
    os.environ[PROFILE_PATH_ENV] = str(samples_path)
    os.environ[MODE_ENV] = MODE
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = core
    # vLLM's default process layout, as in the workers: engine core and model worker
    # in their own processes (in-process, vLLM's CPU build cannot bind its OpenMP
    # threads and step times become erratic).
    os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    # SIGTERM (e.g. a test's timeout) unwinds through `finally`: vLLM's processes stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def start_engine(args: argparse.Namespace) -> Any:
    """The offline engine (`LLM.llm_engine`) the grid runs on."""
    from vllm import LLM

    llm = LLM(**engine_kwargs(
        model=args.model, max_model_len=args.max_model_len, seed=args.seed, scheduler=MODE,
        max_num_batched_tokens=args.max_num_batched_tokens,
        speculative_tokens=args.spec_tokens,
        extra={"max_num_seqs": MAX_NUM_SEQS, "enable_prefix_caching": False},
    ))
    return llm.llm_engine


def run_grid(runner: PhaseRunner, phases: list[Phase], deadline: float, samples_path: Path,
             skip: int) -> int:
    """Runs `phases` until `deadline` (but at least `MIN_PHASES`); returns how many ran."""
    t_grid = time.monotonic()
    done = 0
    for i, phase in enumerate(phases):
        # past the deadline, stop; but always run a few of each kind (interleaved)
        if time.monotonic() > deadline and i >= MIN_PHASES:
            log(f"time limit reached: {len(phases) - i} of {len(phases)} phases skipped")
            break
        runner.run(phase)
        done += 1
        if i % 5 == 0 or i == len(phases) - 1:
            n = count_lines(samples_path) - skip
            log(f"[{i + 1}/{len(phases)}] {phase.label()}: {n} step samples so far "
                f"({time.monotonic() - t_grid:.0f} s)")
    return done


def measure_vllm(args: argparse.Namespace, deadline: float) -> tuple[list[dict], dict]:
    """Runs the grid on one vLLM engine in this process until `deadline` (monotonic);
    returns the recorder's records and metadata."""
    samples_path = Path(args.samples) if args.samples else Path(
        tempfile.gettempdir()) / f"slos-profile-{os.getpid()}.jsonl"
    samples_path.unlink(missing_ok=True)
    core = pick_core() if args.cpu == "auto" else args.cpu
    configure_environment(samples_path, core, args.kv_cache_gib)
    t0 = time.monotonic()
    log(f"starting vLLM, worker bound to core {core} (model {args.model}); ~20-60 s")
    engine = start_engine(args)
    started = time.monotonic() - t0
    log(f"engine up in {started:.0f} s")
    runner = PhaseRunner(engine, PromptSource(code_tokens(args.model), args.seed))
    try:
        for phase in WARM_UP:
            runner.run(phase)
        skip = count_lines(samples_path)
        phases = grid(args.quick, args.max_model_len, args.max_num_batched_tokens)
        done = run_grid(runner, phases, deadline, samples_path, skip)
        records = read_records(samples_path, skip)
    finally:
        engine.engine_core.shutdown()
        if not args.samples:
            samples_path.unlink(missing_ok=True)
    speculation = ngram_speculation(args.spec_tokens)
    meta = {
        "engine": "vllm",
        "simulated": False,
        "engine_version": package_version("vllm-cpu", "vllm"),
        "torch": package_version("torch"),
        "dtype": "float32",
        "max_model_len": args.max_model_len,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "speculative": speculation and {
            k: speculation[k] for k in ("method", "num_speculative_tokens")},
        "cpu_bind": core,
        "kv_cache_gib": args.kv_cache_gib,
        "engine_start_s": round(started, 1),
        "phases_run": done,
        "phases_planned": len(phases),
        "step_timing": "SloScheduler recorder: end of schedule() to update_from_output()",
    }
    return records, meta


# ---------------------------------------------------------------- simulated engine


def sim_shapes(cap: int) -> list[BatchShape]:
    """Batches like the vLLM grid's, up to `cap` tokens."""
    shapes: list[BatchShape] = []
    for p in (16, 64, 128, 256, 512, 1024, 1536, 2047):
        for n in (1, 2, 4):
            if n * p <= cap:
                shapes.append(BatchShape(prefill_tokens=n * p, num_requests=n))
    for n in (1, 2, 4, 8, 16, 32, 48, 64):
        for c in (32, 384, 1280):
            shapes.append(BatchShape(decode_tokens=n, num_requests=n, context_tokens=n * c))
            for p in (128, 512, 1536):
                if n + p <= cap:
                    shapes.append(BatchShape(prefill_tokens=p, decode_tokens=n,
                                             num_requests=n + 1, context_tokens=n * c))
    return shapes


def measure_sim(args: argparse.Namespace) -> tuple[list[dict], dict]:
    """The SIMULATED engine's step-time model over batches like the vLLM grid's."""
    timing = SimTiming()
    cap = min(args.max_num_batched_tokens, timing.max_batch_tokens)
    records = [{**asdict(s), "seconds": timing.step_s(s.prefill_tokens, s.decode_tokens)}
               for s in sim_shapes(cap)]
    meta = {
        "engine": "sim",
        "simulated": True,
        "sim_timing": asdict(timing),
        "max_num_batched_tokens": cap,
        "note": "SIMULATED engine: its timing model evaluated, no model ran",
    }
    return records, meta
