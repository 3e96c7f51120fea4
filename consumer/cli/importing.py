"""`unlearn import`: a model trained elsewhere into an `unlearn` model file."""

from __future__ import annotations

import argparse
import json

from consumer.errors import InputError
from consumer.importers import from_implicit, from_matrices, from_spark
from consumer.model_file import save_model
from unlearn_core.params import KINDS, Hyperparameters


def register(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser(
        "import",
        help="convert a model trained elsewhere (implicit, Spark, factor matrices) to MODEL.npz",
        description=(
            "implicit: SOURCE is the file implicit's model.save() wrote; its confidence "
            "alpha_i * r becomes unlearn's 1 + alpha * w with alpha = alpha_i - 1 (exact for "
            "binary data; see docs/importing.md for weighted data). spark: SOURCE is the "
            "directory ALSModel.save() wrote (or the user factors' Parquet, --item-factors "
            "the items'), with --kind, --regularization (regParam) and --alpha. npy: SOURCE "
            "is the user factor matrix (.npy or .csv), --item-factors the item one."
        ),
    )
    cmd.add_argument(
        "--from", dest="source_kind", required=True, choices=("implicit", "spark", "npy")
    )
    cmd.add_argument("source", metavar="SOURCE")
    cmd.add_argument("--out", required=True, metavar="MODEL.npz")
    cmd.add_argument("--user-ids", metavar="FILE", help="one id per line, or .npy (default: 0..)")
    cmd.add_argument("--item-ids", metavar="FILE", help="one id per line, or .npy (default: 0..)")
    cmd.add_argument("--item-factors", metavar="FILE",
                     help="npy: the item factor matrix; spark: the items' Parquet")  # fmt: skip
    cmd.add_argument("--kind", choices=KINDS, default="implicit",
                     help="npy, spark: the objective")  # fmt: skip
    cmd.add_argument("--regularization", type=float, default=None,
                     help="npy, spark (Spark's regParam)")  # fmt: skip
    cmd.add_argument("--alpha", type=float, default=1.0,
                     help="npy, spark: confidence 1 + alpha * w")  # fmt: skip
    cmd.set_defaults(handler=run_import)


def run_import(args: argparse.Namespace) -> int:
    def objective(k: int) -> Hyperparameters:
        try:
            return Hyperparameters.for_kind(args.kind, k, args.regularization, args.alpha)
        except ValueError as exc:
            raise InputError("command line", str(exc)) from exc

    written = {}
    if args.source_kind == "implicit":
        model = from_implicit(args.source, args.user_ids, args.item_ids)
    elif args.source_kind == "spark":
        model = from_spark(args.source, args.item_factors, objective)
        # Spark's implicit ALS scales its penalty by each row's count; unlearn's does not.
        written["objective"] = "same" if args.kind == "explicit" else "changed"
    else:
        if args.item_factors is None:
            raise InputError("command line", "--from npy needs --item-factors")
        model = from_matrices(args.source, args.item_factors, args.user_ids, args.item_ids,
                              objective)  # fmt: skip
    save_model(model, args.out)
    print(json.dumps({"out": args.out, "users": model.shape[0], "items": model.shape[1],
                      "params": vars(model.params), **written}))  # fmt: skip
    return 0
