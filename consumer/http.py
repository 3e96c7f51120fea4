"""One HTTP endpoint: /metrics (Prometheus), /healthz (the loop is alive), /readyz (serving).

/healthz: the poll loop ticked within its deadline (a stuck loop fails it, so the pod is
restarted). /readyz: partitions are assigned, Redis answers, and no recovery is running.
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
        self.recovering = False
        self._last_tick = time.monotonic()

    def tick(self) -> None:
        self._last_tick = time.monotonic()

    def alive(self) -> tuple[bool, str]:
        if self.recovering:  # loading the factor replica or finishing a batch: not stuck
            return True, "starting"
        age = time.monotonic() - self._last_tick
        return age <= self.deadline_s, f"loop ticked {age:.1f} s ago (deadline {self.deadline_s} s)"

    def ready(self) -> tuple[bool, str]:
        if self.recovering:
            return False, "recovering an interrupted batch"
        if self.assigned == 0:
            return False, "no partitions assigned"
        try:
            if not self.redis_ok():
                return False, "Redis does not answer"
        except Exception as exc:  # any failure to reach Redis means not ready
            return False, f"Redis does not answer: {type(exc).__name__}"
        return True, f"{self.assigned} partitions assigned"


class MetricsServer:
    """Serves the endpoints from a daemon thread; stop() shuts it down."""

    def __init__(self, port: int, metrics: Metrics, health: Health, host: str = "0.0.0.0"):
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
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

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
