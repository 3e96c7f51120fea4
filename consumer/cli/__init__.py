"""`unlearn`: the command line. One module per group of commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from threadpoolctl import threadpool_limits

from consumer.cli import auditing, demo, importing, offline, operations, service, verifying
from consumer.errors import InputError
from consumer.state.store import StateError

_COMMAND_GROUPS = (offline, importing, service, auditing, operations, verifying, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unlearn",
        description="Make bi-linear recommenders forget: Unlearn-ALS, offline and streaming.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in _COMMAND_GROUPS:
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
