"""`unlearn demo` runs the whole product on its embedded servers and reports from the run."""

from __future__ import annotations

import json

from consumer.cli import main


def test_demo_on_generated_data_forgets_and_reports(tmp_path, monkeypatch, capsys):
    # No MovieLens where the demo looks: it must fall back to generated data.
    monkeypatch.setenv("UNLEARN_DATA_DIR", str(tmp_path))
    plot, report_path = tmp_path / "demo.png", tmp_path / "demo.json"
    verify_path = tmp_path / "verify.json"
    args = [
        "demo",
        "--iterations",
        "8",
        "--converge-seconds",
        "3",
        "--metrics-port",
        "0",
        "--plot",
        str(plot),
        "--report",
        str(report_path),
        "--verify-report",
        str(verify_path),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "generated long-tailed data" in out and "top-10 for that user" in out
    report = json.loads(report_path.read_text())
    assert report["receipts"] >= 200 + 2  # the pairs, the whole user, the month
    assert report["interactions_removed"] >= report["receipts"]
    assert report["dead_lettered"] == 0
    assert 0 < report["forget_latency_ms"]["p50"] <= report["forget_latency_ms"]["p99"]
    forgotten = report["forgotten_items_in_top10"]
    assert forgotten["after"] <= forgotten["before"]
    ranks = report["median_rank_of_forgotten_items"]
    assert ranks["after"] > ranks["before"]  # the forgotten month sinks, as in a retrain
    assert plot.stat().st_size > 10_000
    assert json.loads(verify_path.read_text())["verdict"] in ("pass", "fail")
