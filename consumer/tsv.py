"""Interaction and deletion files: tab-separated, no header, validated line by line.

interactions: user<TAB>item<TAB>weight[<TAB>timestamp]   (MovieLens u.data is one)
deletions:    user<TAB>item   one pair
              user<TAB>*      the user's whole history
              *<TAB>item      the item's whole history

Every problem is reported as FILE:LINE with what is wrong; nothing is half-read.
A file is read by Arrow's CSV reader (C++, on every core: a million lines in about 0.1 s)
and its values checked in bulk. A file Arrow does not take as it is (a line with another
number of fields, a value that is not a number, invalid UTF-8, an empty line, a carriage
return, a byte-order mark) is read again by a reader in Python that takes what it can and
names the first line it cannot: both give the same rows for every file they both read.
Ids are kept as the distinct ids and each line's position among them.
"""

from __future__ import annotations

import codecs
import gc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from consumer.errors import InputError
from unlearn_core.ids import IdIndex
from unlearn_core.params import Kind

if TYPE_CHECKING:
    import pyarrow as pa

MAX_ID_BYTES = 256  # the same limit the streaming service applies to event ids
WILDCARD = "*"


@dataclass(frozen=True)
class IdColumn:
    """One id per line, as the distinct ids (in order of first appearance) and each line's
    position among them: a million lines of six thousand users hold six thousand strings."""

    distinct: list[str]
    codes: np.ndarray  # int64, one per line

    @classmethod
    def of(cls, values: list[str]) -> IdColumn:
        distinct = list(dict.fromkeys(values))
        position = {value: n for n, value in enumerate(distinct)}
        codes = np.fromiter(map(position.__getitem__, values), dtype=np.int64, count=len(values))
        return cls(distinct, codes)

    def __len__(self) -> int:
        return len(self.codes)

    def tolist(self) -> list[str]:
        return [self.distinct[code] for code in self.codes.tolist()]

    def indices(self, index: IdIndex) -> np.ndarray:
        """Each line's row in `index`, appending the ids it does not hold yet (in order of
        first appearance, as IdIndex.add of the whole column would)."""
        return index.add(self.distinct)[self.codes]

    def first_line_of(self, value: str) -> int:
        return int(np.argmax(self.codes == self.distinct.index(value))) + 1


@dataclass(frozen=True)
class InteractionRows:
    """The columns of an interactions file, one entry per line, in file order."""

    user_column: IdColumn
    item_column: IdColumn
    weights: np.ndarray  # float64
    timestamps: np.ndarray  # float64, NaN where the line has none

    @property
    def users(self) -> list[str]:
        return self.user_column.tolist()

    @property
    def items(self) -> list[str]:
        return self.item_column.tolist()


@dataclass(frozen=True)
class DeletionRows:
    """The deletions of a file, split by scope, each with the line it came from."""

    pair_users: list[str]
    pair_items: list[str]
    users: list[str]  # whole-history deletions of users
    items: list[str]  # whole-history deletions of items
    lines: int

    @property
    def total(self) -> int:
        return len(self.pair_users) + len(self.users) + len(self.items)


def read_interactions(path: str | Path, kind: Kind) -> InteractionRows:
    raw = _read_bytes(path)
    fast = _read_with_arrow(raw)
    if fast is not None:
        users, items, weights, timestamps = fast
    else:
        fields = _read_fields(path, raw, {3, 4}, "user<TAB>item<TAB>weight[<TAB>timestamp]")
        users, items = IdColumn.of(fields[0]), IdColumn.of(fields[1])
    for column, name in ((users, "user"), (items, "item")):
        _check_id_column(path, column, name)
    if fast is None:
        weights = _parse_floats(path, fields[2], "weight")
        timestamps = _parse_floats(path, fields[3], "timestamp", missing_ok=True)
    bad = ~np.isfinite(weights)
    if kind == "implicit":
        _fail_first(path, bad | (weights < 0), "weight must be a finite number >= 0")
    else:
        _fail_first(path, bad | (weights == 0), "rating must be a finite non-zero number")
    _fail_first(path, np.isinf(timestamps), "timestamp must be a finite number")
    return InteractionRows(users, items, weights, timestamps)


def read_deletions(path: str | Path) -> DeletionRows:
    raw = _read_bytes(path)
    fields = _read_fields(path, raw, {2}, "user<TAB>item, user<TAB>*, or *<TAB>item")
    users = np.asarray(fields[0], dtype=object)
    items = np.asarray(fields[1], dtype=object)
    user_wild = users == WILDCARD
    item_wild = items == WILDCARD
    _fail_first(path, user_wild & item_wild, "'*<TAB>*' would delete everything; not allowed")
    _check_ids(path, fields[0], "user", allow_wildcard=True)
    _check_ids(path, fields[1], "item", allow_wildcard=True)
    pairs = ~user_wild & ~item_wild
    return DeletionRows(
        pair_users=users[pairs].tolist(),
        pair_items=items[pairs].tolist(),
        users=users[item_wild].tolist(),
        items=items[user_wild].tolist(),
        lines=len(users),
    )


def _read_bytes(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from exc


def _read_with_arrow(raw: bytes) -> tuple[IdColumn, IdColumn, np.ndarray, np.ndarray] | None:
    """users, items, weights and timestamps (NaN where a line has none) by Arrow's reader,
    or None: the file is left to `_read_fields`, which reads every line Arrow would and
    names the first one that cannot be read. Arrow ends a line at a lone carriage return
    and drops a byte-order mark, the Python reader does neither: those go to it."""
    if not raw or b"\r" in raw or raw.startswith(codecs.BOM_UTF8):
        return None
    import pyarrow as pa
    from pyarrow import csv

    types = {"f0": pa.string(), "f1": pa.string(), "f2": pa.float64(), "f3": pa.float64()}
    try:
        table = csv.read_csv(
            pa.BufferReader(raw),
            read_options=csv.ReadOptions(autogenerate_column_names=True),
            parse_options=csv.ParseOptions(
                delimiter="\t", quote_char=False, escape_char=False, ignore_empty_lines=False
            ),
            convert_options=csv.ConvertOptions(
                column_types=types, null_values=[], strings_can_be_null=False
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_columns not in (3, 4):
        return None
    users, items = (_id_column(table.column(n)) for n in (0, 1))
    weights = table.column(2).to_numpy().astype(np.float64, copy=False)
    if table.num_columns == 4:
        timestamps = table.column(3).to_numpy().astype(np.float64, copy=False)
    else:
        timestamps = np.full(table.num_rows, np.nan)
    return users, items, weights, timestamps


def _id_column(column: pa.ChunkedArray) -> IdColumn:
    # Arrow numbers the distinct values in order of first appearance, as IdColumn.of does.
    encoded = column.combine_chunks().dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return IdColumn(encoded.dictionary.to_pylist(), codes)


def _read_fields(path: str | Path, raw: bytes, counts: set[int], shape: str) -> list[list[str]]:
    """The file's columns (a missing optional last column is filled with '')."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, "not valid UTF-8", raw.count(b"\n", 0, exc.start) + 1) from exc
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        raw = text.encode("utf-8")
    if text.endswith("\n"):
        text, raw = text[:-1], raw[:-1]  # the newline that ends the last line
    if not text:
        return [[] for _ in range(max(counts))]
    widths = _fields_per_line(raw)
    bad = ~np.isin(widths, sorted(counts))
    if bad.any():
        line = int(np.argmax(bad))
        empty = widths[line] == 1 and _line_is_empty(raw, line)
        got = "an empty line" if empty else f"{widths[line]} fields"
        raise InputError(path, f"expected {shape}, got {got}", line + 1)
    width = max(counts)
    with _no_gc():  # millions of small strings: the cyclic collector only slows this down
        if widths.min() == widths.max():
            # Every line has the same number of fields: one split of the whole text.
            present = int(widths[0])
            flat = text.replace("\n", "\t").split("\t")
            columns = [flat[j::present] for j in range(present)]
            return columns + [[""] * len(widths)] * (width - present)
        # Ragged (an optional last column on some lines): split line by line.
        rows = [line.split("\t") for line in text.split("\n")]
        return [[row[j] if len(row) > j else "" for row in rows] for j in range(width)]


def _fields_per_line(raw: bytes) -> np.ndarray:
    """Tabs + 1 on every line, counted on the bytes (tab and newline are ASCII in UTF-8)."""
    buffer = np.frombuffer(raw, dtype=np.uint8)
    newlines = np.flatnonzero(buffer == ord("\n"))
    tabs = np.flatnonzero(buffer == ord("\t"))
    line_of_tab = np.searchsorted(newlines, tabs)
    return np.bincount(line_of_tab, minlength=len(newlines) + 1) + 1


def _line_is_empty(raw: bytes, line: int) -> bool:
    return raw.split(b"\n")[line] == b""


def _check_id_column(path: str | Path, column: IdColumn, name: str) -> None:
    """The checks of _check_ids on the distinct ids; a failure names its first line."""
    try:
        _check_ids(path, column.distinct, name, allow_wildcard=False)
    except InputError as exc:
        bad = column.distinct[exc.line - 1] if exc.line is not None else None
        if bad is None:
            raise
        raise InputError(path, exc.message, column.first_line_of(bad)) from None


def _check_ids(path: str | Path, ids: list[str], name: str, allow_wildcard: bool) -> None:
    # `in`, `max(map(...))` and list.index run in C: a million ids take milliseconds.
    if "" in ids:
        raise InputError(path, f"{name} id is empty", ids.index("") + 1)
    if not allow_wildcard and WILDCARD in ids:
        raise InputError(path, f"{name} id '*' is reserved for deletions", ids.index(WILDCARD) + 1)
    # A string of at most MAX_ID_BYTES / 4 characters always fits in MAX_ID_BYTES bytes.
    if ids and max(map(len, ids)) > MAX_ID_BYTES // 4:
        for n, value in enumerate(ids):
            if len(value.encode("utf-8")) > MAX_ID_BYTES:
                raise InputError(path, f"{name} id is longer than {MAX_ID_BYTES} bytes", n + 1)


def _parse_floats(
    path: str | Path, column: list[str], name: str, missing_ok: bool = False
) -> np.ndarray:
    if missing_ok and "" in column:
        column = [value or "nan" for value in column]
    try:
        return np.fromiter(map(float, column), dtype=np.float64, count=len(column))
    except ValueError:
        pass
    for n, value in enumerate(column):  # slow path, only to name the line
        try:
            float(value)
        except ValueError:
            raise InputError(path, f"{name} {value!r} is not a number", n + 1) from None
    raise AssertionError("unreachable: a value failed in bulk but parsed alone")


def _fail_first(path: str | Path, bad: np.ndarray, message: str) -> None:
    if np.any(bad):
        raise InputError(path, message, int(np.argmax(bad)) + 1)


@contextmanager
def _no_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def write_interactions(path: str | Path, rows: Iterable[tuple[str, str, float, int]]) -> int:
    """user<TAB>item<TAB>weight<TAB>timestamp lines (the format read_interactions reads),
    written to a temporary file and renamed: a reader never sees half a file. Returns
    the number of lines."""
    target = Path(path)
    temporary = target.with_name(target.name + ".tmp")
    count = 0
    with temporary.open("w", encoding="utf-8") as out:
        for user, item, weight, ts in rows:
            out.write(f"{user}\t{item}\t{weight!r}\t{ts}\n")
            count += 1
    temporary.replace(target)
    return count
