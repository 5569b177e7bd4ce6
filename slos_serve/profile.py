"""`slos-serve profile`: measure the engine's batch times and fit the performance model.

With `--engine vllm` one offline vLLM engine (`vllm.LLM`; vLLM runs its engine core and
model worker in processes of its own, the worker bound to one core) runs our scheduler
subclass with its sample recorder on (`SLOS_PROFILE_PATH`): every executed step appends
its batch composition (prefill, decode and speculative-verify tokens, requests, KV
context tokens, longest draft), its wall seconds, and the model worker's CPU seconds and
seconds spent waiting for its core. A grid of workloads makes the steps vary:
prefill-only batches of one or several prompts, decode batches of 1..64 running requests
at several context lengths (ngram speculation on, so verify tokens appear), and mixed
batches (a prompt joining running decodes). The samples are fitted with
`slos_serve.core.perf_model.fit`, scored on held-out samples, and saved as JSON whose name,
source and meta say on which machine, engine and model they were measured.

Which step time is fitted (`--clock`): by default "ready", the wall time less the time
the worker sat runnable while other processes held its core. On a machine shared with
other work those waits stretch steps at random (x2 for one step in ten was seen here);
"ready" is the step on a core of its own, and the report gives the held-out R^2 of the
same fit on plain wall time and on CPU time too, and how much steps were stretched.
Samples more than `--outlier-factor` times off a first fit are set aside and counted.

With `--engine sim` the SIMULATED engine's timing model (`SimTiming`) is evaluated over
the same kinds of batches instead: no model runs, and the profile says so.

`ensure_profile(model_dir, path)` returns a cached profile for that model or builds one
(in a subprocess), for `make run`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from slos_serve.core.perf_model import BatchShape, FitReport, PerfModel, fit

SHAPE_FIELDS = tuple(f.name for f in fields(BatchShape))
DEFAULT_OUT = Path(".cache/profile-cpu.json")
CLOCKS = ("wall", "ready", "cpu")
CLOCK_HELP = {
    "wall": "wall seconds from the end of schedule() to update_from_output()",
    "ready": "wall seconds less the time the model worker waited for its core "
             "(runnable while other processes held it): the step on a core of its own",
    "cpu": "the model worker's CPU seconds",
}
MIN_PHASES = 9  # of the interleaved grid: 3 prefill, 3 decode, 3 mixed


def _log(msg: str) -> None:
    print(f"[profile] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- samples


def step_seconds(record: dict, clock: str = "wall") -> float:
    """A step's time by `clock`: "wall" seconds; "ready": wall seconds less the time the
    model worker waited for its core while other processes held it; "cpu": the worker's
    CPU seconds. Records without the worker's figures give wall seconds for all three."""
    wall = float(record["seconds"])
    if clock == "ready" and "wait_seconds" in record:
        return max(wall - float(record["wait_seconds"]), 1e-6)
    if clock == "cpu" and "cpu_seconds" in record:
        return max(float(record["cpu_seconds"]), 1e-6)
    return wall


def to_sample(record: dict, clock: str = "wall") -> tuple[BatchShape, float]:
    """A recorder record (dict) -> (BatchShape, seconds by `clock`)."""
    shape = BatchShape(**{k: int(record.get(k, 0)) for k in SHAPE_FIELDS})
    return shape, step_seconds(record, clock)


def parse_sample(line: str, clock: str = "wall") -> tuple[BatchShape, float]:
    """One JSON line of the scheduler's sample recorder -> (BatchShape, seconds)."""
    return to_sample(json.loads(line), clock)


def read_records(path: str | Path, skip: int = 0) -> list[dict]:
    """The recorder file's JSON lines, after its first `skip` lines (e.g. the warm-up)."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines[skip:] if line.strip()]


def read_samples(
    path: str | Path, skip: int = 0, clock: str = "wall"
) -> list[tuple[BatchShape, float]]:
    """(BatchShape, seconds) samples of a recorder file, after its first `skip` lines."""
    return [to_sample(r, clock) for r in read_records(path, skip)]


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


# ---------------------------------------------------------------- the workload grid


@dataclass
class Phase:
    """Requests (prompt tokens, output tokens) started together, then `late` ones that
    join after `after` steps (a prompt arriving while others decode: a mixed batch)."""

    kind: str  # prefill | decode | mixed
    requests: list[tuple[int, int]]
    late: list[tuple[int, int]] = field(default_factory=list)
    after: int = 0

    def label(self) -> str:
        def group(reqs: list[tuple[int, int]]) -> str:
            return f"{len(reqs)}x{reqs[0][0]}" if reqs else "-"

        extra = f" + {group(self.late)} after {self.after} steps" if self.late else ""
        return f"{self.kind} {group(self.requests)}{extra}"


def workload(quick: bool, max_len: int = 2048, batch_tokens: int = 2048) -> list[Phase]:
    """The grid, interleaved by kind so that a time limit still leaves every kind."""
    longest = min(max_len - 1, batch_tokens)
    if quick:
        prompt_lens = [16, 128, 512, 1024, longest]
        multi = [(4, 64), (4, 256), (8, 200), (2, 1000)]
        decode = [(n, c) for n in (1, 4, 16, 32) for c in (32, 768)]
        mixed = [(n, 256, p) for n in (4, 16) for p in (128, 1024)]
        out_tokens, reps = 6, 1
    else:
        prompt_lens = [16, 64, 128, 256, 384, 512, 768, 1024, 1280, 1536, 1792, longest]
        multi = [(4, 64), (16, 32), (4, 256), (8, 200), (2, 512), (3, 600), (2, 1000),
                 (32, 64), (6, 300)]
        decode = [(n, c) for n in (1, 2, 4, 8, 16, 32, 64) for c in (32, 384, 1280)]
        mixed = [(n, c, p) for n in (2, 8, 32) for c in (64, 512) for p in (128, 512, 1536)]
        out_tokens, reps = 16, 3
    prefill = [Phase("prefill", [(p, 1)]) for p in prompt_lens for _ in range(reps)]
    prefill += [Phase("prefill", [(p, 1)] * n) for n, p in multi]
    decodes = [Phase("decode", [(c, out_tokens)] * n) for n, c in decode]
    mixes = [
        Phase("mixed", [(c, 4 + out_tokens)] * n, late=[(p, 1)], after=3)
        for n, c, p in mixed
    ]
    random.Random(0).shuffle(prefill)
    phases: list[Phase] = []
    groups = [prefill, decodes, mixes]
    while any(groups):
        for g in groups:
            if g:
                phases.append(g.pop(0))
    return phases


def _code_tokens(model_dir: str) -> list[int]:
    """Real code as token ids (the model was trained on code, so ngram drafts and their
    acceptance look like a real workload's)."""
    import inspect
    import json as json_module
    import textwrap

    from slos_serve.tokenizer import load_tokenizer

    text = "\n".join(
        inspect.getsource(m) for m in (json_module.decoder, json_module.encoder, textwrap)
    )
    return list(load_tokenizer(model_dir).encode(text))


class _Prompts:
    def __init__(self, tokens: list[int], seed: int) -> None:
        self._tokens = tokens
        self._rng = random.Random(seed)

    def take(self, n: int) -> list[int]:
        src = self._tokens
        while len(src) < n + 1:
            src = src + src
        start = self._rng.randrange(0, len(src) - n)
        return src[start : start + n]


# ---------------------------------------------------------------- vLLM measurement


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "hostname": socket.gethostname(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _proc_stat_idle() -> dict[int, int]:
    idle = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *vals = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            idle[int(name[3:])] = int(vals[3]) + int(vals[4])  # idle + iowait
    return idle


def pick_core(window_s: float = 1.0) -> str:
    """The core that was idle longest over `window_s` (others' engines may be bound to
    some cores of a shared machine); "0" where /proc/stat is unavailable."""
    try:
        before = _proc_stat_idle()
        time.sleep(window_s)
        after = _proc_stat_idle()
        allowed = os.sched_getaffinity(0)
    except (OSError, AttributeError):
        return "0"
    cores = [c for c in after if c in before and c in allowed]
    return str(max(cores, key=lambda c: after[c] - before[c])) if cores else "0"


def model_fingerprint(model_dir: str | Path) -> str:
    """Identifies a model build: its stamp's recipe hash, else hashes of its small files
    and the weights' sizes."""
    d = Path(model_dir)
    stamp = d / "slos_build.json"
    h = hashlib.sha256()
    try:
        s = json.loads(stamp.read_text())
        h.update(json.dumps(s.get("files_sha256") or s, sort_keys=True).encode())
        return h.hexdigest()[:16]
    except (OSError, ValueError):
        pass
    for p in sorted(d.glob("*")):
        if p.is_file():
            h.update(p.name.encode())
            if p.stat().st_size < 1 << 20:
                h.update(p.read_bytes())
            else:
                h.update(str(p.stat().st_size).encode())
    return h.hexdigest()[:16]


def _pkg_version(*names: str) -> str:
    from importlib import metadata

    for name in names:
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def measure_vllm(args: argparse.Namespace, deadline: float) -> tuple[list[dict], dict]:
    """Runs the grid on one vLLM engine in this process until `deadline` (monotonic);
    returns the recorder's records and metadata."""
    samples_path = Path(args.samples) if args.samples else Path(
        tempfile.gettempdir()) / f"slos-profile-{os.getpid()}.jsonl"
    samples_path.unlink(missing_ok=True)
    core = pick_core() if args.cpu == "auto" else args.cpu
    # vLLM reads these when the engine starts (and in anything it spawns).
    os.environ["SLOS_PROFILE_PATH"] = str(samples_path)
    os.environ["SLOS_SCHEDULER_MODE"] = "vllm"  # measure vLLM's own steps: no SLO policy
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_cache_gib)
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = core
    # vLLM's default process layout, as in the workers: engine core and model worker
    # in their own processes (in-process, vLLM's CPU build cannot bind its OpenMP
    # threads and step times become erratic).
    os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    # SIGTERM (e.g. a test's timeout) unwinds through `finally`: vLLM's processes stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from vllm import LLM, SamplingParams

    from slos_serve.engine.vllm_engine import SCHEDULER_CLS

    t0 = time.monotonic()
    _log(f"starting vLLM, worker bound to core {core} (model {args.model}); ~20-60 s")
    kwargs: dict[str, Any] = dict(
        model=args.model,
        dtype="float32",
        enforce_eager=True,
        max_model_len=args.max_model_len,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=64,
        enable_prefix_caching=False,  # every prompt token is computed: shapes are exact
        scheduler_cls=SCHEDULER_CLS,
        seed=args.seed,
        disable_log_stats=True,
    )
    if args.spec_tokens > 0:
        kwargs["speculative_config"] = {
            "method": "ngram",
            "num_speculative_tokens": args.spec_tokens,
            "prompt_lookup_max": 4,
            "prompt_lookup_min": 2,
        }
    llm = LLM(**kwargs)
    engine = llm.llm_engine
    started = time.monotonic() - t0
    _log(f"engine up in {started:.0f} s")
    prompts = _Prompts(_code_tokens(args.model), args.seed)
    counter = iter(range(1 << 30))

    def add(reqs: list[tuple[int, int]]) -> None:
        for n_prompt, n_out in reqs:
            params = SamplingParams(max_tokens=n_out, temperature=0.0, ignore_eos=True)
            engine.add_request(
                f"p{next(counter)}", {"prompt_token_ids": prompts.take(n_prompt)}, params
            )

    def run_phase(phase: Phase) -> None:
        add(phase.requests)
        steps = 0
        while engine.has_unfinished_requests():
            engine.step()
            steps += 1
            if phase.late and steps == phase.after:
                add(phase.late)

    try:
        # Warm-up: first runs of each size allocate; their steps are not samples.
        for phase in (Phase("prefill", [(256, 1)]), Phase("decode", [(64, 4)] * 4)):
            run_phase(phase)
        skip = _count_lines(samples_path)
        phases = workload(args.quick, args.max_model_len, args.max_num_batched_tokens)
        t_grid = time.monotonic()
        done = 0
        for i, phase in enumerate(phases):
            # past the deadline, stop; but always run a few of each kind (interleaved)
            if time.monotonic() > deadline and i >= MIN_PHASES:
                _log(f"time limit reached: {len(phases) - i} of {len(phases)} phases skipped")
                break
            run_phase(phase)
            done += 1
            if i % 5 == 0 or i == len(phases) - 1:
                n = _count_lines(samples_path) - skip
                _log(f"[{i + 1}/{len(phases)}] {phase.label()}: {n} step samples so far "
                     f"({time.monotonic() - t_grid:.0f} s)")
        records = read_records(samples_path, skip)
    finally:
        engine.engine_core.shutdown()
        if not args.samples:
            samples_path.unlink(missing_ok=True)
    meta = {
        "engine": "vllm",
        "simulated": False,
        "engine_version": _pkg_version("vllm-cpu", "vllm"),
        "torch": _pkg_version("torch"),
        "dtype": "float32",
        "max_model_len": args.max_model_len,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "speculative": (
            {"method": "ngram", "num_speculative_tokens": args.spec_tokens}
            if args.spec_tokens > 0 else None
        ),
        "cpu_bind": core,
        "kv_cache_gib": args.kv_cache_gib,
        "engine_start_s": round(started, 1),
        "phases_run": done,
        "phases_planned": len(phases),
        "step_timing": "SloScheduler recorder: end of schedule() to update_from_output()",
    }
    return records, meta


# ---------------------------------------------------------------- simulated engine


def measure_sim(args: argparse.Namespace) -> tuple[list[dict], dict]:
    """The SIMULATED engine's step-time model over batches like the vLLM grid's."""
    from dataclasses import asdict

    from slos_serve.engine.sim_engine import SimTiming

    timing = SimTiming()
    cap = min(args.max_num_batched_tokens, timing.max_batch_tokens)
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
    records = []
    for s in shapes:
        t = timing.step_s(s.prefill_tokens, s.decode_tokens)
        records.append({**asdict(s), "seconds": t})
    meta = {
        "engine": "sim",
        "simulated": True,
        "sim_timing": asdict(timing),
        "max_num_batched_tokens": cap,
        "note": "SIMULATED engine: its timing model evaluated, no model ran",
    }
    return records, meta


# ---------------------------------------------------------------- report


def _table(report: FitReport, samples: list[tuple[BatchShape, float]]) -> list[str]:
    """Predicted vs measured for a few shapes (median of the samples of each shape,
    context tokens aside)."""
    groups: dict[tuple, list[tuple[BatchShape, float]]] = {}
    for s, t in samples:
        key = (s.prefill_tokens, s.decode_tokens, s.verify_tokens, s.num_requests)
        groups.setdefault(key, []).append((s, t))
    rows = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    picks: list[tuple] = []

    def pick(cond) -> None:
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
    out = [f"{'prefill':>7} {'decode':>6} {'verify':>6} {'reqs':>4} {'context':>7} "
           f"{'n':>3} {'measured ms':>11} {'predicted ms':>12} {'err':>6}"]
    model = report.model
    for key in picks:
        grp = groups[key]
        ctx = int(statistics.median(s.context_tokens for s, _ in grp))
        measured = statistics.median(t for _, t in grp)
        shape = BatchShape(key[0], key[1], key[2], key[3], ctx, max(s.spec_steps for s, _ in grp))
        pred = model.predict(shape)
        out.append(f"{key[0]:>7} {key[1]:>6} {key[2]:>6} {key[3]:>4} {ctx:>7} {len(grp):>3} "
                   f"{measured * 1e3:>11.2f} {pred * 1e3:>12.2f} "
                   f"{(pred - measured) / measured:>+6.0%}")
    return out


@dataclass
class ProfileResult:
    report: FitReport  # fitted and scored on `samples`
    samples: list[tuple[BatchShape, float]]  # kept
    outliers: list[tuple[BatchShape, float]]  # dropped before the fit
    r2_all: float  # the fitted model over every sample, outliers included


def _kind(s: BatchShape) -> str:
    if s.prefill_tokens and (s.decode_tokens or s.verify_tokens):
        return "mixed"
    if s.prefill_tokens:
        return "prefill"
    return "verify" if s.verify_tokens else "decode"


def _kinds(samples: list[tuple[BatchShape, float]]) -> dict[str, int]:
    kinds = dict.fromkeys(("prefill", "decode", "verify", "mixed"), 0)
    for s, _ in samples:
        kinds[_kind(s)] += 1
    return kinds


def _r2(model: PerfModel, samples: list[tuple[BatchShape, float]]) -> float:
    ys = [t for _, t in samples]
    mean = sum(ys) / len(ys)
    ss_tot = sum((y - mean) ** 2 for y in ys)
    ss_res = sum((model.predict(s) - t) ** 2 for s, t in samples)
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


def split_outliers(
    samples: list[tuple[BatchShape, float]], factor: float, pieces: int = 2
) -> tuple[list[tuple[BatchShape, float]], list[tuple[BatchShape, float]]]:
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


def profile(args: argparse.Namespace, t0: float | None = None) -> ProfileResult:
    """Measures (or, for the simulated engine, evaluates) and fits; the model's name,
    source and meta say what was measured where."""
    t0 = time.monotonic() if t0 is None else t0
    limit = args.time_limit_s or (55.0 if args.quick else 175.0)
    if args.engine == "sim":
        records, meta = measure_sim(args)
    else:
        # leave time for vLLM's shutdown (up to ~6 s) and the fit
        records, meta = measure_vllm(args, deadline=t0 + limit - 9.0)
    every = [to_sample(r, args.clock) for r in records]
    if len(every) < 10:
        raise SystemExit(f"profile: only {len(every)} samples were recorded")
    samples, outliers = split_outliers(every, args.outlier_factor, args.pieces)
    _log(f"fitting on {len(samples)} samples ({len(outliers)} outliers set aside)")
    report = fit(samples, pieces=args.pieces, seed=args.seed, name=_profile_name(args, meta))
    # The same fit on every clock the recorder measured, for comparison.
    r2_by_clock = {args.clock: round(report.r2, 4)}
    if "wait_seconds" in records[0]:
        for clock in CLOCKS:
            if clock != args.clock:
                kept, _ = split_outliers([to_sample(r, clock) for r in records],
                                         args.outlier_factor, args.pieces)
                r2_by_clock[clock] = round(fit(kept, pieces=args.pieces, seed=args.seed).r2, 4)
        stretch = sorted(step_seconds(r) / step_seconds(r, "ready") for r in records)
        meta["wall_over_ready"] = {
            "median": round(stretch[len(stretch) // 2], 3),
            "p90": round(stretch[int(len(stretch) * 0.9)], 3),
            "note": "how much other processes stretched step times while measuring",
        }
    meta["clock"] = args.clock
    meta["clock_meaning"] = CLOCK_HELP[args.clock]
    meta["r2_by_clock"] = r2_by_clock
    model = report.model
    machine = _machine()
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    if meta["simulated"]:
        model.source = (f"SIMULATED engine (SimTiming), no model ran; {model.source}; "
                        f"slos-serve profile --engine sim, {when}")
    else:
        model.source = (
            f"measured by slos-serve profile on {machine['hostname']} ({machine['cpu']}, "
            f"core {meta['cpu_bind']}), {meta['engine_version']}, model "
            f"{Path(args.model).name}, {'quick' if args.quick else 'full'} grid; "
            f"{model.source}; {when}"
        )
    r2_all = _r2(model, every)
    meta.update(
        machine=machine,
        model=str(Path(args.model).resolve()) if args.model else None,
        model_fingerprint=model_fingerprint(args.model) if args.model else None,
        quick=bool(args.quick),
        measured_at=when,
        duration_s=round(time.monotonic() - t0, 1),
        samples=len(every),
        kinds=_kinds(every),
        outliers=len(outliers),
        outlier_rule=f"more than {args.outlier_factor}x off a first fit" if outliers else None,
        train_samples=report.train_samples,
        test_samples=report.test_samples,
        r2_all_samples=round(r2_all, 4),
    )
    model.meta = meta
    return ProfileResult(report, samples, outliers, r2_all)


def _profile_name(args: argparse.Namespace, meta: dict) -> str:
    model = Path(args.model).name if args.model else "sim"
    if meta["simulated"]:
        return f"{model}-SIMULATED"
    return f"{model}-vllm-cpu-{socket.gethostname()}"



# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=("vllm", "sim"), default="vllm",
                        help="vllm (default) or sim: the SIMULATED engine's timing model")
    parser.add_argument("--model", default=None, help="model directory (required for vllm)")
    parser.add_argument("--out", default=None,
                        help=f"profile JSON to write (default {DEFAULT_OUT}, or "
                             ".cache/profile-sim.json with --engine sim)")
    parser.add_argument("--quick", action="store_true",
                        help="a smaller grid (about a minute with the engine start)")
    parser.add_argument("--cpu", default="auto",
                        help="core the engine is bound to (VLLM_CPU_OMP_THREADS_BIND); "
                             "default: the idlest core at start")
    parser.add_argument("--kv-cache-gib", type=int, default=1)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--spec-tokens", type=int, default=4,
                        help="ngram speculative tokens (0 = off; on: verify tokens are profiled)")
    parser.add_argument("--pieces", type=int, default=2, help="max-of-linear pieces to fit")
    parser.add_argument("--time-limit-s", type=float, default=None,
                        help="stop measuring in time to finish within this many seconds "
                             "(default 55 with --quick, else 175)")
    parser.add_argument("--clock", choices=CLOCKS, default="ready",
                        help="the step time to fit: " + "; ".join(
                            f"{k}: {v}" for k, v in CLOCK_HELP.items()) + " (default ready)")
    parser.add_argument("--outlier-factor", type=float, default=3.0,
                        help="set aside samples this many times off a first fit "
                             "(0 = keep all)")
    parser.add_argument("--samples", default=None,
                        help="also keep the raw step samples (JSON lines) at this path")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    if args.engine == "vllm" and not args.model:
        raise SystemExit("profile: --model is required with --engine vllm")
    out = Path(args.out) if args.out else (
        Path(".cache/profile-sim.json") if args.engine == "sim" else DEFAULT_OUT)
    result = profile(args, t0)
    report, model = result.report, result.report.model
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
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
    print("\n".join(_table(report, result.samples)))
    print(f"saved {out}")
    return 0


def profile_matches(path: str | Path, model_dir: str | Path) -> bool:
    """True if `path` holds a vLLM profile measured for this model build on a machine
    like this one (same CPU model and core count)."""
    try:
        meta = PerfModel.load(path).meta
    except (OSError, ValueError, KeyError, TypeError):
        return False
    here, there = _machine(), meta.get("machine") or {}
    return (
        meta.get("engine") == "vllm"
        and not meta.get("simulated")
        and meta.get("model_fingerprint") == model_fingerprint(model_dir)
        and (there.get("cpu"), there.get("cores")) == (here["cpu"], here["cores"])
    )


def ensure_profile(
    model_dir: str | Path,
    path: str | Path = DEFAULT_OUT,
    *,
    quick: bool = False,
    timeout_s: float = 600.0,
) -> Path:
    """The cached profile at `path` if it was measured for this model build on this kind
    of machine, else a new one measured with the vLLM engine in a subprocess (vLLM
    spawns processes and binds cores; the caller's process stays as it is)."""
    path = Path(path)
    if path.exists():
        if profile_matches(path, model_dir):
            return path
        _log(f"{path} was measured for another model or machine: measuring again")
    cmd = [sys.executable, "-m", "slos_serve.cli", "profile", "--engine", "vllm",
           "--model", str(model_dir), "--out", str(path)]
    if quick:
        cmd.append("--quick")
    subprocess.run(cmd, check=True, timeout=timeout_s)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slos-serve profile", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
