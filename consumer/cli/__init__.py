"""`unlearn`: the command line. One module per group of commands."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from threadpoolctl import threadpool_limits

from consumer.cli import auditing, demo, importing, offline, operations, service, verifying
from consumer.errors import InputError
from consumer.state.store import StateError

_COMMAND_GROUPS = (offline, importing, service, auditing, operations, verifying, demo)


class _Parser(argparse.ArgumentParser):
    """Command-line errors in one line, like every other error (`--help` has the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"unlearn: error: command line: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="unlearn",
        description="Make bi-linear recommenders forget: Unlearn-ALS, offline and streaming.",
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    for group in _COMMAND_GROUPS:
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
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
