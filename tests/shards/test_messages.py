"""What goes through the shards' inboxes survives its codec (shards/messages.py): events
with their source (fingerprint included) and raw message, the parts asked and answered."""

from __future__ import annotations

from consumer.events import Deletion, Interaction, Source
from consumer.shards.messages import Done, Purge, Raw, Routed, Solve, Waiter, decode, encode


def test_every_kind_of_message_survives_encode_and_decode():
    source = Source("interactions", 2, 17, epoch=1, fingerprint="ab12")
    raw = Raw(b"u1", b'{"user": "u1"}', [("trace", b"\x00\xff")])
    deletion = Deletion("u1", None, 12.0, "r-1", Source("deletions", 0, 3), 12.5, None, 12.2)
    messages = [
        Routed(Interaction("u1", "i2", 2.5, 10.0, source, 11.0, "ms"), 4, 7, raw),
        Routed(deletion, 4, -1, None, reapplied=True),
        Solve((7, 9), Waiter(3, "deletions:0:3", "items@1")),
        Solve((8,), None),
        Purge(7, 12.0, Waiter(0, "deletions:1:5", "purge@2")),
        Done("deletions:0:3", "items@1", 13.0, removed=2, kept=1),
    ]
    decoded = decode(encode(messages))
    assert decoded == messages
    # The fingerprint is not part of a Source's equality: checked on its own.
    assert decoded[0].event.source.fingerprint == "ab12"
    assert decoded[0].raw.headers == [("trace", b"\x00\xff")]
