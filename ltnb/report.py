"""The study's report: Figures 1, 3 and 4 and the accuracy tables, from all result rows.

- Figure 3 (obtaining tickets): per domain, test accuracy against sparsity for FULL-MODEL (the dense
  round 0, a dashed reference), TICKET-RESET and TICKET-RANDOM; mean line and +-1 std band over seeds.
- Figure 4 (transferring tickets): per source->target pair, MASKS-RESET, MASKS-RANDOM and the
  target's own TICKET-RESET chain (TICKET-TARGET), same style.
- x positions are the rounds (evenly spaced, as in the paper), labelled with each round's sparsity in
  percent, so the high-sparsity end (96.8, 98.7, 99.2 ...) stays readable.

Everything is written under ``<study>/report/``: PNG and SVG per figure (vl-convert, offline),
``summary.parquet``/``summary.csv`` (mean, std, n per stage, pair, strategy, round) and ``index.html``,
a single page with the SVGs inlined: it opens offline, with no JavaScript at all.
"""
from __future__ import annotations

import html
import os
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd

from . import paths, plots, results
from ._io import write_parquet, write_text

LABELS = {
    "full": "FULL-MODEL",
    "reset": "TICKET-RESET",
    "random": "TICKET-RANDOM",
    "rewind": "TICKET-REWIND",
    "masks-reset": "MASKS-RESET",
    "masks-random": "MASKS-RANDOM",
    "target": "TICKET-TARGET",
}
COLORS = {
    "FULL-MODEL": "#555555",
    "TICKET-RESET": "#1f77b4",
    "TICKET-RANDOM": "#d62728",
    "TICKET-REWIND": "#9467bd",
    "MASKS-RESET": "#2ca02c",
    "MASKS-RANDOM": "#ff7f0e",
    "TICKET-TARGET": "#1f77b4",
}


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """``ltnb.results.summarize`` (mean, std, n over seeds per stage, pair, strategy, round and
    settings), with the std of a single seed drawn as 0 (no band) instead of NaN."""
    out = results.summarize(rows)
    out[["test_acc_std", "val_acc_std"]] = out[["test_acc_std", "val_acc_std"]].astype(float).fillna(0.0)
    return out


def one_setting(rows: pd.DataFrame, log=print) -> pd.DataFrame:
    """Keep, per stage, the rows of the settings hash with the most rows; say what was left out.

    A study whose plan changed holds runs of several settings side by side (they never overwrite each
    other); one figure must not average over them."""
    keep = []
    for stage, part in rows.groupby("stage", sort=False):
        counts = part["settings_hash"].value_counts()
        if len(counts) > 1:
            log(f"report: stage {stage} has runs of {len(counts)} settings; drawing {counts.index[0]} "
                f"({counts.iloc[0]} rows), leaving out " + ", ".join(f"{h} ({n} rows)" for h, n in counts.iloc[1:].items()))
        keep.append(part[part["settings_hash"] == counts.index[0]])
    return pd.concat(keep, ignore_index=True) if keep else rows


def obtain_curves(summary: pd.DataFrame) -> pd.DataFrame:
    ob = summary[summary["stage"] == "obtain"].copy()
    if ob.empty:
        return ob
    ob["series"] = ob["strategy"].map(LABELS).fillna(ob["strategy"])
    # FULL-MODEL: the dense round 0 (shared by every chain of a domain and seed); a flat reference.
    full = ob[ob["round"] == 0].groupby("pair").agg(test_acc_mean=("test_acc_mean", "mean"),
                                                    test_acc_std=("test_acc_std", "mean")).reset_index()
    rounds = ob[["pair", "round", "sparsity"]].drop_duplicates(["pair", "round"])
    full = rounds.merge(full, on="pair")
    full["series"] = LABELS["full"]
    return pd.concat([ob, full], ignore_index=True)


def transfer_curves(summary: pd.DataFrame) -> pd.DataFrame:
    tr = summary[summary["stage"] == "transfer"].copy()
    if tr.empty:
        return tr
    tr["series"] = tr["strategy"].map(LABELS).fillna(tr["strategy"])
    # TICKET-TARGET: the target domain's own reset chain, drawn in each pair's panel.
    ob = summary[(summary["stage"] == "obtain") & (summary["strategy"] == "reset")]
    parts = [tr]
    for pair in tr["pair"].unique():
        target = pair.split("->", 1)[1]
        t = ob[ob["pair"] == target].copy()
        if len(t):
            t["pair"] = pair
            t["series"] = LABELS["target"]
            parts.append(t)
    return pd.concat(parts, ignore_index=True)


def _sparsity_axis(curves: pd.DataFrame) -> alt.Axis:
    levels = curves.groupby("round")["sparsity"].mean().sort_index()
    labels = {int(r): sparsity_label(s) for r, s in levels.items()}
    expr = "{" + ", ".join(f"'{r}': '{lab}'" for r, lab in labels.items()) + "}[toString(datum.value)]"
    return alt.Axis(values=list(labels), labelExpr=expr, title="sparsity (%) after each round", labelAngle=-45, grid=False)


def sparsity_label(s: float) -> str:
    """A short label for a sparsity: whole percent below 90, then as many decimals as it takes to
    tell the remaining weights apart (96.8, 98.7, 99.84, 99.93, 99.98)."""
    p = 100 * float(s)
    if p == 0:
        return "0"
    if p < 90:
        return f"{p:.0f}"
    for digits in (1, 2, 3, 4):
        text = f"{p:.{digits}f}"
        if float(text) < 100 and abs(float(text) - p) <= 0.2 * (100 - p):
            return text
    return f"{p:.5f}"


def accuracy_chart(curves: pd.DataFrame, *, facet: str = "pair", title: str = "", columns: int = 3) -> alt.FacetChart:
    """Mean line and +-1 std band of test accuracy against the rounds' sparsity, one panel per ``facet``."""
    c = curves.copy()
    c["acc"] = 100 * c["test_acc_mean"]
    c["lo"] = 100 * (c["test_acc_mean"] - c["test_acc_std"])
    c["hi"] = 100 * (c["test_acc_mean"] + c["test_acc_std"])
    c["sparsity_pct"] = 100 * c["sparsity"]
    series = [s for s in COLORS if s in set(c["series"])]
    color = alt.Color("series:N", title=None, scale=alt.Scale(domain=series, range=[COLORS[s] for s in series]),
                      legend=alt.Legend(orient="bottom"))
    x = alt.X("round:Q", axis=_sparsity_axis(c), scale=alt.Scale(nice=False))
    base = alt.Chart().encode(x=x, color=color)
    band = base.mark_area(opacity=0.18).encode(y=alt.Y("lo:Q", title="test accuracy (%)", scale=alt.Scale(zero=False)), y2="hi:Q")
    line = base.mark_line(point=True).encode(
        y=alt.Y("acc:Q", scale=alt.Scale(zero=False)),
        strokeDash=alt.condition(alt.datum.series == "FULL-MODEL", alt.value([5, 4]), alt.value([1, 0])),
        tooltip=["series", "round", alt.Tooltip("sparsity_pct:Q", format=".2f", title="sparsity %"),
                 alt.Tooltip("acc:Q", format=".2f"), alt.Tooltip("test_acc_std:Q", format=".4f")],
    )
    layer = alt.layer(band, line, data=c).properties(width=260, height=190)
    return layer.facet(facet=alt.Facet(f"{facet}:N", title=None), columns=columns).properties(title=title).resolve_scale(y="independent")


def figure3(summary: pd.DataFrame):
    curves = obtain_curves(summary)
    if curves.empty:
        return None
    return accuracy_chart(curves, title="Figure 3 - obtaining tickets: test accuracy vs sparsity (mean +-1 std over seeds)")


def figure4(summary: pd.DataFrame):
    curves = transfer_curves(summary)
    if curves.empty:
        return None
    return accuracy_chart(curves, title="Figure 4 - transferring tickets (source->target): test accuracy vs sparsity")


def table(summary: pd.DataFrame) -> pd.DataFrame:
    """Wide table: 'mean +- std' test accuracy (%) per (stage, pair, strategy) x round."""
    if summary.empty:
        return pd.DataFrame()
    s = summary.copy()
    s["cell"] = [f"{100*m:.1f} ± {100*d:.1f}" for m, d in zip(s["test_acc_mean"], s["test_acc_std"])]
    s["column"] = [f"r{int(r)} ({sparsity_label(sp)}%)" for r, sp in zip(s["round"], s["sparsity"])]
    wide = s.pivot_table(index=["stage", "pair", "strategy"], columns="round", values="cell", aggfunc="first")
    names = s.drop_duplicates("round").set_index("round")["column"]
    wide.columns = [names[r] for r in wide.columns]
    return wide


def build(study_dir: str | os.PathLike, *, log=print) -> dict:
    """Write the report of a study; returns the paths written."""
    study = paths.resolve_study(study_dir)
    out = paths.report_dir(study)
    rows = one_setting(results.load(study), log=log)
    summary = summarize(rows)
    written: dict[str, list[Path] | Path] = {}
    write_parquet(out / "summary.parquet", summary)
    write_text(out / "summary.csv", summary.to_csv(index=False))
    wide = table(summary)
    figures = {}
    for name, make in (("figure3", figure3), ("figure4", figure4)):
        chart = make(summary)
        if chart is not None:
            written[name] = plots.save(chart, out / name, formats=("png", "svg"))
            figures[name] = out / f"{name}.svg"
    fig1 = paths.divergence_dir(study) / "figure1.svg"
    if fig1.exists():
        figures = {"figure1": fig1, **figures}
    page = _html(study, figures, wide, rows)
    page = page.replace("</body></html>", federated_html(study, out, log=log) + "</body></html>")  # issue 11
    written["index"] = write_text(out / "index.html", page)
    log(f"report of {len(rows)} result rows written to {out}/index.html")
    return written


def federated_html(study: Path, out: Path, *, log=print) -> str:
    """The federated stage's part of the report (issue 11): ``federated.{png,svg}`` (global test
    accuracy against cumulative MB, mean and +-1 std over seeds, dense dashed),
    ``federated_table.csv`` and an HTML section with both and the measured savings. "" when the
    study has no federated runs. One settings hash (the one with most rows) is drawn."""
    from . import federated

    rows = federated.load(study)
    if rows.empty:
        return ""
    counts = rows["settings_hash"].value_counts()
    if len(counts) > 1:
        log(f"report: the federated stage has runs of {len(counts)} settings; drawing {counts.index[0]}, leaving out "
            + ", ".join(f"{h} ({n} rows)" for h, n in counts.iloc[1:].items()))
    rows = rows[rows["settings_hash"] == counts.index[0]]
    summary = federated.summarize(rows)
    tab = federated.table(summary)
    plots.save(federated.chart(summary), out / "federated", formats=("png", "svg"))
    write_text(out / "federated_table.csv", tab.to_csv(index=False))
    shown = tab.drop(columns=["settings_hash"]).rename(columns={"sparsity_%": "sparsity %", "target_acc_%": "target %",
                                                                "final_acc_%": "final acc %", "final_acc_std": "± std"})
    parts = [
        "<h2>Federated learning with a ticket (Flower)</h2>",
        "<p>The server holds the source domain and its TICKET-RESET ticket; clients hold the other domains' "
        f"training data ({int(rows['clients'].iloc[0])} clients). Bytes are what Flower sent and received, "
        "per client link, both directions; the mask travels once. Global test accuracy pools the client "
        f"domains' test splits; mean ± std over {rows['seed'].nunique()} seed(s).</p>",
        f"<figure>{(out / 'federated.svg').read_text(encoding='utf-8')}<figcaption>Global test accuracy against "
        "megabytes communicated (log scale); dense FedAvg dashed.</figcaption></figure>",
        shown.to_html(border=0, index=False, float_format=lambda v: f"{v:.3f}", na_rep="not reached"),
        "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in federated.savings(tab)) + "</ul>",
    ]
    return "\n".join(parts)


def _html(study: Path, figures: dict[str, Path], wide: pd.DataFrame, rows: pd.DataFrame) -> str:
    captions = {
        "figure1": "Figure 1 - Jensen-Shannon divergence between the domains' subword unigram distributions (x 1e5).",
        "figure3": "Figure 3 - Obtaining tickets in each domain: FULL-MODEL (dense, dashed), TICKET-RESET and TICKET-RANDOM.",
        "figure4": "Figure 4 - Transferring tickets: the source's masks trained on the target with the source's initial "
                   "values (MASKS-RESET) or fresh ones (MASKS-RANDOM), against the target's own tickets (TICKET-TARGET).",
    }
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>ltnb report: "
        f"{html.escape(study.name)}</title><style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;white-space:nowrap}"
        "figure{margin:1em 0}</style></head><body>",
        f"<h1>Lottery tickets under distribution shift: study <code>{html.escape(study.name)}</code></h1>",
        f"<p>{len(rows)} result rows; {rows['seed'].nunique() if len(rows) else 0} seed(s). "
        "Accuracy is test accuracy in percent, mean ± std over seeds.</p>",
    ]
    for name, path in figures.items():
        svg = path.read_text(encoding="utf-8")
        parts.append(f"<figure>{svg}<figcaption>{html.escape(captions[name])}</figcaption></figure>")
    if not wide.empty:
        parts.append("<h2>Test accuracy per round</h2>")
        parts.append(wide.to_html(border=0))
    parts.append("</body></html>")
    return "\n".join(parts)
