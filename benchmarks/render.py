"""Rewrite the generated tables in docs/*.md from benchmarks/results/*.json.

Every number in those tables comes from a results file that a benchmark (or the fault
campaign) wrote; this script only formats them. usage: python -m benchmarks.render
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._common import REPO

DOC = REPO / "docs" / "benchmarks.md"
RELIABILITY = REPO / "docs" / "reliability.md"
CAPACITY = REPO / "docs" / "capacity.md"
RESULTS = REPO / "benchmarks" / "results"


def core_speed(data: dict[str, Any]) -> str:
    m, s = data["medians"], data["summary"]
    ms = 1e3
    k = data["params"]["factors"]
    rows = [
        ("`implicit` ALS fit, 15 iterations (CG)", f"{m['implicit_fit_15_seconds']:.3f} s", ""),
        (
            "one `implicit` iteration (fit / 15)",
            f"{s['implicit_seconds_per_iteration'] * ms:.1f} ms",
            "",
        ),
        (
            "one full Unlearn-ALS sweep, `cg` (default)",
            f"{m['sweep_cg_seconds'] * ms:.1f} ms",
            f"**{s['sweep_cg_vs_implicit_iteration']:.2f}x** an `implicit` iteration "
            "(target <= 1.5x)",
        ),
        (
            "one full sweep, exact `cholesky`",
            f"{m['sweep_cholesky_seconds'] * ms:.1f} ms",
            f"{s['sweep_cholesky_vs_implicit_iteration']:.2f}x an `implicit` iteration",
        ),
        (
            "forget 100 pairs: touched-row exact re-solves",
            f"**{s['forget100_touched_ms']:.1f} ms**",
            f"p90 {s['forget100_touched_p90_ms']:.1f} ms (target <= 20 ms)",
        ),
        (
            "forget 100 pairs: interactions in the touched rows",
            f"{m['forget100_touched_interactions']:,.0f}",
            f"{m['forget100_touched_interactions'] * k * k * 2 / 1e9:.2f} GFlop of outer products",
        ),
        (
            "forget 100 pairs: updating the data (before solves)",
            f"{m['forget100_apply_seconds'] * ms:.1f} ms",
            "",
        ),
        (
            "forget 100 pairs, `--max-sweeps 3`, in process",
            f"{m['forget100_max3_seconds']:.3f} s",
            f"**{s['forget100_max3_vs_implicit_fit_15']:.2f}x** the `implicit` 15-iteration fit",
        ),
        (
            "`unlearn forget --max-sweeps 3` command, end to end",
            f"{m['cli_forget100_max3_seconds']:.3f} s",
            f"{s['cli_forget100_max3_vs_implicit_fit_15']:.2f}x the fit "
            "(reads 1M lines, loads and saves)",
        ),
    ]
    return _table(("measurement (median)", "value", "comparison"), rows) + "\n\n" + _machine(data)


def forget_quality(data: dict[str, Any]) -> str:
    lines = [
        "| model | deletions | retrain it. | deleted-pair mean score: original -> unlearned "
        "(retrain range) | held-out (retrain range) | attack AUC: original -> unlearned "
        "(retrain range) | retraining loss: unlearned (retrain range) | sweeps | checks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in data["cases"]:
        u, o, r = case["unlearned"], case["original"], case["retrained"]

        def span(name: str, fmt: str = ".4f", cards: list = r) -> str:
            values = [card[name] for card in cards]
            return f"{min(values):{fmt}}..{max(values):{fmt}}"

        if case["kind"] == "implicit":
            held = (
                f"recall@20 {u['recall_at_20']:.4f} ({span('recall_at_20')}); "
                f"AUC {u['auc']:.4f} ({span('auc')})"
            )
        else:
            held = f"RMSE {u['rmse']:.4f} ({span('rmse')})"
        failed = [name for name, ok in case["checks"].items() if not ok]
        lines.append(
            f"| {case['kind']}, reg {case['regularization']} | {case['scope']} | "
            f"{case['retrain_iterations']} | {o['deleted_mean_score']:.4f} -> "
            f"{u['deleted_mean_score']:.4f} ({span('deleted_mean_score')}) | {held} | "
            f"{o['attack_auc']:.4f} -> {u['attack_auc']:.4f} ({span('attack_auc')}) | "
            f"{u['loss']:.1f} ({span('loss', '.1f')}) | {case['sweeps']} | "
            f"{'all pass' if not failed else 'FAIL: ' + ', '.join(failed)} |"
        )
    return "\n".join(lines) + "\n\n" + _machine(data)


def redis_memory(data: dict[str, Any]) -> str:
    rows = [
        ("interactions, both directions", f"{data['interaction_bytes_per_interaction']:.1f} B "
         "per interaction", "target <= 64 B"),
        ("factors (k = 64 float32 = 256 B of payload)", f"{data['factor_bytes_per_factor']:.0f} B "
         "per user or item", ""),
        ("id maps (both ways)", f"{data['id_map_bytes_per_id']:.0f} B per user or item", ""),
        ("whole server growth for the namespace",
         f"{data['server_growth_bytes_per_interaction']:.1f} B per interaction",
         "everything above, Gramians and metadata"),
    ]  # fmt: skip
    lines = [_table(("what", "measured", "note"), rows), ""]
    lines.append(
        f"{data['interactions']:,} interactions, {data['users']:,} users, {data['items']:,} items, "
        f"{data['shards']} shards; MEMORY USAGE per key (samples=0)."
    )
    return "\n".join(lines) + "\n\n" + _machine(data)


def e2e_load(data: dict[str, Any]) -> str:
    lines = [
        "| deletions/s | interactions/s | seconds | receipts | forget latency p50 / p90 / p99 "
        "(ms) | backlog at end | service CPU s | implicit retrain CPU / CPU per forget |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in data["phases"]:
        latency = p["forget_latency_ms"]
        lines.append(
            f"| {p['deletions_per_s']:.0f} | {p['interactions_per_s']:.0f} | {p['seconds']:.0f} | "
            f"{p['receipts']} | {latency.get('p50', 0):.0f} / {latency.get('p90', 0):.0f} / "
            f"{latency.get('p99', 0):.0f} | {p['backlog_end']} | {p['service_cpu_seconds']:.1f} | "
            f"{p['implicit_retrain_cpu_over_cpu_per_forget']:.0f}x |"
        )
    retrain = data["implicit_retrain"]
    lines.append("")
    if retrain.get("iterations", 15):
        lines.append(
            f"`implicit` {retrain.get('iterations', 15)}-iteration retrain of the same model in "
            f"the same run: {retrain['wall_seconds']:.2f} s wall, "
            f"{retrain['cpu_seconds']:.2f} CPU s."
        )
    if "redis" in data:
        shape, memory = data["shape"], data["redis"]
        source = data["data"].split("/data/")[-1]
        lines.append(
            f"Data: {source} ({shape['users']:,} users, {shape['items']:,} items, "
            f"{shape['interactions']:,} interactions); broker: {data.get('broker', 'tansu')}. "
            f"Load into Redis: {memory['load_seconds']:.1f} s; server memory growth "
            f"{memory['used_memory_growth'] / 2**20:,.0f} MiB = "
            f"{memory['bytes_per_interaction']:.1f} B per interaction. Service start (replica, "
            f"objective): {data['service_start_seconds']:.0f} s; service peak RSS "
            f"{data['service_peak_rss_bytes'] / 2**20:,.0f} MiB."
        )
    return "\n".join(lines) + "\n\n" + _machine(data)


def profile_engine(data: dict[str, Any]) -> str:
    m = data["phase_medians_ms"]
    batch = data["batch"]
    head = (
        f"Batches of {batch['deletions']} deletions + {batch['interactions']} interactions, "
        f"median per batch under cProfile: read {m['read']:.1f} ms, solve (with the batch "
        f"objective) {m['solve']:.1f} ms, write {m['write']:.1f} ms, total {m['total']:.1f} ms."
    )
    modules = ("engine.py", "batch.py", "replica.py", "store.py", "solve.py", "model.py",
               "gramians.py")  # fmt: skip
    ours = [r for r in data["top_cumulative"] if r["function"].split(":")[0] in modules][:12]
    rows = [(f"`{r['function']}`", str(r["calls"]), f"{r['cumulative_ms_per_batch']:.2f}")
            for r in ours]  # fmt: skip
    table = _table(("function", "calls", "cumulative ms per batch"), rows)
    return head + "\n\n" + table + "\n\n" + _machine(data)


def popular_item(data: dict[str, Any]) -> str:
    m = data["medians"]
    rows = [
        (f"HMGET of the item's {data['users_of_item']:,} user factors from Redis",
         f"{m['read'] * 1e3:.1f} ms", "what reading them per re-solve would cost"),
        ("exact re-solve of the item from the in-memory replica", f"{m['solve'] * 1e3:.1f} ms",
         f"reading would be {data['read_over_solve']:.1f}x the whole solve"),
        (f"catching up after another instance's batch ({data['batch_users']} users)",
         f"{m['refresh'] * 1e3:.1f} ms", "change log + those factors"),
    ]  # fmt: skip
    return _table(("per popular item, k = 64", "median", "note"), rows) + "\n\n" + _machine(data)


def fault_campaign(data: dict[str, Any]) -> str:
    faults = [
        ("consumer killed with SIGKILL at random points", data["kills"]),
        ("consumer (re)starts", data["consumer_starts"]),
        ("consumer exits on its own (fatal path)", data["exits_on_their_own"]),
        ("Redis killed and restarted from its AOF", data["redis_restarts"]),
        ("Redis unreachable for 10 s (SIGSTOP)", data["redis_unreachable_10s"]),
        ("broker restarted (same log directory)", data["broker_restarts"]),
        ("broker restarted again: its group coordinator stopped assigning",
         data.get("broker_restarts_for_stuck_group", 0)),
        ("second consumer joined / left the group",
         f"{data['second_consumer_joins']} / {data['second_consumer_leaves']}"),
        ("garbage burst on interactions (300 messages)", data.get("garbage_surges", "-")),
        ("deletions topic deleted and created again", data.get("topic_recreations", "-")),
        ("Redis restarted from an older snapshot (AOF off)", data.get("redis_rollbacks", "-")),
    ]  # fmt: skip
    stream = [
        ("events in the input topics", data["events_in_topics"]),
        ("deletion requests (distinct) / messages", f"{data['deletion_requests']} / "
         f"{data['deletion_messages']}"),
        ("interaction messages", data["interaction_messages"]),
        ("malformed messages tried", data["malformed"]),
        ("poison messages (valid weights whose sum is beyond float32)",
         data.get("poison_messages", "-")),
        ("receipts / of them re-sent / re-applied after the state lost them",
         f"{data['receipts']} / {data['receipts_resent']} / {data.get('receipts_reapplied', '-')}"),
        ("receipts the broker lost after acknowledging them, re-sent from the audit trail",
         data.get("receipts_only_resent", "-")),
        ("deletions acknowledged in the 10 s after the garbage burst",
         data.get("deletions_acknowledged_during_surge", "-")),
        ("dead letters", data["dead_letters"]),
        ("acknowledged by the broker, then missing from its log",
         data["broker_dropped_acknowledged"]),
        ("interactions the broker lost after they were read (applied, then gone or re-sent)",
         data.get("broker_lost_after_read", "-")),
    ]  # fmt: skip
    promises = [
        ("requests lost (no receipt)", data["requests_lost"]),
        ("applied twice", data["applied_twice"]),
        ("acknowledged but nothing removed (receipts that understate)",
         data.get("acknowledged_not_removed", 0)),
        ("receipts that overstate (a pair said removed, still stored)",
         data.get("receipts_overstate", "-")),
        ("receipts for no request / audit trail wrong",
         f"{data['receipts_wrong']} / {data['audit_wrong']}"),
        ("deleted pairs still stored", data["deleted_pairs_present"]),
        ("interactions not counted exactly once", data["interactions_miscounted"]),
        ("user and item copies disagree", data["directions_disagree"]),
        ("stored count wrong", data["count_wrong"]),
        ("malformed messages not dead-lettered", data["malformed_not_dead_lettered"]),
        ("poison not dead-lettered as unprocessable / stored",
         f"{data.get('poison_not_dead_lettered', '-')} / {data.get('poison_stored', '-')}"),
        ("partitions not fully consumed", data["partitions_behind"]),
    ]  # fmt: skip
    return "\n\n".join(
        [
            _table(("fault", "count"), [(a, str(b)) for a, b in faults]),
            _table(("stream", "count"), [(a, str(b)) for a, b in stream]),
            _table(("checked from the data", "found"), [(a, str(b)) for a, b in promises]),
            f"Wall time of the run: {data['seconds']} s.",
        ]
    )


def pipeline_latency(data: dict[str, Any]) -> str:
    def ms(p: dict, key: str) -> str:
        values = p[key]
        return " / ".join(f"{values[q]:.1f}" for q in ("p50", "p90", "p99")) if values else "-"

    rows = []
    for variant, result in data["variants"].items():
        for p in result["phases"]:
            stages = p["stage_ms"]
            rows.append((
                variant, p["phase"], f"{p['deletions_per_s']:.0f} + {p['interactions_per_s']:.0f}",
                f"{p['seconds']:.0f}", f"{p['receipts']}", ms(p, "forget_latency_ms"),
                ms(p, "durable_latency_ms"), f"{p['backlog_max']}",
                f"{p['events_per_batch']:.1f}", f"{p['slices']:.0f}",
                " / ".join(f"{stages.get(s, 0):.1f}" for s in ("parse", "apply", "acknowledge")),
                " / ".join(f"{stages.get(s, 0):.1f}" for s in ("read", "solve", "write")),
            ))  # fmt: skip
    text = "" if not rows else _table(
        ("variant", "phase", "deletions/s + interactions/s", "s", "receipts",
         "forget latency p50 / p90 / p99 (ms)", "durable p50 / p90 / p99 (ms)", "backlog max",
         "events/batch", "slices", "stage mean ms: parse / apply / acknowledge",
         "engine mean ms: read / solve / write"),
        rows,
    )  # fmt: skip
    published = [
        f"{p['phase']} {p['factors_published']:,.0f} rows in {p['factors_publish_s']:.1f} s"
        for result in data["variants"].values() for p in result["phases"]
        if p.get("factors_published")
    ]  # fmt: skip
    if published:
        text += ("\n\nRows published to the factors topic, and the loop's time reading and "
                 "producing them: " + "; ".join(published) + ".")  # fmt: skip
    burst = data["variants"].get("consolidating", {}).get("burst")
    if burst:
        settled = burst["settled_after_seconds"]
        improvement = burst["last_sweep_improvement"]
        rate = burst["receipts"] / max(burst["all_answered_seconds"], 1e-9)
        text += (
            ("\n\n" if text else "")
            + f"Burst of {burst['deletions']:,} deletions: all {burst['receipts']:,} receipts "
            f"in {burst['all_answered_seconds']:.1f} s ({rate:,.0f} deletions/s); at rest "
            + (f"after {settled:.0f} s" if settled is not None else "**not within the wait**")
            + f", {burst['sweeps_to_settle'] or 0:.0f} sweeps "
            f"({burst['slices_to_settle'] or 0:.0f} slices) after the burst began"
            + (f", last sweep's decrease {improvement:.2e}" if improvement is not None else "")
            + ". "
            f"Then idle for {burst['idle_seconds']:.0f} s: append-only file growth "
            f"{burst['idle_aof_bytes_per_minute']:.0f} B/min, write commands "
            f"{burst['idle_write_commands_per_minute']:.0f}/min, bytes received by Redis "
            f"{burst['idle_bytes_received_per_minute']:.0f} B/min (reads and health checks)."
        )
    memory = []
    for variant, result in data["variants"].items():
        for when in ("redis_loaded", "redis_after_sustained"):
            m = result.get(when)
            if m:
                audit = m["bytes"].get("audit trail", 0)
                memory.append((
                    variant, when.removeprefix("redis_").replace("_", " "),
                    f"{m['interactions']:,}", f"{m['model_bytes_per_interaction']:.1f}",
                    f"{audit / max(m['interactions'], 1):.1f}",
                    f"{m['bytes'].get('change log', 0) / 2**20:.2f}",
                ))  # fmt: skip
    text += "\n\n" + _table(
        ("variant", "when", "stored interactions", "model B / interaction",
         "audit trail B / interaction", "change log MiB"),
        memory,
    )  # fmt: skip
    shape = data["shape"]
    text += (
        f"\n\nData: {data['data']} ({shape['users']:,} users, {shape['items']:,} items, "
        f"{shape['interactions']:,} interactions); broker {data['broker']}; producer linger "
        f"{data['producer_linger_ms']} ms.\n\n" + _machine(data)
    )
    return text


def scaling(data: dict[str, Any]) -> str:
    summary = data["summary"]
    if not summary["ratios"] and len(summary) == 1:  # a rebalance-only run
        return _rebalance(data).strip() + "\n\n" + _machine(data)
    rows = []
    for label, figures in summary.items():
        if label == "ratios":
            continue
        runs = [r for r in data["runs"] if r["config"] == label]
        spent = [sum(i.get("apply", 0.0) for i in r["time_s"]) for r in runs if "time_s" in r]
        rows.append((
            label, f"{figures['runs']}", f"{figures['events_per_s_median']:.0f}",
            f"{figures['deletions_per_s_median']:.0f}",
            ", ".join(f"{r['events_per_s']:.0f}" for r in runs),
            f"{figures['peak_rss_mib_per_instance_max']:.0f}",
            f"{sorted(spent)[len(spent) // 2]:.1f}" if spent else "-",
        ))  # fmt: skip
    text = _table(
        ("instances x CPU quota each", "runs", "events/s (median)", "deletions/s (median)",
         "events/s per run", "peak RSS per instance (MiB)",
         "write path s, all instances (median)"),
        rows,
    )  # fmt: skip
    ratios = "; ".join(f"{name}: **{value:.2f}x**" for name, value in summary["ratios"].items())
    shape = data["shape"]
    text += (
        f"\n\nRatios of medians: {ratios}. A burst of {data['burst']:,} pair deletions and "
        f"{data['burst']:,} interactions per run, {data['partitions']} partitions per topic, "
        f"broker {data['broker']}; data {data['data']} ({shape['users']:,} users, "
        f"{shape['items']:,} items, {shape['interactions']:,} interactions, k = "
        f"{data['params']['factors']})."
    )
    return text + _rebalance(data) + "\n\n" + _machine(data)


def offline_forget(data: dict[str, Any]) -> str:
    rows = []
    for case in data["cases"]:
        m, summary = case["summary"]["medians_s"], case["summary"]
        retrained = case["retrained"]
        scores = [c["deleted_mean_score"] for c in retrained]

        def verdict(checks: dict[str, bool]) -> str:
            failed = [k for k, v in checks.items() if not v]
            return "pass" if not failed else "**fail**: " + ", ".join(failed)

        rows.append((
            case["data"], f"{case['fraction']:.1%} ({case['removed']:,} pairs)",
            f"{m['forget']:.2f} / {m['forget_tracked']:.2f} / {m['forget_lists']:.2f}",
            f"{m['implicit_retrain']:.2f}",
            f"**{summary['forget_over_implicit']:.2f}x** / "
            f"{summary['forget_tracked_over_implicit']:.2f}x / "
            f"{summary['forget_lists_over_implicit']:.2f}x",
            f"{case['sweeps'][-1]} / {case['lists_sweeps']}",
            f"{case['unlearned']['deleted_mean_score']:.4f} / "
            f"{case['lists_deleted_mean_score']:.4f} ({min(scores):.4f} to {max(scores):.4f})",
            f"{verdict(case['checks'])} / {verdict(case['lists_checks'])}",
        ))  # fmt: skip
    parts = [
        f"{case['data']} {case['fraction']:.1%}: update {case['apply_seconds']:.2f} s, touched "
        f"{case['touched_seconds']:.2f} s, sweeps "
        + ", ".join(f"{x:.2f}" for x in case["sweep_seconds"]) + " s"
        for case in data["cases"] if "sweep_seconds" in case
    ]  # fmt: skip
    table = _table(
        ("data", "deleted", "forget s: defaults / --track-loss / list rule", "implicit 15 it s",
         "forget / implicit", "sweeps: defaults / list rule",
         "deleted pairs' mean score (retrains)", "retraining checks: defaults / list rule"),
        rows,
    )  # fmt: skip
    where = (
        ("\n\nWhere the defaults' time goes (last run): " + "; ".join(parts) + ".") if parts else ""
    )
    return table + where + "\n\n" + _machine(data)


def offline_command(data: dict[str, Any]) -> str:
    rows = []
    for case in data["cases"]:
        summary = case["summary"]
        m, stages = summary["medians_s"], summary["stage_medians_s"]
        failed = [k for k, v in case["checks"].items() if not v]
        before = f"{m['command_before']:.2f}" if "command_before" in m else "-"
        rows.append((
            case["data"], f"{case['fraction']:.0%} ({case['deleted_pairs']:,} pairs)",
            before, f"**{m['command']:.2f}**",
            " / ".join(f"{stages[s]:.2f}" for s in ("read", "index", "forget", "write")),
            f"{m['implicit_fit']:.2f}", f"{m['retrain_command']:.2f}",
            f"**{summary['command_over_implicit_fit']:.2f}x** / "
            f"{summary['command_over_retrain_command']:.2f}x",
            "pass" if not failed else "**fail**: " + ", ".join(failed),
        ))  # fmt: skip
    table = _table(
        ("data", "deleted", "command s, before", "command s, now",
         "its stages s: read / index / forget / write", "implicit fit s (in memory)",
         "retrain command s (read + fit)", "command / fit, / retrain command",
         "retraining checks"),
        rows,
    )  # fmt: skip
    return table + "\n\n" + _machine(data)


def profile_breakdown(data: dict[str, Any]) -> str:
    stages = data["stages"]
    rows = [
        (stage, f"{f['ms_per_event']:.3f}",
         "-" if f["share_of_busy"] is None else f"{f['share_of_busy']:.0%}", f"{f['samples']:,}")
        for stage, f in stages.items()
    ]  # fmt: skip
    total = sum(f["ms_per_event"] for s, f in stages.items() if s != "idle")
    return (
        _table(("stage (main thread)", "ms per event", "share", "samples"), rows)
        + f"\n\nTotal {total:.2f} ms of the main thread per event ({data['events']:,} events, "
        f"py-spy at {data['rate_hz']:.0f} Hz, profile `{data['profile']}`).\n\n" + _machine(data)
    )


def _rebalance(data: dict[str, Any]) -> str:
    rebalance = data.get("rebalance")
    if not rebalance:
        return ""
    runs = rebalance.get("runs", [rebalance])
    each = ", ".join(
        f"{r['join_longest_gap_s']:.1f} / {r['leave_longest_gap_s']:.1f}" for r in runs
    )
    return (
        f"\n\nRebalance on {data['broker']} (median of {len(runs)}; join / leave per run: "
        f"{each} s): {rebalance['deletions_per_s']:.0f} deletions/s + "
        f"{rebalance['interactions_per_s']:.0f} interactions/s into one instance at "
        f"{rebalance['quota_percent']} % of a core for {rebalance['seconds']:.0f} s, a second "
        f"joining at a third and leaving (SIGTERM) at two thirds: the longest wait for a "
        f"receipt was **{rebalance['join_longest_gap_s']:.1f} s** after the join and "
        f"**{rebalance['leave_longest_gap_s']:.1f} s** after the leave, against "
        f"{rebalance['steady_longest_gap_s']:.2f} s while steady before "
        f"({rebalance['receipts']:,} receipts in all)."
    )


def swap(data: dict[str, Any]) -> str:
    s, rates = data["swap"], data["rates"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    rows = [
        (name, str(w["receipts"]), ms(w.get("p50_ms")), ms(w.get("p99_ms")), ms(w["max_ms"]))
        for name, w in data["windows"].items()
    ]
    table = _table(("receipts arriving", "receipts", "p50 ms", "p99 ms", "max ms"), rows)
    shape = data["shape"]
    text = (
        f"Swap of a model retrained from the same snapshot (another seed) into the running "
        f"service ({shape['users']:,} users, {shape['items']:,} items, "
        f"{shape['interactions']:,} interactions, k = {data['params']['factors']}), under "
        f"{rates['deletions_per_s']:.0f} deletions/s + {rates['interactions_per_s']:.0f} "
        f"interactions/s: prepare {s['prepare_seconds']:.1f} s, stage "
        f"{s['stage_seconds']:.1f} s, catch-up {s['catch_up_seconds']:.1f} s "
        f"({s['reconcile_rounds']} reconcile rounds in all), service's writes held "
        f"{s['held_seconds']:.2f} s; {s['total_seconds']:.1f} s in all. Dropped as already "
        f"forgotten: {s['dropped_as_forgotten']:,}; carried over from the live model: "
        f"{s['carried_over']:,}. Deletions sent {data['deletions_sent']:,}, receipts "
        f"{data['receipts']:,}, deletions left unanswered "
        f"{len(data.get('unanswered_sent_at_s', []))}; deleted pairs stored after the swap: "
        f"{data['deleted_pairs_stored_after']}."
    )
    return table + "\n\n" + text + "\n\n" + _machine(data)


def rest(data: dict[str, Any]) -> str:
    """The service at rest: idle, after a few events, after a burst; the hardest case."""
    out = []
    idle_rows = []
    for key, name in (("ml100k_train", "ML-100K, `unlearn train`"),
                      ("ml100k_implicit", "ML-100K, `implicit` imported"),
                      ("ml1m_train", "ML-1M, `unlearn train`")):  # fmt: skip
        case = data.get(key)
        if not case or "idle" not in case:
            continue
        i = case["idle"]
        idle_rows.append((
            name, f"{i['seconds']:.0f}", f"{i['sweeps'] + i['slices']:.0f}",
            f"{case['load_records']:,} ({case['rows']:,} rows)", f"{i['factor_records']:,}",
            f"{i['redis_input_mb_per_min']:.3f}", f"{i['redis_commands_per_s']:.1f}",
            f"{i['cpu_share_of_a_core']:.1%}", _share(i.get("bare_consumer_cpu_share")),
        ))  # fmt: skip
    if idle_rows:
        out.append(_table(
            ("model", "idle s", "sweeps + slices", "load's own records", "factor records after",
             "Redis input MB/min", "Redis commands/s", "service CPU (share of a core)",
             "a bare librdkafka consumer alone"),
            idle_rows,
        ))  # fmt: skip
    events = (data.get("ml100k_train") or {}).get("events")
    if events:
        e = events
        out.append(_table(
            ("20 deletions + 40 interactions (ML-100K)", "figure"),
            [
                ("receipts in", f"{e['receipts_seconds']:.2f} s"),
                ("at rest (cycle ended, consolidation settled)",
                 f"**{e['rest_seconds']:.1f} s**"),
                ("Redis input from the events until rest",
                 f"**{e['redis_input_mb_until_rest']:.2f} MB**"),
                ("Redis input after rest",
                 f"**{e['redis_input_mb_per_min_after_rest']:.3f} MB/min** "
                 f"({e['redis_commands_per_s_after_rest']:.1f} commands/s)"),
                ("rows moved more than the write tolerance", f"{e['rows_moved_over_tolerance']:,}"),
                ("factor records for them: total, most per row", f"{e['factor_records']:,}, "
                 f"**{e['factor_records_per_changed_row_max']}**"),
                ("records of rows that did not move", f"{e['records_of_rows_not_changed']:,}"),
                ("rows re-solved per deleted pair (reach)", f"{e['reach']:,.0f}"),
                ("service CPU until rest", f"{e['service_cpu_seconds_until_rest']:.1f} s"),
            ],
        ))  # fmt: skip
    burst = (data.get("ml1m_train") or {}).get("burst")
    if burst:
        b = burst
        out.append(_table(
            ("1,000 pair deletions at once (ML-1M)", "figure"),
            [
                ("receipts in", f"{b['receipts_seconds']:.1f} s"),
                ("at rest", f"**{b['rest_seconds']:.1f} s**"),
                ("rows re-solved per deleted pair (reach)",
                 f"**{b['rows_solved_per_deletion']:.1f}** ({b['rows_solved']:,.0f} re-solves, "
                 f"{b['rows_written']:,.0f} rows written)"),
                ("Redis input until rest", f"{b['redis_input_mb_until_rest']:.1f} MB"),
                ("service CPU until rest", f"{b['service_cpu_seconds_until_rest']:.1f} s"),
            ],
        ))  # fmt: skip
    hard = data.get("hardest")
    if hard:
        low, high = hard["retrain_range"]
        rows = [
            (f"retrain seed {n}", f"{r['deleted_mean_score']:.4f}", f"{r['attack_auc']:.4f}",
             "", "")
            for n, r in enumerate(hard["retrains"])
        ]  # fmt: skip
        for name in ("offline", "service"):
            c = hard[name]
            rows.append((
                f"{'`unlearn forget`' if name == 'offline' else 'the service, at rest'}",
                f"**{c['deleted_mean_score']:.4f}**", f"**{c['attack_auc']:.4f}**",
                ("within" if c["score_within"] else "**outside**") + f" [{low - 0.005:.4f}, "
                f"{high + 0.005:.4f}]",
                ("within" if c["attack_within"] else "**outside**") + " 0.01 of "
                f"{hard['retrain_attack_mean']:.4f}",
            ))  # fmt: skip
        out.append(_table(
            (f"5 % of ML-100K's training pairs ({hard['removed']:,}), k = 64, reg 0.01",
             "deleted pairs' mean score", "attack AUC (deleted vs held-out)",
             "score: retrains' range +- 0.005", "attack: retrains' mean +- 0.01"),
            rows,
        ))  # fmt: skip
        off, svc = hard["offline"], hard["service"]
        out.append(
            f"Offline: {off['sweeps']} sweeps, {off['seconds']:.2f} s. The service: "
            f"{svc['cycles']:.0f} cycle(s), {svc['rows_solved']:,.0f} rows re-solved, at rest "
            f"{svc['rest_seconds']:.1f} s after the deletions were sent."
        )
    return "\n\n".join(out) + "\n\nBroker: " + data.get("broker", "noida") + ". " + _machine(data)


def capacity(data: dict[str, Any]) -> str:
    """The plan's predictions beside what the capacity benchmark measured, per size."""
    mib = 1024**2
    figures = (
        ("events/s, 1 instance", "events_per_s_1", 1.0, "{:,.0f}"),
        ("events/s, 2 instances", "events_per_s_2", 1.0, "{:,.0f}"),
        ("peak RSS per instance MiB", "peak_rss_bytes", mib, "{:,.0f}"),
        ("Redis MiB (model loaded)", "redis_used_bytes", mib, "{:,.0f}"),
    )
    rows = []
    for size in data["sizes"]:
        shape, measured, predicted = size["shape"], size["measured"], size["predicted"]
        reads = shape["user_neighbours"] + shape["item_neighbours"]
        name = (
            f"{size['name']}: {shape['users']:,} x {shape['items']:,}, "
            f"{shape['interactions']:,} (an event reads {reads:,.0f} rows)"
        )
        for label, key, unit, form in figures:
            m, p = measured[key] / unit, predicted[key] / unit
            rows.append((name, label, form.format(m), form.format(p), f"{(p - m) / m:+.0%}"))
            name = ""
    c = data["coefficients"]
    lines = [
        _table(("size", "figure", "measured", "plan", "plan vs measured"), rows),
        "",
        "What `unlearn plan` says at larger sizes, for 1,000 deletions/s + 1,000 interactions/s "
        "(instances of one core):",
        "",
        _projections(),
        "",
        f"Coefficients fitted: {c['core_s_per_event'] * 1e3:.3f} ms + "
        f"{c['core_s_per_work'] * 1e6:.3f} us per row read of CPU an event; two instances keep "
        f"{c['efficiency']['2']:.2f} of twice one; "
        f"an instance {c['runtime_bytes'] / mib:,.0f} MiB + {c['rss_per_factor_byte']:.2f} x the "
        f"factor bytes; Redis {c['redis_bytes_per_interaction']:.1f} B an interaction, "
        f"{c['redis_bytes_per_row']:.0f} B a row + {c['redis_bytes_per_factor_byte']:.2f} x its "
        f"factor bytes, {c['redis_trail_bytes_per_deletion']:.0f} B of audit trail a deletion, "
        f"{c['redis_calls_per_event']:.1f} commands and "
        f"{c['redis_core_s_per_event'] * 1e6:.0f} us of its CPU an event.",
        "",
        _machine(data),
        "",
        "`unlearn plan --users 1000000 --items 20000 --interactions 50000000 "
        "--deletions-per-s 200 --interactions-per-s 800` prints:",
        "",
        "```",
        _plan_text(),
        "```",
    ]
    return "\n".join(lines)


def _plan_text() -> str:
    from consumer.cli.planning import render
    from consumer.planning.coefficients import read
    from consumer.planning.plan import Demand, plan
    from consumer.planning.shape import Shape

    shape, demand = Shape.typical(1_000_000, 20_000, 50_000_000), Demand(200, 800)
    return render(shape, demand, plan(shape, demand, read()))


PROJECTED = (
    ("MovieLens-20M's shape", 138_493, 26_744, 20_000_263),
    ("10M users", 10_000_000, 200_000, 100_000_000),
    ("100M users", 100_000_000, 1_000_000, 1_000_000_000),
)


def _projections() -> str:
    """The plan (the shipped coefficients, as `unlearn plan` computes it) at larger sizes."""
    from consumer.planning.coefficients import read
    from consumer.planning.plan import Demand, plan
    from consumer.planning.shape import Shape

    gib = 1024**3
    rows = []
    for name, users, items, interactions in PROJECTED:
        shape = Shape.typical(users, items, interactions)
        p = plan(shape, Demand(1000, 1000), read())
        rows.append((
            f"{name} ({users:,} x {items:,}, {interactions:,})",
            f"{shape.factor_bytes / gib:,.2f}",
            f"{p.core_s_per_event * 1e3:.2f}",
            str(p.instances),
            f"{p.memory_per_instance_bytes / gib:,.2f}",
            f"{p.memory_per_instance_bytes * p.instances / gib:,.1f}",
            f"{p.redis_memory_bytes / gib:,.1f}",
            f"{p.redis_cores:.2f}",
        ))  # fmt: skip
    header = ("model", "factors GiB", "CPU ms an event", "instances", "memory GiB an instance",
              "memory GiB, all instances", "Redis GiB", "Redis cores")  # fmt: skip
    return _table(header, rows)


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def forgetting_cycle(data: dict[str, Any]) -> str:
    rows = []
    for c in data["cases"]:
        quiet = c.get("quiet") or {}
        rows.append((
            c["model"], f"{c['deletions']:,}", f"{c['rounds']} ({c['ended_by']})",
            f"{c['reach']:,.1f}", f"{c['written']:,}", f"{c['cycle_seconds']:.2f}",
            f"{quiet['rounds']} ({quiet['ended_by']}), {quiet['overtime_solved']:,} rows, "
            f"{quiet['seconds']:.2f} s" if quiet else "",
            f"{c['touched_fit_max']:.1e}", f"{c['with_pair_back_min']:.1e}",
            f"**{c['separation']:,.0f}x**",
            _fits(c.get("loaded_fit_median")),
        ))  # fmt: skip
    return _table(
        ("model", "deleted pairs", "round pairs (ended by)", "rows re-solved per pair",
         "rows written", "cycle s",
         "then quiet: round pairs in all (ended by), rows re-solved in overtime, s",
         "at rest: touched rows' largest distance to their exact solve",
         "smallest distance to the solve with the pair back", "separation",
         "loaded model's rows from their exact solve (median: users / items)"),
        rows,
    ) + "\n\n" + _machine(data)  # fmt: skip


def quiet_takeup(data: dict[str, Any]) -> str:
    """The acceptance check's stream, batched four ways: before and after the take-up."""
    rows = []
    for c in data["cases"]:
        busy, quiet = c["busy"], c.get("quiet") or {}
        rows.append((
            f"{c['slices_between_batches']}", f"{busy['rounds']} ({busy['ended_by']})",
            f"{busy['recall_at_20']:.4f}", _passed(busy["checks"]),
            f"{quiet['rounds']} ({quiet['ended_by']})" if quiet else "(none)",
            f"**{quiet['recall_at_20']:.4f}**" if quiet else "", _passed(quiet.get("checks")),
            f"{quiet['seconds']:.1f}" if quiet else "",
        ))  # fmt: skip
    busy = [c["busy"]["recall_at_20"] for c in data["cases"]]
    quiet = [c["quiet"]["recall_at_20"] for c in data["cases"] if c.get("quiet")]
    retrained = data["retrained_recall_at_20"]
    return _table(
        ("slices between batches", "while events arrive: round pairs (ended by)",
         "recall@20", "retraining checks", "then quiet: round pairs in all (ended by)",
         "recall@20", "retraining checks", "take-up s"),
        rows,
    ) + (
        f"\n\nRecall@20 of the held-out pairs: the loaded model "
        f"{data['original_recall_at_20']:.4f}; "
        f"three retrains {min(retrained):.4f} to {max(retrained):.4f}, the check's lower bound "
        f"{data['bound']:.4f}. Spread over the four batchings: {min(busy):.4f} to "
        f"{max(busy):.4f} as the settle rule left it, {min(quiet, default=0):.4f} to "
        f"{max(quiet, default=0):.4f} after the take-up.\n\n"
    ) + _machine(data)  # fmt: skip


def _passed(checks: dict[str, bool] | None) -> str:
    if not checks:
        return ""
    failed = [name for name, ok in checks.items() if not ok]
    return "all met" if not failed else "not met: " + ", ".join(failed)


def _fits(fits: dict[str, float] | None) -> str:
    return "" if not fits else f"{fits['user']:.1e} / {fits['item']:.1e}"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _machine(data: dict[str, Any]) -> str:
    m = data["machine"]
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Python {m['python']}, "
        f"numpy {m['numpy']}, scipy {m['scipy']}, BLAS {', '.join(m['blas'])}. "
        f"Command: `{m['command']}`."
    )


SECTIONS: dict[str, tuple[Path, Callable[[dict[str, Any]], str]]] = {
    "core_speed": (DOC, core_speed),
    "forget_quality": (DOC, forget_quality),
    "redis_memory": (DOC, redis_memory),
    "e2e_load": (DOC, e2e_load),
    "e2e_load_20m": (DOC, e2e_load),
    "popular_item": (DOC, popular_item),
    "pipeline_latency": (DOC, pipeline_latency),
    "pipeline_latency_2000": (DOC, pipeline_latency),
    "pipeline_latency_onoff": (DOC, pipeline_latency),
    "pipeline_latency_factors": (DOC, pipeline_latency),
    "profile_engine": (DOC, profile_engine),
    "scaling": (DOC, scaling),
    "scaling_rebalance_noida": (DOC, scaling),
    "scaling_20m": (DOC, scaling),
    "scaling_profile": (DOC, scaling),
    "scaling_batches": (DOC, scaling),
    "pipeline_latency_29": (DOC, pipeline_latency),
    "pipeline_latency_factors29": (DOC, pipeline_latency),
    "pipeline_latency_burst29": (DOC, pipeline_latency),
    "pipeline_latency_low29": (DOC, pipeline_latency),
    "profile_breakdown": (DOC, profile_breakdown),
    "offline_forget": (DOC, offline_forget),
    "offline_command": (DOC, offline_command),
    "rest": (DOC, rest),
    "rest_tansu": (DOC, rest),
    "rest_quiet": (DOC, rest),
    "forgetting_cycle": (DOC, forgetting_cycle),
    "quiet_takeup": (DOC, quiet_takeup),
    "swap": (DOC, swap),
    "pipeline_latency_factors29b": (DOC, pipeline_latency),
    "capacity": (CAPACITY, capacity),
    "scaling_before32": (DOC, scaling),
    "scaling_before33": (DOC, scaling),
    "scaling_isin33": (DOC, scaling),
    "fault_campaign": (RELIABILITY, fault_campaign),
    "fault_campaign_soak": (RELIABILITY, fault_campaign),
}


def main() -> None:
    texts: dict[Path, str] = {}
    for name, (doc, render) in SECTIONS.items():
        results = RESULTS / f"{name}.json"
        if not results.is_file():
            continue
        text = texts.setdefault(doc, doc.read_text())
        block = render(json.loads(results.read_text()))
        pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.DOTALL)
        texts[doc], count = pattern.subn(
            lambda match, b=block: match.group(1) + b + "\n" + match.group(2), text
        )
        if count != 1:
            raise SystemExit(f"{doc} has no '<!-- {name}:begin/end -->' block")
    for doc, text in texts.items():
        doc.write_text(text)
        print(f"rewrote {doc}")


if __name__ == "__main__":
    main()
