"""Domain shift as the Jensen-Shannon divergence between subword unigram distributions (Figure 1).

For every domain, the unigram distribution of the shared vocabulary's pieces over its training
split; for every pair of domains, JSD(P, Q) = (KL(P||M) + KL(Q||M)) / 2 with M = (P + Q) / 2.

``scipy.spatial.distance.jensenshannon`` returns the Jensen-Shannon *distance*, the square root
of the divergence; we square it. The log base is a parameter (default 2: the divergence is in
bits and lies in [0, 1]). The paper prints its values scaled by 1e5; ``jsd_x1e5`` gives that view.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon

from ltnb.base import paths
from ltnb.text import vocab
from ltnb.base._io import write_json, write_parquet


def unigram(ids, vocab_size: int) -> np.ndarray:
    """Relative frequency of each piece id in ``ids`` (any iterable of ints or a tensor)."""
    counts = np.bincount(np.asarray(ids, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    total = counts.sum()
    if total == 0:
        raise ValueError("cannot form a unigram distribution from no tokens")
    return counts / total


def jsd(p: np.ndarray, q: np.ndarray, base: float = 2.0) -> float:
    """Jensen-Shannon divergence (not distance) between two distributions."""
    return float(jensenshannon(p, q, base=base) ** 2)


def jsd_matrix(dists: dict[str, np.ndarray], base: float = 2.0) -> pd.DataFrame:
    """Square DataFrame of pairwise divergences, domains in the given order."""
    names = list(dists)
    m = np.zeros((len(names), len(names)))
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            m[i, j] = m[j, i] = jsd(dists[a], dists[names[j]], base)
    return pd.DataFrame(m, index=pd.Index(names, name="domain"), columns=pd.Index(names, name="other"))


def distributions(study_dir: str | os.PathLike, split: str = "train") -> dict[str, np.ndarray]:
    meta = vocab.info(study_dir)
    out = {}
    for domain in meta["domains"]:
        splits, size = vocab.load_encoded(study_dir, domain)
        out[domain] = unigram(splits[split].ids.numpy(), size)
    return out


def long_table(matrix: pd.DataFrame) -> pd.DataFrame:
    t = matrix.stack().rename("jsd").reset_index()
    t["jsd_x1e5"] = t["jsd"] * 1e5
    return t


def compute(study_dir: str | os.PathLike, *, log_base: float = 2.0, log=print) -> pd.DataFrame:
    """Compute the JSD matrix of a study's domains and write it under ``<study>/divergence/``."""
    if not float(log_base) > 1.0:
        raise ValueError(f"log_base must be greater than 1 (got {log_base})")
    matrix = jsd_matrix(distributions(study_dir), base=float(log_base))
    out = paths.divergence_dir(study_dir)
    write_parquet(out / "jsd.parquet", long_table(matrix))
    write_json(out / "jsd_matrix.json", {"log_base": float(log_base), "domains": list(matrix.index),
                                         "jsd": matrix.values.tolist()})
    off = matrix.where(~np.eye(len(matrix), dtype=bool)).stack()
    if len(off):
        lo, hi = off.idxmin(), off.idxmax()
        log(f"most similar pair: {lo[0]}/{lo[1]} (JSD {off.min():.4g}); least similar: {hi[0]}/{hi[1]} (JSD {off.max():.4g})")
    return matrix
