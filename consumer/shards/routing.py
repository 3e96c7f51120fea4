"""Ingest: where each input event goes, and what a batch records of its input.

Every event goes to the inbox of one shard, whichever instance owns it: an interaction to
its user's shard, a deletion to the shard that coordinates it (its subject's, or for an id
never seen the shard its id hashes to). A shard applies its inbox in order, so events are
routed in the input's time order (pipeline/ordering.py): a batch counts what a deletion
removed as one event at a time would, wherever the batch was cut. With the events, a batch
records how far it took each partition (never back) and the fingerprint of its last
message there (pipeline/positions.py tells a replay from a re-created topic by them).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from consumer.events import Deletion, Interaction, Source, order_key
from consumer.shards.messages import Message, Raw, Routed
from consumer.state.layout import coordinator_shard, shard_of
from consumer.state.store import ModelState


def route(
    state: ModelState,
    shards: int,
    interactions: list[Interaction],
    deletions: list[Deletion],
    acknowledged: Mapping[str, tuple[int, int]],
    raw: Mapping[Source, Raw],
) -> dict[int, list[Message]]:
    """Each event as its shard's inbox message: an interaction to its user's shard (its
    ids allocated), a deletion to the shard that coordinates it (its ids resolved, never
    created); per shard in the input's time order."""
    users, items, limits = state.allocate_pairs(
        [e.user for e in interactions], [e.item for e in interactions]
    )
    routed: list[tuple[int, Routed]] = []
    for event, u, i, limit in zip(
        interactions, users.tolist(), items.tolist(), limits.tolist(), strict=True
    ):
        message = Routed(event, u, i, raw.get(event.source), unseen_limit=limit)
        routed.append((shard_of(u, shards), message))
    # A deletion names its ids, it never creates them (an id never seen keeps its
    # tombstone by id, and the request is coordinated where the id hashes to).
    named = [(d.scope, d.user, d.item, d.ts) for d in deletions]
    d_users, d_items = state.resolve_deletions(named)
    for d, u, i in zip(deletions, d_users.tolist(), d_items.tolist(), strict=True):
        again = _within(d.source.offset, acknowledged.get(d.source.partition_key))
        shard = coordinator_shard(d.scope, u, i, d.user, d.item, shards)
        routed.append((shard, Routed(d, u, i, raw.get(d.source), again)))
    # In the input's time order (pipeline/ordering.py): a shard applies its events in
    # the order they are routed, so a batch counts what a deletion removed as one
    # event at a time would, wherever the batch was cut.
    routed.sort(key=lambda r: _order(r[1].event))
    out: dict[int, list[Message]] = defaultdict(list)
    for shard, message in routed:
        out[shard].append(message)
    return out


def marks(sources: list[Source]) -> dict[str, str]:
    """Per partition, the fingerprint mark of the batch's last message that has one."""
    last: dict[str, Source] = {}
    for source in sources:
        best = last.get(source.partition_key)
        if source.fingerprint and (best is None or source.offset > best.offset):
            last[source.partition_key] = source
    return {key: f"{s.offset}:{s.fingerprint}" for key, s in last.items()}


def advance(applied: dict[str, int], sources: list[Source]) -> dict[str, int]:
    """The batch's partitions and how far it takes each (never back)."""
    out: dict[str, int] = {}
    for source in sources:
        key = source.partition_key
        out[key] = max(out.get(key, applied.get(key, -1)), source.offset)
    return out


def _order(event: Interaction | Deletion) -> tuple[int, bool, str, int, int]:
    s = event.source
    return order_key(s.stamp, isinstance(event, Deletion), s.topic, s.partition, s.offset)


def _within(offset: int, span: tuple[int, int] | None) -> bool:
    return span is not None and span[0] <= offset <= span[1]
