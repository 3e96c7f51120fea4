"""Secrets come from the environment and never reach logs, errors or /metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import redis

from consumer.embedded import free_port, process, redis_args, wait_until
from consumer.state.bootstrap import load
from consumer.state.store import ModelState
from tests.conftest import params_for
from tests.service.kafka_helpers import TOPIC_KINDS, create_topics, unique
from unlearn_core import train

REDIS_SECRET = "redis-pw-7f3a9c"
KAFKA_SECRET = "kafka-pw-41d2e8"


def test_secrets_never_appear_in_any_output(kafka_bootstrap, random_data):
    port, metrics_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as workdir:
        args = redis_args(port, workdir, False, "--requirepass", REDIS_SECRET)
        with process(args, Path(workdir) / "redis.log"):
            client = redis.Redis(port=port, password=REDIS_SECRET)
            wait_until(lambda: client.ping(), "redis-server with AUTH")
            _, data = random_data(seed=1)
            model, _ = train(
                data,
                [f"u{n}" for n in range(30)],
                [f"i{n}" for n in range(20)],
                params_for("implicit"),
                3,
            )
            load(ModelState(client, "secret-test"), model, data, np.zeros(data.nnz), shards=2)
            topics = {k: unique(k) for k in TOPIC_KINDS}
            create_topics(kafka_bootstrap, topics.values())
            env = {
                **os.environ,
                "UNLEARN_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "UNLEARN_KAFKA_SASL_PASSWORD": KAFKA_SECRET,
                "UNLEARN_REDIS_URL": f"redis://127.0.0.1:{port}/0",
                "UNLEARN_REDIS_PASSWORD": REDIS_SECRET,
                "UNLEARN_NAMESPACE": "secret-test",
                "UNLEARN_GROUP_ID": unique("group"),
                "UNLEARN_METRICS_PORT": str(metrics_port),
                "UNLEARN_SESSION_TIMEOUT_MS": "6000",
                **{f"UNLEARN_TOPIC_{k.upper()}": v for k, v in topics.items()},
            }
            outputs = []
            run = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from consumer.cli import main; raise SystemExit(main())",
                    "run",
                    "--max-seconds",
                    "8",
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            base = f"http://127.0.0.1:{metrics_port}"
            wait_until(
                lambda: urllib.request.urlopen(f"{base}/healthz").status == 200,
                "metrics endpoint",
                timeout=30,
            )
            time.sleep(2)
            for path in ("/metrics", "/healthz"):
                outputs.append(urllib.request.urlopen(base + path).read().decode())
            out, err = run.communicate(timeout=60)
            assert run.returncode == 0, err
            outputs += [out, err]
            # A wrong password fails with a message that does not echo it either.
            env["UNLEARN_REDIS_PASSWORD"] = "wrong-" + REDIS_SECRET
            status = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "from consumer.cli import main; raise SystemExit(main())",
                    "status",
                ],
                env=env,
                capture_output=True,
                text=True,
            )
            assert status.returncode != 0
            outputs += [status.stdout, status.stderr]
    text = "\n".join(outputs)
    assert "settings:" in text and "***" in text  # the configuration was printed, masked
    for secret in (REDIS_SECRET, KAFKA_SECRET):
        assert secret not in text
