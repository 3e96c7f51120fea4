"""Dashboard and alert rules: valid, unit-tested with promtool, and only about real metrics."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from consumer.metrics import Metrics, metric_names

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# The chart ships the rules and the dashboard; these are the only copies.
RULES = DEPLOY / "helm" / "unlearn" / "files" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "helm" / "unlearn" / "files" / "unlearn-dashboard.json"
# Series Prometheus itself provides, or PromQL words that look like names.
BUILTIN = {"up", "time", "le", "job", "instance"}


def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing in CI: .ci/run installs the prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return binary


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queries += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return queries


def rule_queries() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def referenced_metrics(query: str) -> set[str]:
    # Strip strings and label matchers first, so label values are not taken for names.
    bare = re.sub(r'"[^"]*"', "", query)
    bare = re.sub(r"\{[^}]*\}", "", bare)
    names = set(re.findall(r"\b(?:unlearn|process)_[a-z0-9_]+\b", bare))
    return names


def test_promtool_checks_the_rules():
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_alerts_pass():
    result = subprocess.run(
        [promtool(), "test", "rules", str(RULE_TESTS.name)],
        capture_output=True,
        text=True,
        cwd=RULE_TESTS.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_query_refers_only_to_exported_metrics(source):
    exported = metric_names(Metrics())
    queries = dashboard_queries() if source == "dashboard" else rule_queries()
    assert queries
    referenced = set().union(*(referenced_metrics(q) for q in queries))
    assert referenced, "no metric found in the queries"
    assert referenced - exported == set()


def test_the_check_would_catch_a_misspelt_metric():
    exported = metric_names(Metrics())
    assert referenced_metrics('rate(unlearn_forget_latency_secnds_bucket{job="x"}[5m])') - exported


def test_dashboard_shows_what_operators_need():
    text = DASHBOARD.read_text()
    for needed in (
        "unlearn_forget_latency_seconds_bucket",
        "unlearn_consumer_lag",
        "unlearn_model_residual",
        "unlearn_batch_loss",  # the objective
        "unlearn_consolidation_rows_solved_total",  # forgetting cycles at work, or at rest
        "unlearn_consolidation_reach",
        "unlearn_consolidation_overtime_rows_solved_total",  # busy with no input: why
        "unlearn_events_dead_lettered_total",
        "unlearn_batch_phase_seconds_bucket",
    ):
        assert needed in text


def test_every_alert_is_tested_from_a_series_that_starts_at_a_value():
    """A series the scrape first sees at a value (`_ _ 150 ...`): rate() alone misses it."""
    rules = yaml.safe_load(RULES.read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    first_occurrence = set()
    for test in tests:
        if not any(str(s["values"]).startswith("_") for s in test["input_series"]):
            continue
        first_occurrence |= {t["alertname"] for t in test["alert_rule_test"] if t["exp_alerts"]}
    assert alerts - first_occurrence == set()
