"""`unlearn audit`: the audit trail (every deletion's receipt, every retention pass's
summary) read, exported, and expired by a retention policy.

Receipts name the subjects whose data was erased; a platform keeps them as long as its
policy says (the proof of each erasure) and no longer. `--expire-days N` deletes the
receipts applied more than N days ago, after writing them to `--out` when given, so an
archive can be taken first and nothing leaves unseen. Tombstones are kept: they are what
stops a late copy of erased data from being learned again, and they name indices, not ids.
A receipt not yet acknowledged by the broker is never expired.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from consumer.cli.service import connect, settings_flags, settings_from
from consumer.errors import InputError
from consumer.model_file import write_text_atomically

DAY_S = 86_400.0


def register(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser(
        "audit",
        help="the receipts of every deletion, as JSON lines; export and expire them",
    )
    cmd.add_argument("--request-id", default=None)
    cmd.add_argument("--user", default=None)
    cmd.add_argument(
        "--out",
        metavar="FILE",
        help="write the records to this file (JSON lines, written whole or not at all) "
        "instead of standard output",
    )
    cmd.add_argument(
        "--expire-days",
        type=float,
        metavar="N",
        help="then delete the receipts applied more than N days ago (those written out "
        "first when --out is given); the tombstones stay",
    )
    settings_flags(cmd)
    cmd.set_defaults(handler=run_audit)


def run_audit(args: argparse.Namespace) -> int:
    if args.expire_days is not None and not args.expire_days >= 0:
        raise InputError("command line", "--expire-days must be >= 0")
    if args.expire_days is not None and (args.request_id or args.user):
        raise InputError("command line", "--expire-days applies to the whole trail, not a filter")
    state = connect(settings_from(args))
    shards = state.meta().shards
    records = [
        r for r in state.read_receipts(shards)
        if (args.request_id is None or r.get("request_id") == args.request_id)
        and (args.user is None or r.get("user") == args.user)
    ]  # fmt: skip
    lines = "".join(json.dumps(r) + "\n" for r in records)
    if args.out:
        write_text_atomically(Path(args.out), lines)
    else:
        sys.stdout.write(lines)
    if args.expire_days is not None:
        cutoff = time.time() - args.expire_days * DAY_S
        expired = state.expire_receipts(shards, cutoff)
        summary = {"expired": expired, "cutoff": cutoff, "kept": len(records) - expired}
        print(json.dumps(summary), file=sys.stderr)
    return 0
