"""A Spark MLlib ALS model trained here (local mode, MovieLens-100K ratings), imported with
`unlearn import --from spark`: scores equal to Spark's predictions, and forgetting after the
import meets the retraining checks. Skipped where pyspark, pyarrow or a JVM is missing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from consumer.cli import main
from consumer.model_file import load_model
from consumer.tsv import read_interactions
from unlearn_core.ids import IdIndex
from unlearn_core.retrain_check import (
    compare_with_retraining,
    random_pair_deletions,
    split_held_out,
)

pytest.importorskip("pyarrow")
pyspark = pytest.importorskip("pyspark")
if shutil.which("java") is None:
    pytest.skip("no JVM for Spark", allow_module_level=True)

RANK, REG = 10, 0.1


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]").appName("unlearn-import-test")
        .config("spark.ui.enabled", "false").config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "4").getOrCreate()
    )  # fmt: skip
    yield session
    session.stop()


def test_a_spark_explicit_model_imports_with_its_scores_and_forgets_as_retraining(
    spark, ml100k_path, tmp_path
):
    from pyspark.ml.recommendation import ALS

    rows = read_interactions(ml100k_path, "explicit")
    users, items = IdIndex(), IdIndex()
    u, i = users.add(rows.users), items.add(rows.items)
    ratings = np.asarray(rows.weights, dtype=np.float64)
    data, held_out = split_held_out(u, i, ratings, (len(users), len(items)), "explicit")
    coo = data.by_user.tocoo()
    # Spark's ids are integers: the MovieLens ids themselves.
    triples = zip(coo.row, coo.col, coo.data, strict=True)
    frame = spark.createDataFrame(
        [(int(users.ids[a]), int(items.ids[b]), float(r)) for a, b, r in triples],
        ["user", "item", "rating"],
    )
    als = ALS(rank=RANK, maxIter=15, regParam=REG, userCol="user", itemCol="item",
              ratingCol="rating", seed=0, coldStartStrategy="drop")  # fmt: skip
    fitted = als.fit(frame)
    fitted.save(str(tmp_path / "als"))
    out = tmp_path / "model.npz"
    assert main(["import", "--from", "spark", str(tmp_path / "als"), "--out", str(out),
                 "--kind", "explicit", "--regularization", str(REG)]) == 0  # fmt: skip
    model = load_model(out)
    assert model.params.kind == "explicit" and model.params.factors == RANK

    # Scores: Spark's own predictions for held-out pairs, to float32 precision.
    pairs = [(int(users.ids[a]), int(items.ids[b])) for a, b in
             zip(held_out.users[:500], held_out.items[:500], strict=True)]  # fmt: skip
    predicted = fitted.transform(spark.createDataFrame(pairs, ["user", "item"])).collect()
    assert len(predicted) > 400
    user_row = {x: n for n, x in enumerate(model.user_ids.tolist())}
    item_row = {x: n for n, x in enumerate(model.item_ids.tolist())}
    ours = np.array([
        model.user_factors[user_row[str(p.user)]].astype(np.float64)
        @ model.item_factors[item_row[str(p.item)]] for p in predicted
    ])  # fmt: skip
    theirs = np.array([p.prediction for p in predicted])
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)

    # The imported model in this session's index order (a row Spark never saw, whose
    # pairs all fell in the held-out split, has a zero factor: what ALS-WR gives a row
    # without data), then forgetting after the import.
    def aligned(ids: list[str], rows: dict[str, int], factors: np.ndarray) -> np.ndarray:
        out = np.zeros((len(ids), RANK), dtype=np.float32)
        for n, x in enumerate(ids):
            if x in rows:
                out[n] = factors[rows[x]]
        return out

    model = type(model).create(
        np.array(users.ids), np.array(items.ids),
        aligned(users.ids, user_row, model.user_factors),
        aligned(items.ids, item_row, model.item_factors), model.params,
    )  # fmt: skip
    deletions = random_pair_deletions(data, 0.05, seed=1)
    # Explicit ALS-WR converges slowly from scratch: retrains of 60 sweeps reach the
    # objective the warm-started model reaches (20 leave them above it).
    result = compare_with_retraining(model, data, deletions, held_out, 60)
    assert all(result.checks.values()), json.dumps(result.to_dict(), default=str)
