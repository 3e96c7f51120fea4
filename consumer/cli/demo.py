"""`unlearn demo`: the whole product on an embedded default, explained as it runs.

Starts a Kafka-protocol broker and a Redis server on loopback, trains a model (MovieLens-100K
when found in ../shared/data, UNLEARN_DATA_DIR or --data; generated long-tailed data
otherwise), loads it, runs the consumer, and streams the newest interactions together with
deletion requests: one user forgets everything they did in their last month, another their
whole history, and single pairs are withdrawn. It shows receipts arriving, forget latency,
the residual falling and one user's top-10 before and after, then writes a report and a PNG
plot and stops everything it started (unless --keep-running).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from tqdm import tqdm

from consumer.application import Application
from consumer.cli.verifying import verify_namespace
from consumer.embedded import local_kafka, local_redis
from consumer.engine import Engine
from consumer.http import Health, MetricsServer
from consumer.metrics import Metrics
from consumer.recommend import recommend
from consumer.settings import load_settings
from consumer.state.bootstrap import export, pair_timestamps
from consumer.state.bootstrap import load as load_state
from consumer.state.store import ModelState
from consumer.tsv import read_interactions, write_interactions
from unlearn_core import Hyperparameters, Interactions, train
from unlearn_core.ids import IdIndex
from unlearn_core.synthetic import SECONDS_PER_DAY, long_tailed_events

DEMO_PARAMS = Hyperparameters("implicit", factors=32, regularization=1.0, alpha=1.0)
TOP_N = 10
MONTH = 30 * SECONDS_PER_DAY
HELD_OUT_SHARE = 0.5  # of the newest: never trained on nor streamed (the verify report's test)
STREAMED_SHARE = 0.02  # the newest interactions arrive as events instead of being trained on
PAIR_REQUESTS = 200
PARTITIONS = 2


def register(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo",
        help="the whole product on an embedded broker and Redis, start to finish",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--data", metavar="FILE", help="interactions TSV (default: MovieLens-100K)")
    demo.add_argument("--iterations", type=int, default=20)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--plot", default="unlearn-demo.png", metavar="PNG")
    demo.add_argument("--report", default="unlearn-demo.json", metavar="JSON")
    demo.add_argument(
        "--verify-report",
        default="unlearn-verify.json",
        metavar="JSON",
        help="where `unlearn verify` writes its report on the demo's namespace (and a PNG)",
    )
    demo.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the service up with its metrics endpoint until Ctrl-C",
    )
    demo.add_argument("--metrics-port", type=int, default=9108)
    demo.add_argument(
        "--converge-seconds",
        type=float,
        default=15.0,
        help="how long to watch consolidation after the last receipt",
    )
    demo.set_defaults(handler=run_demo)


@dataclass
class Dataset:
    source: str
    users: np.ndarray
    items: np.ndarray
    weights: np.ndarray
    stamps: np.ndarray
    user_ids: list[str]
    item_ids: list[str]


@dataclass
class Trail:
    """What the demo saw, for the report and the plot."""

    latencies: list[float] = field(default_factory=list)
    residuals: list[tuple[float, float, str]] = field(default_factory=list)  # (t, value, kind)
    receipts: list[dict] = field(default_factory=list)


def run_demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    data = _load(args.data, args.seed)
    train_rows, stream_rows = _split_newest(data)
    # A test split the model never sees, for `unlearn verify`'s held-out utility: half of
    # the newest interactions (what users did next), the other half streamed.
    held = np.random.default_rng(args.seed).random(len(stream_rows)) < HELD_OUT_SHARE
    held_rows, stream_rows = np.sort(stream_rows[held]), stream_rows[~held]
    interactions = Interactions.from_triples(
        data.users[train_rows],
        data.items[train_rows],
        data.weights[train_rows],
        (len(data.user_ids), len(data.item_ids)),
        "implicit",
    )
    print(
        f"data: {data.source}: {len(data.users)} interactions, {len(data.user_ids)} users x "
        f"{len(data.item_ids)} items; the newest {len(stream_rows)} will be streamed"
    )
    with tqdm(total=args.iterations, desc="training", unit="sweep", disable=None) as bar:
        model, _ = train(
            interactions,
            data.user_ids,
            data.item_ids,
            DEMO_PARAMS,
            args.iterations,
            seed=args.seed,
            on_sweep=lambda _record: bar.update(1),
        )

    with (
        tempfile.TemporaryDirectory(prefix="unlearn-demo-") as workdir,
        local_redis(workdir=workdir) as redis_url,
        local_kafka() as bootstrap,
    ):
        print(f"embedded servers: Redis {redis_url}, Kafka {bootstrap}")
        state = ModelState(redis.Redis.from_url(redis_url), "demo")
        stamps = pair_timestamps(
            interactions,
            data.users[train_rows],
            data.items[train_rows],
            data.stamps[train_rows],
            model.params.kind,
        )
        with tqdm(total=4, desc="loading Redis", unit="shard", disable=None) as bar:
            load_state(state, model, interactions, stamps, shards=4, progress=bar.update)
        topics = {
            "interactions": "interactions",
            "deletions": "deletions",
            "receipts": "unlearn-receipts",
            "dlq": "unlearn-dlq",
            "factors": "unlearn-factors",
        }
        admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive its futures
        compacted = {"cleanup.policy": "compact"}  # serving reads each row's newest value
        futures = admin.create_topics(
            [
                NewTopic(t, num_partitions=PARTITIONS, config=compacted if k == "factors" else {})
                for k, t in topics.items()
            ]
        )
        for future in futures.values():
            future.result(timeout=30)
        settings = load_settings(
            None,
            kafka_bootstrap_servers=bootstrap,
            redis_url=redis_url,
            namespace="demo",
            group_id="unlearn-demo",
            session_timeout_ms=6000,
            consolidate_idle_ms=300,
            metrics_port=args.metrics_port,
        )
        metrics = Metrics()
        state.observer = metrics.observe_redis
        health = Health(deadline_s=60, redis_ok=lambda: bool(state.client.ping()))
        server = _metrics_server(args.metrics_port, metrics, health)
        service = Application(settings, Engine(state), metrics=metrics, health=health)
        thread = threading.Thread(target=service.run, daemon=True)
        thread.start()
        held_out = Path(workdir) / "held-out.tsv"
        write_interactions(
            held_out,
            (
                (data.user_ids[data.users[r]], data.item_ids[data.items[r]],
                 float(data.weights[r]), int(data.stamps[r]))
                for r in held_rows
            ),
        )  # fmt: skip
        try:
            return _stream_and_report(
                args, held_out, data, interactions, model, state, service, settings,
                stream_rows, started, server,
            )  # fmt: skip
        finally:
            if args.keep_running:
                _keep_running(server)
            service.request_stop()
            thread.join(timeout=30)
            if server is not None:
                server.stop()


def _stream_and_report(
    args, held_out, data, interactions, model, state, service, settings, stream_rows,
    started, server,
) -> int:  # fmt: skip
    user, month_items = _last_month(data, interactions)
    user_id = data.user_ids[user]
    month_item_ids = {data.item_ids[i] for i in month_items}
    # Both lists leave out what the user keeps; the month about to be forgotten is ranked.
    before = recommend(state, user_id, TOP_N, keep=month_item_ids).items
    rng = np.random.default_rng(args.seed)
    others = np.flatnonzero(interactions.row_counts() > 0)
    whole_user = data.user_ids[int(rng.choice(others[others != user]))]
    pairs = interactions.entry_keys[rng.choice(interactions.nnz, PAIR_REQUESTS, replace=False)]
    n_items = interactions.shape[1]
    deletions = [
        (user_id, {"user": user_id, "item": data.item_ids[i], "request_id": f"last-month-{n}"})
        for n, i in enumerate(month_items)
    ]
    deletions.append((whole_user, {"user": whole_user, "request_id": "whole-user"}))
    for n, key in enumerate(pairs):
        owner = data.user_ids[key // n_items]
        deletions.append(
            (
                owner,
                {"user": owner, "item": data.item_ids[key % n_items], "request_id": f"pair-{n}"},
            )
        )
    learned = [
        (
            data.user_ids[data.users[r]],
            {
                "user": data.user_ids[data.users[r]],
                "item": data.item_ids[data.items[r]],
                "weight": float(data.weights[r]),
            },
        )
        for r in stream_rows
    ]
    print(
        f"\ndeletion requests: user {user_id} forgets their last month ({len(month_items)} "
        f"items); user {whole_user} asks to be forgotten entirely; {PAIR_REQUESTS} single "
        f"pairs are withdrawn; {len(learned)} new interactions arrive meanwhile"
    )

    deadline = time.monotonic() + 60
    while service.health.assigned == 0 and time.monotonic() < deadline:
        time.sleep(0.1)  # stream once the consumer has joined its group
    trail = Trail()
    collector = threading.Thread(
        target=_collect_receipts, args=(settings, len(deletions), trail), daemon=True
    )
    collector.start()
    _produce(settings, deletions, learned)
    collector.join(timeout=120)
    _watch_convergence(service, trail, seconds=args.converge_seconds)
    after = recommend(state, user_id, TOP_N, keep=month_item_ids).items
    unlearned, current = export(state)
    retrained_model, _ = train(
        current,
        unlearned.user_ids,
        unlearned.item_ids,
        DEMO_PARAMS,
        args.iterations,
        seed=args.seed,
    )
    retrained = _top(retrained_model, current, user_id)
    neighbours = {data.item_ids[i] for i in _neighbours(model.item_factors, month_items)}
    _print_top(before, after, retrained, month_item_ids, neighbours)
    # Where the forgotten items now rank among everything the user does not keep.
    ranks = {
        name: _median_rank(candidate, current, user_id, month_item_ids)
        for name, candidate in (
            ("before", model),
            ("after", unlearned),
            ("retrained", retrained_model),
        )
    }
    report = _report(
        args, trail, before, after, retrained, neighbours, month_item_ids, service, state, started
    )
    report["median_rank_of_forgotten_items"] = ranks
    print(f"  {'median_rank_of_forgotten_items':32s} {ranks}")
    _plot(args.plot, trail)
    print(f"\nplot: {args.plot}   report: {args.report}")
    if server is not None:
        print(f"metrics: http://127.0.0.1:{server.port}/metrics")
    Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    print("\nunlearn verify on this namespace (the receipts' pairs vs retrains from scratch)")
    verified = verify_namespace(
        state, args.verify_report, before=model, held_out=str(held_out), sample=1000
    )
    for name, passed in verified["checks"].items():
        print(f"  {name:32s} {'pass' if passed else 'FAIL'}")
    print(f"  verdict: {verified['verdict']}   report: {args.verify_report}   "
          f"plot: {verified['plot']}")  # fmt: skip
    return 0


def _produce(settings, deletions, learned) -> None:
    # Records batched per partition, as busy producers do (and as one fetch returns them).
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "linger.ms": 50})
    # Interleave: deletions and new interactions arrive together, as in production.
    events = [(settings.topic_deletions, k, v) for k, v in deletions]
    events += [(settings.topic_interactions, k, v) for k, v in learned]
    order = np.random.default_rng(1).permutation(len(events))
    with tqdm(total=len(events), desc="streaming", unit="event", disable=None) as bar:
        for sent, n in enumerate(order, start=1):
            topic, key, fields = events[n]
            # Stamped as it is sent: forget latency runs from the request to its receipt.
            producer.produce(topic, key=key, value=_json(**fields, ts=time.time()))
            bar.update(1)
            if sent % 200 == 0:
                producer.flush()
                time.sleep(0.05)  # a steady stream, not one burst
    producer.flush(30)


def _collect_receipts(settings, expected: int, trail: Trail) -> None:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": "unlearn-demo-receipts",
            "enable.auto.commit": False,
        }
    )
    consumer.assign(
        [TopicPartition(settings.topic_receipts, p, OFFSET_BEGINNING) for p in range(PARTITIONS)]
    )
    deadline = time.monotonic() + 120
    shown = 0
    try:
        while len(trail.receipts) < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=500, timeout=0.2):
                if message.error() is not None:
                    continue
                receipt = json.loads(message.value())
                trail.receipts.append(receipt)
                trail.latencies.append(receipt["applied_at"] - receipt["event_ts"])
                trail.residuals.append((time.time(), receipt["residual"], "batch"))
                if shown < 5 or receipt["request_id"] == "whole-user":
                    shown += 1
                    tqdm.write(
                        f"  receipt {receipt['request_id']}: {receipt['scope']} "
                        f"{receipt['user'] or ''} {receipt['item'] or ''} -> removed "
                        f"{receipt['removed']} in {trail.latencies[-1] * 1e3:.1f} ms"
                    )
    finally:
        consumer.close()


def _watch_convergence(service: Application, trail: Trail, seconds: float) -> None:
    """Let the service carry the deletions through the model; print each forgetting cycle
    as it ends, until consolidation rests (it stays at rest until new deletions)."""
    deadline = time.monotonic() + seconds
    seen = service.stats.cycles
    while time.monotonic() < deadline:
        time.sleep(0.2)
        consolidating = service.consolidating
        if service.stats.cycles > seen:
            seen = service.stats.cycles
            last = consolidating.consolidator.last or {}
            trail.residuals.append((time.time(), last.get("reach", 0.0), "cycle"))
            print(
                f"  forgetting cycle {seen}: {last.get('rounds')} round pairs, "
                f"{last.get('solved')} rows re-solved for {last.get('forgotten')} deleted "
                f"pairs, {last.get('written')} written ({last.get('ended_by')})"
            )
        if consolidating.resting and service.stats.cycles:
            print("  consolidation at rest: nothing moves until the next deletion")
            break


def _report(
    args, trail, before, after, retrained, neighbours, forgotten, service, state, started
) -> dict:
    latencies = np.asarray(trail.latencies) * 1e3
    status = state.read_status()
    names = lambda entries: [e.item for e in entries]  # noqa: E731
    report = {
        "receipts": len(trail.receipts),
        "interactions_removed": int(sum(r["removed"] for r in trail.receipts)),
        "forget_latency_ms": {
            p: float(np.percentile(latencies, q))
            for p, q in (("p50", 50), ("p90", 90), ("p99", 99))
        }
        if len(latencies)
        else {},
        "batches": service.stats.batches,
        "dead_lettered": service.stats.dead_lettered,
        "forgetting_cycles": service.stats.cycles,
        "last_cycle": service.consolidating.consolidator.last,
        "residual_now": service.stats.last_residual,
        "loss_now": float(status["loss"]) if "loss" in status else None,
        "forgotten_items_in_top10": {
            "before": len(set(names(before)) & forgotten),
            "after": len(set(names(after)) & forgotten),
            "retrained": len(set(retrained) & forgotten),
        },
        "their_neighbours_in_top10": {
            "before": len(set(names(before)) & neighbours),
            "after": len(set(names(after)) & neighbours),
            "retrained": len(set(retrained) & neighbours),
        },
        "overlap_with_retrained_top10": len(set(names(after)) & set(retrained)),
        "wall_seconds": time.perf_counter() - started,
    }
    print("\nreport")
    for key, value in report.items():
        print(f"  {key:32s} {value}")
    return report


def _plot(path: str, trail: Trail) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if trail.latencies:
        values = np.sort(np.asarray(trail.latencies) * 1e3)
        left.plot(values, np.linspace(0, 1, len(values)))
        for q in (50, 99):
            left.axvline(np.percentile(values, q), linestyle="--", color="grey")
            left.text(np.percentile(values, q), 0.05, f" p{q}", color="grey")
    left.set(
        title="Forget latency (event to durable and committed)",
        xlabel="ms",
        ylabel="share of deletion requests",
    )
    if trail.residuals:
        t0 = trail.residuals[0][0]
        points = [(t - t0, r) for t, r, k in trail.residuals if k == "batch" and r > 0]
        if points:
            right.semilogy(*zip(*points, strict=True), "o", label="batch", markersize=3)
        for n, (t, _, _) in enumerate(r for r in trail.residuals if r[2] == "cycle"):
            right.axvline(t - t0, color="grey", linestyle="--",
                          label="forgetting cycle at rest" if n == 0 else None)  # fmt: skip
        right.legend()
    right.set(title="Batch residual; forgetting cycles coming to rest", xlabel="seconds")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _metrics_server(port: int, metrics: Metrics, health: Health) -> MetricsServer | None:
    try:
        return MetricsServer(port, metrics, health, host="127.0.0.1")
    except OSError:
        return MetricsServer(0, metrics, health, host="127.0.0.1")  # the port is taken


def _keep_running(server: MetricsServer | None) -> None:
    where = f"http://127.0.0.1:{server.port}/metrics" if server else "(no metrics endpoint)"
    print(f"\nstill running: {where} -- Ctrl-C to stop")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass


def _json(**fields) -> bytes:
    return json.dumps(fields).encode()


def _load(path: str | None, seed: int) -> Dataset:
    found = Path(path) if path else _find_movielens()
    if found is not None:
        rows = read_interactions(found, "implicit")
        users, items = IdIndex(), IdIndex()
        u, i = rows.user_column.indices(users), rows.item_column.indices(items)
        stamps = np.nan_to_num(rows.timestamps, nan=0.0)
        return Dataset(str(found), u, i, rows.weights, stamps, users.ids, items.ids)
    events = long_tailed_events(seed=seed)
    return Dataset(
        "generated long-tailed data (MovieLens-100K not found)",
        events.users,
        events.items,
        events.weights,
        events.timestamps,
        [f"user-{n}" for n in range(int(events.users.max()) + 1)],
        [f"item-{n}" for n in range(int(events.items.max()) + 1)],
    )


def _find_movielens() -> Path | None:
    if "UNLEARN_DATA_DIR" in os.environ:  # set: the only place to look
        roots = [Path(os.environ["UNLEARN_DATA_DIR"])]
    else:
        roots = [
            Path.cwd().parent / "shared" / "data",
            Path(__file__).resolve().parents[3] / "shared" / "data",
        ]
    for root in roots:
        candidate = root / "ml-100k" / "u.data"
        if candidate.is_file():
            return candidate
    return None


def _split_newest(data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(data.stamps, kind="stable")
    cut = len(order) - int(len(order) * STREAMED_SHARE)
    return np.sort(order[:cut]), order[cut:]


def _last_month(data: Dataset, interactions: Interactions) -> tuple[int, np.ndarray]:
    """A user whose last month is a real part, not all, of their (trained) history.

    Prefers the most such items among users whose last month is 10-30 items and 10-25% of
    their history,
    so both the forgetting and what remains of their taste are visible.
    """
    present = interactions.weights_of(data.users, data.items) > 0
    users, items, stamps = data.users[present], data.items[present], data.stamps[present]
    last = np.zeros(len(data.user_ids))
    np.maximum.at(last, users, stamps)
    in_month = stamps >= last[users] - MONTH
    month_counts = np.bincount(users[in_month], minlength=len(last))
    totals = np.bincount(users, minlength=len(last))
    share = month_counts / np.maximum(totals, 1)
    eligible = (share >= 0.1) & (share <= 0.25) & (month_counts >= 10) & (month_counts <= 30)
    user = int(np.argmax(np.where(eligible, month_counts, 0) if eligible.any() else month_counts))
    return user, np.unique(items[in_month & (users == user)])


def _neighbours(item_factors: np.ndarray, items: np.ndarray, per_item: int = 5) -> np.ndarray:
    """Items most similar (cosine of item factors before forgetting) to the given ones."""
    factors = item_factors.astype(np.float64)
    unit = factors / np.maximum(np.linalg.norm(factors, axis=1, keepdims=True), 1e-12)
    similarity = unit[items] @ unit.T
    similarity[:, items] = -np.inf
    return np.unique(np.argsort(-similarity, axis=1)[:, :per_item])


def _unseen_scores(model, current: Interactions, user_id: str) -> np.ndarray:
    """The model's scores of every item for the user, -inf where `current` says they have it."""
    u = model.user_index[user_id]
    scores = model.item_factors.astype(np.float64) @ model.user_factors[u].astype(np.float64)
    seen = current.by_user.indices[current.by_user.indptr[u] : current.by_user.indptr[u + 1]]
    scores[seen] = -np.inf
    return scores


def _top(model, current: Interactions, user_id: str) -> list[str]:
    """A model's top-N for the user, leaving out what the user has in `current`."""
    scores = _unseen_scores(model, current, user_id)
    return [str(model.item_ids[i]) for i in np.argsort(-scores, kind="stable")[:TOP_N]]


def _median_rank(model, current: Interactions, user_id: str, items: set[str]) -> float:
    """Median rank (1 = top) of the given items among all items the user does not have."""
    scores = _unseen_scores(model, current, user_id)
    rank_of = np.empty(len(scores), dtype=np.int64)
    rank_of[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
    return float(np.median([rank_of[model.item_index[i]] for i in items]))


def _print_top(before, after, retrained, forgotten: set[str], neighbours: set[str]) -> None:
    def label(item: str) -> str:
        mark = "x" if item in forgotten else ("~" if item in neighbours else " ")
        return f"{mark} {item}"

    print(f"\ntop-{TOP_N} for that user (x: a forgotten item, ~: a near neighbour of one)")
    print(f"  {'rank':>4}  {'before':<16}{'after forgetting':<20}{'retrained from scratch':<24}")
    for rank in range(TOP_N):
        cells = [
            label(col[rank]) if rank < len(col) else ""
            for col in ([e.item for e in before], [e.item for e in after], retrained)
        ]
        print(f"  {rank + 1:>4}  {cells[0]:<16}{cells[1]:<20}{cells[2]:<24}")
