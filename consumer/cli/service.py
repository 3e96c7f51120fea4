"""Service commands: `unlearn load`, `export`, `run`, `status`, `recommend`, `inspect`."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import Consumer, KafkaException, TopicPartition
from tqdm import tqdm

from consumer.application import Application, FatalError
from consumer.cli.offline import interactions_from_rows
from consumer.cli.swapping import swap_model
from consumer.engine import Engine
from consumer.errors import InputError
from consumer.http import Health, MetricsServer
from consumer.metrics import Metrics
from consumer.model_file import load_model, save_model, write_text_atomically
from consumer.pipeline.applying import TRANSIENT
from consumer.preflight import check_kafka, no_broker
from consumer.recommend import recommend
from consumer.retry import TRANSIENT_REDIS, RetriesExhausted, retry
from consumer.settings import Settings, load_settings, mask_url
from consumer.state.bootstrap import export, load, pair_timestamps
from consumer.state.history import DeletionHistory, drop_forgotten, read_history, write_history
from consumer.state.inspection import stored_interactions, subject_record
from consumer.state.store import ModelState, StateError
from consumer.state.swap import HOLD_S
from consumer.tsv import read_interactions, write_interactions
from unlearn_core.ids import IdIndex

DEFAULT_SHARDS = 16
STATUS_TIMEOUT_S = 10.0  # `unlearn status` waits this long for the brokers


def register(commands: argparse._SubParsersAction) -> None:
    load_cmd = commands.add_parser("load", help="bootstrap Redis from a model and its data")
    load_cmd.add_argument("--model", required=True, metavar="MODEL.npz")
    load_cmd.add_argument("--interactions", required=True, metavar="FILE")
    load_cmd.add_argument(
        "--shards",
        type=int,
        default=None,
        help=f"default {DEFAULT_SHARDS}; a swap keeps the live namespace's",
    )
    load_cmd.add_argument(
        "--swap",
        action="store_true",
        help="put the model into the live namespace while the service runs (blue/green): "
        "built beside the live model, the deletion history applied to it, including "
        "deletions made during the load, and promoted in one step; the audit trail stays "
        "(into a namespace without a model: a plain load)",
    )
    load_cmd.add_argument(
        "--hold",
        type=float,
        default=HOLD_S,
        metavar="SECONDS",
        help="--swap: the longest the service's writes are held for the promotion (a loader "
        "that dies releases them after this)",
    )
    load_cmd.add_argument(
        "--replace",
        action="store_true",
        help="replace the namespace's model; its deletion history (tombstones, receipts) is "
        "kept and every interaction of the new data it covers is dropped",
    )
    load_cmd.add_argument(
        "--trained-at",
        metavar="T",
        help="when the new model's data snapshot was taken (seconds or ISO-8601, UTC without "
        "an offset): no interaction of it is taken as newer",
    )
    load_cmd.add_argument(
        "--history",
        metavar="FILE",
        help="where the deletion history is saved before --replace deletes anything "
        "(default: unlearn-history-NAMESPACE.json); if it exists, it is read from there "
        "instead (a replace that failed half-way is run again with it)",
    )
    load_cmd.add_argument(
        "--drop-history",
        action="store_true",
        help="with --replace: also delete the deletion history (a test namespace only; a "
        "deleted pair in the new data is then learned again)",
    )
    load_cmd.add_argument(
        "--if-absent",
        action="store_true",
        help="load only into a namespace that holds no model; otherwise do nothing, exit 0 "
        "(for install and upgrade hooks)",
    )
    load_cmd.add_argument(
        "--force",
        action="store_true",
        help="rewrite the namespace even while services are alive on it (their heartbeats "
        "are younger than 20 s); they stop when they see it replaced",
    )
    settings_flags(load_cmd)
    load_cmd.set_defaults(handler=run_load)

    export_cmd = commands.add_parser("export", help="write the model in Redis to a file")
    export_cmd.add_argument("--out", required=True, metavar="MODEL.npz")
    export_cmd.add_argument(
        "--interactions",
        metavar="FILE",
        help="also write every stored interaction (user, item, weight, time) as TSV: "
        "exactly what the model is fitted to",
    )
    settings_flags(export_cmd)
    export_cmd.set_defaults(handler=run_export)

    run_cmd = commands.add_parser("run", help="consume interactions and deletions")
    run_cmd.add_argument("--max-seconds", type=float, default=None, help="stop after this long")
    settings_flags(run_cmd)
    run_cmd.set_defaults(handler=run_service)

    status_cmd = commands.add_parser("status", help="JSON: lag per partition, counts, offsets")
    settings_flags(status_cmd)
    status_cmd.set_defaults(handler=run_status)

    recommend_cmd = commands.add_parser(
        "recommend", help="a user's top-N from the factors in Redis"
    )
    recommend_cmd.add_argument("--user", required=True)
    recommend_cmd.add_argument("-n", type=int, default=10)
    recommend_cmd.add_argument(
        "--include-deleted",
        action="store_true",
        help="rank the items the user deleted too (left out by default)",
    )
    settings_flags(recommend_cmd)
    recommend_cmd.set_defaults(handler=run_recommend)

    inspect_cmd = commands.add_parser(
        "inspect",
        help="JSON: one user's or item's stored history, tombstones and receipts",
    )
    subject = inspect_cmd.add_mutually_exclusive_group(required=True)
    subject.add_argument("--user")
    subject.add_argument("--item")
    settings_flags(inspect_cmd)
    inspect_cmd.set_defaults(handler=run_inspect)


def settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.toml", help="settings file (over environment)")
    parser.add_argument("--bootstrap-servers", dest="kafka_bootstrap_servers", default=None)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--group-id", default=None)


def settings_from(args: argparse.Namespace) -> Settings:
    return load_settings(
        args.config,
        kafka_bootstrap_servers=args.kafka_bootstrap_servers,
        redis_url=args.redis_url,
        namespace=args.namespace,
        group_id=args.group_id,
    )


def connect(settings: Settings, wait_s: float = 0.0) -> ModelState:
    """The namespace's state on the configured Redis, waiting up to `wait_s` for it to answer
    (the service starts while Redis restarts or fails over; one-shot commands do not wait)."""
    url = settings.redis_url.get_secret_value()
    client_type = redis.RedisCluster if settings.redis_cluster else redis.Redis
    # A Redis that stops answering (a partition, a paused node) must fail calls, so the
    # retry loop can wait it out and health can report it, instead of hanging forever.
    extra: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": min(settings.redis_timeout_s, 5.0),
    }
    if settings.redis_password is not None:
        extra["password"] = settings.redis_password.get_secret_value()
    where = f"{mask_url(url)}: check redis_url (UNLEARN_REDIS_URL)"
    try:
        # A cluster client asks the node for its slots at once: a lone server says so here.
        client = client_type.from_url(url, **extra)
        retry(client.ping, TRANSIENT_REDIS, wait_s)
    except RetriesExhausted as exc:
        cause = type(exc.__cause__).__name__
        if isinstance(exc.__cause__, redis.AuthenticationError):
            raise InputError(
                "redis",
                f"Redis refused the credentials ({cause}): check redis_password "
                "(UNLEARN_REDIS_PASSWORD) and the user and password in redis_url",
            ) from exc
        raise InputError("redis", f"cannot reach Redis at {where} ({cause})") from exc
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        if "cluster mode is not enabled" in str(exc).lower():
            raise InputError(
                "redis",
                f"{mask_url(url)} is not a Redis Cluster node: set redis_cluster = false "
                "(UNLEARN_REDIS_CLUSTER=false), or point redis_url at a cluster",
            ) from exc
        raise InputError("redis", f"cannot reach Redis at {where} ({type(exc).__name__})") from exc
    if not settings.redis_cluster and _cluster_enabled(client):
        raise InputError(
            "redis",
            f"{mask_url(url)} is a Redis Cluster node: set redis_cluster = true "
            "(UNLEARN_REDIS_CLUSTER=true)",
        )
    return ModelState(client, settings.namespace)


def _cluster_enabled(client: redis.Redis) -> bool:
    try:
        return bool(int(client.info("cluster").get("cluster_enabled", 0)))
    except redis.ResponseError:  # a server that does not know INFO cluster (or forbids it)
        return False


# A service writes its heartbeat every few seconds (Application._beat); one seen this
# recently is alive.
ALIVE_S = 20.0


def _refuse_under_writers(state: ModelState, settings: Settings, force: bool) -> None:
    """A namespace is rewritten only while no service writes it (`--force`: whoever knows
    better, e.g. a service that was killed a moment ago)."""
    alive = state.live_instances(ALIVE_S)
    if not alive or force:
        return
    named = ", ".join(
        f"{name} (host {info.get('host')}, pid {info.get('pid')}, seen "
        f"{time.time() - float(info['beat_at']):.0f} s ago)"
        for name, info in sorted(alive.items())
    )
    raise InputError(
        "redis",
        f"namespace {settings.namespace!r} is being written by {len(alive)} running "
        f"instance(s): {named}. Stop them first (SIGTERM; on Kubernetes scale the deployment "
        "to 0), or put a retrained model in while they run with --swap; --force rewrites "
        "it anyway",
    )


def run_load(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if args.swap:
        excluded = {"--replace": args.replace, "--if-absent": args.if_absent,
                    "--drop-history": args.drop_history, "--history": args.history}  # fmt: skip
        for flag, given in excluded.items():
            if given:
                raise InputError("command line", f"--swap and {flag} exclude each other")
        if args.hold <= 0:
            raise InputError("command line", "--hold must be > 0")
    args.shards = DEFAULT_SHARDS if args.shards is None else args.shards
    if args.shards < 1:
        raise InputError("command line", "--shards must be >= 1")
    if args.replace and args.if_absent:
        raise InputError("command line", "--replace and --if-absent exclude each other")
    if args.drop_history and not args.replace:
        raise InputError("command line", "--drop-history goes with --replace")
    state = connect(settings) if args.if_absent else None
    if state is not None and state.exists():
        print(json.dumps({"namespace": settings.namespace, "loaded": False,
                          "why": "the namespace already holds a model"}))  # fmt: skip
        return 0
    model = load_model(args.model)
    rows = read_interactions(args.interactions, model.params.kind)
    users, items = IdIndex(model.user_ids.tolist()), IdIndex(model.item_ids.tolist())
    data, u, i = interactions_from_rows(rows, users, items, model.params)
    if len(users) > model.shape[0] or len(items) > model.shape[1]:
        model = model.with_ids(users.ids[model.shape[0] :], items.ids[model.shape[1] :])
    stamps = pair_timestamps(data, u, i, rows.timestamps, model.params.kind)
    trained_at = _time_of(args.trained_at) if args.trained_at is not None else None
    state = state or connect(settings)
    if args.swap and state.exists():  # into an empty namespace a swap is a plain load
        print(json.dumps(swap_model(state, model, data, stamps, trained_at, args.hold)))
        return 0
    _refuse_under_writers(state, settings, args.force)
    started = time.perf_counter()
    history = DeletionHistory()
    saved = None
    if args.replace and not args.drop_history:
        saved = Path(args.history or f"unlearn-history-{settings.namespace}.json")
        if saved.exists():  # a replace that stopped half-way: its history is here
            history = DeletionHistory.from_json(saved.read_text(encoding="utf-8"))
        else:
            history = read_history(state)
            write_text_atomically(saved, history.to_json())
    cleaned = drop_forgotten(model, data, stamps, history, trained_at)
    with tqdm(total=args.shards, desc="load", unit="shard", disable=None) as bar:
        load(state, cleaned.model, cleaned.data, cleaned.stamps, args.shards, args.replace,
             bar.update)  # fmt: skip
    write_history(state, history)
    if saved is not None:
        saved.unlink()  # the history is in the namespace again
    print(
        json.dumps(
            {
                "namespace": settings.namespace,
                "users": cleaned.model.shape[0],
                "items": cleaned.model.shape[1],
                "interactions": cleaned.data.nnz,
                "shards": args.shards,
                "dropped_as_forgotten": cleaned.dropped,
                "rows_resolved": cleaned.users_resolved + cleaned.items_resolved,
                "tombstones_kept": len(history),
                "receipts_kept": len(history.receipts),
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
    )
    return 0


def _time_of(text: str) -> float:
    """Seconds since the epoch, from a number or an ISO-8601 time (UTC without offset)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InputError("command line", f"--trained-at {text!r}: not seconds or ISO-8601") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def run_export(args: argparse.Namespace) -> int:
    state = connect(settings_from(args))
    model, data = export(state)
    save_model(model, args.out)
    written = {"out": args.out, "users": model.shape[0], "items": model.shape[1],
               "interactions": data.nnz}  # fmt: skip
    if args.interactions:
        written["interactions_file"] = args.interactions
        written["interactions_written"] = write_interactions(
            args.interactions, stored_interactions(state)
        )
    print(json.dumps(written))
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    state = connect(settings_from(args))
    side, subject = ("user", args.user) if args.user is not None else ("item", args.item)
    print(json.dumps(subject_record(state, side, subject), indent=2))
    return 0


def run_service(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings_from(args)
    logging.getLogger("unlearn").info("settings: %s", json.dumps(settings.redacted()))
    metrics = Metrics()
    state = connect(settings, wait_s=settings.redis_retry_budget_s)
    state.observer = metrics.observe_redis
    health = Health(deadline_s=60.0, redis_ok=lambda: bool(state.client.ping()))
    server = _metrics_server(settings, metrics, health)
    try:
        health.waiting = f"the model in namespace {settings.namespace!r} read into memory"
        engine = retry(
            lambda: _engine_when_loaded(state, settings),
            TRANSIENT,
            settings.redis_retry_budget_s,
            what=f"Redis {state.server}, reading the model",
        )
        # The model first: `unlearn load` is the first thing to fix.
        check_kafka(settings, waiting=lambda what: setattr(health, "waiting", what))
        health.waiting = None
        health.tick()
        service = Application(settings, engine, metrics=metrics, health=health)
        service.install_signal_handlers()
        service.run(max_seconds=args.max_seconds)
    except FatalError as exc:
        print(f"unlearn: fatal: {exc}", file=sys.stderr)
        return 1
    except RetriesExhausted as exc:
        print(f"unlearn: fatal: Redis unavailable for too long: {exc}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()
    return 0


def _metrics_server(settings: Settings, metrics: Metrics, health: Health) -> MetricsServer | None:
    if not settings.metrics_port:
        return None
    try:
        return MetricsServer(
            settings.metrics_port,
            metrics,
            health,
            settings.metrics_host,
            settings.http_timeout_s,
            settings.http_max_connections,
        )
    except OSError as exc:
        raise InputError(
            "settings",
            f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port} "
            f"({exc.strerror or exc}): set metrics_port (UNLEARN_METRICS_PORT) to a free "
            "port, or 0 for no metrics endpoint",
        ) from exc


def _engine_when_loaded(state: ModelState, settings: Settings) -> Engine:
    """The engine, once the namespace holds a model (a bootstrap Job may still be loading).
    It owns no shard until the group gives this instance partitions of the deletions topic."""
    deadline = time.monotonic() + settings.wait_for_model_s
    log = logging.getLogger("unlearn")
    while True:
        try:
            return Engine(
                state, solve_threads=settings.solve_threads, holder=settings.instance_id,
                owned=(), part_retry_s=settings.part_retry_s,
            )  # fmt: skip
        except StateError as exc:
            if time.monotonic() >= deadline:
                raise
            log.info("waiting for a model in the namespace: %s", exc)
            time.sleep(min(5.0, max(deadline - time.monotonic(), 0.1)))


def run_status(args: argparse.Namespace) -> int:
    """What the state and the group look like; whatever half cannot be reached is named in
    `errors` (and the exit status is 2), the other half is shown all the same."""
    settings = settings_from(args)
    out: dict[str, Any] = {"namespace": settings.namespace}
    errors: dict[str, str] = {}
    try:
        out.update(_state_status(connect(settings)))
    except (InputError, StateError) as exc:
        errors["redis"] = str(exc)
    try:
        out["lag"] = _lag(settings)
    except KafkaException as exc:
        errors["kafka"] = no_broker(settings, exc, STATUS_TIMEOUT_S)
    if errors:
        out["errors"] = errors
    # Strict JSON: what is not known (a NaN, no committed offset) is null.
    print(json.dumps(_strict(out), indent=2, allow_nan=False))
    if errors:
        print(f"unlearn: error: status: cannot reach {' and '.join(sorted(errors))} (the "
              "output's errors say why)", file=sys.stderr)  # fmt: skip
    return 2 if errors else 0


def _finite(value: str | float | None) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _strict(value: Any) -> Any:
    """NaN and infinities, anywhere in it (a last batch's figures), as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


def _state_status(state: ModelState) -> dict[str, Any]:
    meta = state.meta()
    status = state.read_status()
    return {
        "users": meta.users,
        "items": meta.items,
        "interactions": int(status.get("interactions", 0)),
        "residual": _finite(status.get("residual")),
        "loss": _finite(status.get("loss")),
        "last_batch": json.loads(status["last_batch"]) if "last_batch" in status else None,
        "updated_at": float(status["updated_at"]) if "updated_at" in status else None,
        "shards": meta.shards,
        "params": vars(meta.params),
        "applied_offsets": state.read_applied(),
        "generation": state.generation(),  # commits of the shards, summed
        "owners": _owners(state, meta.shards),
        "instances": state.live_instances(ALIVE_S),  # the services alive on it
    }


def _owners(state: ModelState, shards: int) -> dict[str, Any]:
    """Per instance, the shards it owns and the work waiting in their inboxes."""
    owners = state.log.read_owners(shards)
    waiting = state.log.inbox_lengths(range(shards))
    pending = {s: len(state.read_pending(s)) for s in range(shards)}
    out: dict[str, Any] = {}
    for shard, owner in owners.items():
        entry = out.setdefault(owner or "(none)", {"shards": [], "inbox": 0, "pending": 0})
        entry["shards"].append(shard)
        entry["inbox"] += waiting[shard]
        entry["pending"] += pending[shard]
    return out


def _lag(settings: Settings) -> dict[str, Any]:
    """Log end minus committed offset, per partition of both input topics."""
    consumer = Consumer(
        {**settings.kafka_common(), "group.id": settings.group_id, "enable.auto.commit": False}
    )
    try:
        metadata = consumer.list_topics(timeout=STATUS_TIMEOUT_S)
        partitions = [
            TopicPartition(topic, p)
            for topic in (settings.topic_interactions, settings.topic_deletions)
            if topic in metadata.topics
            for p in metadata.topics[topic].partitions
        ]
        committed = consumer.committed(partitions, timeout=10)
        lag = {}
        for tp in committed:
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            done = tp.offset if tp.offset >= 0 else 0
            lag[f"{tp.topic}:{tp.partition}"] = {
                "committed": tp.offset if tp.offset >= 0 else None,  # None: nothing committed
                "end": high,
                "lag": max(high - done, 0),
            }
        return lag
    finally:
        consumer.close()


def run_recommend(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise InputError("command line", "-n must be >= 1")
    state = connect(settings_from(args))
    answer = recommend(state, args.user, args.n, include_deleted=args.include_deleted)
    if answer.why:  # nothing to show, and the reason: an empty list is the answer
        print(f"unlearn: {answer.why}", file=sys.stderr)
    for rank, entry in enumerate(answer.items, start=1):
        print(f"{rank:>3}  {entry.item}\t{entry.score:.4f}")
    return 0
