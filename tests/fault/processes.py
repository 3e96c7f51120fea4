"""Servers and consumers the fault campaign kills, stops and restarts, each by PID.

Every process keeps its port and data directory across restarts, as a pod that comes back
on the same volume and Service address would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import redis

from consumer.embedded import noida_args, port_open, redis_args, wait_until


class Restartable:
    """One child process with a fixed command line, log file and readiness check."""

    def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str] | None = None):
        self.name, self.args, self.log, self.env = name, args, log, env
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, env=self.env
            )
        self.starts += 1
        self.wait_ready()

    def wait_ready(self) -> None:
        """Servers override this; a consumer is ready once started."""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and the exit code (SIGKILL after the timeout)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -9
        return int(self.proc.returncode)


class RedisServer(Restartable):
    """redis-server with an fsync-always AOF: a SIGKILL loses nothing acknowledged."""

    def __init__(self, port: int, workdir: Path) -> None:
        super().__init__("redis", redis_args(port, str(workdir), True), workdir / "redis.log")
        self.port, self.workdir = port, workdir
        self.url = f"redis://127.0.0.1:{port}/0"

    def snapshot(self) -> None:
        """An RDB snapshot (SAVE) of the data as it is now."""
        client = redis.Redis.from_url(self.url)
        client.save()
        client.close()

    def start_from_snapshot(self) -> None:
        """Start from the last snapshot, not the AOF (as with AOF off, or a replica that
        missed the last writes): the data goes back to the snapshot. AOF is turned on again
        from there, so later restarts keep what follows."""
        aof_args = self.args
        self.args = redis_args(self.port, str(self.workdir), False)
        try:
            self.start()
        finally:
            self.args = aof_args
        client = redis.Redis.from_url(self.url)
        client.config_set("appendfsync", "always")
        client.config_set("appendonly", "yes")
        client.close()

    def wait_ready(self) -> None:
        client = redis.Redis.from_url(self.url)
        # Ready means the AOF is loaded: PING answers LOADING errors until then.
        wait_until(lambda: client.ping(), "redis-server", timeout=60)
        client.close()


class Broker(Restartable):
    """noida-db speaking Kafka, its log in a directory that outlives the process."""

    def __init__(self, port: int, workdir: Path) -> None:
        super().__init__("broker", noida_args(port, str(workdir / "data")), workdir / "broker.log")
        self.port = port
        self.bootstrap = f"127.0.0.1:{port}"

    def wait_ready(self) -> None:
        wait_until(lambda: port_open(self.port), "noida-db", timeout=60)


def consumer(name: str, env: dict[str, str], log: Path) -> Restartable:
    """`unlearn run` as its own process, named `name` (the owner of its shards)."""
    args = [sys.executable, "-c", "from consumer.cli import main; raise SystemExit(main(['run']))"]
    return Restartable(name, args, log, {**os.environ, **env, "UNLEARN_INSTANCE_ID": name})
