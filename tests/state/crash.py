"""A process killed in the middle of a commit, for the engine tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from consumer.state.store import ModelState


def process_killed_mid_commit(process: Callable[[], object]) -> None:
    """Run `process` so that its commit writes one shard and then dies, leaving the intent
    (the redo log) behind, as a kill -9 between shard writes would."""
    real_write = ModelState.write_shards

    def write_one_shard_then_die(self, writes, token):
        shard = min(writes)
        real_write(self, {shard: writes[shard]}, token)
        raise ConnectionError("killed")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ModelState, "write_shards", write_one_shard_then_die)
        with pytest.raises(ConnectionError):
            process()
