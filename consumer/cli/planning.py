"""`unlearn plan`: what a deployment needs for a model's size and a rate of events."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from consumer.errors import InputError
from consumer.planning.coefficients import DEFAULT_PATH, read
from consumer.planning.plan import UTILISATION, Demand, Plan, plan
from consumer.planning.shape import ACTIVITY_SIGMA, POPULARITY_EXPONENT, Shape

GIB = 1024**3
MIB = 1024**2


def register(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser(
        "plan",
        help="the instances, CPU, memory, Redis and partitions a deployment needs",
        description=(
            "A capacity plan from cost coefficients measured by benchmarks/capacity.py "
            "(docs/capacity.md). The model's shape is drawn from its size as real "
            "interaction data is shaped (long-tailed item popularity)."
        ),
    )
    cmd.add_argument("--users", type=int, required=True)
    cmd.add_argument("--items", type=int, required=True)
    cmd.add_argument("--interactions", type=int, required=True)
    cmd.add_argument("--deletions-per-s", type=float, required=True, metavar="D")
    cmd.add_argument("--interactions-per-s", type=float, required=True, metavar="R")
    cmd.add_argument("--k", type=int, default=64, help="factors per row (default 64)")
    cmd.add_argument(
        "--cpu-per-instance", type=float, default=1.0, metavar="CORES",
        help="each instance's CPU limit (default 1.0)",
    )  # fmt: skip
    cmd.add_argument(
        "--utilisation", type=float, default=UTILISATION, metavar="F",
        help=f"the share of its CPU an instance is planned to use (default {UTILISATION})",
    )  # fmt: skip
    cmd.add_argument(
        "--popularity-exponent", type=float, default=POPULARITY_EXPONENT, metavar="A",
        help=f"item popularity ~ rank^-A (default {POPULARITY_EXPONENT}, MovieLens-like)",
    )  # fmt: skip
    cmd.add_argument(
        "--activity-sigma", type=float, default=ACTIVITY_SIGMA, metavar="S",
        help=f"user activity log-normal with this sigma (default {ACTIVITY_SIGMA})",
    )  # fmt: skip
    cmd.add_argument("--coefficients", type=Path, default=DEFAULT_PATH, metavar="FILE")
    cmd.add_argument("--json", action="store_true", help="print the plan as JSON")
    cmd.set_defaults(handler=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    coefficients = read(args.coefficients)
    try:
        shape = Shape.typical(
            args.users, args.items, args.interactions, args.k,
            args.popularity_exponent, args.activity_sigma,
        )  # fmt: skip
        demand = Demand(args.deletions_per_s, args.interactions_per_s)
        result = plan(shape, demand, coefficients, args.cpu_per_instance, args.utilisation)
    except ValueError as exc:
        raise InputError("command line", str(exc)) from exc
    if args.json:
        # No limit (no Redis work measured) is null: JSON has no infinity.
        figures = {k: None if v == math.inf else v for k, v in result.__dict__.items()}
        print(json.dumps({"shape": shape.__dict__, "plan": figures}, indent=2))
    else:
        print(render(shape, demand, result))
    return 0


def render(shape: Shape, demand: Demand, p: Plan) -> str:
    load = demand.events_per_s / p.events_per_s_capacity if p.events_per_s_capacity else 0.0
    lines = [
        f"model: {shape.users:,} users, {shape.items:,} items, {shape.interactions:,} "
        f"interactions, k = {shape.factors} ({shape.factor_bytes / MIB:,.0f} MiB of factors)",
        f"load: {demand.deletions_per_s:g} deletions/s + {demand.interactions_per_s:g} "
        f"interactions/s; an event re-solves rows that read {shape.neighbours:,.0f} factor "
        f"rows, {p.core_s_per_event * 1000:.2f} ms of CPU",
        "",
        f"instances            {p.instances} (drain {p.events_per_s_capacity:,.0f} events/s "
        f"together, {load:.0%} busy)",
        f"cpu per instance     {_count(p.cpu_per_instance, 'core')}",
        f"memory per instance  {p.memory_per_instance_bytes / MIB:,.0f} MiB (every instance "
        "holds the whole model's factors)",
        f"partitions           {p.partitions} (each input topic)",
        f"shards               {p.shards} (unlearn load --shards)",
        f"redis memory         {p.redis_memory_bytes / GIB:,.2f} GiB for the model, + "
        f"{p.redis_trail_bytes_per_day / GIB:,.2f} GiB a day of audit trail until retention",
        f"redis commands       {p.redis_calls_per_s:,.0f}/s, {p.redis_cores:.2f} of a core "
        f"({_count(p.redis_primaries, 'primary', 'primaries')}; one is full at "
        f"{p.redis_events_per_s_per_primary:,.0f} events/s)",
    ]
    return "\n".join(lines)


def _count(n: float, one: str, many: str | None = None) -> str:
    return f"{n:g} {one if n == 1 else many or one + 's'}"
