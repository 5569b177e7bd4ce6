"""`slos-serve kv-bench`: NIXL DRAM-to-DRAM transfer bandwidth between two processes.

The KV hand-off is a NIXL READ by the decode engine from the prefill engine's memory,
so that is what is measured: a target process registers a source buffer with a NIXL
agent (UCX backend), the initiator (this process) registers a destination buffer and
READs from the target, for sizes 64 KiB .. 256 MiB. A plain memcpy between two buffers
of this process, timed in the same run, is the baseline the NIXL figure is read against
(on one host UCX moves the bytes with shared-memory copies, so memcpy is its ceiling).

Every transfer is checked: the destination is cleared before each size and compared
with the source pattern afterwards. The target process ignores SIGINT and exits when the
pipe to it closes; it is stopped (terminate, then kill) on every exit path, Ctrl-C too.
NIXL (seconds to import) is imported where an agent is made, so that `slos-serve --help`
stays fast.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

KIB = 1024
MIB = 1024 * KIB
DEFAULT_MIN = 64 * KIB
DEFAULT_MAX = 256 * MIB
# The source pattern repeats with a prime period, so that a transfer landing at a wrong
# offset (a multiple of a page or of a block) can not look right.
_PATTERN_PERIOD = 1_000_003
_PATTERN_SEED = 20240601
_TARGET_AGENT = "slos-kvbench-target"
_INITIATOR_AGENT = "slos-kvbench-initiator"
_XFER_TIMEOUT_S = 60.0


@dataclass
class SizeResult:
    """Figures for one transfer size; times in seconds, bandwidths in GB/s (1e9 B/s)."""

    size: int
    reps: int
    nixl_gbps_median: float
    nixl_gbps_min: float
    nixl_gbps_max: float
    nixl_latency_us_median: float
    memcpy_gbps_median: float
    ratio: float
    verified: bool


@dataclass
class BenchResult:
    """A whole run: its settings and one `SizeResult` per size."""

    sizes: list[SizeResult]
    reps: int
    warmup: int
    backend: str = "UCX"
    op: str = "READ"
    env: dict[str, str] = field(default_factory=dict)
    setup_s: float = 0.0


def _pattern(nbytes: int) -> np.ndarray:
    """The deterministic source content of `nbytes` bytes (both processes build it)."""
    rng = np.random.default_rng(_PATTERN_SEED)
    period = rng.integers(0, 256, size=min(nbytes, _PATTERN_PERIOD), dtype=np.uint8)
    return np.resize(period, nbytes)


def default_sizes(lo: int = DEFAULT_MIN, hi: int = DEFAULT_MAX, factor: int = 4) -> list[int]:
    """lo, lo*factor, ... up to hi (inclusive)."""
    if lo <= 0 or hi < lo or factor < 2:
        raise ValueError(f"bad size range {lo}..{hi} x{factor}")
    sizes, s = [], lo
    while s <= hi:
        sizes.append(s)
        s *= factor
    return sizes


def _make_agent(name: str) -> Any:
    from nixl._api import nixl_agent, nixl_agent_config

    # One UCX worker thread: this machine has two cores and two processes to run.
    return nixl_agent(name, nixl_agent_config(backends=["UCX"], num_threads=1))


def _target_main(conn: Connection, nbytes: int) -> None:
    """Target process: own the source buffer, serve NIXL READs until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the initiator decides when we stop
    try:
        agent = _make_agent(_TARGET_AGENT)
        src = _pattern(nbytes)
        reg = agent.register_memory([(src.ctypes.data, src.nbytes, 0, "")], "DRAM")
        conn.send(("ready", agent.get_agent_metadata(), src.ctypes.data, src.nbytes))
        while True:
            msg = conn.recv()  # EOFError when the initiator is gone
            if msg == "stop":
                break
        agent.deregister_memory(reg)
        conn.send(("stopped",))
    except EOFError:
        pass
    except Exception as exc:  # report instead of dying silently
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        raise


def _timed_memcpy(dst: np.ndarray, src: np.ndarray, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return times


def _wait(agent: Any, handle: Any, state: str) -> None:
    deadline = time.monotonic() + _XFER_TIMEOUT_S
    while state == "PROC":
        if time.monotonic() > deadline:
            raise TimeoutError(f"NIXL transfer not done after {_XFER_TIMEOUT_S:.0f} s")
        state = agent.check_xfer_state(handle)
    if state != "DONE":
        raise RuntimeError(f"NIXL transfer failed (state {state})")


@dataclass
class Initiator:
    """This process's side: its NIXL agent and buffers, connected to the target's."""

    agent: Any
    registration: Any
    dst: np.ndarray  # NIXL READs land here
    memcpy_dst: np.ndarray  # the baseline's copies land here
    expected: np.ndarray  # the target's source content
    remote_name: str
    remote_addr: int
    remote_len: int


def connect(conn: Connection, max_size: int) -> Initiator:
    """Registers this process's buffers and connects to the target once it is ready."""
    expected = _pattern(max_size)
    dst = np.zeros(max_size, dtype=np.uint8)
    memcpy_dst = np.empty_like(dst)
    agent = _make_agent(_INITIATOR_AGENT)
    reg = agent.register_memory([(dst.ctypes.data, dst.nbytes, 0, "")], "DRAM")
    if not conn.poll(120):
        raise RuntimeError("target process did not come up within 120 s")
    msg = conn.recv()
    if msg[0] != "ready":
        raise RuntimeError(f"target process failed: {msg[1:]}")
    _, remote_md, remote_addr, remote_len = msg
    remote_name = agent.add_remote_agent(remote_md)
    return Initiator(agent, reg, dst, memcpy_dst, expected, remote_name, remote_addr,
                     remote_len)


def disconnect(ini: Initiator, conn: Connection) -> None:
    """Releases this side's registration and asks the target to stop."""
    ini.agent.deregister_memory(ini.registration)
    ini.agent.remove_remote_agent(ini.remote_name)
    conn.send("stop")
    if conn.poll(10):
        conn.recv()


def timed_reads(ini: Initiator, size: int, reps: int, warmup: int) -> list[float]:
    """Seconds of each timed NIXL READ of `size` bytes (after `warmup` untimed ones)."""
    agent = ini.agent
    local = agent.get_xfer_descs([(ini.dst.ctypes.data, size, 0)], "DRAM")
    remote = agent.get_xfer_descs([(ini.remote_addr, size, 0)], "DRAM")
    handle = agent.initialize_xfer("READ", local, remote, ini.remote_name)
    try:
        ini.dst[:size] = 0
        times = []
        for i in range(warmup + reps):
            t0 = time.perf_counter()
            _wait(agent, handle, agent.transfer(handle))
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        return times
    finally:
        agent.release_xfer_handle(handle)


def measure_size(ini: Initiator, size: int, reps: int, warmup: int) -> SizeResult:
    """NIXL READs of `size` bytes, checked against the source, and the memcpy baseline."""
    assert size <= ini.remote_len
    times = timed_reads(ini, size, reps, warmup)
    ok = bool(np.array_equal(ini.dst[:size], ini.expected[:size]))
    if not ok:
        bad = int(np.argmax(ini.dst[:size] != ini.expected[:size]))
        raise RuntimeError(f"data mismatch after {size} B transfer at byte {bad}")
    mc = _timed_memcpy(ini.memcpy_dst[:size], ini.expected[:size], warmup + reps)[warmup:]
    gbps = [size / t / 1e9 for t in times]
    nixl_med = size / statistics.median(times) / 1e9
    mc_med = size / statistics.median(mc) / 1e9
    return SizeResult(
        size=size,
        reps=reps,
        nixl_gbps_median=nixl_med,
        nixl_gbps_min=min(gbps),
        nixl_gbps_max=max(gbps),
        nixl_latency_us_median=statistics.median(times) * 1e6,
        memcpy_gbps_median=mc_med,
        ratio=nixl_med / mc_med,
        verified=ok,
    )


def run_bench(
    sizes: Sequence[int],
    reps: int = 5,
    warmup: int = 1,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Measure NIXL READ bandwidth from a second process and memcpy, per size.

    Raises RuntimeError if any transfer delivers wrong bytes. The target process is
    always stopped before this returns or raises.
    """
    if reps < 1 or warmup < 0:
        raise ValueError("reps must be >= 1 and warmup >= 0")
    sizes = sorted(set(sizes))
    say = progress or (lambda _msg: None)
    max_size = max(sizes)
    t_setup = time.perf_counter()
    ctx = mp.get_context("spawn")  # never fork a process holding UCX/NIXL state
    parent_conn, child_conn = ctx.Pipe()
    proc = ctx.Process(
        target=_target_main, args=(child_conn, max_size), name="kv-bench-target", daemon=True
    )
    proc.start()
    child_conn.close()
    try:
        say(f"target process {proc.pid} started; allocating {max_size / MIB:.1f} MiB per side")
        ini = connect(parent_conn, max_size)
        setup_s = time.perf_counter() - t_setup
        say(f"NIXL agents connected ({setup_s:.1f} s)")
        results: list[SizeResult] = []
        for size in sizes:
            res = measure_size(ini, size, reps, warmup)
            results.append(res)
            say(
                f"{_fmt_size(size):>9}: NIXL {res.nixl_gbps_median:6.2f} GB/s, "
                f"memcpy {res.memcpy_gbps_median:6.2f} GB/s, verified"
            )
        disconnect(ini, parent_conn)
        env = {k: v for k, v in os.environ.items() if k.startswith("UCX_")}
        return BenchResult(sizes=results, reps=reps, warmup=warmup, env=env, setup_s=setup_s)
    finally:
        _stop(proc, parent_conn)


def _stop(proc: mp.process.BaseProcess, conn: Connection) -> None:
    """Stop the target process whatever state it is in."""
    try:
        conn.close()  # the target sees EOF and exits on its own
    except OSError:
        pass
    proc.join(5)
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


def _fmt_size(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB else f"{n // KIB} KiB"


def format_table(result: BenchResult) -> str:
    """The figures as a fixed-width text table."""
    head = (
        f"{'size':>9}  {'NIXL GB/s':>9}  {'(min..max)':>13}  {'latency us':>10}  "
        f"{'memcpy GB/s':>11}  {'ratio':>5}  ok"
    )
    lines = [head, "-" * len(head)]
    for r in result.sizes:
        lines.append(
            f"{_fmt_size(r.size):>9}  {r.nixl_gbps_median:9.2f}  "
            f"{f'{r.nixl_gbps_min:.2f}..{r.nixl_gbps_max:.2f}':>13}  "
            f"{r.nixl_latency_us_median:10.1f}  {r.memcpy_gbps_median:11.2f}  "
            f"{r.ratio:5.2f}  {'yes' if r.verified else 'NO'}"
        )
    return "\n".join(lines)


def _parse_size(text: str) -> int:
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    mult = {"k": KIB, "m": MIB, "g": 1024 * MIB}.get(t[-1:], 1)
    num = t[:-1] if t[-1:] in "kmg" else t
    try:
        value = int(float(num) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64K, 1M)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `slos-serve kv-bench`."""
    parser.add_argument(
        "--min-size", type=_parse_size, default=DEFAULT_MIN, help="smallest transfer (default 64K)"
    )
    parser.add_argument(
        "--max-size", type=_parse_size, default=DEFAULT_MAX, help="largest transfer (default 256M)"
    )
    parser.add_argument(
        "--factor", type=int, default=4, help="size step factor (default 4: 64K, 256K, 1M, ...)"
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=5,
        help="timed repetitions per size (median reported; default 5)",
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed repetitions per size (default 1)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    """Entry point of `slos-serve kv-bench`."""
    try:
        sizes = default_sizes(args.min_size, args.max_size, args.factor)
    except ValueError as exc:
        print(f"kv-bench: {exc}", file=sys.stderr)
        return 2

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"[kv-bench] {msg}", file=sys.stderr, flush=True)

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGTERM unwinds like Ctrl-C, so that the target process is stopped either way.
    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        result = run_bench(sizes, reps=args.reps, warmup=args.warmup, progress=progress)
    except KeyboardInterrupt:
        print("kv-bench: interrupted; target process stopped", file=sys.stderr)
        return 130
    except Exception as exc:  # NIXL/UCX errors (e.g. nixlBackendError for a bad UCX_TLS)
        print(f"kv-bench: {type(exc).__name__}: {exc}", file=sys.stderr)
        ucx = {k: v for k, v in os.environ.items() if k.startswith("UCX_")}
        if ucx:
            print(f"kv-bench: UCX settings in effect: {ucx}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, old_term)
    print(
        f"NIXL {result.op} (backend {result.backend}) between two processes, "
        f"median of {result.reps} reps; memcpy in the initiator process, same run"
    )
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(asdict(result), f, indent=2)
        print(f"wrote {args.json}")
    return 0
