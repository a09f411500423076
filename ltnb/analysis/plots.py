"""Every chart of the study, in one place: one sparsity axis, one accuracy chart, one palette, one set
of labels; rendered offline.

* The x axis of every accuracy-like chart is the round, labelled with the round's sparsity in percent
  (``sparsity_label``: 0, 35, 58, ... 96.8, 98.7, 99.84). With a constant pruning fraction the rounds
  are evenly spaced in log(remaining weights), so this is the paper's axis, with the high-sparsity end
  as readable as the start.
* ``accuracy_chart`` draws result rows (``ltnb.analysis.results.load``) as a mean line with a +-1 std band over
  seeds (or each seed's chain), one panel per domain or pair, optional markers at estimated
  transitions; Figure 3, Figure 4, the notebooks and the explorer all use it.
* Means and standard deviations over seeds come from ``ltnb.analysis.results.summarize`` (the one place they
  are computed).
* Static PNG/SVG come from vl-convert (no browser, no network); ``svg`` renders a chart to a string for
  the explorer's widgets. Nothing is loaded from a CDN.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd

from ltnb.base._io import atomic_path
from ltnb.base.labels import COLORS, EXTRA_COLORS, LABELS, MEAN, SEEDS, series_name, sparsity_label  # noqa: F401

WIDTH, HEIGHT = 470, 240


# ---------------------------------------------------------------------------------- rendering

def setup_offline() -> None:
    """Make notebooks show charts as static SVG rendered in-process (no CDN, works in any viewer)."""
    alt.renderers.enable("svg")
    alt.data_transformers.disable_max_rows()


def save(chart: alt.TopLevelMixin, stem: str | os.PathLike, formats=("png", "svg")) -> list[Path]:
    """Save ``chart`` as ``stem.png``/``stem.svg``/``stem.html`` (atomically); returns the paths."""
    stem = Path(stem)
    written = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        with atomic_path(path) as tmp:
            kwargs = {"inline": True} if fmt == "html" else {}
            if fmt == "png":
                kwargs["scale_factor"] = 2
            chart.save(str(tmp), format=fmt, **kwargs)
        written.append(path)
    return written


def svg(chart: alt.TopLevelMixin) -> str:
    """Render a chart to an SVG string in-process (vl-convert; no browser, no network)."""
    import vl_convert as vlc

    version = alt.SCHEMA_VERSION.lstrip("v").rsplit(".", 1)[0]
    return vlc.vegalite_to_svg(chart.to_dict(), vl_version=version)


# ---------------------------------------------------------------------------------- the axis

def sparsity_axis(levels: pd.Series, *, title: str = "sparsity (%) after each round") -> alt.Axis:
    """The x axis: rounds, labelled by their sparsity. ``levels``: round -> sparsity."""
    labels = {int(r): sparsity_label(s) for r, s in levels.sort_index().items()}
    step = max(1, math.ceil(len(labels) / 16))  # at most ~16 tick labels
    values = list(labels)[::step]
    expr = "{" + ", ".join(f"'{r}': '{lab}'" for r, lab in labels.items()) + "}[toString(datum.value)]"
    return alt.Axis(values=values, labelExpr=expr, title=title, labelAngle=-45, grid=False, labelOverlap=False)


def _x(frame: pd.DataFrame) -> alt.X:
    levels = frame.groupby("round")["sparsity"].mean()
    lo, hi = (int(levels.index.min()), int(levels.index.max())) if len(levels) else (0, 1)
    pad = 0.3 if lo != hi else 1
    return alt.X("round:Q", axis=sparsity_axis(levels), scale=alt.Scale(domain=[lo - pad, hi + pad], nice=False))


def _color(series) -> alt.Color:
    names = list(dict.fromkeys(series))
    order = [n for n in COLORS if n in names] + [n for n in names if n not in COLORS]
    rng = [COLORS.get(n, EXTRA_COLORS[i % len(EXTRA_COLORS)]) for i, n in enumerate(order)]
    return alt.Color("series:N", title=None, scale=alt.Scale(domain=order, range=rng), legend=alt.Legend(orient="bottom"))


# ---------------------------------------------------------------------------------- curves

def obtain_curves(rows: pd.DataFrame) -> pd.DataFrame:
    """Obtain rows with a ``series`` column, plus FULL-MODEL: each chain's dense round 0 (shared by a
    seed's chains, counted once per seed) repeated at every round as a flat reference."""
    ob = rows[rows["stage"] == "obtain"].copy()
    if ob.empty:
        return ob.assign(series=pd.Series(dtype=object))
    ob["series"] = ob["strategy"].map(series_name)
    dense = ob[ob["round"] == 0].drop_duplicates(["pair", "seed", "settings_hash"])
    levels = ob[["pair", "round", "sparsity"]].drop_duplicates(["pair", "round"])
    full = levels.merge(dense.drop(columns=["round", "sparsity"]), on="pair").assign(series=LABELS["full"])
    return pd.concat([ob, full], ignore_index=True)


def transfer_curves(rows: pd.DataFrame) -> pd.DataFrame:
    """Transfer rows with a ``series`` column, plus TICKET-TARGET in each pair's panel: the target's
    own reset chain with the same seeds and settings as that pair's transfer runs."""
    tr = rows[rows["stage"] == "transfer"].copy()
    if tr.empty:
        return tr.assign(series=pd.Series(dtype=object))
    tr["series"] = tr["strategy"].map(series_name)
    ob = rows[(rows["stage"] == "obtain") & (rows["strategy"] == "reset") & (rows["round"] >= 1)]
    parts = [tr]
    for (pair, target, h), runs in tr.groupby(["pair", "target", "settings_hash"], sort=False):
        t = ob[(ob["pair"] == target) & (ob["settings_hash"] == h) & ob["seed"].isin(set(runs["seed"]))]
        if len(t):
            parts.append(t.assign(pair=pair, series=LABELS["target"]))
    return pd.concat(parts, ignore_index=True)


def accuracy_chart(curves: pd.DataFrame, *, facet: str | None = "pair", mode: str = MEAN, title: str = "",
                   columns: int = 3, markers: list[tuple[float, str, str]] = (), width: int = 260,
                   height: int = 190, collapse: pd.DataFrame | None = None) -> alt.TopLevelMixin:
    """Test accuracy (%) against the rounds' sparsity: per ``series``, the mean line with a +-1 std band
    over seeds (``mode=MEAN``) or each seed's chain as a thin line under the mean (``mode=SEEDS``).
    ``curves``: rows with a ``series`` column (``obtain_curves``, ``transfer_curves``). One panel per
    value of ``facet`` (None: one panel). ``markers``: (sparsity, label, color) vertical rules.
    ``collapse`` (one panel only): per chain its collapse point (``ltnb.analysis.phase.collapse_points`` with a
    ``series`` column), drawn as a cross at (collapse round, midpoint level) in the series' colour."""
    from ltnb.analysis.results import summarize

    if facet and (mode != MEAN or markers):  # layers with their own data cannot be faceted: one panel each
        panels = [accuracy_chart(curves[curves[facet] == v], facet=None, mode=mode, title=str(v), markers=markers,
                                 width=width, height=height) for v in sorted(curves[facet].unique())]
        return alt.concat(*panels, columns=columns).properties(title=title)
    s = summarize(curves, by=["series", "round"] + ([facet] if facet else []))
    s["acc"], s["sd"] = 100 * s["test_acc_mean"], 100 * s["test_acc_std"].fillna(0.0)
    s["lo"], s["hi"] = s["acc"] - s["sd"], s["acc"] + s["sd"]
    s["sparsity_pct"] = 100 * s["sparsity"]
    color, x = _color(s["series"]), _x(s if len(s) else curves)
    y = alt.Y("acc:Q", title="test accuracy (%)", scale=alt.Scale(zero=False))
    dash = alt.condition(alt.datum.series == LABELS["full"], alt.value([5, 4]), alt.value([1, 0]))
    tooltip = ["series:N", "round:Q", alt.Tooltip("sparsity_pct:Q", format=".2f", title="sparsity %"),
               alt.Tooltip("acc:Q", format=".2f"), alt.Tooltip("sd:Q", format=".2f", title="std"), "n:Q"]
    data = alt.Undefined if facet else s  # a faceted chart takes its data at the top
    band = alt.Chart(data).mark_area(opacity=0.18).encode(
        x=x, y=alt.Y("lo:Q", title="test accuracy (%)", scale=alt.Scale(zero=False)), y2="hi:Q", color=color)
    line = alt.Chart(data).mark_line(point=True, strokeWidth=2).encode(x=x, y=y, color=color, strokeDash=dash,
                                                                        tooltip=tooltip)
    if facet:
        return (alt.layer(band, line, data=s).properties(width=width, height=height)
                .facet(facet=alt.Facet(f"{facet}:N", title=None), columns=columns)
                .properties(title=title).resolve_scale(y="independent"))
    layers = [band]
    if mode == SEEDS:
        c = curves.assign(acc=100 * curves["test_acc"])
        layers = [alt.Chart(c).mark_line(strokeWidth=1, opacity=0.5, point=alt.OverlayMarkDef(size=12))
                  .encode(x=x, y=y, color=color, detail="seed:N", strokeDash=dash)]
    if collapse is not None and len(collapse):
        c = collapse.dropna(subset=["collapse_round"]).assign(acc=lambda d: 100 * d["level"], round=lambda d: d["collapse_round"])
        c = c[c["status"] == "collapsed"]
        if len(c):
            layers.append(alt.Chart(c).mark_point(shape="cross", size=90, filled=True, opacity=0.9).encode(
                x=x, y=y, color=color, tooltip=["series:N", "seed:N", alt.Tooltip("collapse_round:Q", format=".2f")]))
    return alt.layer(*layers, line, *_markers(markers, s, height)).properties(width=width, height=height, title=title)


def _markers(markers, frame: pd.DataFrame, height: int) -> list:
    """Vertical labelled rules at the rounds whose sparsity is given (same x encoding as the chart's,
    so the layers share one axis)."""
    out = []
    x = _x(frame)
    levels = frame.groupby("round")["sparsity"].mean()
    for i, (sparsity, label, color) in enumerate(markers or ()):
        if sparsity is None or not len(levels):
            continue
        rnd = int((levels - sparsity).abs().idxmin())
        d = pd.DataFrame({"round": [rnd], "label": [f"{label} {sparsity_label(sparsity)}%"]})
        out.append(alt.Chart(d).mark_rule(color=color, strokeDash=[6, 3], strokeWidth=2).encode(x=x))
        out.append(alt.Chart(d).mark_text(color=color, align="left", dx=4, dy=8 + 14 * i, y=0, fontWeight="bold")
                   .encode(x=x, text="label:N"))
    return out


def figure3(rows: pd.DataFrame, *, columns: int = 3):
    """Figure 3: obtaining tickets, one panel per domain (None when there are no obtain rows)."""
    curves = obtain_curves(rows)
    if curves.empty:
        return None
    return accuracy_chart(curves, columns=columns,
                          title="Figure 3 - obtaining tickets: test accuracy vs sparsity (mean +-1 std over seeds)")


def figure4(rows: pd.DataFrame, *, columns: int = 3):
    """Figure 4: transferring tickets, one panel per source->target pair (None without transfer rows)."""
    curves = transfer_curves(rows)
    if curves.empty:
        return None
    return accuracy_chart(curves, columns=columns,
                          title="Figure 4 - transferring tickets (source->target): test accuracy vs sparsity")


# ---------------------------------------------------------------------------------- diagnostics

DIAGNOSTIC_TITLES = {"epochs_run": "epochs run (mean)", "converged": "converged (share of trainings)",
                     "wchange_embedding": "embedding: ||w_end - w_start|| / ||w_start||",
                     "wchange_conv": "convolutions: relative change", "wchange_mlp": "MLP: relative change",
                     "emb_rows_seen": "surviving embedding rows seen in training (share)"}


def diagnostics_chart(summary: pd.DataFrame, *, columns: int = 3, width: int = 240, height: int = 150,
                      title: str = "Training diagnostics per strategy and round (mean over domains and seeds)"):
    """The training diagnostics (``ltnb.analysis.results.diagnostics``) against the rounds' sparsity, one panel per
    measure, one line per strategy (None without rows)."""
    if summary.empty:
        return None
    s = summary.assign(series=summary["strategy"].map(series_name))
    color, x = _color(s["series"]), _x(s)
    panels = []
    for col, text in DIAGNOSTIC_TITLES.items():
        if col not in s or s[col].isna().all():
            continue
        panels.append(alt.Chart(s).mark_line(point=True).encode(
            x=x, y=alt.Y(f"{col}:Q", title=None, scale=alt.Scale(zero=col in ("converged", "emb_rows_seen"))),
            color=color, tooltip=["series:N", "round:Q", alt.Tooltip(f"{col}:Q", format=".3f")],
        ).properties(width=width, height=height, title=text))
    return alt.concat(*panels, columns=columns).properties(title=title) if panels else None


# ---------------------------------------------------------------------------------- phase views

VERDICT_COLORS = {"significant (max-T)": "#1f77b4", "not significant": "#d62728",
                  "not informative (both at chance)": "#bbbbbb", "too few seeds": "#888888"}


def gap_chart(gaps: pd.DataFrame, *, pairs: pd.DataFrame | None = None, title: str = "",
              ylabel: str = "difference (pp)", markers=(), width: int = WIDTH, height: int = HEIGHT):
    """The paired difference (percentage points) per round with one round's exact sign-flip interval
    (``ltnb.analysis.phase.gap_table``), coloured by the max-T verdict; with ``pairs`` each seed's own difference
    as a tick."""
    g = gaps.copy()
    g["gap"] = 100 * g["mean_gap"].astype(float)
    g["lo"], g["hi"] = 100 * g["ci_lo"].astype(float), 100 * g["ci_hi"].astype(float)
    g["verdict"] = np.where(~g["tested"].astype(bool), "too few seeds",
                            np.where(~g["informative"].astype(bool), "not informative (both at chance)",
                                     np.where(g["significant"].astype(bool), "significant (max-T)", "not significant")))
    color = alt.Color("verdict:N", title=None, scale=alt.Scale(domain=list(VERDICT_COLORS),
                                                               range=list(VERDICT_COLORS.values())),
                      legend=alt.Legend(orient="bottom"))
    x = _x(g)
    layers = [alt.Chart(pd.DataFrame({"zero": [0.0]})).mark_rule(color="#999999").encode(y="zero:Q")]
    if pairs is not None and len(pairs):
        p = pairs[pairs["round"] >= 1].assign(seed_gap=lambda d: 100 * d["gap"])
        layers.append(alt.Chart(p).mark_tick(color="#555555", opacity=0.7, thickness=1.5, size=12, orient="horizontal")
                      .encode(x=x, y=alt.Y("seed_gap:Q", title=ylabel)))
    g = g.replace([np.inf, -np.inf], np.nan)
    layers.append(alt.Chart(g).mark_rule(strokeWidth=2).encode(x=x, y=alt.Y("lo:Q", title=ylabel), y2="hi:Q", color=color))
    layers.append(alt.Chart(g).mark_point(size=60, filled=True).encode(x=x, y=alt.Y("gap:Q", title=ylabel), color=color))
    layers += _markers(markers, g, height)
    return alt.layer(*layers).properties(width=width, height=height, title=title)


def spread_chart(curves: pd.DataFrame, chance: pd.DataFrame | None = None, *, title: str = "",
                 markers=(), width: int = WIDTH, height: int = HEIGHT):
    """Standard deviation across seeds (pp) of test accuracy per series and round; with ``chance``
    (``ltnb.analysis.phase.chance_table``) the share of each strategy's chains at chance as dashed lines."""
    from ltnb.analysis.results import summarize

    s = summarize(curves, by=["series", "round"])
    s["std_pp"] = 100 * s["test_acc_std"].astype(float)
    x = _x(s if len(s) else curves)
    color = _color(s["series"])
    layers = [alt.Chart(s).mark_line(point=True).encode(x=x, y=alt.Y("std_pp:Q", title="std across seeds (pp)"),
                                                         color=color)]
    if chance is not None and len(chance) and chance["at_chance"].notna().any():
        c = chance.assign(series=chance["strategy"].map(series_name),
                          share=100 * chance["at_chance"] / chance["chains"])
        layers.append(alt.Chart(c).mark_line(strokeDash=[2, 2], point=alt.OverlayMarkDef(shape="square", size=20))
                      .encode(x=x, y=alt.Y("share:Q", title="chains at chance (%, dashed)"), color=color))
        chart = alt.layer(*layers).resolve_scale(y="independent")
    else:
        chart = alt.layer(*layers)
    return alt.layer(chart, *_markers(markers, s, height)).properties(width=width, height=height, title=title)


def jsd_heatmap(matrix: pd.DataFrame, *, scale: float = 1e5, title: str | None = None) -> alt.Chart:
    """Figure 1: the domains' pairwise JSD as a heat map (values printed x ``scale``, as in the paper)."""
    t = matrix.stack().rename("jsd").reset_index()
    t.columns = ["domain", "other", "jsd"]
    t["value"] = t["jsd"] * scale
    order = list(matrix.index)
    label = "JSD" if scale == 1 else f"JSD x 1e{round(math.log10(scale))}" if math.log10(scale).is_integer() else f"JSD x {scale:g}"
    base = alt.Chart(t).encode(
        x=alt.X("other:N", sort=order, title=None, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("domain:N", sort=order, title=None),
    )
    rect = base.mark_rect().encode(
        color=alt.Color("value:Q", title=label, scale=alt.Scale(scheme="blues")),
        tooltip=["domain", "other", alt.Tooltip("jsd:Q", format=".5f"), alt.Tooltip("value:Q", format=".0f")],
    )
    text = base.mark_text(fontSize=12).encode(
        text=alt.Text("value:Q", format=".0f"),
        color=alt.condition(alt.datum.value > t["value"].max() * 0.6, alt.value("white"), alt.value("black")),
    )
    return (rect + text).properties(
        width=60 * len(order), height=60 * len(order),
        title=title or f"Domain divergence: Jensen-Shannon divergence of subword unigram distributions ({label})",
    )


# ---------------------------------------------------------------------------------- federated

def federated_chart(summary: pd.DataFrame, *, title: str = "", target: dict | None = None):
    """Global test accuracy against cumulative MB communicated (log scale), one line per sparsity
    (colour) and strategy (solid: masks-reset, dotted: masks-random), mean and +-1 std band over
    seeds per run; the dense baselines grey (fair: dashed, naive: long dashes). ``target``: source ->
    target accuracy (0..1), drawn as a dotted horizontal rule. One panel per source domain."""
    from ltnb.base.config import FEDERATED_DENSE as DENSE
    from ltnb.base.config import FEDERATED_NAIVE as NAIVE
    from ltnb.base.config import FEDERATED_STRATEGIES as STRATEGIES

    c = summary[summary["fl_round"] >= 1].copy()
    c["acc"] = 100 * c["acc_mean"]
    c["lo"] = 100 * (c["acc_mean"] - c["acc_std"])
    c["hi"] = 100 * (c["acc_mean"] + c["acc_std"])
    c["sparsity_pct"] = 100 * c["sparsity"]
    c["ticket"] = ["dense" if st in (DENSE, NAIVE) else f"{sparsity_label(sp)}% sparse" for st, sp in zip(c["strategy"], c["sparsity"])]
    c["target_pct"] = [100 * (target or {}).get(s, float("nan")) for s in c["source"]]
    levels = ["dense"] + [t for t in c.sort_values("sparsity")["ticket"].drop_duplicates() if t != "dense"]
    palette = ["#555555", "#1f77b4", "#2ca02c", "#ff7f0e", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
    scale = alt.Scale(domain=levels, range=(palette * 3)[:len(levels)])
    color = alt.Color("ticket:N", title="ticket", sort=levels, scale=scale,
                      legend=alt.Legend(symbolType="stroke", symbolStrokeWidth=3, symbolOpacity=1))
    kinds = [k for k in (DENSE, NAIVE, *STRATEGIES) if k in set(c["strategy"])]
    dash = alt.StrokeDash("strategy:N", title="initial values", sort=kinds,
                          legend=alt.Legend(symbolType="stroke", symbolStrokeWidth=2, symbolSize=400,
                                            symbolStrokeColor="#333333", symbolOpacity=1), scale=alt.Scale(
        domain=kinds, range=[{DENSE: [6, 4], NAIVE: [12, 3], "masks-reset": [1, 0], "masks-random": [2, 2]}[k] for k in kinds]))
    x = alt.X("mb_cumulative:Q", title="megabytes communicated (cumulative, both directions, log scale)",
              scale=alt.Scale(type="log"))
    band = alt.Chart().mark_area(opacity=0.12).encode(
        x=x, y=alt.Y("lo:Q", title="global test accuracy (%)", scale=alt.Scale(zero=False)), y2="hi:Q",
        color=color, detail="series:N")
    line = alt.Chart().mark_line(strokeWidth=2).encode(
        x=x, y=alt.Y("acc:Q", scale=alt.Scale(zero=False)), color=color, strokeDash=dash, detail="series:N")
    points = alt.Chart().mark_point(filled=True, size=22, opacity=1).encode(
        x=x, y="acc:Q", color=alt.Color("ticket:N", sort=levels, legend=None, scale=scale),
        tooltip=["series", "fl_round", alt.Tooltip("mb_cumulative:Q", format=".3f", title="MB"),
                 alt.Tooltip("acc:Q", format=".2f"), alt.Tooltip("acc_std:Q", format=".4f"), "n"])
    layers = [band, line, points]
    if target:
        layers.append(alt.Chart().mark_rule(strokeDash=[1, 3], color="#000000", strokeWidth=1.5).encode(
            y="max(target_pct):Q", tooltip=[alt.Tooltip("max(target_pct):Q", format=".1f", title="target %")]))
    layer = alt.layer(*layers, data=c).properties(width=420, height=280)
    return layer.facet(facet=alt.Facet("source:N", title="server (source) domain"), columns=2).properties(
        title=title or "Federated learning with a ticket: global test accuracy vs megabytes communicated"
    ).configure_legend(orient="right")
