"""`unlearn`: the command line. One module per group of commands, imported only when one
of its commands runs (or for `--help`): the service's modules and the evaluation's scipy
take about two seconds to import, longer than `unlearn forget` takes to forget 1 % of
MovieLens-1M."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from threadpoolctl import threadpool_limits

from consumer.errors import InputError, StateError

# Each command and the module (in consumer.cli) that defines it, in the order `--help` lists
# them. tests/cli/test_command_table.py checks it against what the modules register.
COMMANDS: dict[str, str] = {
    "train": "offline",
    "forget": "offline",
    "import": "importing",
    "load": "service",
    "export": "service",
    "run": "service",
    "status": "service",
    "recommend": "service",
    "inspect": "service",
    "audit": "auditing",
    "redrive": "operations",
    "skip-gap": "operations",
    "consolidate": "operations",
    "verify": "verifying",
    "plan": "planning",
    "demo": "demo",
}


class _Parser(argparse.ArgumentParser):
    """Command-line errors in one line, like every other error (`--help` has the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"unlearn: error: command line: {message} (see {self.prog} --help)\n")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`'s command (only its module imported), or for every command
    when `argv` names none (`--help`, a typo: argparse lists them all)."""
    parser = _Parser(
        prog="unlearn",
        description="Make bi-linear recommenders forget: Unlearn-ALS, offline and streaming.",
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    named = COMMANDS.get(argv[0]) if argv else None
    groups = [named] if named else list(dict.fromkeys(COMMANDS.values()))
    for group in groups:
        importlib.import_module(f"consumer.cli.{group}").register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(argv).parse_args(argv)
    except SystemExit as exc:  # --help (0), or a command-line error already printed (2)
        return int(exc.code or 0)
    # Rows are solved in parallel by our threads and by implicit's OpenMP loop; a BLAS
    # that also spawns threads per call would only oversubscribe the cores.
    threadpool_limits(1, "blas")
    try:
        return int(args.handler(args))
    except InputError as exc:
        print(f"unlearn: error: {exc}", file=sys.stderr)
        return 2
    except StateError as exc:  # no model in the namespace, or one this version cannot read
        print(f"unlearn: error: redis: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a case no check above names: one line, never a traceback
        if os.environ.get("UNLEARN_DEBUG"):
            raise
        print(
            f"unlearn: error: internal: {args.command} failed: {type(exc).__name__}: {exc} "
            "(UNLEARN_DEBUG=1 shows where; please report it)".replace("\n", " "),
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
