"""Operator commands: `unlearn redrive` (dead letters back to their topic once the cause is
fixed), `unlearn skip-gap` (accept that the broker lost events the state needed) and
`unlearn consolidate` (ask the running service for ALS sweeps)."""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition

from consumer.cli.service import connect, settings_flags, settings_from
from consumer.errors import InputError
from consumer.event_time import UnreadableTime, parse_time_value
from consumer.events import REASONS, partition_key
from consumer.pipeline.dead_letters import REASON_HEADER, REDRIVEN_HEADER, SOURCE_HEADER
from consumer.settings import Settings


def register(commands: argparse._SubParsersAction) -> None:
    redrive = commands.add_parser(
        "redrive",
        help="send dead letters back to the topic they came from (after fixing the cause)",
    )
    redrive.add_argument(
        "--reason", action="append", choices=REASONS, help="only these reasons (repeatable)"
    )
    redrive.add_argument("--since", help="dead-lettered at or after (seconds or ISO-8601)")
    redrive.add_argument("--until", help="dead-lettered before (seconds or ISO-8601)")
    redrive.add_argument("--dry-run", action="store_true", help="count, send nothing")
    settings_flags(redrive)
    redrive.set_defaults(handler=run_redrive)

    skip = commands.add_parser(
        "skip-gap",
        help="accept that the broker lost events the state needed, and read on after them",
    )
    skip.add_argument("partitions", nargs="+", metavar="TOPIC:PARTITION")
    skip.add_argument("--yes", action="store_true", help="really move the state's offset")
    settings_flags(skip)
    skip.set_defaults(handler=run_skip_gap)

    consolidate = commands.add_parser(
        "consolidate",
        help="ask the running service to continue ALS on its model (full sweeps of the "
        "shards each instance owns); it never sweeps unasked",
    )
    consolidate.add_argument(
        "--sweeps", type=int, default=0, metavar="N",
        help="sweeps to run (0, the default: until one lowers the objective by less than "
        "consolidate_sweep_tolerance)",
    )  # fmt: skip
    settings_flags(consolidate)
    consolidate.set_defaults(handler=run_consolidate)


# ----- consolidate -------------------------------------------------------------------


def run_consolidate(args: argparse.Namespace) -> int:
    """Record the request; each running instance picks it up within a few seconds and
    sweeps the shards it owns (its metrics: unlearn_sweeps_total)."""
    if args.sweeps < 0:
        raise InputError("command line", "--sweeps must be >= 0")
    state = connect(settings_from(args))
    state.meta()  # a namespace with a model, or the usual error
    request = state.request_consolidation(args.sweeps)
    print(json.dumps({"request": request, "sweeps": args.sweeps or "until settled"}))
    return 0


# ----- redrive -----------------------------------------------------------------------


def run_redrive(args: argparse.Namespace) -> int:
    """Every dead letter that matches goes back to its original topic once: the state
    records which were sent (a second run sends only new ones), and each carries the
    dead letter it came from, so the service counts how it fared the second time."""
    settings = settings_from(args)
    since = _moment(args.since, "--since", -math.inf)
    until = _moment(args.until, "--until", math.inf)
    reasons = set(args.reason or REASONS)
    state = connect(settings)
    done_key = state.layout.redriven
    producer = None if args.dry_run else Producer(
        {**settings.kafka_common(), "enable.idempotence": True, "acks": "all"}
    )  # fmt: skip
    tally: Counter[str] = Counter()
    examined = already = 0
    sent: list[str] = []
    for message in _read_to_end(settings, settings.topic_dlq):
        examined += 1
        headers = dict(message.headers() or [])
        reason = (headers.get(REASON_HEADER) or b"").decode()
        moment = message.timestamp()[1] / 1000
        if reason not in reasons or not since <= moment < until:
            continue
        name = f"{message.topic()}:{message.partition()}:{message.offset()}"
        if state.client.hexists(done_key, name):
            already += 1
            continue
        tally[reason] += 1
        if producer is None:
            continue
        source = (headers.get(SOURCE_HEADER) or b"").decode()
        # "topic:partition:offset", or "topic#N:..." in a re-created topic's Nth life
        topic = source.rsplit(":", 2)[0].partition("#")[0] if source.count(":") >= 2 else ""
        if not topic:
            raise InputError(name, "dead letter without its source header: cannot tell its topic")
        kept = [(k, v) for k, v in (message.headers() or []) if not k.startswith("unlearn.")]
        producer.produce(
            topic, key=message.key(), value=message.value(),
            headers=[*kept, (REDRIVEN_HEADER, name.encode())],
        )  # fmt: skip
        sent.append(name)
    if producer is not None:
        if producer.flush(60) != 0:
            raise InputError("kafka", "the broker did not acknowledge the re-driven messages")
        for start in range(0, len(sent), 1000):
            chunk = sent[start : start + 1000]
            state.client.hset(done_key, mapping={n: repr(time.time()) for n in chunk})
    print(json.dumps({
        "dead_letters_examined": examined,
        "matched": sum(tally.values()) + already,
        "redriven": dict(sorted(tally.items())) if producer is not None else {},
        "would_redrive": dict(sorted(tally.items())) if producer is None else {},
        "already_redriven": already,
    }))  # fmt: skip
    return 0


def _moment(text: str | None, flag: str, default: float) -> float:
    if text is None:
        return default
    try:
        return parse_time_value(text)
    except UnreadableTime as exc:
        raise InputError("command line", f"{flag}: {exc}") from None


def _read_to_end(settings: Settings, topic: str) -> Iterator[Message]:
    """Every message of the topic: up to each partition's end, and on until nothing more
    has come for a second (a broker may report its log end short of the truth)."""
    reader = Consumer(
        {**settings.kafka_common(), "group.id": "unlearn-redrive", "enable.auto.commit": False}
    )
    try:
        metadata = reader.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise InputError("kafka", f"topic {topic!r} not found (topic_dlq)")
        ends = {}
        for number in metadata.partitions:
            _, high = reader.get_watermark_offsets(TopicPartition(topic, number), timeout=10)
            ends[number] = high
        reader.assign([TopicPartition(topic, n, OFFSET_BEGINNING) for n in ends])
        position = dict.fromkeys(ends, -1)
        deadline = time.monotonic() + 300
        last = time.monotonic()
        while any(position[n] < ends[n] - 1 for n in ends) or time.monotonic() - last < 1.0:
            if time.monotonic() > deadline:
                raise InputError("kafka", f"could not read {topic} to its end within 300 s")
            for message in reader.consume(num_messages=1000, timeout=0.2):
                if message.error() is None:
                    position[message.partition()] = message.offset()
                    last = time.monotonic()
                    yield message
    finally:
        reader.close()


# ----- skip-gap ----------------------------------------------------------------------


def run_skip_gap(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    state = connect(settings)
    reader = Consumer({**settings.kafka_common(), "group.id": "unlearn-skip-gap"})
    out: list[dict[str, Any]] = []
    try:
        for text in args.partitions:
            topic, _, number_text = text.rpartition(":")
            if not topic or not number_text.isdigit():
                raise InputError("command line", f"{text!r}: expected TOPIC:PARTITION")
            number = int(number_text)
            epoch = state.read_epochs([partition_key(topic, number)])[partition_key(topic, number)]
            key = partition_key(topic, number, int(epoch["epoch"]))
            applied = state.read_applied().get(key)
            low, _ = reader.get_watermark_offsets(TopicPartition(topic, number), timeout=10)
            if applied is None or applied + 1 >= low:
                out.append({"partition": text, "gap": None})
                continue
            lost = {"partition": text, "gap": [applied + 1, low - 1], "messages": low - applied - 1}
            if args.yes:
                state.client.hset(state.layout.applied, key, low - 1)
            out.append({**lost, "accepted": bool(args.yes)})
    finally:
        reader.close()
    print(json.dumps(out))
    if any(entry.get("gap") and not entry["accepted"] for entry in out):
        raise InputError(
            "command line",
            "those events are lost for good (deletions among them were never applied): "
            "pass --yes to read on after them",
        )
    return 0
