"""`unlearn import`: a model trained elsewhere into an `unlearn` model file."""

from __future__ import annotations

import argparse
import json

from consumer.errors import InputError
from consumer.importers import from_implicit, from_matrices
from consumer.model_file import save_model
from unlearn_core.params import KINDS, Hyperparameters


def register(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser(
        "import",
        help="convert a model trained elsewhere (implicit, factor matrices) to MODEL.npz",
        description=(
            "implicit: SOURCE is the file implicit's model.save() wrote; its confidence "
            "alpha_i * r becomes unlearn's 1 + alpha * w with alpha = alpha_i - 1 (exact for "
            "binary data; see docs/importing.md for weighted data). npy: SOURCE is the user "
            "factor matrix (.npy or .csv), --item-factors the item one."
        ),
    )
    cmd.add_argument("--from", dest="source_kind", required=True, choices=("implicit", "npy"))
    cmd.add_argument("source", metavar="SOURCE")
    cmd.add_argument("--out", required=True, metavar="MODEL.npz")
    cmd.add_argument("--user-ids", metavar="FILE", help="one id per line, or .npy (default: 0..)")
    cmd.add_argument("--item-ids", metavar="FILE", help="one id per line, or .npy (default: 0..)")
    cmd.add_argument("--item-factors", metavar="FILE", help="npy: the item factor matrix")
    cmd.add_argument("--kind", choices=KINDS, default="implicit", help="npy: the objective")
    cmd.add_argument("--regularization", type=float, default=None, help="npy")
    cmd.add_argument("--alpha", type=float, default=1.0, help="npy: confidence 1 + alpha * w")
    cmd.set_defaults(handler=run_import)


def run_import(args: argparse.Namespace) -> int:
    if args.source_kind == "implicit":
        model = from_implicit(args.source, args.user_ids, args.item_ids)
    else:
        if args.item_factors is None:
            raise InputError("command line", "--from npy needs --item-factors")

        def objective(k: int) -> Hyperparameters:
            try:
                return Hyperparameters.for_kind(args.kind, k, args.regularization, args.alpha)
            except ValueError as exc:
                raise InputError("command line", str(exc)) from exc

        model = from_matrices(args.source, args.item_factors, args.user_ids, args.item_ids,
                              objective)  # fmt: skip
    save_model(model, args.out)
    print(json.dumps({"out": args.out, "users": model.shape[0], "items": model.shape[1],
                      "params": vars(model.params)}))  # fmt: skip
    return 0
