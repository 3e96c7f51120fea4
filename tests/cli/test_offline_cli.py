"""`unlearn train` and `unlearn forget` on files: outputs, reports and clear errors."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from consumer.cli import main
from consumer.model_file import load_model


def write_interactions(path: Path, n_users: int = 40, n_items: int = 25, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = []
    for user in range(n_users):
        for item in rng.choice(n_items, size=rng.integers(3, 10), replace=False):
            lines.append(f"user-{user}\titem {item}\t{rng.integers(1, 6)}\t{1000 + user}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {
        "interactions": write_interactions(tmp_path / "interactions.tsv"),
        "model": tmp_path / "model.npz",
        "out": tmp_path / "forgotten.npz",
        "deletions": tmp_path / "deletions.tsv",
        "report": tmp_path / "report.json",
    }


def train_model(files: dict[str, Path], *extra: str) -> None:
    args = ["train", "--interactions", str(files["interactions"]), "--out", str(files["model"])]
    assert main([*args, "--factors", "8", "--iterations", "10", *extra]) == 0


def forget_args(files: dict[str, Path], *extra: str) -> list[str]:
    return [
        "forget",
        "--model", str(files["model"]),
        "--interactions", str(files["interactions"]),
        "--deletions", str(files["deletions"]),
        "--out", str(files["out"]),
        "--report", str(files["report"]),
        *extra,
    ]  # fmt: skip


def first_pair_of(path: Path, user: str) -> str:
    for line in path.read_text().splitlines():
        if line.startswith(user + "\t"):
            return line.split("\t")[1]
    raise AssertionError(f"{user} has no interactions")


def test_train_writes_a_model_file_with_ids_factors_and_hyperparameters(files):
    train_model(files, "--regularization", "0.5", "--alpha", "2", "--seed", "3")
    with np.load(files["model"]) as npz:
        assert npz["user_factors"].dtype == np.float32
        assert npz["item_factors"].shape == (25, 8)
        assert npz["user_ids"].dtype.kind == "U" and "user-0" in npz["user_ids"]
        assert str(npz["kind"]) == "implicit"
        assert float(npz["regularization"]) == 0.5 and float(npz["alpha"]) == 2.0
        assert int(npz["factors"]) == 8


def test_forget_removes_pairs_users_and_items_and_reports(files):
    train_model(files)
    item_of_user_1 = first_pair_of(files["interactions"], "user-1")
    files["deletions"].write_text(f"user-1\t{item_of_user_1}\nuser-2\t*\n*\titem 3\nghost\t*\n")
    assert main(forget_args(files, "--max-sweeps", "5")) == 0
    before, after = load_model(files["model"]), load_model(files["out"])
    assert np.all(after.user_factors[after.user_index["user-2"]] == 0)
    assert np.all(after.item_factors[after.item_index["item 3"]] == 0)
    u, i = after.user_index["user-1"], after.item_index[item_of_user_1]
    assert after.scores([u], [i])[0] < before.scores([u], [i])[0]
    report = json.loads(files["report"].read_text())
    assert report["removed"] > 2
    assert report["unknown_ids"] == {"pairs": 0, "users": 1, "items": 0}
    assert report["records"][0]["phase"] == "touched"
    assert 1 <= report["sweeps"] <= 5
    assert after.params == before.params


def test_forget_of_absent_pairs_is_reported_not_an_error(files, capsys):
    train_model(files)
    files["deletions"].write_text("user-1\tno-such-item\nuser-1\titem 999\n")
    assert main(forget_args(files)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["removed"] == 0 and summary["unknown_ids"]["pairs"] == 2


def test_explicit_model_trains_and_forgets(files):
    train_model(files, "--kind", "explicit")
    files["deletions"].write_text("user-3\t*\n")
    assert main(forget_args(files)) == 0
    after = load_model(files["out"])
    assert after.params.kind == "explicit" and after.params.regularization == 0.1
    assert np.all(after.user_factors[after.user_index["user-3"]] == 0)


BAD_INTERACTIONS = [
    ("u1\ti1\t1\nu2\ti2\tfive\n", 2, "weight 'five' is not a number"),
    ("u1\ti1\t1\nu2\ti2\n", 2, "got 2 fields"),
    ("u1\ti1\t1\n\nu2\ti2\t1\n", 2, "got an empty line"),
    ("u1\ti1\t1\t2\t3\n", 1, "got 5 fields"),
    ("u1\ti1\t-1\n", 1, "weight must be a finite number >= 0"),
    ("u1\ti1\tnan\n", 1, "weight must be a finite number >= 0"),
    ("u1\t\t1\n", 1, "item id is empty"),
    ("*\ti1\t1\n", 1, "reserved for deletions"),
    ("u1\ti1\t1\tyesterday\n", 1, "timestamp 'yesterday' is not a number"),
    ("u1\t" + "x" * 300 + "\t1\n", 1, "longer than 256 bytes"),
    (b"u1\ti1\t1\nu\xff\ti1\t1\n", 2, "not valid UTF-8"),
]


@pytest.mark.parametrize(("content", "line", "message"), BAD_INTERACTIONS)
def test_a_bad_interactions_line_names_file_and_line_and_writes_nothing(
    files, capsys, content, line, message
):
    path = files["interactions"]
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    code = main(["train", "--interactions", str(path), "--out", str(files["model"])])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{path}:{line}: " in err and message in err
    assert not files["model"].exists()


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("u1\ti1\n*\t*\n", 2, "would delete everything"),
        ("u1\ti1\tx\n", 1, "got 3 fields"),
        ("\ti1\n", 1, "user id is empty"),
    ],
)
def test_a_bad_deletions_line_is_an_error_and_nothing_is_written(
    files, capsys, content, line, message
):
    train_model(files)
    files["deletions"].write_text(content)
    assert main(forget_args(files)) == 2
    err = capsys.readouterr().err
    assert f"{files['deletions']}:{line}: " in err and message in err
    assert not files["out"].exists() and not files["report"].exists()


def test_a_file_that_is_not_a_model_is_a_clear_error(files, capsys):
    files["model"].write_text("not a zip")
    files["deletions"].write_text("u1\t*\n")
    assert main(forget_args(files)) == 2
    assert "cannot read model" in capsys.readouterr().err


def test_missing_input_file_is_a_clear_error(files, capsys):
    missing = files["interactions"].parent / "nope.tsv"
    assert main(["train", "--interactions", str(missing), "--out", str(files["model"])]) == 2
    assert f"{missing}: cannot read" in capsys.readouterr().err


def test_console_script_is_installed(files):
    exe = shutil.which("unlearn")
    assert exe, "the `unlearn` console script is not on PATH (pip install -e .)"
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "train" in result.stdout and "forget" in result.stdout
