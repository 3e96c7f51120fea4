"""Models trained elsewhere (consumer/importers.py, `unlearn import`): an `implicit` model
trained here, imported, scores the same, continues the same objective and forgets as
retraining would; factor matrices with ids of any dtype."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from consumer.cli import main
from consumer.errors import InputError
from consumer.importers import ids_as_text, read_ids
from consumer.model_file import load_model
from consumer.tsv import read_interactions
from unlearn_core.convergence import relative_change
from unlearn_core.ids import IdIndex
from unlearn_core.params import Hyperparameters
from unlearn_core.retrain_check import (
    compare_with_retraining,
    random_pair_deletions,
    split_held_out,
)
from unlearn_core.sweep import SweepContext

implicit = pytest.importorskip("implicit")
ALPHA_I = 2.0  # implicit's alpha: an observed pair's confidence alpha_i * r


@pytest.fixture
def fitted(tmp_path, ml100k_path):
    """MovieLens-100K as binary implicit data, an implicit ALS fitted on it and saved."""
    rows = read_interactions(ml100k_path, "implicit")
    users, items = IdIndex(), IdIndex()
    u, i = users.add(rows.users), items.add(rows.items)
    shape = (len(users), len(items))
    data, held_out = split_held_out(u, i, np.ones(len(u)), shape, "implicit")
    source = implicit.cpu.als.AlternatingLeastSquares(
        factors=32, regularization=1.0, alpha=ALPHA_I, iterations=15, random_state=0
    )
    source.fit(sp.csr_matrix(data.by_user), show_progress=False)
    folder = tmp_path
    source.save(str(folder / "als.npz"))
    (folder / "users.txt").write_text("\n".join(users.ids) + "\n")
    np.save(folder / "items.npy", np.array(items.ids).astype(np.int64))  # numeric ids
    return source, data, held_out, folder


def test_an_implicit_model_imports_with_its_scores_and_objective(fitted):
    source, data, held_out, folder = fitted
    out = folder / "model.npz"
    assert main(["import", "--from", "implicit", str(folder / "als.npz"), "--out", str(out),
                 "--user-ids", str(folder / "users.txt"),
                 "--item-ids", str(folder / "items.npy")]) == 0  # fmt: skip
    model = load_model(out)
    assert model.params == Hyperparameters("implicit", 32, 1.0, ALPHA_I - 1)
    assert model.item_ids[:3].tolist() == [str(int(x)) for x in model.item_ids[:3]]
    ours = model.user_factors.astype(np.float64) @ model.item_factors.T.astype(np.float64)
    theirs = source.user_factors.astype(np.float64) @ source.item_factors.T.astype(np.float64)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)

    # The converted objective is the one implicit minimised: a sweep of it barely moves
    # the model, where the unconverted alpha (confidence 1 + alpha_i) moves it far more.
    def moved(alpha: float) -> float:
        params = Hyperparameters("implicit", 32, 1.0, alpha)
        x, y = model.user_factors.copy(), model.item_factors.copy()
        SweepContext(data, params, "cholesky").sweep(x, y)
        return relative_change(ours.ravel(), (x.astype(np.float64) @ y.T).ravel())

    assert moved(ALPHA_I - 1) < moved(ALPHA_I) / 2

    # And forgetting after the import passes the retraining checks.
    deletions = random_pair_deletions(data, 0.05, seed=1)
    result = compare_with_retraining(model, data, deletions, held_out, 20)
    assert all(result.checks.values()), result.checks


def test_factor_matrices_with_ids_of_any_dtype(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "u.npy", rng.normal(size=(3, 4)))
    np.savetxt(tmp_path / "i.csv", rng.normal(size=(2, 4)), delimiter=",")
    np.save(tmp_path / "uid.npy", np.array([10.0, 11.0, 12.0]))  # integral floats
    (tmp_path / "iid.txt").write_text("a\nb\n")
    out = tmp_path / "m.npz"
    assert main(["import", "--from", "npy", str(tmp_path / "u.npy"), "--item-factors",
                 str(tmp_path / "i.csv"), "--user-ids", str(tmp_path / "uid.npy"),
                 "--item-ids", str(tmp_path / "iid.txt"), "--out", str(out)]) == 0  # fmt: skip
    model = load_model(out)
    assert model.user_ids.tolist() == ["10", "11", "12"] and model.item_ids.tolist() == ["a", "b"]
    np.testing.assert_allclose(model.user_factors, np.load(tmp_path / "u.npy"), rtol=1e-6)
    assert ids_as_text(np.array([1, 2], dtype=np.uint8)).tolist() == ["1", "2"]
    assert ids_as_text(np.array([1.5, "x"], dtype=object)).tolist() == ["1.5", "x"]
    np.save(tmp_path / "obj.npy", np.array([1, "x"], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="pickle"):
        read_ids(tmp_path / "obj.npy", 2, "user")
    with pytest.raises(InputError, match="3 user ids for 2"):
        read_ids(tmp_path / "uid.npy", 2, "user")
