"""The `cdfast` console script: one entry point, one module per command."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence

from cd_fast import __version__
from cd_fast.cli import (
    bench,
    compress,
    demo,
    eval,
    generate,
    report,
    score,
    segment,
    sweep,
    train,
)

COMMANDS = (demo, generate, segment, score, compress, train, eval, sweep, report, bench)


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default once, at the end of its help, and only when it says something."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        unset = default is None or default is argparse.SUPPRESS or default == ""
        if not action.option_strings or unset or "default" in text.lower():
            return text
        if isinstance(action, argparse.BooleanOptionalAction):  # which of --x/--no-x holds
            return text + (" (default: on)" if default else " (default: off)")
        if isinstance(default, bool):  # a store_true flag
            return text
        return text + " (default: %(default)s)"


_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def error_line(error: BaseException, output: object = None) -> str | None:
    """The one line for an anticipated failure (bad input, I/O, missing model), None for a bug.
    `output` names what the command was writing, for OS errors that carry no file name."""
    if isinstance(error, (ValueError, ImportError)):
        return str(error)
    if not isinstance(error, OSError):
        return None
    if error.errno is None:  # raised with a message of its own
        return str(error)
    name = error.filename or output or "the output"
    reason = error.strerror or str(error)
    if error.errno in _SPACE:
        return (
            f"no space left writing {name} ({reason}): free space or write elsewhere, then "
            "rerun (with --resume where the command has it: nothing finished is lost)"
        )
    if error.errno in _DENIED:
        return f"cannot write {name} ({reason}): choose a writable location or fix permissions"
    if error.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        return (
            f"{name}: {reason} (a file where a folder belongs, or the reverse): choose another path"
        )
    if error.errno == errno.ENOENT:
        return f"{name}: no such file or directory"
    return f"{name}: {reason}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdfast",
        formatter_class=_Formatter,
        description=(
            "cd_fast: compress long chain-of-thought traces and distil them into a student.\n"
            "Run `cdfast COMMAND --help` for each command's options and examples.\n"
            "Errors are one line; `--debug` (or CD_FAST_DEBUG=1) shows the traceback. With\n"
            "stderr not a terminal, progress is one line every 30 s (CD_FAST_PROGRESS_SECONDS)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"cd_fast {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = commands.add_parser(
            command.NAME,
            help=command.HELP,
            description=command.DESCRIPTION,
            formatter_class=_Formatter,
        )
        command.add_arguments(sub)
        sub.add_argument(
            "--debug",
            action="store_true",
            help="on an error, show the traceback instead of one line (or set CD_FAST_DEBUG=1)",
        )
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"cdfast {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        line = error_line(error, getattr(args, "output", None))
        if line is None or args.debug or os.environ.get("CD_FAST_DEBUG"):
            raise
        print(f"cdfast {args.command}: error: {' '.join(line.split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
