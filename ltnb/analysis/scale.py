"""Training-set size as an axis (``params/scale.yaml``): finding 2's estimands against the number of
training texts each chain saw.

Per training size (the chains' ``train_size`` setting, read from each run's settings: one settings hash
per size) and per domain, and pooled over domains with the seed as the unit: reset - random averaged over
the rounds at or below 96% sparsity and above it, and their difference (``ltnb.analysis.findings.windows``, exact
sign-flip intervals), finding 2's verdict on that size alone (``findings.match_then_gap``), the dense
network's test accuracy (round 0), and the share of surviving embedding rows that received a gradient
(``emb_rows_seen``, mean over the rounds above 96%). ``size_table`` is the table, ``size_chart`` the figure
the report draws when a study has chains of two or more training sizes. Torch-free.
"""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from ltnb.analysis import findings, phase

COLUMNS = ["train_size", "pair", "seeds", "low", "low_lo", "low_hi", "high", "high_lo", "high_hi", "diff", "diff_lo",
           "diff_hi", "level", "verdict", "dense", "dense_sd", "emb_rows_seen"]


def train_sizes(settings: dict[str, dict]) -> dict[str, int | None]:
    """settings hash -> its chains' ``train_size`` (None: the whole training split)."""
    return {h: s.get("train_size") for h, s in settings.items()}


def _one(rows: pd.DataFrame, size, pair: str, alpha: float, margin: float) -> dict:
    ob = rows[rows["strategy"].isin(["reset", "random"])]
    p = phase.paired(ob, "reset", "random")
    low, high, diff = findings.windows(p, alpha)
    dense = ob[(ob["round"] == 0) & (ob["strategy"] == "reset")].groupby("seed")["test_acc"].mean()
    late = ob[ob["sparsity"] > findings.TRANSITION + findings.EPS]
    seen = float(late["emb_rows_seen"].mean()) if "emb_rows_seen" in late and late["emb_rows_seen"].notna().any() \
        else float("nan")
    return dict(train_size=size, pair=pair, seeds=int(p["seed"].nunique()) if len(p) else 0,
                low=100 * low.estimate, low_lo=100 * low.lo, low_hi=100 * low.hi,
                high=100 * high.estimate, high_lo=100 * high.lo, high_hi=100 * high.hi,
                diff=100 * diff.estimate, diff_lo=100 * diff.lo, diff_hi=100 * diff.hi, level=high.level,
                verdict=findings.match_then_gap(low, high, margin),
                dense=100 * float(dense.mean()) if len(dense) else float("nan"),
                dense_sd=100 * float(dense.std(ddof=1)) if len(dense) > 1 else float("nan"), emb_rows_seen=seen)


def size_table(rows: pd.DataFrame, settings: dict[str, dict], *, alpha: float = phase.ALPHA,
               margin: float = findings.MATCH) -> pd.DataFrame:
    """One row per (training size, domain) and per training size pooled over domains (``pair`` "pooled")
    of the obtain rows (see the module doc); sizes in increasing order, None (the whole split) last."""
    sizes = train_sizes(settings)
    ob = rows[rows["stage"] == "obtain"]
    unknown = sorted(set(ob["settings_hash"]) - set(sizes))
    if unknown:
        raise ValueError(f"scale.size_table: no settings for the runs of settings hash(es) {', '.join(unknown)} "
                         f"(each run folder's settings.json says its train_size)")
    out = []
    for size in sorted({sizes[h] for h in ob["settings_hash"].unique()}, key=lambda v: (v is None, v or 0)):
        part = ob[ob["settings_hash"].map(sizes).map(lambda v, s=size: v == s)]
        for pair, g in part.groupby("pair", sort=True):
            out.append(_one(g, size, pair, alpha, margin))
        if part["pair"].nunique() > 1:
            out.append(_one(part, size, phase.POOLED, alpha, margin))
    return pd.DataFrame(out, columns=COLUMNS)


def size_chart(table: pd.DataFrame, *, width: int = 260, height: int = 200, title: str = ""):
    """Left: reset - random at or below and above 96% sparsity against training size (pooled and per domain;
    exact intervals of the pooled estimate as bars); right: the dense network's test accuracy. None without
    two sizes."""
    t = table.dropna(subset=["train_size"])
    if t["train_size"].nunique() < 2:
        return None
    long = pd.concat([t.assign(window="at or below 96%", gap=t["low"], lo=t["low_lo"], hi=t["low_hi"]),
                      t.assign(window="above 96%", gap=t["high"], lo=t["high_lo"], hi=t["high_hi"])])
    long = long.replace([np.inf, -np.inf], np.nan)
    x = alt.X("train_size:Q", title="training texts per domain", scale=alt.Scale(type="log"),
              axis=alt.Axis(values=sorted(t["train_size"].unique().tolist())))
    color = alt.Color("window:N", title=None, legend=alt.Legend(orient="bottom"),
                      scale=alt.Scale(domain=["at or below 96%", "above 96%"], range=["#7f7f7f", "#d62728"]))
    pooled = long[long["pair"] == phase.POOLED]
    zero = alt.Chart(pd.DataFrame({"zero": [0.0]})).mark_rule(color="#999999").encode(y="zero:Q")
    lines = alt.Chart(pooled).mark_line(point=True).encode(
        x=x, y=alt.Y("gap:Q", title="reset - random (pp)"), color=color,
        tooltip=["train_size:Q", "window:N", alt.Tooltip("gap:Q", format="+.2f"), alt.Tooltip("lo:Q", format="+.2f"),
                 alt.Tooltip("hi:Q", format="+.2f"), "verdict:N"])
    bars = alt.Chart(pooled).mark_rule().encode(x=x, y="lo:Q", y2="hi:Q", color=color)
    domains = alt.Chart(long[long["pair"] != phase.POOLED]).mark_point(opacity=0.5, shape="diamond").encode(
        x=x, y="gap:Q", color=color, tooltip=["pair:N", "train_size:Q", "window:N", alt.Tooltip("gap:Q", format="+.2f")])
    left = alt.layer(zero, bars, lines, domains).properties(
        width=width, height=height, title="reset - random by window (pooled: line and exact interval; domains: diamonds)")
    dense = alt.Chart(t[t["pair"] != phase.POOLED]).mark_line(point=True).encode(
        x=x, y=alt.Y("dense:Q", title="dense test accuracy (%)", scale=alt.Scale(zero=False)),
        color=alt.Color("pair:N", title="domain", legend=alt.Legend(orient="bottom")),
        tooltip=["pair:N", "train_size:Q", alt.Tooltip("dense:Q", format=".1f"), alt.Tooltip("emb_rows_seen:Q", format=".2f")])
    right = dense.properties(width=width, height=height, title="the dense network (round 0)")
    return alt.hconcat(left, right).resolve_scale(color="independent").properties(title=title)
