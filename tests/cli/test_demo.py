"""`unlearn demo` runs the whole offline job on the embedded default data."""

from __future__ import annotations

import re

from consumer.cli import main


def test_demo_on_generated_data_forgets_and_reports(tmp_path, monkeypatch, capsys):
    # No MovieLens where the demo looks: it must fall back to generated data.
    monkeypatch.setenv("UNLEARN_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--iterations", "8"]) == 0
    out = capsys.readouterr().out
    assert "generated long-tailed data" in out
    removed = int(re.search(r"interactions removed\s+(\d+)", out).group(1))
    assert removed > 200
    before, after = map(float, re.search(r"forgotten pairs\s+([\d.]+) -> ([\d.]+)", out).groups())
    assert after < before
    assert len(re.findall(r"^\s+\d+\s{2}", out, flags=re.MULTILINE)) == 10  # the top-10 table
