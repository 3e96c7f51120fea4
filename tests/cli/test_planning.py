"""`unlearn plan` against the coefficients file the capacity benchmark wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consumer.cli import main
from consumer.planning.coefficients import DEFAULT_PATH, Coefficients, read
from consumer.planning.plan import Demand, plan
from consumer.planning.shape import Shape

SIZE = ["--users", "1000000", "--items", "20000", "--interactions", "50000000"]
RATE = ["--deletions-per-s", "200", "--interactions-per-s", "800"]


def test_the_shipped_coefficients_were_measured_not_typed():
    coefficients = read(DEFAULT_PATH)
    assert coefficients.source["command"].startswith("python -m benchmarks.capacity")
    sizes = coefficients.source["sizes"]
    assert len(sizes) >= 3
    for size in sizes:  # each size measured, and what the plan says of it beside it
        assert size["measured"]["events_per_s_1"] > 0
        assert set(size["predicted"]) <= set(size["measured"])


def test_the_command_prints_the_plan_of_the_coefficients_file(capsys):
    assert main(["plan", *SIZE, *RATE, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = plan(Shape.typical(1_000_000, 20_000, 50_000_000), Demand(200, 800),
                    read(DEFAULT_PATH))  # fmt: skip
    assert printed["plan"] == pytest.approx(expected.__dict__)
    assert printed["plan"]["instances"] >= 1


def test_the_command_reads_another_coefficients_file(tmp_path, capsys):
    base = read(DEFAULT_PATH)
    dearer = Coefficients(**{**base.__dict__, "core_s_per_work": base.core_s_per_work * 10,
                             "core_s_per_event": base.core_s_per_event * 10})  # fmt: skip
    path = tmp_path / "coefficients.json"
    path.write_text(dearer.to_json(), encoding="utf-8")
    assert main(["plan", *SIZE, *RATE, "--json"]) == 0
    cheap = json.loads(capsys.readouterr().out)["plan"]
    assert main(["plan", *SIZE, *RATE, "--json", "--coefficients", str(path)]) == 0
    dear = json.loads(capsys.readouterr().out)["plan"]
    assert dear["core_s_per_event"] == pytest.approx(10 * cheap["core_s_per_event"])
    assert dear["instances"] > cheap["instances"]


def test_the_text_names_every_resource(capsys):
    assert main(["plan", *SIZE, *RATE]) == 0
    out = capsys.readouterr().out
    for name in ("instances", "cpu per instance", "memory per instance", "partitions",
                 "shards", "redis memory", "redis commands"):  # fmt: skip
        assert name in out


@pytest.mark.parametrize(
    "text", ['{"core_s_per_event": 1}', "[1, 2]", "not json", '{"efficiency": 3}']
)
def test_a_broken_coefficients_file_is_named(tmp_path, capsys, text):
    path = tmp_path / "c.json"
    path.write_text(text, encoding="utf-8")
    assert main(["plan", *SIZE, *RATE, "--coefficients", str(path)]) == 2
    assert f"{path}: not a cost coefficients file" in capsys.readouterr().err


def test_a_missing_coefficients_file_is_named(tmp_path, capsys):
    path = tmp_path / "none.json"
    assert main(["plan", *SIZE, *RATE, "--coefficients", str(path)]) == 2
    assert f"{path}: cannot read the cost coefficients" in capsys.readouterr().err


def test_without_redis_work_measured_the_json_has_no_infinity(tmp_path, capsys):
    free = Coefficients(**{**read(DEFAULT_PATH).__dict__, "redis_core_s_per_event": 0.0})
    path = tmp_path / "free.json"
    path.write_text(free.to_json(), encoding="utf-8")
    assert main(["plan", *SIZE, *RATE, "--json", "--coefficients", str(path)]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["plan"]["redis_events_per_s_per_primary"] is None
    assert "Infinity" not in out


def test_an_impossible_model_is_an_error_not_a_crash(capsys):
    args = ["plan", "--users", "10", "--items", "10", "--interactions", "1000", *RATE]
    assert main(args) == 2
    assert "do not fit" in capsys.readouterr().err


def test_the_documented_example_is_what_the_command_prints(capsys):
    """docs/capacity.md shows the command's output for its example: regenerating the
    coefficients without rendering the docs again fails here."""
    example = ["--users", "1000000", "--items", "20000", "--interactions", "50000000",
               "--deletions-per-s", "200", "--interactions-per-s", "800"]  # fmt: skip
    assert main(["plan", *example]) == 0
    printed = capsys.readouterr().out.strip()
    doc = (Path(__file__).parents[2] / "docs" / "capacity.md").read_text(encoding="utf-8")
    assert f"```\n{printed}\n```" in doc
