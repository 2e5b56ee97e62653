"""The `cdfast` console script: one entry point, one module per command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from cd_fast import __version__
from cd_fast.cli import bench, compress, demo, eval, report, score, segment, train
from cd_fast.data import DataError

COMMANDS = (demo, segment, score, compress, train, eval, report, bench)


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdfast",
        formatter_class=_Formatter,
        description=(
            "cd_fast: compress long chain-of-thought traces and distil them into a student.\n"
            "Run `cdfast COMMAND --help` for each command's options and examples.\n"
            "Set CD_FAST_DEBUG=1 to see a traceback instead of the one-line error."
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
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (DataError, ValueError, FileNotFoundError, ImportError) as error:
        if os.environ.get("CD_FAST_DEBUG"):
            raise
        print(f"cdfast {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cdfast {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
