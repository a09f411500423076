"""All result rows of a study as one tidy pandas DataFrame, and their summary per round.

Rows are written by ``ltnb.lottery`` (one per finished round) into ``results.parquet`` files under
``<study>/obtain/`` and ``<study>/transfer/``. ``load`` reads them all. If the study holds runs with
different settings (different hash folders) their rows are all returned; the ``settings_hash``
column tells them apart (pass ``settings_hash=`` to keep one). An empty study (no results yet)
gives an empty frame with the columns, so notebooks can still draw empty figures. A table whose rows
no longer match the digest recorded when it was written is refused (``ltnb.integrity.IntegrityError``).
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from . import integrity
from .lottery import COLUMNS, RESULTS

KEY = ["stage", "pair", "seed", "strategy", "round", "settings_hash"]


def load(study_dir: str | os.PathLike, *, settings_hash: str | None = None) -> pd.DataFrame:
    """One row per (stage, domain or pair, seed, strategy, round[, settings_hash])."""
    study = Path(study_dir)
    if not study.exists():
        raise FileNotFoundError(f"study folder {study} does not exist")
    files = sorted(p for stage in ("obtain", "transfer") for p in (study / stage).glob(f"**/{RESULTS}"))
    frames = [integrity.read_parquet(f) for f in files]  # refused if changed since written
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in COLUMNS})
    df = pd.concat(frames, ignore_index=True)[COLUMNS]
    if settings_hash is not None:
        df = df[df["settings_hash"] == settings_hash]
    return df.sort_values(KEY, kind="stable").reset_index(drop=True)


def _dtype(column: str) -> str:
    if column in ("seed", "round", "best_epoch", "epochs_run"):
        return "int64"
    if column in ("sparsity", "val_acc", "test_acc", "seconds"):
        return "float64"
    return "object"


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and n of test accuracy (and mean validation accuracy, sparsity) over seeds, per
    (stage, pair, strategy, round, settings_hash). ``std`` is the sample std (NaN for n = 1)."""
    groups = ["stage", "source", "target", "pair", "strategy", "round", "settings_hash"]
    if df.empty:
        return pd.DataFrame(columns=groups + ["sparsity", "test_acc_mean", "test_acc_std", "val_acc_mean",
                                              "val_acc_std", "n"])
    out = (
        df.groupby(groups, dropna=False, sort=True)
        .agg(
            sparsity=("sparsity", "mean"),
            test_acc_mean=("test_acc", "mean"),
            test_acc_std=("test_acc", "std"),
            val_acc_mean=("val_acc", "mean"),
            val_acc_std=("val_acc", "std"),
            n=("seed", "nunique"),
        )
        .reset_index()
    )
    return out
