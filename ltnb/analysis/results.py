"""All result rows of a study as one tidy pandas DataFrame, and their summary per round.

Rows are written by ``ltnb.core.lottery`` (one per finished round) into ``results.parquet`` files under
``<study>/obtain/`` and ``<study>/transfer/``. ``load`` reads them all. If the study holds runs with
different settings (different hash folders) their rows are all returned; the ``settings_hash``
column tells them apart (pass ``settings_hash=`` to keep one). An empty study (no results yet)
gives an empty frame with the columns, so notebooks can still draw empty figures. A table whose rows
no longer match the digest recorded when it was written is refused (``ltnb.base.integrity.IntegrityError``).
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ltnb.base import integrity
from ltnb.base.paths import RESULTS
from ltnb.base.paths import ROW_COLUMNS as COLUMNS

KEY = ["stage", "pair", "seed", "strategy", "round", "settings_hash"]


def load(study_dir: str | os.PathLike, *, settings_hash: str | None = None) -> pd.DataFrame:
    """One row per (stage, domain or pair, seed, strategy, round[, settings_hash])."""
    study = Path(study_dir)
    if not study.exists():
        raise FileNotFoundError(f"study folder {study} does not exist")
    files = sorted(p for stage in ("obtain", "transfer") for p in (study / stage).glob(f"**/{RESULTS}"))
    frames = [integrity.read_parquet(f) for f in files]  # refused if changed since written
    frames = [f.reindex(columns=COLUMNS) for f in frames if not f.empty]  # rows written before a column existed get NaN
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in COLUMNS})
    df = pd.concat(frames, ignore_index=True)[COLUMNS]
    if settings_hash is not None:
        df = df[df["settings_hash"] == settings_hash]
    return df.sort_values(KEY, kind="stable").reset_index(drop=True)


def _dtype(column: str) -> str:
    if column in ("seed", "round", "best_epoch", "epochs_run"):
        return "int64"
    if column in ("sparsity", "val_acc", "test_acc", "seconds", "cpu_seconds", "test_n", "wchange_embedding", "wchange_conv",
                  "wchange_mlp", "emb_rows_seen", "emb_weights_seen"):
        return "float64"
    if column == "converged":
        return "boolean"
    return "object"


#: the training diagnostics summarized per (stage, strategy, round): output column -> input column
DIAGNOSTICS = {"epochs_run": "epochs_run", "best_epoch": "best_epoch", "converged": "converged",
               "wchange_embedding": "wchange_embedding", "wchange_conv": "wchange_conv", "wchange_mlp": "wchange_mlp",
               "emb_rows_seen": "emb_rows_seen", "emb_weights_seen": "emb_weights_seen"}


def diagnostics(df: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Mean of the training diagnostics per ``by`` (default stage, strategy, round, settings_hash: pooled
    over domains, pairs and seeds): epochs run, best epoch, ``converged`` as the share of trainings whose
    validation accuracy stopped improving before their last epoch, the relative weight changes, the
    embedding rows seen; ``trainings`` counts the rows. Rows written before the diagnostics existed
    count as missing (NaN), not as 0."""
    groups = list(by or ["stage", "strategy", "round", "settings_hash"])
    cols = groups + ["sparsity", *DIAGNOSTICS, "trainings"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    d = df.copy()
    for c in DIAGNOSTICS.values():
        d[c] = pd.to_numeric(d[c].astype("Float64") if c == "converged" else d[c], errors="coerce").astype(float)
    out = d.groupby(groups, dropna=False, sort=True).agg(
        sparsity=("sparsity", "mean"), **{k: (v, "mean") for k, v in DIAGNOSTICS.items()},
        trainings=("round", "size")).reset_index()
    return out[cols]


SUMMARY_KEYS = ["stage", "source", "target", "pair", "strategy", "round", "settings_hash"]


def over_seeds(df: pd.DataFrame, by: list[str], *, means: dict[str, str], stds: dict[str, str] | None = None,
               seed: str = "seed") -> pd.DataFrame:
    """Per ``by``: the mean (``means``: output column -> input column) and the sample standard
    deviation (ddof 1; NaN for one seed; ``stds``) over seeds, and ``n``, the number of seeds. The one
    place means and spreads over seeds are computed (``summarize``, the federated stage)."""
    aggs = {out: (col, "mean") for out, col in means.items()}
    aggs.update({out: (col, "std") for out, col in (stds or {}).items()})
    aggs["n"] = (seed, "nunique")
    return df.groupby(by, dropna=False, sort=True).agg(**aggs).reset_index()


def summarize(df: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Mean, std and n of test accuracy (and of validation accuracy, mean sparsity) over seeds, per
    ``by`` (default: stage, source, target, pair, strategy, round, settings_hash). ``std`` is the sample
    std (ddof 1; NaN for one seed). The one place the study computes means and spreads over seeds."""
    groups = list(by or SUMMARY_KEYS)
    if df.empty:
        return pd.DataFrame(columns=groups + ["sparsity", "test_acc_mean", "test_acc_std", "val_acc_mean",
                                              "val_acc_std", "n"])
    out = over_seeds(df, groups, means={"sparsity": "sparsity", "test_acc_mean": "test_acc", "val_acc_mean": "val_acc"},
                     stds={"test_acc_std": "test_acc", "val_acc_std": "val_acc"})
    return out[groups + ["sparsity", "test_acc_mean", "test_acc_std", "val_acc_mean", "val_acc_std", "n"]]
