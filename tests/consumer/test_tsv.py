"""The interactions reader: Arrow's reader and the Python reader give the same rows, and
every file Arrow does not take is read (or refused, naming its line) by the Python one."""

from __future__ import annotations

import numpy as np
import pytest

from consumer import tsv
from consumer.errors import InputError
from consumer.tsv import IdColumn, read_interactions
from unlearn_core.ids import IdIndex


def _lines(rng: np.random.Generator, n: int, with_time: bool) -> list[str]:
    users = [f"user {k}" for k in rng.permutation(60)]  # spaces and quotes are plain text
    items = [f'"item"-{k}' for k in rng.permutation(40)]
    out = []
    for _ in range(n):
        fields = [users[rng.integers(60)], items[rng.integers(40)], f"{rng.uniform(0, 5):.6g}"]
        if with_time:
            fields.append(str(int(rng.integers(10**9, 2 * 10**9))))
        out.append("\t".join(fields))
    return out


def _both(path, kind="implicit"):
    fast = read_interactions(path, kind)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tsv, "_read_with_arrow", lambda raw: None)
        slow = read_interactions(path, kind)
    return fast, slow


@pytest.mark.parametrize("with_time", [False, True])
def test_arrow_and_python_readers_give_the_same_rows(tmp_path, with_time):
    path = tmp_path / "interactions.tsv"
    path.write_text("\n".join(_lines(np.random.default_rng(3), 5_000, with_time)) + "\n")
    assert tsv._read_with_arrow(path.read_bytes()) is not None  # the fast path is taken
    fast, slow = _both(path)
    assert fast.users == slow.users and fast.items == slow.items
    assert fast.user_column.distinct == slow.user_column.distinct  # first-appearance order
    np.testing.assert_array_equal(fast.weights, slow.weights)
    np.testing.assert_array_equal(fast.timestamps, slow.timestamps)
    index = IdIndex(["user 7"])
    assert fast.user_column.indices(index).tolist() == IdIndex(["user 7"]).add(fast.users).tolist()


@pytest.mark.parametrize(
    ("content", "arrow_takes_it"),
    [
        ("a\tb\t1\t100\nc\td\t2\n", False),  # the optional timestamp on one line only
        ("a\tb\t1\r\nc\td\t2\r\n", False),  # Windows line ends
        ("\ufeffa\tb\t1\n", False),  # a byte-order mark: part of the first id, as always
        ("a\tb\t1_000\n", False),  # Python reads digit groups
        ("a\tb\t 1\n", True),  # a space before the number: both read 1
    ],
)
def test_files_arrow_does_not_take_are_read_by_the_python_reader(tmp_path, content, arrow_takes_it):
    path = tmp_path / "interactions.tsv"
    path.write_bytes(content.encode("utf-8"))
    assert (tsv._read_with_arrow(path.read_bytes()) is not None) == arrow_takes_it
    fast, slow = _both(path)
    assert fast.users == slow.users and fast.users[0] == content.split("\t")[0]
    np.testing.assert_array_equal(fast.weights, slow.weights)


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("a\tb\t1\nc\t\t1\nd\te\t1\nf\t\t2\n", 2, "item id is empty"),
        ("a\tb\t1\nc\td\t1\n*\tb\t1\n", 3, "user id '*' is reserved"),
        ("a\tb\t1\nc\t" + "x" * 257 + "\t1\n", 2, "longer than 256 bytes"),
        ("a\tb\t1\nc\td\t-1\n", 2, "weight must be a finite number >= 0"),
        ("a\tb\t1\nc\td\tnan\n", 2, "weight must be a finite number >= 0"),
        ("a\tb\t1\t5\nc\td\t1\tinf\n", 2, "timestamp must be a finite number"),
        ("a\tb\t1\nc\td\tone\n", 2, "weight 'one' is not a number"),
        ("a\tb\t1\n\nc\td\t1\n", 2, "got an empty line"),
        ("a\tb\t1\nc\xff\td\t1\n", 2, "not valid UTF-8"),
    ],
)
def test_a_bad_line_is_named_whichever_reader_meets_it(tmp_path, content, line, message):
    path = tmp_path / "interactions.tsv"
    path.write_bytes(content.encode("latin-1"))  # "\xff": one byte, not valid UTF-8
    with pytest.raises(InputError) as caught:
        read_interactions(path, "implicit")
    assert caught.value.line == line and message in caught.value.message


def test_an_id_column_keeps_each_line_and_its_first_appearance():
    column = IdColumn.of(["b", "a", "b", "c", "a"])
    assert column.distinct == ["b", "a", "c"] and column.tolist() == ["b", "a", "b", "c", "a"]
    assert column.first_line_of("c") == 4 and len(column) == 5
    index = IdIndex(["c"])
    assert column.indices(index).tolist() == [1, 2, 1, 0, 2] and index.ids == ["c", "b", "a"]
