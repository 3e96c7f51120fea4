"""The factors topic's record: what a follower parses gives back the float32 factor
exactly, in plain JSON any reader takes."""

from __future__ import annotations

import json

import numpy as np

from consumer.serving.records import FactorRecord, parse_key, tombstone_source

EXTREMES = [1e-45, -1e-45, 3.4028235e38, -0.0, 0.0, 1.1754944e-38, 0.1, 1 / 3, 7e-8, 123456.79]


def _record(factor: np.ndarray) -> FactorRecord:
    return FactorRecord("ns", "item", "i42", factor, 3, 17)


def test_a_record_reads_back_to_the_same_float32_values():
    rng = np.random.default_rng(7)
    factors = [np.asarray(EXTREMES, dtype=np.float32)]
    factors += [(rng.standard_normal(64) * 10.0 ** rng.integers(-6, 3)).astype(np.float32)
                for _ in range(2_000)]  # fmt: skip
    for factor in factors:
        back = FactorRecord.from_json(_record(factor).value())
        assert back.factor.dtype == np.float32
        assert back.factor.tobytes() == factor.tobytes()  # -0.0 too


def test_a_record_is_plain_json_with_every_field():
    record = _record(np.arange(4, dtype=np.float32) / 3)
    raw = json.loads(record.value())
    assert raw == {
        "namespace": "ns", "side": "item", "id": "i42", "shard": 3, "generation": 17,
        "factor": [0.0, 0.33333334, 0.6666667, 1.0],
    }  # fmt: skip
    assert parse_key(record.key) == ("item", "i42")


def test_a_factor_not_contiguous_in_memory_is_written_too():
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    back = FactorRecord.from_json(_record(rows[:, 1]).value())
    assert back.factor.tolist() == [1.0, 5.0, 9.0]


def test_an_erased_row_is_a_tombstone_whose_headers_name_its_source():
    record = _record(np.zeros(8, dtype=np.float32))
    assert record.value() is None
    assert tombstone_source(record.headers()) == ("ns", 3, 17)
