"""Every command ends in a verdict or one error line, whatever it is given: wrong files,
mismatched models, empty namespaces, unreachable servers, impossible numbers. Exit 0, 1
(`verify`'s failed verdict only) or 2 with one line `unlearn: error: WHERE: WHAT`; never a
traceback, never the catch-all's "internal" line (each case is handled by name)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from consumer.cli import main
from consumer.engine import Engine
from consumer.events import Deletion, Source
from consumer.model_file import save_model
from consumer.state.bootstrap import load
from consumer.state.store import ModelState
from tests.conftest import binary_model, params_for
from unlearn_core import train
from unlearn_core.model import FactorModel

NOWHERE_REDIS = "redis://127.0.0.1:1/0"
NOWHERE_KAFKA = "127.0.0.1:1"


@pytest.fixture
def files(tmp_path, redis_url, redis_client):
    """Good and bad inputs side by side, a namespace with a model and an empty one."""
    model, data = binary_model(3, 12, 8, 0.4, 4, 5)
    good = tmp_path / "good.tsv"
    coo = data.by_user.tocoo()
    good.write_text(
        "".join(f"u{u}\ti{i}\t1\t1000\n" for u, i in zip(coo.row, coo.col, strict=True))
    )
    save_model(model, tmp_path / "model.npz")
    other, _ = train(data, list(model.user_ids), list(model.item_ids),
                     params_for("implicit", factors=6), 3)  # fmt: skip
    save_model(other, tmp_path / "rank6.npz")
    stranger = FactorModel.create([f"x{n}" for n in range(12)], [f"y{n}" for n in range(8)],
                                  model.user_factors, model.item_factors, model.params)  # fmt: skip
    save_model(stranger, tmp_path / "strangers.npz")
    raw = (tmp_path / "model.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    np.savez(tmp_path / "half.npz", user_ids=np.array(["a"]))
    bad = {
        "empty.tsv": "",
        "garbage.bin": os.urandom(300).decode("latin-1"),
        "columns.tsv": "u1\ti1\n",
        "word.tsv": "u1\ti1\tfive\n",
        "nan.tsv": "u1\ti1\tnan\n",
        "negative.tsv": "u1\ti1\t-3\n",
        "longid.tsv": f"{'u' * 300}\ti1\t1\n",
        "deletions_three.tsv": "u1\ti1\textra\n",
        "deletions_unknown.tsv": "nobody\tnothing\n",
        "deletions_good.tsv": "u1\ti1\n",
    }
    for name, text in bad.items():
        (tmp_path / name).write_text(text, encoding="latin-1")
    (tmp_path / "adir").mkdir()
    state = ModelState(redis_client, "fuzz-loaded")
    load(state, model, data, np.full(data.nnz, 1000.0), shards=2)
    # Receipts to judge: a pair the model has, and one it never saw (which verify's
    # --before model, exported before, lacks: it must be left out, not crash).
    u, i = coo.row[0], coo.col[0]
    Engine(state).process([], [
        Deletion(f"u{u}", f"i{i}", 2e9, "known", Source("deletions", 0, 0)),
        Deletion(f"u{u}", "never-seen", 2e9, "unknown", Source("deletions", 0, 1)),
    ])  # fmt: skip
    return tmp_path


def cases(t, redis_url: str, kafka: str) -> list[tuple[list[str], set[int]]]:
    r = ["--redis-url", redis_url]
    loaded, empty = [*r, "--namespace", "fuzz-loaded"], [*r, "--namespace", "fuzz-empty"]
    nowhere = ["--redis-url", NOWHERE_REDIS, "--namespace", "fuzz-loaded",
               "--bootstrap-servers", NOWHERE_KAFKA]  # fmt: skip
    model, good = str(t / "model.npz"), str(t / "good.tsv")
    train = ["train", "--out", str(t / "out.npz"), "--iterations", "1"]

    def forget_with(model_file: str) -> list[str]:
        return ["forget", "--model", model_file, "--interactions", good, "--out", str(t / "f.npz")]

    forget, deletions_good = forget_with(model), str(t / "deletions_good.tsv")
    load_ = ["load", "--model", model, "--interactions", good]
    verify = ["verify", "--report", str(t / "v.json"), "--seeds", "1"]
    two = {2}
    out = [
        # train: files, then numbers
        ([*train, "--interactions", str(t / "missing.tsv")], two),
        ([*train, "--interactions", str(t / "empty.tsv")], two),
        ([*train, "--interactions", str(t / "garbage.bin")], two),
        ([*train, "--interactions", str(t / "columns.tsv")], two),
        ([*train, "--interactions", str(t / "word.tsv")], two),
        ([*train, "--interactions", str(t / "nan.tsv")], two),
        ([*train, "--interactions", str(t / "negative.tsv")], two),
        ([*train, "--interactions", str(t / "longid.tsv")], two),
        ([*train, "--interactions", str(t / "adir")], two),
        ([*train, "--interactions", good, "--factors", "0"], two),
        ([*train, "--interactions", good, "--regularization", "-1"], two),
        ([*train, "--interactions", good, "--alpha", "nan"], two),
        ([*train, "--interactions", good, "--iterations", "-2"], two),
        (["train", "--interactions", good, "--out", "/nonexistent/dir/m.npz"], two),
        ([*train, "--interactions", good, "--kind", "bogus"], two),
        # forget: models, data, deletions, rules
        ([*forget_with(str(t / "truncated.npz")), "--deletions", deletions_good], two),
        ([*forget_with(str(t / "half.npz")), "--deletions", deletions_good], two),
        ([*forget_with(good), "--deletions", deletions_good], two),  # a TSV as the model
        ([*forget, "--deletions", str(t / "deletions_three.tsv")], two),
        ([*forget, "--deletions", str(t / "missing.tsv")], two),
        ([*forget, "--deletions", str(t / "deletions_unknown.tsv")], {0}),  # counted, fine
        ([*forget, "--deletions", str(t / "deletions_good.tsv"), "--max-sweeps", "-1"], two),
        ([*forget, "--deletions", str(t / "deletions_good.tsv"), "--settle-ratio", "0.5"], two),
        ([*forget, "--deletions", str(t / "deletions_good.tsv"), "--settle-tail", "-1"], two),
        # import
        (["import", "--from", "implicit", str(t / "garbage.bin"), "--out", str(t / "i.npz")], two),
        (["import", "--from", "spark", str(t / "missing"), "--out", str(t / "i.npz")], two),
        (
            [
                "import",
                "--from",
                "npy",
                str(t / "missing.npy"),
                "--item-factors",
                str(t / "missing.npy"),
                "--out",
                str(t / "i.npz"),
            ],
            two,
        ),
        # load
        ([*load_, "--shards", "0", *empty], two),
        ([*load_, "--replace", "--if-absent", *empty], two),
        ([*load_, "--swap", "--replace", *empty], two),
        ([*load_, "--trained-at", "yesterday", "--replace", *empty], two),
        (["load", "--model", str(t / "truncated.npz"), "--interactions", good, *empty], two),
        (
            [
                *load_,
                "--swap",
                *loaded[:2],
                "--namespace",
                "fuzz-loaded",
                "--model",
                str(t / "rank6.npz"),
            ],
            two,
        ),
        ([*load_, *nowhere], two),
        # the namespace commands, on an empty namespace and on no Redis
        (["export", "--out", str(t / "e.npz"), *empty], two),
        (["export", "--out", "/nonexistent/dir/e.npz", *loaded], two),
        (["recommend", "--user", "u1", *empty], two),
        (["recommend", "--user", "u1", "-n", "0", *loaded], two),
        (["inspect", "--user", "u1", *empty], two),
        (["audit", *empty], two),
        (["audit", "--expire-days", "-1", *loaded], two),
        (["audit", "--expire-days", "3", "--user", "u1", *loaded], two),
        (["consolidate", "--sweeps", "-1", *loaded], two),
        (["consolidate", *empty], two),
        (["status", *nowhere], two),
        (["redrive", "--since", "yesterday", *loaded, "--bootstrap-servers", kafka], two),
        (["skip-gap", "no-partition", "--yes", *loaded, "--bootstrap-servers", kafka], two),
        (["skip-gap", "topic:x", "--yes", *loaded, "--bootstrap-servers", kafka], two),
        (["run", "--max-seconds", "1", *empty, "--bootstrap-servers", kafka], two),
        (["run", "--max-seconds", "1", *nowhere], two),
        # verify: what it cannot judge is 2, never 1
        ([*verify, *empty], two),
        ([*verify, "--before", str(t / "truncated.npz"), *loaded], two),
        ([*verify, "--before", str(t / "rank6.npz"), *loaded], two),
        ([*verify, "--before", str(t / "strangers.npz"), *loaded], two),
        ([*verify, "--before", model, *loaded], {0, 1}),  # judged: the unknown pair left out
        ([*verify, "--deletions", str(t / "missing.tsv"), *loaded], two),
        ([*verify, "--deletions", str(t / "deletions_three.tsv"), *loaded], two),
        ([*verify, "--held-out", str(t / "garbage.bin"), *loaded], two),
        ([*verify, "--sample", "0", *loaded], two),
        (["verify", "--report", "/nonexistent/dir/v.json", *loaded], two),
        (["demo", "--data", str(t / "missing.tsv")], two),
    ]
    return out


def test_every_command_given_bad_input_ends_in_one_line(
    files, redis_url, kafka_bootstrap, capsys, monkeypatch
):
    monkeypatch.setenv("UNLEARN_KAFKA_CONNECT_TIMEOUT_S", "2")
    monkeypatch.setenv("UNLEARN_REDIS_RETRY_BUDGET_S", "1")
    monkeypatch.setenv("UNLEARN_REDIS_TIMEOUT_S", "2")
    monkeypatch.setenv("UNLEARN_TOPICS_WAIT_S", "0")
    monkeypatch.chdir(files)
    seen = cases(files, redis_url, kafka_bootstrap)
    assert len(seen) >= 50
    failures = []
    for args, allowed in seen:
        code = main(args)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("unlearn:")]
        problem = None
        if code not in allowed:
            problem = f"exit {code}"
        elif "Traceback" in err or "internal:" in err:
            problem = "a crash"
        elif code == 2 and (len(lines) != 1 or not lines[0].startswith("unlearn: error: ")):
            problem = f"{len(lines)} error lines"
        if problem:
            shown = " ".join(a.rsplit("/", 1)[-1] for a in args[1:])  # file names, not dirs
            failures.append((args[0], shown, problem, err.strip()[-300:]))
    assert not failures, "\n".join(map(str, failures))
