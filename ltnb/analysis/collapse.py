"""Per-chain collapse points: where a chain's non-increasing isotonic fit first falls below the midpoint
between its start level and chance (see ``ltnb.analysis.phase``'s module doc), and the paired test of two
strategies' collapse points with the seed as the unit. Torch-free; ``ltnb.analysis.phase`` re-exports every name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize

from ltnb.analysis.signflip import ALPHA, CHANCE, at_chance, interval_level, signflip_interval, signflip_p


# ------------------------------------------------------------------------------------ collapse points

def collapse_round(acc, rounds=None, *, n: float | None = None, alpha: float = ALPHA,
                   chance: float = CHANCE) -> tuple[float, str]:
    """One chain's collapse point: (round, status). ``acc``: its test accuracies in round order
    (``rounds``: their round numbers, default 0, 1, ...). The non-increasing isotonic fit's first
    crossing below the midpoint between its start level (the fit at the first round) and ``chance``,
    linearly interpolated between the two rounds around it. Status "collapsed"; "censored" (never
    below: the round returned is the last one, a lower bound); "starts at chance" (NaN: the start
    level is not significantly above chance on ``n`` test texts, or not above chance when ``n`` is
    unknown)."""
    return _collapse(acc, rounds, n, alpha, chance)[:2]


def _collapse(acc, rounds, n, alpha, chance=CHANCE) -> tuple[float, str, float]:
    """``collapse_round``'s (round, status) and the chain's start level (NaN without rounds)."""
    y = np.asarray(acc, float)
    r = np.arange(len(y), dtype=float) if rounds is None else np.asarray(rounds, float)
    ok = ~np.isnan(y)
    y, r = y[ok], r[ok]
    if not len(y):
        return float("nan"), "no rounds", float("nan")
    fit = optimize.isotonic_regression(y, increasing=False).x
    start = float(fit[0])
    if n is not None and np.isfinite(n) and n > 0:
        starts_above = not bool(at_chance(start, n, alpha))
    else:
        starts_above = start > chance
    if not starts_above:
        return float("nan"), "starts at chance", start
    level = (start + chance) / 2
    below = np.nonzero(fit < level)[0]
    if not len(below):
        return float(r[-1]), "censored", start
    k = int(below[0])  # k >= 1: fit[0] = start > level
    frac = (fit[k - 1] - level) / (fit[k - 1] - fit[k])
    return float(r[k - 1] + frac * (r[k] - r[k - 1])), "collapsed", start


def round_sparsity(rnd: float, per_round: pd.DataFrame) -> float:
    """The sparsity at a fractional round, interpolated on log density between the rounds around it
    (``per_round``: round, sparsity)."""
    if rnd is None or not np.isfinite(rnd) or per_round.empty:
        return float("nan")
    r = per_round["round"].to_numpy(float)
    logd = np.log(np.clip(1 - per_round["sparsity"].to_numpy(float), 1e-300, None))
    return float(1 - np.exp(np.interp(rnd, r, logd)))


CHAIN_KEY = ["stage", "pair", "settings_hash", "strategy", "seed"]
COLLAPSE_COLUMNS = CHAIN_KEY + ["start", "level", "collapse_round", "collapse_sparsity", "status", "last_round"]


def collapse_points(rows: pd.DataFrame, *, alpha: float = ALPHA) -> pd.DataFrame:
    """One row per chain (stage, pair, settings_hash, strategy, seed): its start level, the midpoint
    level, the collapse round and sparsity (``collapse_round``), status and last round."""
    if rows.empty:
        return pd.DataFrame(columns=COLLAPSE_COLUMNS)
    r = rows.sort_values(CHAIN_KEY + ["round"], kind="stable")
    acc, rnd = r["test_acc"].to_numpy(float), r["round"].to_numpy(float)
    ns = pd.to_numeric(r["test_n"], errors="coerce").to_numpy(float) if "test_n" in r else np.full(len(r), np.nan)
    levels = {k: g.reset_index()[["round", "sparsity"]] for k, g in
              r.groupby(["stage", "pair", "settings_hash", "round"])["sparsity"].mean().groupby(level=[0, 1, 2])}
    out = []
    for key, idx in r.groupby(CHAIN_KEY, sort=True).indices.items():
        y, x = acc[idx], rnd[idx]
        value, status, start = _collapse(y, x, ns[idx][0], alpha)
        out.append(dict(zip(CHAIN_KEY, key), start=start, level=(start + CHANCE) / 2, collapse_round=value,
                        collapse_sparsity=round_sparsity(value, levels[key[:3]]) if status == "collapsed" else float("nan"),
                        status=status, last_round=int(x.max())))
    return pd.DataFrame(out, columns=COLLAPSE_COLUMNS)


@dataclass(frozen=True)
class CollapseTest:
    """a's collapse point minus b's (rounds), per seed (mean over the seed's domains or pairs), tested."""
    n: int
    diff: float  # mean over seeds, rounds
    lo: float  # exact interval (signflip_interval); -inf / inf where censoring leaves a side open
    hi: float
    level: float  # its coverage
    p: float  # one-sided sign-flip p of "a collapses later"
    a_round: float  # mean collapse round of a's chains (censored ones at their last round)
    b_round: float
    a_censored: int
    b_censored: int
    chains: int
    per_seed: tuple


def collapse_test(points: pd.DataFrame, cmp: Comparison, alpha: float = ALPHA) -> CollapseTest:
    """Compare the collapse points (``collapse_points`` of one selection) of ``cmp.a`` and ``cmp.b``."""
    pa = points[points["strategy"] == cmp.a].set_index(["pair", "seed"])
    pb = points[points["strategy"] == cmp.b].set_index(["pair", "seed"])
    both = pa[["collapse_round", "status"]].merge(pb[["collapse_round", "status"]], left_index=True, right_index=True,
                                                    suffixes=("_a", "_b")).dropna(subset=["collapse_round_a",
                                                                                          "collapse_round_b"])
    if both.empty:
        return CollapseTest(0, *(float("nan"),) * 5, float("nan"), float("nan"), 0, 0, 0, ())
    d = (both["collapse_round_a"] - both["collapse_round_b"]).groupby(level="seed").mean()
    x = d.to_numpy(float)
    lo, hi = signflip_interval(x, alpha)
    a_cens, b_cens = int((both["status_a"] == "censored").sum()), int((both["status_b"] == "censored").sum())
    if a_cens:
        hi = math.inf
    if b_cens:
        lo = -math.inf
    return CollapseTest(n=len(x), diff=float(x.mean()), lo=lo, hi=hi, level=interval_level(len(x), alpha),
                        p=float(signflip_p(x)), a_round=float(both["collapse_round_a"].mean()),
                        b_round=float(both["collapse_round_b"].mean()), a_censored=a_cens, b_censored=b_cens,
                        chains=len(both), per_seed=tuple(float(v) for v in x))

