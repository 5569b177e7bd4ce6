"""One declaration per option: a dataclass whose fields are a command's options.

A field made with `option(...)` carries its help, flag and parser; its type and default
come from the dataclass. From that one declaration `Options` derives the argparse
arguments (`add_arguments`), the dataclass back from the parsed arguments (`from_args`),
and the argv that gives a child process the same configuration (`to_argv`), so a flag's
spelling, type and default cannot drift between a parser, a launcher and a library caller.

Types: `int`, `float`, `str` (or `X | None`) are parsed as such (or by the field's
`parse`); a `bool` is a switch (`--flag` turns a False default on; a True default needs a
`--no-...` flag that turns it off). Help is plain text (a `%` is a percent sign) but for
`%(default)s`. Stdlib only: every command line imports this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass
from typing import Any, TypeVar

__all__ = ["OptionSpec", "Options", "comma_list", "option"]

T = TypeVar("T", bound="Options")

# The API key of the client-facing edges (coordinator, `up`, the SDK read it).
API_KEY_ENV = "SLOS_SERVE_API_KEY"


class FieldDefault:
    """Marks `cli_default` unset: the command line's default is the field's."""

    def __repr__(self) -> str:
        return "FIELD_DEFAULT"


FIELD_DEFAULT: Any = FieldDefault()


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """How a field appears on the command line (kept in the field's metadata)."""

    help: str = ""
    flag: str | None = None  # default: "--" + the field's name with dashes
    choices: Sequence[str] | None = None
    parse: Callable[[str], Any] | None = None  # default: the field's type
    metavar: str | None = None
    nargs: str | None = None
    action: str | None = None  # e.g. "extend" (with nargs "+") for a repeatable list
    # The command line's default where it differs from the library's (e.g. `up --port`
    # 50051 while `ClusterSpec.port` 0 picks a free port).
    cli_default: Any = FIELD_DEFAULT


def option(
    default: Any = MISSING,
    help: str = "",  # noqa: A002 - argparse's name for it
    *,
    flag: str | None = None,
    choices: Sequence[str] | None = None,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    nargs: str | None = None,
    action: str | None = None,
    cli_default: Any = FIELD_DEFAULT,
) -> Any:
    """A dataclass field that is also a command-line option (no default: a required flag)."""
    spec = OptionSpec(help=help, flag=flag, choices=choices, parse=parse, metavar=metavar,
                      nargs=nargs, action=action, cli_default=cli_default)
    return dataclasses.field(default=default, metadata={"option": spec})


def comma_list(value: str) -> list[str]:
    """argparse type of a comma-separated list ("a, b,,c" -> ["a", "b", "c"])."""
    return [a.strip() for a in value.split(",") if a.strip()]


def _base_type(hint: Any) -> Any:
    """`X | None` -> X; other hints unchanged."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _format(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


@dataclass(frozen=True, slots=True)
class _Option:
    """A resolved option: its field, its spec, its flag, its type and its CLI default."""

    name: str
    spec: OptionSpec
    flag: str
    kind: Any
    default: Any  # MISSING: the flag is required


class Options:
    """Mixin for a dataclass of options: argparse arguments, from_args and to_argv."""

    __slots__ = ()

    @classmethod
    def options(cls) -> list[_Option]:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            spec = f.metadata.get("option")
            if spec is None:
                continue
            default = f.default if spec.cli_default is FIELD_DEFAULT else spec.cli_default
            flag = spec.flag or "--" + f.name.replace("_", "-")
            out.append(_Option(f.name, spec, flag, _base_type(hints[f.name]), default))
        return out

    @classmethod
    def add_arguments(
        cls,
        parser: argparse.ArgumentParser | Any,
        *,
        shared: bool = False,
        defaults: dict[str, Any] | None = None,
        only: set[str] | None = None,
    ) -> None:
        """Register the options on `parser` (or an argument group).

        `shared`: the options are already declared on a parent parser and this is a
        subcommand's; they are accepted here too but default to the parent's value (set
        or defaulted there), so `cmd --x 1 sub` and `cmd sub --x 1` mean the same.
        `defaults` overrides defaults by field name (one command's own defaults); `only`
        registers just these fields.
        """
        for opt in cls.options():
            if only is not None and opt.name not in only:
                continue
            default = (defaults or {}).get(opt.name, opt.default)
            parser.add_argument(opt.flag, **_argparse_kwargs(opt, default, shared))

    @classmethod
    def from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
        """The dataclass from parsed arguments (fields that are not options: `overrides`)."""
        values = {o.name: getattr(args, o.name) for o in cls.options() if hasattr(args, o.name)}
        return cls(**{**values, **overrides})

    def to_argv(self) -> list[str]:
        """Flags that reproduce this configuration in a child; defaults are left out."""
        argv: list[str] = []
        for opt in self.options():
            value = getattr(self, opt.name)
            if value is None or (opt.default is not MISSING and value == opt.default):
                continue
            if opt.kind is bool:
                argv.append(opt.flag)
            elif opt.spec.nargs:
                argv += [opt.flag, *(str(v) for v in value)]
            else:
                argv += [opt.flag, _format(value)]
        return argv


def _argparse_kwargs(opt: _Option, default: Any, shared: bool) -> dict[str, Any]:
    spec = opt.spec
    help_text = spec.help
    if "%(default)" in help_text:  # expanded here: a shared option's own default is hidden
        shown = "none" if default in (None, MISSING) else default
        help_text = help_text % {"default": shown}
    kw: dict[str, Any] = {"dest": opt.name, "help": help_text.replace("%", "%%")}
    if opt.kind is bool:
        if default is True and not (spec.flag or "").startswith("--no-"):
            raise TypeError(f"{opt.name}: a switch that is on by default needs a --no- flag")
        kw["action"] = "store_false" if default is True else "store_true"
    else:
        element = typing.get_args(opt.kind)[0] if typing.get_origin(opt.kind) is list else None
        kw["type"] = spec.parse or element or opt.kind
        for key in ("choices", "metavar", "nargs", "action"):
            if getattr(spec, key) is not None:
                kw[key] = getattr(spec, key)
        if spec.flag and not spec.metavar and not spec.choices:  # argparse's, from the flag
            kw["metavar"] = spec.flag.lstrip("-").upper().replace("-", "_")
    if shared:
        kw["default"] = argparse.SUPPRESS
    elif default is MISSING:
        kw["required"] = True
    else:
        kw["default"] = default
    return kw
