"""`unlearn audit` (consumer/cli/auditing.py) on one Redis server and on a Cluster: the
trail exported whole to a file, then expired by age; a receipt the broker has not
acknowledged, and every tombstone, stay."""

from __future__ import annotations

import json
import time

import redis

from consumer.cli import main
from consumer.engine import Engine
from tests.service.conftest import url_of
from tests.state import test_engine
from tests.state.test_engine import Stream

loaded = test_engine.loaded  # the engine tests' loaded namespace, as a fixture here

DAY = 86_400.0


def test_the_trail_is_exported_whole_then_expired_by_age(
    loaded, redis_client, tmp_path, monkeypatch, capsys
):
    state, _, data = loaded
    shards = state.meta().shards
    clock = [time.time() - 400 * DAY]
    engine, stream = Engine(state, clock=lambda: clock[0]), Stream()
    engine.own(range(shards))
    pairs = [divmod(int(k), data.shape[1]) for k in data.entry_keys[:: data.nnz // 4][:4]]
    old = [stream.delete(f"u{u}", f"i{i}", request_id=f"old-{n}") for n, (u, i) in
           enumerate(pairs[:3])]  # fmt: skip
    engine.process([], old)
    for shard in range(shards):  # the broker acknowledged them, save old-2's
        unsent = [s.decode() for s in redis_client.smembers(state.layout.shard(shard).unsent)]
        state.sent({shard: [s for s in unsent if s != old[2].source.key]})
    clock[0] = time.time()
    u, i = pairs[3]
    engine.process([], [stream.delete(f"u{u}", f"i{i}", request_id="new")])
    tombstones = sum(redis_client.hlen(state.layout.shard(s).tombstones) for s in range(shards))
    if isinstance(redis_client, redis.RedisCluster):
        monkeypatch.setenv("UNLEARN_REDIS_CLUSTER", "true")
    flags = ["--redis-url", url_of(redis_client), "--namespace", state.layout.namespace]
    out = tmp_path / "trail.jsonl"
    capsys.readouterr()
    assert main(["audit", "--out", str(out), "--expire-days", "365", *flags]) == 0
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["request_id"] for r in exported) == ["new", "old-0", "old-1", "old-2"]
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert summary["expired"] == 2 and summary["kept"] == 2
    assert main(["audit", *flags]) == 0
    left = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["request_id"] for r in left) == ["new", "old-2"]  # old-2: never acknowledged
    assert sum(redis_client.hlen(state.layout.shard(s).tombstones) for s in range(shards)) == (
        tombstones
    )
    assert main(["audit", "--expire-days", "-1", *flags]) == 2
    assert main(["audit", "--expire-days", "1", "--user", "u1", *flags]) == 2
