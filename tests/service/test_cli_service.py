"""The service commands from the command line: load, status, run, audit, export."""

from __future__ import annotations

import json
import time

import numpy as np

from consumer.cli import main
from consumer.model_file import load_model
from tests.cli.test_offline_cli import write_interactions
from tests.service.kafka_helpers import event, produce


def flags(setup) -> list[str]:
    s = setup.settings
    return [
        "--bootstrap-servers",
        s.kafka_bootstrap_servers,
        "--redis-url",
        s.redis_url.get_secret_value(),
        "--namespace",
        s.namespace + "-cli",
        "--group-id",
        s.group_id,
    ]


def test_load_status_run_audit_export(setup, tmp_path, capsys, monkeypatch):
    s = setup.settings
    interactions = write_interactions(tmp_path / "events.tsv")
    model_path, out_path = tmp_path / "model.npz", tmp_path / "exported.npz"
    assert (
        main(
            [
                "train",
                "--interactions",
                str(interactions),
                "--out",
                str(model_path),
                "--factors",
                "6",
                "--iterations",
                "5",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "load",
                "--model",
                str(model_path),
                "--interactions",
                str(interactions),
                "--shards",
                "3",
                *flags(setup),
            ]
        )
        == 0
    )
    assert (
        main(
            ["load", "--model", str(model_path), "--interactions", str(interactions), *flags(setup)]
        )
        == 2
    )
    assert "--replace" in capsys.readouterr().err
    # As an install or upgrade hook runs it: a namespace with a model is left as it is.
    load_args = ["load", "--model", str(model_path), "--interactions", str(interactions)]
    assert main([*load_args, "--if-absent", *flags(setup)]) == 0
    assert json.loads(capsys.readouterr().out)["loaded"] is False
    assert main([*load_args, "--if-absent", "--replace", *flags(setup)]) == 2
    assert "exclude each other" in capsys.readouterr().err

    for name in (
        "TOPIC_INTERACTIONS",
        "TOPIC_DELETIONS",
        "TOPIC_RECEIPTS",
        "TOPIC_DLQ",
        "TOPIC_FACTORS",
    ):
        monkeypatch.setenv(f"UNLEARN_{name}", getattr(s, name.lower()))
    monkeypatch.setenv("UNLEARN_SESSION_TIMEOUT_MS", "6000")
    produce(
        setup.bootstrap,
        s.topic_deletions,
        [
            ("user-2", event(user="user-2", ts=2e9, request_id="forget-me")),
        ],
    )
    assert main(["run", "--max-seconds", "12", *flags(setup)]) == 0
    capsys.readouterr()

    assert main(["status", *flags(setup)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["users"] == 40 and status["shards"] == 3
    lines = len(interactions.read_text().splitlines())  # distinct pairs, one per line
    assert status["last_batch"]["removed"] > 0
    assert status["interactions"] == lines - status["last_batch"]["removed"]
    assert status["residual"] is not None
    assert status["applied_offsets"] and status["generation"] >= 1
    # The instance that applied the shards is named; nothing waits in their inboxes.
    (owner,) = status["owners"].values()
    assert sorted(owner["shards"]) == [0, 1, 2] and owner["inbox"] == owner["pending"] == 0
    assert sum(p["lag"] for p in status["lag"].values()) == 0

    assert main(["audit", "--request-id", "forget-me", *flags(setup)]) == 0
    receipt = json.loads(capsys.readouterr().out.strip())
    assert receipt["user"] == "user-2" and receipt["removed"] > 0

    assert main(["recommend", "--user", "user-5", "-n", "5", *flags(setup)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5
    scores = [float(line.split("\t")[1]) for line in lines]
    assert scores == sorted(scores, reverse=True)
    owned = {
        line.split("\t")[1]
        for line in interactions.read_text().splitlines()
        if line.startswith("user-5\t")
    }
    shown = {line.split("\t")[0].strip().split(" ", 1)[1].strip() for line in lines}
    assert all(item.startswith("item ") for item in shown)
    assert not owned & shown  # nothing the user already has
    # An unknown user, and one erased whole: an empty list, and why.
    assert main(["recommend", "--user", "nobody", *flags(setup)]) == 0
    answer = capsys.readouterr()
    assert answer.out == "" and "not in the model" in answer.err
    assert main(["recommend", "--user", "user-2", *flags(setup)]) == 0
    answer = capsys.readouterr()
    assert answer.out == "" and "was erased" in answer.err

    assert main(["export", "--out", str(out_path), *flags(setup)]) == 0
    before, after = load_model(model_path), load_model(out_path)
    assert after.user_ids.tolist() == before.user_ids.tolist()
    assert not after.user_factors[after.user_index["user-2"]].any()
    other = after.user_index["user-5"]
    assert np.abs(after.user_factors[other] - before.user_factors[other]).max() < 1.0


def test_run_without_a_loaded_model_is_a_clear_error(setup, capsys):
    args = ["run", "--max-seconds", "1", *flags(setup)[:-4], "--namespace", "never-loaded"]
    assert main(args) == 2
    assert "unlearn load" in capsys.readouterr().err


def test_status_shows_the_state_when_the_brokers_cannot_be_reached(setup, capsys, monkeypatch):
    import redis

    from consumer.embedded import free_port
    from tests.service.conftest import url_of

    s, client = setup.settings, setup.state.client
    monkeypatch.setenv("UNLEARN_REDIS_CLUSTER", str(isinstance(client, redis.RedisCluster)))
    nowhere = f"127.0.0.1:{free_port()}"
    code = main(["status", "--bootstrap-servers", nowhere, "--redis-url", url_of(client),
                 "--namespace", s.namespace])  # fmt: skip
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert code == 2 and "redis" not in out["errors"], out["errors"]
    assert out["users"] == setup.state.meta().users  # the Redis half, all the same
    assert nowhere in out["errors"]["kafka"]
    assert "UNLEARN_KAFKA_BOOTSTRAP_SERVERS" in out["errors"]["kafka"]
    assert "Traceback" not in captured.err and captured.err.count("\n") < 10


def run_flags(setup) -> list[str]:
    from tests.service.conftest import url_of

    return ["--redis-url", url_of(setup.state.client), "--namespace", setup.settings.namespace]


def test_run_with_a_wrong_broker_address_exits_2_naming_the_setting(setup, capsys, monkeypatch):
    """Within kafka_connect_timeout_s, one line of its own, not a client retrying forever."""
    import redis

    from consumer.embedded import free_port

    cluster = isinstance(setup.state.client, redis.RedisCluster)
    monkeypatch.setenv("UNLEARN_REDIS_CLUSTER", str(cluster).lower())
    monkeypatch.setenv("UNLEARN_KAFKA_CONNECT_TIMEOUT_S", "3")
    nowhere = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    code = main(["run", "--max-seconds", "60", "--bootstrap-servers", nowhere, *run_flags(setup)])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2 and elapsed < 30
    (line,) = [x for x in err.splitlines() if x.startswith("unlearn: error:")]
    assert nowhere in line and "UNLEARN_KAFKA_BOOTSTRAP_SERVERS" in line


def test_run_on_a_busy_metrics_port_exits_2_naming_the_setting(setup, capsys, monkeypatch):
    import socket

    import redis

    monkeypatch.setenv("UNLEARN_REDIS_CLUSTER",
                       str(isinstance(setup.state.client, redis.RedisCluster)).lower())  # fmt: skip
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        monkeypatch.setenv("UNLEARN_METRICS_PORT", str(taken.getsockname()[1]))
        code = main(["run", "--max-seconds", "5", "--bootstrap-servers", setup.bootstrap,
                     *run_flags(setup)])  # fmt: skip
    finally:
        taken.close()
    err = capsys.readouterr().err
    assert code == 2 and "UNLEARN_METRICS_PORT" in err and "Traceback" not in err


def test_a_wrong_redis_mode_exits_2_naming_the_setting(setup, capsys, monkeypatch):
    import redis

    cluster = isinstance(setup.state.client, redis.RedisCluster)
    monkeypatch.setenv("UNLEARN_REDIS_CLUSTER", str(not cluster).lower())  # the wrong one
    code = main(["export", "--out", "/dev/null", *run_flags(setup)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"UNLEARN_REDIS_CLUSTER={str(cluster).lower()}" in err
