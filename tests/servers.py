"""Real servers for integration tests, on 127.0.0.1 free ports, stopped by PID.

testcontainers when a Docker daemon answers; otherwise the local binaries that
consumer/embedded.py starts (redis-server, the Tansu Kafka-protocol broker), and Prometheus
from the Debian package.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from consumer.embedded import (
    free_port,
    local_kafka,
    local_redis,
    port_open,
    process,
    redis_args,
    wait_until,
)


def docker_available() -> bool:
    try:
        import docker  # type: ignore[import-not-found]

        docker.from_env(timeout=1).ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def redis_server(appendonly: bool = False) -> Iterator[str]:
    """A redis-server; yields its URL."""
    if docker_available():
        from testcontainers.redis import RedisContainer  # type: ignore[import-not-found]

        with RedisContainer() as container:
            host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
            yield f"redis://{host}:{port}/0"
        return
    with local_redis(appendonly=appendonly) as url:
        yield url


@contextlib.contextmanager
def kafka_broker() -> Iterator[str]:
    """A Kafka-protocol broker; yields its bootstrap servers."""
    if docker_available():
        from testcontainers.kafka import KafkaContainer  # type: ignore[import-not-found]

        with KafkaContainer() as container:
            yield container.get_bootstrap_server()
        return
    with local_kafka() as bootstrap:
        yield bootstrap


@contextlib.contextmanager
def prometheus_server(targets: list[str], scrape_interval: str = "1s") -> Iterator[str]:
    """A real Prometheus (Debian package) scraping the targets; yields its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus not found: apt-get install prometheus")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="unlearn-prometheus-") as workdir:
        config = Path(workdir) / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {scrape_interval}\n"
            f"  evaluation_interval: {scrape_interval}\n"
            "scrape_configs:\n"
            "  - job_name: unlearn\n"
            "    static_configs:\n"
            f"      - targets: [{', '.join(repr(t) for t in targets)}]\n"
        )
        args = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir}/data",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        with process(args, Path(workdir) / "prometheus.log"):
            import urllib.request

            url = f"http://127.0.0.1:{port}"
            wait_until(
                lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=1).status == 200,
                "prometheus",
            )
            yield url


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port <= 55535 and not port_open(port + 10000):
            return port


@contextlib.contextmanager
def redis_cluster(nodes: int = 3) -> Iterator[str]:
    """A Redis Cluster of `nodes` primaries on loopback; yields one node's URL.

    The slots are assigned and the nodes introduced with CLUSTER commands (no redis-cli
    needed); ready once every node reports cluster_state:ok.
    """
    import redis

    ports = [_cluster_port() for _ in range(nodes)]
    with (
        tempfile.TemporaryDirectory(prefix="unlearn-cluster-") as workdir,
        contextlib.ExitStack() as stack,
    ):
        for port in ports:
            directory = Path(workdir) / str(port)
            directory.mkdir()
            args = redis_args(port, str(directory), False, "--cluster-enabled", "yes",
                              "--cluster-config-file", "nodes.conf",
                              "--cluster-node-timeout", "2000")  # fmt: skip
            stack.enter_context(process(args, directory / "redis.log"))
        clients = [redis.Redis(port=port) for port in ports]
        for client in clients:
            wait_until(lambda client=client: client.ping(), "redis cluster node")
        bounds = [round(n * 16384 / nodes) for n in range(nodes + 1)]
        for client, low, high in zip(clients, bounds, bounds[1:], strict=False):
            client.execute_command("CLUSTER ADDSLOTS", *range(low, high))
        for client in clients[1:]:
            client.execute_command("CLUSTER MEET", "127.0.0.1", ports[0])

        def ready() -> bool:
            return all(
                client.execute_command("CLUSTER INFO")["cluster_state"] == "ok"
                and len(client.execute_command("CLUSTER NODES")) == nodes
                for client in clients
            )

        wait_until(ready, "redis cluster", timeout=30)
        for client in clients:
            client.close()
        yield f"redis://127.0.0.1:{ports[0]}/0"
