"""Model files: one .npz with ids, float32 factors and the hyperparameters.

Keys: user_ids, item_ids (str), user_factors, item_factors (float32), kind, factors,
regularization, alpha, format_version. Written to a temporary file and renamed, so a
crash never leaves a half-written model behind.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from consumer.errors import InputError
from unlearn_core.model import FactorModel
from unlearn_core.params import Hyperparameters

FORMAT_VERSION = 1
_REQUIRED = ("user_ids", "item_ids", "user_factors", "item_factors", "kind", "factors")


def save_model(model: FactorModel, path: str | Path) -> None:
    path = Path(path)
    arrays = {
        "user_ids": model.user_ids,
        "item_ids": model.item_ids,
        "user_factors": model.user_factors,
        "item_factors": model.item_factors,
        "kind": np.asarray(model.params.kind),
        "factors": np.asarray(model.params.factors, dtype=np.int64),
        "regularization": np.asarray(model.params.regularization, dtype=np.float64),
        "alpha": np.asarray(model.params.alpha, dtype=np.float64),
        "format_version": np.asarray(FORMAT_VERSION, dtype=np.int64),
    }
    _atomic_write(path, lambda handle: np.savez(handle, **arrays))


def load_model(path: str | Path) -> FactorModel:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in _REQUIRED if key not in npz.files]
            if missing:
                raise InputError(path, f"not a model file: missing {', '.join(missing)}")
            arrays = {key: npz[key] for key in npz.files}
    except InputError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(path, f"cannot read model: {exc}") from exc
    version = int(arrays.get("format_version", FORMAT_VERSION))
    if version > FORMAT_VERSION:
        raise InputError(path, f"model format {version} is newer than this version reads")
    try:
        params = Hyperparameters.for_kind(
            str(arrays["kind"]),  # type: ignore[arg-type]
            factors=int(arrays["factors"]),
            regularization=float(arrays["regularization"]) if "regularization" in arrays else None,
            alpha=float(arrays.get("alpha", 1.0)),
        )
        return FactorModel.create(
            arrays["user_ids"],
            arrays["item_ids"],
            arrays["user_factors"],
            arrays["item_factors"],
            params,
        )
    except (ValueError, ArithmeticError) as exc:
        raise InputError(path, f"invalid model: {exc}") from exc


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise InputError(path, f"cannot be written: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | Path, text: str) -> None:
    _atomic_write(Path(path), lambda handle: handle.write(text.encode("utf-8")))
