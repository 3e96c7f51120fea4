"""consumer/cli/__init__.py: the table of commands, and that a command imports only its
own module (the offline commands start without the service's modules)."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

from consumer.cli import COMMANDS, build_parser


def test_the_table_names_every_command_each_module_registers():
    registered: dict[str, str] = {}
    for group in sorted(set(COMMANDS.values())):
        parser = argparse.ArgumentParser()
        commands = parser.add_subparsers()
        importlib.import_module(f"consumer.cli.{group}").register(commands)
        registered.update(dict.fromkeys(commands.choices, group))
    assert registered == COMMANDS
    assert list(build_parser([])._subparsers._group_actions[0].choices) == list(COMMANDS)


def test_an_offline_command_does_not_import_the_service():
    code = (
        "import sys; from consumer.cli import build_parser; build_parser(['forget']); "
        "print(sorted(m for m in sys.modules "
        "if m.startswith('consumer.') or m in ('scipy.stats', 'redis')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "consumer.cli.offline" in loaded
    for heavy in ("consumer.application", "consumer.cli.service", "scipy.stats", "redis"):
        assert f"'{heavy}'" not in loaded, heavy
