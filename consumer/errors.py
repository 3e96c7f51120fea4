"""Errors more than one layer raises or handles: the command line turns `InputError` and
`StateError` into a clear message and exit status 2; `StateRolledBack` sends the service
back to what Redis holds."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad user input: names the file and, where there is one, the line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class StateError(RuntimeError):
    """The namespace is missing, or holds something this version cannot read."""


class StateRolledBack(Exception):
    """Redis holds older offsets than this engine committed: the state was restored from
    an older snapshot (or a failover lost writes). The lost events must be replayed."""

    def __init__(self, behind: dict[str, tuple[int, int]]) -> None:
        # partition key (or "shard N") -> (what the state holds, what this engine committed)
        super().__init__(
            ", ".join(f"{k}: state at {a}, committed {c}" for k, (a, c) in behind.items())
        )
        self.behind = behind
