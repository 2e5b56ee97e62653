"""Config dataclasses that drive the CLI: each field carries its help and choices in field
metadata (as TRL's SFTConfig does), `add_config_arguments` turns a dataclass into argparse flags
and `config_from_args` builds the config back, so every default lives in the dataclass only.

    @dataclass
    class ScoreConfig:
        overlap: int = option(256, help="context tokens repeated in a new window")

Flag spelling: `--field-name`; bools get `--x/--no-x`; `list` fields take several values,
`tuple` fields repeat the flag. Validation stays in each config's `__post_init__`.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_NOT_SET: Any = dataclasses.MISSING


def option(
    default: Any = _NOT_SET,
    *,
    help: str,
    choices: Sequence[Any] | None = None,
    flags: Sequence[str] | None = None,
    metavar: str | None = None,
    parse: Callable[[str], Any] | None = None,
    group: str | None = None,
    default_factory: Callable[[], Any] = _NOT_SET,
    cli: bool = True,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
) -> Any:
    """A dataclass field with its CLI description.

    Args:
        help: the --help text (also the field's documentation).
        choices: allowed values, checked by argparse.
        flags: the flag spellings (default: --field-name).
        parse: converts the command-line string (e.g. a file of lines into a tuple).
        group: the --help section the flag is listed under.
        cli: False keeps the field out of the CLI (Python API only).
        minimum, above, maximum: the allowed range of a number field (>= minimum, > above,
            <= maximum; None stays allowed when the field is optional), checked by argparse
            when the flag is parsed and by `check_ranges` in the config's `__post_init__`.
    """
    metadata = {
        "help": " ".join(help.split()),
        "choices": tuple(choices) if choices is not None else None,
        "flags": tuple(flags) if flags else None,
        "metavar": metavar,
        "parse": parse,
        "group": group,
        "cli": cli,
        "minimum": minimum,
        "above": above,
        "maximum": maximum,
    }
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def lines_of_file(path: str) -> tuple[str, ...]:
    """The non-empty lines of a text file, stripped (a list option given as a file)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {error.strerror}") from None
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _range_problem(value: Any, minimum=None, above=None, maximum=None) -> str | None:
    if minimum is not None and value < minimum:
        return f"must be >= {minimum}"
    if above is not None and value <= above:
        return f"must be > {above}"
    if maximum is not None and value > maximum:
        return f"must be <= {maximum}"
    return None


def in_range(kind: type, minimum=None, above=None, maximum=None) -> Callable[[str], Any]:
    """argparse type: a number of `kind` in the range, refused with one line at parse time."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        problem = _range_problem(value, minimum, above, maximum)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def at_least(kind: type, minimum: int | float) -> Callable[[str], Any]:
    """argparse type: a number of `kind` >= minimum."""
    return in_range(kind, minimum=minimum)


def check_ranges(config: Any) -> None:
    """Raise ValueError for a field outside its `option(minimum=, above=, maximum=)` range."""
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        bounds = {k: spec.metadata.get(k) for k in ("minimum", "above", "maximum")}
        if value is None or all(b is None for b in bounds.values()):
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            problem = _range_problem(item, **bounds)
            if problem:
                raise ValueError(f"{spec.name} {problem}, got {item}")


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed) of `X | None` / `Optional[X]`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else annotation), type(None) in typing.get_args(
            annotation
        )
    return annotation, False


def _takes_list(kind: Any) -> bool:
    """`list[X]`, or a union holding one (`list[str] | str`)."""
    return typing.get_origin(kind) is list or any(
        typing.get_origin(a) is list for a in typing.get_args(kind)
    )


def _cli_fields(cls: type, skip: Sequence[str]) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [
        (f, hints[f.name])
        for f in dataclasses.fields(cls)
        if f.metadata.get("cli", False) and f.name not in skip
    ]


def _default(spec: dataclasses.Field) -> Any:
    if spec.default is not _NOT_SET:
        return spec.default
    if spec.default_factory is not _NOT_SET:
        return spec.default_factory()
    return None


def add_config_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    title: str | None = None,
    skip: Sequence[str] = (),
    required: Sequence[str] | None = None,
) -> None:
    """One flag per CLI field of the dataclass `cls`, help and choices from its metadata.

    Flags go to the --help section their field names (`option(group=...)`), else to a section
    called `title`. `required` names the fields whose flag must be given (default: those
    without a default).
    """
    groups: dict[str | None, Any] = {}
    for spec, annotation in _cli_fields(cls, skip):
        meta = spec.metadata
        name = meta["group"] or title
        if name not in groups:
            groups[name] = parser.add_argument_group(name) if name else parser
        flags = meta["flags"] or ("--" + spec.name.replace("_", "-"),)
        kind, _ = _base_type(annotation)
        if required is None:
            must = spec.default is _NOT_SET and spec.default_factory is _NOT_SET
        else:
            must = spec.name in required
        help_text = meta["help"].replace("%", "%%")  # argparse formats help with %
        if isinstance(spec.default, str) and any(c in spec.default for c in "\n\t"):
            help_text += " (default: %(default)r)"  # the help formatter would fold its newlines
        options: dict[str, Any] = {
            "dest": spec.name,
            "help": help_text,
            "default": None if meta["parse"] else _default(spec),
        }
        if must:
            options.update(required=True, default=argparse.SUPPRESS)
        if meta["metavar"]:
            options["metavar"] = meta["metavar"]
        origin = typing.get_origin(kind)
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif meta["parse"]:
            options["type"] = meta["parse"]  # one value, converted whole (e.g. a file of lines)
        elif origin is tuple:
            options.update(action="append", type=typing.get_args(kind)[0])
            options["default"] = None
        else:
            if _takes_list(kind):
                options["nargs"] = "+"
                kind = (typing.get_args(kind) or (str,))[0]
            options["type"] = kind if kind in (int, float) else str
            bounds = {k: meta[k] for k in ("minimum", "above", "maximum")}
            if any(b is not None for b in bounds.values()):
                options["type"] = in_range(kind, **bounds)
            if meta["choices"] is not None:
                options["choices"] = meta["choices"]
        groups[name].add_argument(*flags, **options)


def config_from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """The config the parsed flags describe (fields left unset keep the dataclass default)."""
    values: dict[str, Any] = {}
    for spec, annotation in _cli_fields(cls, ()):
        if not hasattr(args, spec.name):
            continue
        value = getattr(args, spec.name)
        if value is None and _default(spec) is not None:
            continue  # a flag that was not given (or a parse-type field left at its default)
        if isinstance(value, list) and typing.get_origin(_base_type(annotation)[0]) is tuple:
            value = tuple(value)
        values[spec.name] = value
    values.update(overrides)
    return cls(**values)
