"""One HTTP endpoint: /metrics (Prometheus), /healthz (the loop is alive), /readyz (serving).

/healthz: the poll loop ticked within its deadline (a stuck loop fails it, so the pod is
restarted). /readyz: partitions are assigned, Redis answers, no recovery is running, and
no partition lacks events the state needs; its body also says what input is paused.

The server binds `metrics_host` (loopback unless told otherwise), drops a client that
sends nothing for `http_timeout_s`, and serves at most `http_max_connections` at once
(the rest wait in the listen backlog): half-open connections cannot pile up threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consumer.metrics import Metrics


class Health:
    def __init__(self, deadline_s: float, redis_ok: Callable[[], bool]) -> None:
        self.deadline_s = deadline_s
        self.redis_ok = redis_ok
        self.assigned = 0
        # What the service waits for before it can serve (None: nothing): loading the
        # model, the brokers, missing topics. /readyz says it.
        self.waiting: str | None = None
        self.paused: list[str] = []  # "topic:partition (why)": input held back
        self.gaps: list[str] = []  # partitions whose needed events the broker lost
        self._last_tick = time.monotonic()

    def tick(self) -> None:
        self._last_tick = time.monotonic()

    def alive(self) -> tuple[bool, str]:
        if self.waiting is not None:  # starting: waiting is not being stuck
            return True, f"starting: {self.waiting}"
        age = time.monotonic() - self._last_tick
        return age <= self.deadline_s, f"loop ticked {age:.1f} s ago (deadline {self.deadline_s} s)"

    def ready(self) -> tuple[bool, str]:
        if self.waiting is not None:
            return False, f"starting: {self.waiting}"
        if self.gaps:
            return False, "events the state needs are gone from the broker: " + ", ".join(self.gaps)
        if self.assigned == 0:
            return False, "no partitions assigned"
        try:
            if not self.redis_ok():
                return False, "Redis does not answer"
        except Exception as exc:  # any failure to reach Redis means not ready
            return False, f"Redis does not answer: {type(exc).__name__}"
        paused = f"; paused: {', '.join(self.paused)}" if self.paused else ""
        return True, f"{self.assigned} partitions assigned{paused}"


class _BoundedServer(ThreadingHTTPServer):
    """A threading server that runs at most `slots` handler threads."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog, where clients beyond the slots wait

    def __init__(self, address: tuple[str, int], handler: type, slots: int) -> None:
        self._slots = threading.BoundedSemaphore(slots)
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        self._slots.acquire()  # the accept loop waits; new clients wait in the backlog
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MetricsServer:
    """Serves the endpoints from a daemon thread; stop() shuts it down."""

    def __init__(
        self,
        port: int,
        metrics: Metrics,
        health: Health,
        host: str = "127.0.0.1",
        timeout_s: float = 5.0,
        max_connections: int = 32,
    ):
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            timeout = timeout_s  # a client that sends nothing for this long is dropped

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, why = health.alive() if path == "/healthz" else health.ready()
                    self._send(200 if ok else 503, (why + "\n").encode(), "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:  # scrapes every second: keep logs quiet
                return

        self.server = _BoundedServer((host, port), Handler, max_connections)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
