"""Where the service's main thread spends its time, per event, from py-spy's collapsed
stacks (`python -m benchmarks.scaling --profile DIR` writes them).

usage: python -m benchmarks.profile_breakdown DIR/NAME.txt [--events 6000] [--rate 200]
           [--out benchmarks/results/profile_breakdown.json]

Each sample of the main thread is charged to the first stage, in the order below, whose
function is on its stack (a solve inside a batch is "solve", not "batch: other"). The
idle stages (waiting for input, for the broker) are shown apart. Milliseconds per event =
samples / rate / events.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

from benchmarks._common import machine, write_json

# (stage, functions that mark it), most specific first.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("parse", ("Parser.", "parse_message", "parsing.py")),
    ("batch: read state", ("Batch.load", "ModelState.read_", "Batch.read")),
    ("batch: solve", ("Batch.solve",)),
    ("batch: edit data", ("Batch.edit",)),
    ("batch: commit to Redis", ("Engine._commit",)),
    ("batch: other", ("Engine.step",)),
    ("route and ingest", ("Engine.ingest", "Engine._route", "Application._ingest")),
    ("publish factors", ("FactorPublisher.",)),
    ("receipts and acknowledge", ("Application._send", "Checkpoint.", "Application._flush")),
    ("forgetting cycles", ("Consolidating.", "Consolidator.")),
    ("read input (Kafka)", ("Source.read", "TimeOrder.")),
)
IDLE = ("select", "_PollLikeSelector", "Event.wait", "Condition.wait", "sleep")


def breakdown(path: Path) -> Counter:
    """Samples of the main thread per stage."""
    out: Counter = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or "MainThread" not in frames[0]:
            continue
        names = [re.sub(r" \(.*\)$", "", f) for f in frames[1:]]
        if names and names[-1].startswith(IDLE):
            out["idle"] += int(count)
            continue
        joined = ";".join(names)
        stage = next((s for s, marks in STAGES if any(m in joined for m in marks)), "other")
        out[stage] += int(count)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/profile_breakdown.json")
    )
    args = parser.parse_args()
    samples = breakdown(args.profile)
    busy = sum(n for s, n in samples.items() if s != "idle")
    stages = {
        stage: {
            "samples": n,
            "share_of_busy": n / busy if stage != "idle" else None,
            "ms_per_event": n / args.rate / args.events * 1e3,
        }
        for stage, n in samples.most_common()
    }
    for stage, figures in stages.items():
        print(f"{stage:28s} {figures['ms_per_event']:7.3f} ms/event  {figures['samples']:6d}")
    write_json(
        args.out,
        {"machine": machine(), "profile": args.profile.name, "events": args.events,
         "rate_hz": args.rate, "stages": stages},
    )  # fmt: skip


if __name__ == "__main__":
    main()
