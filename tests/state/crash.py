"""A process killed in the middle of a batch's writes, for the engine tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from consumer.state.shard_log import ShardLog


def process_killed_mid_commit(process: Callable[[], object]) -> None:
    """Run `process` so that the first write of several shards writes only the first of
    them (and none of the messages for other shards) and then dies, as a kill -9 between
    shard scripts would."""
    real_commit = ShardLog.commit

    def write_one_shard_then_die(self, writes, tokens, messages=None):
        if len(writes) < 2:
            return real_commit(self, writes, tokens, messages)
        shard = min(writes)
        real_commit(self, {shard: writes[shard]}, tokens)
        raise ConnectionError("killed")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ShardLog, "commit", write_one_shard_then_die)
        with pytest.raises(ConnectionError):
            process()
