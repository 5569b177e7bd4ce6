"""One declaration per option (slos_serve.config): flags, from_args and child argv agree."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from coordinator.main import CoordinatorConfig
from slos_serve import cli
from slos_serve.config import Options, comma_list, option
from slos_serve.up import ClusterSpec, LocalCluster
from slos_serve.worker.main import WorkerConfig


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Example(Options):
    name: str = option(help="required: no default")
    count: int = option(3, "how many (default %(default)s)")
    ratio: float | None = option(None)
    hosts: list[str] = option(help="comma-separated", parse=comma_list)
    verbose: bool = option(False)
    pin: bool = option(True, "do not pin", flag="--no-pin")
    mode: str = option("a", choices=("a", "b"))
    port: int = option(0, cli_default=80)
    not_a_flag: int = 7


def _parse(cls: type[Options], argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cls.add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_from_the_dataclass() -> None:
    args = _parse(Example, ["--name", "x", "--hosts", "a:1, b:2", "--no-pin", "--verbose"])
    cfg = Example.from_args(args)
    assert cfg == Example(name="x", hosts=["a:1", "b:2"], verbose=True, pin=False, port=80)
    assert not hasattr(args, "not_a_flag")
    with pytest.raises(SystemExit):
        _parse(Example, ["--hosts", "a"])  # --name is required
    with pytest.raises(SystemExit):
        _parse(Example, ["--name", "x", "--hosts", "a", "--mode", "c"])


def test_to_argv_round_trips() -> None:
    cfg = Example(name="x", count=5, ratio=0.5, hosts=["a:1", "b:2"], verbose=True, pin=False,
                  mode="b", port=9)
    argv = cfg.to_argv()
    assert Example.from_args(_parse(Example, argv)) == cfg
    plain = Example(name="x", hosts=["h"], port=80)
    assert plain.to_argv() == ["--name", "x", "--hosts", "h"]  # defaults are left out


def test_help_shows_the_default() -> None:
    parser = argparse.ArgumentParser()
    Example.add_arguments(parser)
    assert "how many (default 3)" in " ".join(parser.format_help().split())


@pytest.mark.parametrize("argv", [
    ["simulate", "--max-spec-len", "1", "capacity"],
    ["simulate", "capacity", "--max-spec-len", "1"],
])
def test_simulate_option_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = cli.build_parser().parse_args(argv)
    assert args.action == "capacity" and args.max_spec_len == 1
    assert args.workers == 2  # the rest keep their defaults


def test_simulate_capacity_defaults() -> None:
    args = cli.build_parser().parse_args(["simulate", "capacity"])
    assert (args.max_spec_len, args.profile, args.systems) == (
        8, "opt-13b-a100", "slos,vllm,sarathi,distserve")


def test_bench_shared_options_either_side() -> None:
    parse = cli.build_parser().parse_args
    assert parse(["bench", "--engine", "sim", "capacity"]).engine == "sim"
    assert parse(["bench", "capacity", "--engine", "sim"]).engine == "sim"
    assert parse(["bench", "--model", "m", "loadgen-check"]).model == "m"
    args = parse(["bench", "overhead"])
    assert (args.requests, args.scenario) == (20, "chatbot")  # overhead's own --requests
    assert parse(["bench", "loadgen-check"]).scenario == "coding"
    assert parse(["bench"]).max_context == 2048


def test_up_builds_child_argv_from_the_role_configs() -> None:
    spec = ClusterSpec(model="m", engine="sim", spec_tokens=2, on_reject="reject",
                       tiers="t.json")
    cluster = LocalCluster(spec)
    parser = cli.build_parser()
    worker = parser.parse_args(cluster._worker_argv("decode", 1234, 1, 555, "sim-engine"))
    assert worker.command == "decode-worker"
    w = WorkerConfig.from_args(worker)
    assert (w.port, w.engine, w.model, w.spec_tokens, w.cpus, w.metrics_port, w.profile) == (
        1234, "sim", "m", 2, "1", 555, None)  # the sim engine takes no profile
    coord = parser.parse_args(cluster._coordinator_argv(
        50051, 51051, 8080, "sim-engine", {"prefill": ["a:1", "b:2"], "decode": ["c:3"]}))
    c = CoordinatorConfig.from_args(coord)
    assert (c.prefill, c.decode, c.model, c.on_reject, c.tiers, c.profile, c.metrics_port,
            c.http_port, c.api_key) == (
        ["a:1", "b:2"], ["c:3"], "m", "reject", "t.json", "sim-engine", 51051, 8080, None)


def test_up_flags_keep_their_defaults() -> None:
    args = cli.build_parser().parse_args(["up", "--model", "m", "--no-cpu-bind"])
    spec = ClusterSpec.from_args(args)
    assert (spec.port, spec.http_port, spec.http, spec.bind_cpus, spec.start_timeout_s,
            spec.on_reject) == (50051, 8000, True, False, 600.0, None)
    assert ClusterSpec(model="m").port == 0  # the library's default: a free port
    assert ClusterSpec(model="m").http_port == 0
