"""How throughput grows with instances: N `unlearn run` processes in one consumer group,
each confined to the same CPU quota (a cgroup v1 cpu group, as a Kubernetes CPU limit
does), drain one burst of pair deletions and interactions; configurations alternate, side
by side, and each is repeated.

usage: python -m benchmarks.scaling [--configs 1x50,2x50,1x25,4x25] [--burst 3000]
           [--repeats 3] [--synthetic USERS,ITEMS,INTERACTIONS] [--broker tansu|noida]
           [--rebalance-seconds 60] [--rebalance-rate 100] [--rebalance-repeats 3]
           [--rebalance-quota 50]

A configuration NxQ is N instances at Q% of a core each; NxQbB the same with
batch_max_events B. Throughput is the burst's
events (deletions + interactions) over the time from its first message sent to its last
receipt received with every input message committed by the group. Then a rebalance: a
steady stream into one instance, a second joins and later leaves; the longest wait for a
receipt after each is reported beside the steady one. Needs root (cgroups at
/sys/fs/cgroup/cpu).
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from threadpoolctl import threadpool_limits

from benchmarks._common import DATA_DIR, load, machine, median, require, write_json
from benchmarks.e2e_load import PARAMS, _peak_rss_bytes, _synthetic, start_service
from consumer.embedded import free_port, local_kafka, local_noida, local_redis, wait_until
from consumer.settings import Settings
from consumer.state.bootstrap import load as load_state
from consumer.state.store import ModelState
from unlearn_core import train

CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 100_000
PARTITIONS = 8  # enough for four instances to own two each
NAMESPACE = "scale"
CONSOLIDATE_IDLE_MS = str(Settings.model_fields["consolidate_idle_ms"].default)


@dataclass(frozen=True)
class Config:
    instances: int
    percent: int
    checkout: Path | None = None  # another checkout's code (--before)
    batch_max_events: int | None = None  # None: the default

    @classmethod
    def parse(cls, text: str) -> Config:
        n, rest = text.lower().split("x")
        q, _, batch = rest.partition("b")
        return cls(int(n), int(q), batch_max_events=int(batch) if batch else None)

    @property
    def label(self) -> str:
        batch = f" batches of {self.batch_max_events}" if self.batch_max_events else ""
        return f"{self.instances}x{self.percent}%{batch}" + (" before" if self.checkout else "")


class CpuQuota:
    """One cgroup v1 cpu group: processes written into it share `percent` of one core."""

    def __init__(self, name: str, percent: int) -> None:
        self.path = CGROUP_ROOT / name
        self.path.mkdir(exist_ok=True)
        (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (self.path / "cpu.cfs_quota_us").write_text(str(PERIOD_US * percent // 100))

    def add(self, pid: int) -> None:
        # cgroup.procs moves every thread of the process; its later threads follow.
        (self.path / "cgroup.procs").write_text(str(pid))

    def throttled_s(self) -> float:
        for line in (self.path / "cpu.stat").read_text().splitlines():
            if line.startswith("throttled_time"):
                return int(line.split()[1]) / 1e9
        return 0.0

    def close(self) -> None:
        for pid in (self.path / "cgroup.procs").read_text().split():
            (CGROUP_ROOT / "cgroup.procs").write_text(pid)
        self.path.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=DATA_DIR / "ml-1m" / "pairs.tsv")
    parser.add_argument("--synthetic", default="", help="USERS,ITEMS,INTERACTIONS")
    parser.add_argument("--configs", default="1x50,2x50,1x25,4x25")
    parser.add_argument("--burst", type=int, default=3000, help="deletions (and interactions)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--broker", choices=("tansu", "noida"), default="tansu")
    parser.add_argument("--train-iterations", type=int, default=5)
    parser.add_argument("--rebalance-seconds", type=float, default=60, help="0: skip")
    parser.add_argument("--rebalance-rate", type=float, default=100, help="deletions/s")
    parser.add_argument("--rebalance-repeats", type=int, default=3)
    parser.add_argument("--rebalance-quota", type=int, default=50, help="% of a core each")
    parser.add_argument("--logs", type=Path, default=None, help="keep instance logs here")
    parser.add_argument(
        "--profile", type=Path, default=None, help="sample each instance with py-spy into here"
    )
    parser.add_argument(
        "--before", type=Path, default=None,
        help="also run each configuration on this checkout's code, in the same rotation",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scaling.json"))
    args = parser.parse_args()
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
    if not CGROUP_ROOT.is_dir():
        raise SystemExit(
            f"{CGROUP_ROOT} not found: this benchmark needs the cgroup v1 cpu controller"
        )
    threadpool_limits(1, "blas")
    configs = [Config.parse(c) for c in args.configs.split(",")]
    if args.before is not None:
        configs = [
            c
            for n in configs
            for c in (n, Config(n.instances, n.percent, args.before, n.batch_max_events))
        ]
    if args.synthetic:
        data, user_ids, item_ids = _synthetic(*(int(x) for x in args.synthetic.split(",")))
    else:
        data, user_ids, item_ids = load(require(args.pairs), "implicit")
    model, _ = train(data, user_ids, item_ids, PARAMS, args.train_iterations)
    broker = local_noida() if args.broker == "noida" else local_kafka()
    runs: list[dict] = []
    with local_redis() as redis_url, broker as bootstrap:
        client = redis.Redis.from_url(redis_url)
        load_state(ModelState(client, NAMESPACE), model, data, np.full(data.nnz, 1e9), shards=16)
        order = np.random.default_rng(0).permutation(data.nnz)  # each pair deleted once
        cursor = 0
        for repeat in range(args.repeats):
            for config in configs:
                pairs = order[cursor : cursor + args.burst]
                cursor += args.burst
                run = _run(config, f"r{repeat}-{config.label}", bootstrap, redis_url,
                           data, user_ids, item_ids, pairs, args.logs, args.profile)  # fmt: skip
                print(json.dumps(run))
                runs.append(run)
        rebalances = []
        for repeat in range(args.rebalance_repeats if args.rebalance_seconds > 0 else 0):
            count = int(args.rebalance_rate * args.rebalance_seconds) + 1
            pairs = order[cursor : cursor + count]
            cursor += count
            rebalances.append(_rebalance(args, f"rebalance{repeat}", bootstrap, redis_url,
                                         data, user_ids, item_ids, pairs))  # fmt: skip
            print(json.dumps(rebalances[-1]))
    rebalance = _rebalance_summary(rebalances)
    summary = _summary(configs, runs)
    print(json.dumps(summary, indent=2))
    write_json(
        args.out,
        {
            "machine": machine(),
            "data": f"synthetic {args.synthetic}" if args.synthetic else str(args.pairs),
            "shape": {"users": data.shape[0], "items": data.shape[1], "interactions": data.nnz},
            "params": vars(PARAMS),
            "broker": args.broker,
            "burst": args.burst,
            "partitions": PARTITIONS,
            "runs": runs,
            "summary": summary,
            "rebalance": rebalance,
        },
    )


@dataclass
class Instance:
    process: subprocess.Popen
    port: int
    quota: CpuQuota

    def stop(self) -> None:
        """SIGTERM: the instance finishes its batches and leaves the group."""
        self.process.terminate()
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            subprocess.run(["py-spy", "dump", "--pid", str(self.process.pid)], check=False)
            self.process.kill()
            self.process.wait(timeout=30)
            raise
        finally:
            self.quota.close()


def _topics(bootstrap: str, tag: str) -> dict[str, str]:
    topics = {k: f"{k}-{tag}" for k in ("interactions", "deletions", "receipts", "dlq", "factors")}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics(
        [NewTopic(t, num_partitions=PARTITIONS) for t in topics.values()]
    ).values():
        future.result(timeout=30)
    return topics


def _launch(
    bootstrap,
    redis_url,
    topics,
    group,
    name: str,
    percent: int,
    logs: Path | None,
    checkout: Path | None = None,
    batch_max_events: int | None = None,
) -> Instance:
    """`unlearn run` in its own cgroup at `percent` of a core (its output into `logs`)."""
    port = free_port()
    quota = CpuQuota(f"unlearn-bench-{name}", percent)
    log = logs / f"{name}.log" if logs is not None else None
    process = start_service(
        bootstrap, redis_url, NAMESPACE, port, CONSOLIDATE_IDLE_MS, log, checkout,
        group_id=group, instance_id=name, solve_threads="1",
        **{f"topic_{kind}": topic for kind, topic in topics.items()},
        **({"batch_max_events": str(batch_max_events)} if batch_max_events else {}),
    )  # fmt: skip
    quota.add(process.pid)
    return Instance(process, port, quota)


def _run(
    config: Config,
    tag: str,
    bootstrap,
    redis_url,
    data,
    user_ids,
    item_ids,
    pairs,
    logs,
    profile: Path | None = None,
) -> dict:
    tag = tag.replace("%", "").replace(" ", "-")
    topics = _topics(bootstrap, tag)
    group = f"unlearn-{tag}"
    instances: list[Instance] = []
    try:
        for n in range(config.instances):
            instances.append(
                _launch(
                    bootstrap,
                    redis_url,
                    topics,
                    group,
                    f"{tag}-{n}",
                    config.percent,
                    logs,
                    config.checkout,
                    config.batch_max_events,
                )
            )
        for instance in instances:
            wait_until(lambda i=instance: _ready(i.port), "an instance", timeout=1800)
        _wait_for_group([i.port for i in instances])
        samplers = [_sample(i, profile, f"{tag}-{n}") for n, i in enumerate(instances)]
        throttled = [i.quota.throttled_s() for i in instances]
        figures = _burst(bootstrap, topics, group, data, user_ids, item_ids, pairs)
        figures["throttled_s"] = [
            i.quota.throttled_s() - t for i, t in zip(instances, throttled, strict=True)
        ]
        figures["peak_rss_bytes"] = [_peak_rss_bytes(i.process.pid) for i in instances]
        figures["time_s"] = [_time_spent(i.port) for i in instances]
        for sampler in filter(None, samplers):
            sampler.send_signal(signal.SIGINT)  # py-spy writes what it sampled and exits
            sampler.wait(timeout=60)
    finally:
        for instance in instances:
            instance.stop()
    return {"config": config.label, "instances": config.instances, "percent": config.percent,
            "checkout": str(config.checkout) if config.checkout else None, **figures}  # fmt: skip


def _sample(instance: Instance, into: Path | None, name: str) -> subprocess.Popen | None:
    """py-spy sampling the instance (every thread, 200 Hz) as collapsed stacks, from now
    until it is told to stop: the burst's profile."""
    if into is None:
        return None
    into.mkdir(parents=True, exist_ok=True)
    command = ["py-spy", "record", "--pid", str(instance.process.pid), "--rate", "200",
               "--format", "raw", "--threads", "--output", str(into / f"{name}.txt")]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _rebalance(args, tag, bootstrap, redis_url, data, user_ids, item_ids, pairs) -> dict:
    """A steady stream into one instance; a second joins a third of the way through and
    leaves (SIGTERM) at two thirds. The pause: the longest wait for a receipt after each
    event, beside the longest in the steady part before."""
    topics = _topics(bootstrap, tag)
    group = f"unlearn-{tag}"
    percent = args.rebalance_quota
    first = _launch(bootstrap, redis_url, topics, group, f"{tag}-0", percent, args.logs)
    second: Instance | None = None
    arrivals: list[float] = []
    stop = threading.Event()
    receipts = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{tag}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 5})  # fmt: skip
    receipts.assign([TopicPartition(topics["receipts"], p, 0) for p in range(PARTITIONS)])

    def collect() -> None:
        while not stop.is_set():
            for message in receipts.consume(num_messages=1000, timeout=0.02):
                if message.error() is None:
                    arrivals.append(time.monotonic())

    reader = threading.Thread(target=collect, daemon=True)
    leaving: threading.Thread | None = None
    try:
        wait_until(lambda: _ready(first.port), "the first instance", timeout=1800)
        _wait_for_group([first.port])
        reader.start()
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        rng = np.random.default_rng(1)
        n_items, rate, seconds = data.shape[1], args.rebalance_rate, args.rebalance_seconds
        started = time.monotonic()
        joined = left = None
        sent = 0
        while (elapsed := time.monotonic() - started) < seconds:
            if joined is None and elapsed >= seconds / 3:
                second = _launch(
                    bootstrap, redis_url, topics, group, f"{tag}-1", percent, args.logs
                )
                joined = time.monotonic()
            if left is None and second is not None and elapsed >= 2 * seconds / 3:
                left = time.monotonic()
                leaving = threading.Thread(target=second.stop, daemon=True)
                leaving.start()
            for _ in range(int(elapsed * rate) - sent):
                key = int(data.entry_keys[pairs[sent]])
                user = user_ids[key // n_items]
                body = {"user": user, "item": item_ids[key % n_items], "ts": time.time()}
                producer.produce(topics["deletions"], key=user, value=json.dumps(body))
                other = user_ids[int(rng.integers(len(user_ids)))]
                body = {"user": other, "item": item_ids[int(rng.integers(n_items))],
                        "ts": time.time()}  # fmt: skip
                producer.produce(topics["interactions"], key=other, value=json.dumps(body))
                sent += 1
            producer.poll(0)
            time.sleep(0.002)
        producer.flush(30)
        wait_until(lambda: len(arrivals) >= sent, "every receipt", timeout=600)
    finally:
        stop.set()
        if reader.is_alive():
            reader.join(timeout=5)
        receipts.close()
        if leaving is not None:
            leaving.join(timeout=150)
        elif second is not None:
            second.stop()
        first.stop()
    assert joined is not None and left is not None

    def longest_gap(begin: float, end: float) -> float:
        inside = [t for t in arrivals if begin <= t <= end]
        points = [begin, *inside]
        return max(b - a for a, b in itertools.pairwise(points)) if inside else end - begin

    return {
        "deletions_per_s": rate,
        "interactions_per_s": rate,
        "seconds": seconds,
        "receipts": len(arrivals),
        "quota_percent": percent,
        "steady_longest_gap_s": longest_gap(started + 5, joined),
        "join_longest_gap_s": longest_gap(joined, joined + seconds / 3),
        "leave_longest_gap_s": longest_gap(left, left + seconds / 3),
    }


# What an instance's own metrics say its time went to: the write path's phases (read,
# solve, write) and the loop's stages (parse, ingest, apply, acknowledge...).
SPENT = ("unlearn_batch_phase_seconds_sum", "unlearn_stage_seconds_sum")


def _time_spent(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    spent: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith(SPENT):
            label = name[name.index("{") + 1 : -1].split("=")[1].strip('"')
            spent[label] = round(spent.get(label, 0.0) + float(value), 3)
    return dict(sorted(spent.items()))


def _ready(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200
    except OSError:
        return False


def _assigned(port: int) -> int:
    """Partitions the instance holds, from its /readyz answer ("N partitions assigned")."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            text = answer.read().decode()
    except OSError:
        return 0
    first = text.split()[0] if text.split() else ""
    return int(first) if first.isdigit() else 0


def _wait_for_group(ports: list[int]) -> None:
    """Every instance holds partitions and together they hold all of them, for 2 s in a
    row: the burst is split from its start (brokers differ in what describing a group
    tells, so the instances are asked)."""
    since = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        held = [_assigned(port) for port in ports]
        if all(held) and sum(held) == 2 * PARTITIONS:
            since = since or time.monotonic()
            if time.monotonic() - since >= 2.0:
                return
        else:
            since = None
        time.sleep(0.2)
    raise SystemExit(f"the group did not settle: partitions held {held}")


def _burst(bootstrap, topics, group, data, user_ids, item_ids, pairs) -> dict:
    """Send the burst at once; time it until every receipt is in and every input message
    committed."""
    receipts = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{group}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 5})  # fmt: skip
    receipts.assign([TopicPartition(topics["receipts"], p, 0) for p in range(PARTITIONS)])
    received = 0
    last_receipt = 0.0
    stop = threading.Event()

    def collect() -> None:
        nonlocal received, last_receipt
        while not stop.is_set():
            for message in receipts.consume(num_messages=1000, timeout=0.05):
                if message.error() is None:
                    received += 1
                    last_receipt = time.monotonic()

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    time.sleep(1.0)  # the reader is fetching before anything is sent
    delivered: dict[tuple[str, int], int] = {}

    def noted(error, message) -> None:
        if error is None:
            key = (message.topic(), message.partition())
            delivered[key] = max(delivered.get(key, -1), message.offset())

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    rng = np.random.default_rng(len(pairs))
    n_items = data.shape[1]
    started = time.monotonic()
    for key in data.entry_keys[pairs]:
        user = user_ids[int(key) // n_items]
        body = {"user": user, "item": item_ids[int(key) % n_items], "ts": time.time()}
        producer.produce(topics["deletions"], key=user, value=json.dumps(body), on_delivery=noted)
        other = user_ids[int(rng.integers(len(user_ids)))]
        body = {"user": other, "item": item_ids[int(rng.integers(n_items))], "ts": time.time()}
        producer.produce(topics["interactions"], key=other, value=json.dumps(body),
                         on_delivery=noted)  # fmt: skip
        producer.poll(0)
    producer.flush(60)
    sent = time.monotonic() - started
    deadline = time.monotonic() + 1800
    while received < len(pairs) and time.monotonic() < deadline:
        time.sleep(0.05)
    while not _committed_all(bootstrap, group, delivered) and time.monotonic() < deadline:
        time.sleep(0.1)
    finished = max(time.monotonic(), last_receipt)
    stop.set()
    reader.join(timeout=5)
    receipts.close()
    elapsed = finished - started
    events = 2 * len(pairs)
    return {
        "deletions": len(pairs),
        "interactions": len(pairs),
        "receipts": received,
        "send_seconds": sent,
        "seconds": elapsed,
        "events_per_s": events / elapsed,
        "deletions_per_s": len(pairs) / elapsed,
    }


def _committed_all(bootstrap: str, group: str, delivered: dict[tuple[str, int], int]) -> bool:
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = [TopicPartition(t, p) for t, p in delivered]
        return all(
            tp.offset > delivered[(tp.topic, tp.partition)]
            for tp in probe.committed(tps, timeout=10)
        )
    finally:
        probe.close()


def _rebalance_summary(runs: list[dict]) -> dict | None:
    if not runs:
        return None
    gaps = ("steady_longest_gap_s", "join_longest_gap_s", "leave_longest_gap_s")
    return {
        **{k: v for k, v in runs[0].items() if k not in gaps and k != "receipts"},
        **{name: median([r[name] for r in runs]) for name in gaps},
        "receipts": sum(r["receipts"] for r in runs),
        "runs": runs,
    }


def _summary(configs: list[Config], runs: list[dict]) -> dict:
    out: dict = {}
    for config in configs:
        mine = [r for r in runs if r["config"] == config.label]
        if not mine:
            continue
        out[config.label] = {
            "events_per_s_median": median([r["events_per_s"] for r in mine]),
            "deletions_per_s_median": median([r["deletions_per_s"] for r in mine]),
            "runs": len(mine),
            "peak_rss_mib_per_instance_max": max(max(r["peak_rss_bytes"]) for r in mine) / 2**20,
        }
    ratios = {}
    for config in configs:
        single = Config(1, config.percent, config.checkout, config.batch_max_events).label
        if config.instances > 1 and single in out and config.label in out:
            ratios[f"{config.label} / {single}"] = (
                out[config.label]["events_per_s_median"] / out[single]["events_per_s_median"]
            )
        default = Config(config.instances, config.percent, config.checkout).label
        if config.batch_max_events and default in out and config.label in out:
            ratios[f"{config.label} / {default}"] = (
                out[config.label]["events_per_s_median"] / out[default]["events_per_s_median"]
            )
        before = Config(
            config.instances, config.percent, Path("before"), config.batch_max_events
        ).label
        if config.checkout is None and before in out and config.label in out:
            ratios[f"{config.label} now / before"] = (
                out[config.label]["events_per_s_median"] / out[before]["events_per_s_median"]
            )
    out["ratios"] = ratios
    return out


if __name__ == "__main__":
    main()
