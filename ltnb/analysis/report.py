"""The study's report: Figures 1, 3 and 4, the phase transition, the findings' verdicts, the tables.

- Figure 3 (obtaining tickets): per domain, test accuracy against sparsity for FULL-MODEL (the dense
  round 0, a dashed reference), TICKET-RESET, TICKET-RANDOM and the control TICKET-REINIT (the reset
  chain's masks, fresh values); mean line and +-1 std band over seeds (``ltnb.analysis.plots``).
- Figure 4 (transferring tickets): per source->target pair, MASKS-RESET, MASKS-RANDOM and the target's
  own TICKET-RESET chain with the same seeds and settings (TICKET-TARGET).
- The training diagnostics per strategy and round (``ltnb.analysis.results.diagnostics``: epochs run, best epoch,
  the share of trainings that converged, the relative weight change per layer group, the embedding rows
  seen in training), a table and a chart (``diagnostics.csv``, ``diagnostics.{png,svg}``).
- The masks' overlap (Jaccard, per layer group and round; ``mask_overlap.csv``): reset's against
  random's, and a transfer source's against the target's own; computed from the tickets by
  ``ltnb.core.lottery.write_mask_overlap`` (the report stage runs it first; torch is not imported here).
- Beside them, the measured transitions (``ltnb.analysis.phase.summary``) and the verdict on each of the
  paper's four findings (``ltnb.analysis.findings``), computed from the same rows.

A study may hold runs of several settings (a plan that varies ``init_a``, or a changed plan): each
settings hash is one *group*, reported on its own (figures, transitions, findings), labelled by the
settings that differ; numbers of different settings are never averaged together. The group with the
most rows comes first and its figures are ``figure3.png`` etc.; the others' carry their hash.

Everything is written under ``<study>/report/``: PNG and SVG per figure (vl-convert, offline),
``summary.parquet``/``.csv`` (mean, std, n per stage, pair, strategy, round, settings),
``phase_transition.csv``, ``findings.csv`` and ``index.html``, one page with the SVGs inlined: it opens
offline, with no JavaScript at all.
"""
from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ltnb.analysis import federated_results, findings, phase, plots, results, scale
from ltnb.base import paths
from ltnb.base.config import PhaseSettings
from ltnb.base._io import read_json, write_parquet, write_text


@dataclass(frozen=True)
class Group:
    """The rows of one settings hash, and what distinguishes its settings from the other groups'."""
    settings_hash: str
    label: str
    rows: pd.DataFrame


def settings_of(study: Path) -> dict[str, dict]:
    """settings hash -> the flat settings of its runs (read from each run's settings.json)."""
    out: dict[str, dict] = {}
    for f in sorted(study.glob("obtain/*/*/seed*/*/settings.json")) + sorted(study.glob("transfer/*/*/seed*/*/settings.json")):
        h = f.parent.name
        if h in out:
            continue
        try:
            info = read_json(f)
        except (OSError, ValueError):
            continue
        s = info.get("settings", {})
        flat = {k: v for k, v in s.items() if not isinstance(v, dict)}
        for section in ("model", "train"):
            flat.update(s.get(section, {}))
        flat.pop("rounds", None)
        out[h] = flat
    return out


def settings_groups(rows: pd.DataFrame, settings: dict[str, dict] | None = None) -> list[Group]:
    """One group per settings hash, the one with the most rows first; labels name the differing settings."""
    if rows.empty:
        return []
    counts = rows["settings_hash"].value_counts()
    hashes = list(counts.index)
    settings = settings or {}
    differing = set()
    known = [settings[h] for h in hashes if h in settings]
    for k in set().union(*known) if known else ():
        if len({json.dumps(s.get(k), sort_keys=True, default=str) for s in known}) > 1:
            differing.add(k)
    out = []
    for h in hashes:
        s = settings.get(h, {})
        label = ", ".join(f"{k}={_short(s.get(k))}" for k in sorted(differing)) if differing and s else f"settings {h}"
        out.append(Group(h, label, rows[rows["settings_hash"] == h]))
    return out


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def table(rows: pd.DataFrame) -> pd.DataFrame:
    """Wide table: 'mean ± std' test accuracy (%) per (stage, pair, strategy) x round; '-' where a
    round does not exist (a transfer has no round 0)."""
    s = results.summarize(rows)
    if s.empty:
        return pd.DataFrame()
    s["cell"] = [f"{100 * m:.1f} ± {0 if pd.isna(d) else 100 * d:.1f}" for m, d in zip(s["test_acc_mean"], s["test_acc_std"])]
    levels = s.groupby("round")["sparsity"].mean()
    wide = s.pivot_table(index=["stage", "pair", "strategy"], columns="round", values="cell", aggfunc="first")
    wide.columns = [f"r{int(r)} ({plots.sparsity_label(levels[r])}%)" for r in wide.columns]
    return wide.fillna("-")


def phase_columns(table: pd.DataFrame) -> pd.DataFrame:
    """The columns of ``phase.summary`` a reader needs, with readable names."""
    t = table.copy()
    t["mde"] = [("-" if st == "detected" else "not detectable" if not pd.notna(m) or m == float("inf") else f"{m:.1f} pp")
                for st, m in zip(t["transition"].map(lambda x: "detected" if x.endswith("%") else x), t["mde_pp"])]
    t["collapse_points"] = [f"{a}: {_pct(sa)}, {b}: {_pct(sb)}" for a, b, sa, sb in
                            zip(t["a"], t["b"], t["collapse_a_sparsity"], t["collapse_b_sparsity"])]
    cols = {"stage": "stage", "pair": "domain / pair", "comparison": "comparison", "seeds": "seeds",
            "transition": "onset: a beats b from (max-T)", "collapse_points": "collapse points (mean)",
            "collapse": "collapse a - b (rounds, exact interval)", "mde": "detectable at a round (80%)",
            "instability": "instability", "chance_last": "at chance (last round)"}
    return t[list(cols)].rename(columns=cols)


def _pct(s) -> str:
    return "-" if pd.isna(s) else f"{plots.sparsity_label(s)}%"


def groups(study_dir: str | os.PathLike) -> list[Group]:
    """The settings groups of a study's result rows (what the report draws, in its order)."""
    study = paths.resolve_study(study_dir)
    return settings_groups(results.load(study), settings_of(study))


def write_table(study_dir: str | os.PathLike, name: str, table: pd.DataFrame) -> list[Path]:
    """Write ``<study>/report/<name>.csv`` and ``.parquet`` atomically (phase and findings tables)."""
    out = paths.report_dir(paths.resolve_study(study_dir))
    return [write_text(out / f"{name}.csv", table.to_csv(index=False)), write_parquet(out / f"{name}.parquet", table)]


def build(study_dir: str | os.PathLike, settings: PhaseSettings | None = None, *, log=print) -> dict:
    """Write the report of a study with these statistics settings (default ``PhaseSettings()``); returns
    the paths written, by name (``figure3``, ``figure3_<hash>`` for a later settings group, ...,
    ``index``), and under ``"groups"`` one entry per settings group: ``{"group": Group, "figure3": svg,
    "figure4": svg, "diagnostics": svg}`` (the figures it drew), so a reader never rebuilds a name."""
    settings = PhaseSettings() if settings is None else settings
    alpha, delta, test = settings.alpha, settings.delta, settings.test
    study = paths.resolve_study(study_dir)
    out = paths.report_dir(study)
    rows = results.load(study)
    groups = settings_groups(rows, settings_of(study))
    stats = dict(alpha=alpha, delta=delta)
    written: dict[str, object] = {}
    summary = results.summarize(rows)
    write_parquet(out / "summary.parquet", summary)
    write_text(out / "summary.csv", summary.to_csv(index=False))
    sections, phase_tables, finding_tables = [], [], []
    for i, g in enumerate(groups):
        tag = "" if i == 0 else f"_{g.settings_hash}"
        figs = {}
        for name, make in (("figure3", plots.figure3), ("figure4", plots.figure4)):
            chart = make(g.rows)
            if chart is not None:
                written[name + tag] = plots.save(chart, out / f"{name}{tag}", formats=("png", "svg"))
                figs[name] = out / f"{name}{tag}.svg"
        diag = results.diagnostics(g.rows)
        chart = plots.diagnostics_chart(diag)
        if chart is not None:
            written["diagnostics" + tag] = plots.save(chart, out / f"diagnostics{tag}", formats=("png", "svg"))
            figs["diagnostics"] = out / f"diagnostics{tag}.svg"
        write_text(out / f"diagnostics{tag}.csv", diag.to_csv(index=False))
        ph = phase.summary(g.rows, alpha=alpha, test=test).assign(group=g.label)
        fi = findings.verdicts(g.rows, **stats).assign(group=g.label, settings_hash=g.settings_hash)
        phase_tables.append(ph)
        finding_tables.append(fi)
        sections.append((g, figs, ph, fi))
    ph_all = pd.concat(phase_tables, ignore_index=True) if phase_tables else phase.summary(rows)
    fi_all = pd.concat(finding_tables, ignore_index=True) if finding_tables else pd.DataFrame(columns=findings.COLUMNS)
    write_table(study, "phase_transition", ph_all)
    write_table(study, "findings", fi_all)
    overlap = load_overlap(study)
    if not overlap.empty:
        write_text(out / "mask_overlap.csv", overlap_table(overlap).to_csv(index=False))
    page = _html(study, sections, rows, overlap)
    sizes = {s for s in scale.train_sizes(settings_of(study)).values() if s is not None}
    if len(sizes) >= 2:  # a scale study: finding 2's windows against the training size
        by_size = scale.size_table(rows, settings_of(study), alpha=alpha, margin=delta)
        write_table(study, "scale", by_size)
        chart = scale.size_chart(by_size, title="reset - random against training-set size")
        extra = "<h2>Training-set size</h2>"
        if chart is not None:
            written["scale"] = plots.save(chart, out / "scale", formats=("png", "svg"))
            extra += _figure(out / "scale.svg", "reset - random at or below and above 96% sparsity, and the dense "
                                                "network's accuracy, against the training texts per domain")
        extra += by_size.round(3).to_html(index=False, border=0, na_rep="-")
        page = page.replace("</body></html>", extra + "</body></html>")
    page = page.replace("</body></html>", federated_html(study, out, log=log) + "</body></html>")
    written["index"] = write_text(out / "index.html", page)
    written["groups"] = [{"group": g, **figs} for g, figs, _, _ in sections]
    log(f"report of {len(rows)} result rows ({len(groups)} settings group(s)) written to {out}/index.html")
    return written


def load_overlap(study: Path) -> pd.DataFrame:
    """``report/mask_overlap.parquet`` (``ltnb.core.lottery.write_mask_overlap``), or an empty frame."""
    from ltnb.base import integrity

    f = paths.report_dir(study) / "mask_overlap.parquet"
    return integrity.read_parquet(f) if f.exists() else pd.DataFrame()


def overlap_table(overlap: pd.DataFrame) -> pd.DataFrame:
    """Mean (and min, max) Jaccard over seeds per (comparison, settings, domain or pair, layer, round)."""
    if overlap.empty:
        return overlap
    return (overlap.groupby(["settings_hash", "comparison", "pair", "layer", "round"], sort=True)
            .agg(sparsity=("sparsity", "mean"), jaccard=("jaccard", "mean"), jaccard_min=("jaccard", "min"),
                 jaccard_max=("jaccard", "max"), seeds=("seed", "nunique")).reset_index())


def overlap_wide(overlap: pd.DataFrame, settings_hash: str) -> pd.DataFrame:
    """Mean Jaccard over seeds, (comparison, pair, layer) x round, for one settings group."""
    t = overlap_table(overlap)
    t = t[t["settings_hash"] == settings_hash] if len(t) else t
    if t.empty:
        return pd.DataFrame()
    levels = t.groupby("round")["sparsity"].mean()
    wide = t.pivot_table(index=["comparison", "pair", "layer"], columns="round", values="jaccard", aggfunc="first")
    wide.columns = [f"r{int(r)} ({plots.sparsity_label(levels[r])}%)" for r in wide.columns]
    return wide.map(lambda v: "-" if pd.isna(v) else f"{v:.3f}")


def diagnostics_wide(diag: pd.DataFrame) -> pd.DataFrame:
    """The diagnostics table as shown: one row per (stage, strategy, round), rounded."""
    if diag.empty:
        return diag
    t = diag.drop(columns=["settings_hash"]).copy()
    t["sparsity"] = [f"{plots.sparsity_label(v)}%" for v in t["sparsity"]]
    return t.round({"epochs_run": 1, "best_epoch": 1, "converged": 2, "wchange_embedding": 3, "wchange_conv": 3,
                    "wchange_mlp": 3, "emb_rows_seen": 3, "emb_weights_seen": 3})


CAPTIONS = {
    "figure1": "Figure 1 - Jensen-Shannon divergence between the domains' subword unigram distributions (x 1e5).",
    "figure3": "Figure 3 - Obtaining tickets in each domain: FULL-MODEL (dense, dashed), TICKET-RESET, TICKET-RANDOM "
               "and the control TICKET-REINIT (the reset chain's masks with fresh values).",
    "figure4": "Figure 4 - Transferring tickets: the source's masks trained on the target with the source's initial "
               "values (MASKS-RESET) or fresh ones (MASKS-RANDOM), against the target's own tickets with the same seeds "
               "and settings (TICKET-TARGET).",
    "diagnostics": "Training diagnostics per strategy and round, mean over domains (pairs) and seeds: epochs run, "
                   "the share of trainings whose validation accuracy stopped improving before their last epoch, the "
                   "relative change of each layer group's weights during the round, and the share of surviving "
                   "embedding rows whose token occurs in the training split.",
}


def _html(study: Path, sections, rows: pd.DataFrame, overlap: pd.DataFrame | None = None) -> str:
    css = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:12px}"
           "td,th{border:1px solid #ccc;padding:2px 6px;vertical-align:top}figure{margin:1em 0}"
           ".held{color:#1a7f37;font-weight:bold}.not-held{color:#b42318;font-weight:bold}.inconclusive{color:#9a6700}.not-assessable{color:#777;font-weight:bold}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>ltnb report: {html.escape(study.name)}</title>"
             f"<style>{css}</style></head><body>",
             f"<h1>Lottery tickets under distribution shift: study <code>{html.escape(study.name)}</code></h1>",
             f"<p>{len(rows)} result rows; {rows['seed'].nunique() if len(rows) else 0} seed(s). Accuracy is test accuracy "
             "in percent, mean ± std over seeds.</p>"]
    fig1 = paths.divergence_dir(study) / "figure1.svg"
    if fig1.exists():
        parts.append(_figure(fig1, CAPTIONS["figure1"]))
    for g, figs, ph, fi in sections:
        if len(sections) > 1:
            parts.append(f"<h2>Settings: {html.escape(g.label)} <small>({g.settings_hash})</small></h2>")
        parts.append("<h2>The paper's findings, tested on these runs</h2>")
        parts.append(_findings_html(fi))
        for name in ("figure3", "figure4"):
            if name in figs:
                parts.append(_figure(figs[name], CAPTIONS[name]))
                stage = "obtain" if name == "figure3" else "transfer"
                part = ph[ph["stage"] == stage]
                if len(part):
                    parts.append(f"<h3>Phase transition ({stage}), measured</h3>")
                    parts.append(phase_columns(part).to_html(index=False, border=0, na_rep="-"))
                    parts.append(f"<p style='font-size:12px;color:#555'>{html.escape(phase.METHOD)}</p>")
        wide = table(g.rows)
        if not wide.empty:
            parts.append("<h3>Test accuracy per round</h3>")
            parts.append(wide.to_html(border=0))
        diag = diagnostics_wide(results.diagnostics(g.rows))
        if not diag.empty:
            parts.append("<h3>Training diagnostics</h3>")
            if "diagnostics" in figs:
                parts.append(_figure(figs["diagnostics"], CAPTIONS["diagnostics"]))
            parts.append(diag.to_html(index=False, border=0, na_rep="-"))
        ov = overlap_wide(overlap, g.settings_hash) if overlap is not None and len(overlap) else pd.DataFrame()
        if not ov.empty:
            parts.append("<h3>Mask overlap (Jaccard), mean over seeds</h3>")
            parts.append("<p style='font-size:12px;color:#555'>|A and B| / |A or B| of two masks' surviving entries "
                         "per layer group: reset-random compares the reset chain's masks with random's own (same "
                         "domain, seed, round); source-target a transfer's source masks with the target's own reset "
                         "masks (TICKET-TARGET).</p>")
            parts.append(ov.to_html(border=0))
    parts.append("</body></html>")
    return "\n".join(parts)


def federated_html(study: Path, out: Path, *, log=print) -> str:
    """The federated stage's part of the report: ``federated.{png,svg}`` (global test accuracy against
    cumulative MB, mean and +-1 std over seeds, dense dashed), ``federated_table.csv`` and an HTML
    section with both and the measured savings; "" when the study has no federated runs. One settings
    hash (the one with most rows) is drawn, and the others named."""
    rows = federated_results.load(study)
    if rows.empty:
        return ""
    counts = rows["settings_hash"].value_counts()
    if len(counts) > 1:
        log(f"report: the federated stage has runs of {len(counts)} settings; drawing {counts.index[0]}, leaving out "
            + ", ".join(f"{h} ({n} rows)" for h, n in counts.iloc[1:].items()))
    rows = rows[rows["settings_hash"] == counts.index[0]]
    summary = federated_results.summarize(rows)
    tab = federated_results.table(rows)
    target = dict(zip(tab["source"], tab["target_acc_%"] / 100))
    plots.save(plots.federated_chart(summary, target=target), out / "federated", formats=("png", "svg"))
    write_text(out / "federated_table.csv", tab.to_csv(index=False))
    shown = tab.drop(columns=["settings_hash"]).rename(columns={"sparsity_%": "sparsity %", "target_acc_%": "target %",
                                                                "final_acc_%": "final acc %", "final_acc_std": "± std"})
    parts = [
        "<h2>Federated learning with a ticket (Flower)</h2>",
        "<p>The server holds the source domain and its TICKET-RESET ticket; clients hold the other domains' "
        f"training data ({int(rows['clients'].iloc[0])} clients). Bytes are what Flower sent and received, "
        "per client link, both directions; the mask travels once; the fair dense baseline and the tickets send "
        "only the embedding rows that changed (row indices plus values), the naive dense run every value. "
        "Global test accuracy pools the client "
        f"domains' test splits; mean ± std over {rows['seed'].nunique()} seed(s). The target is "
        f"{float(rows['target_share'].iloc[0]):g} x the fair dense baseline's final accuracy (mean over seeds), "
        "fixed before the runs; MB to target per seed, and the ratio to the fair dense baseline's with a 95% "
        "Student-t interval over seeds on the log ratio (a seed that never reaches the target is censored: "
        "counted at everything it sent, so the saving is then a bound).</p>",
        _figure(out / "federated.svg", "Global test accuracy against megabytes communicated (log scale); dense "
                "baselines dashed; bands ± 1 std over seeds; the target dotted."),
        shown.to_html(border=0, index=False, float_format=lambda v: f"{v:.3f}", na_rep="not reached"),
        "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in federated_results.savings(tab)) + "</ul>",
    ]
    return "\n".join(parts)


def _figure(path: Path, caption: str) -> str:
    return f"<figure>{path.read_text(encoding='utf-8')}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _findings_html(fi: pd.DataFrame) -> str:
    rows = ["<table><tr><th>#</th><th>the paper's claim</th><th>statistic</th><th>estimate</th><th>interval</th>"
            "<th>p</th><th>n</th><th>verdict</th><th>power (80%, from this study's noise)</th><th>criterion</th>"
            "<th>detail</th></tr>"]
    for _, r in fi.iterrows():
        ci = "-" if pd.isna(r["ci_lo"]) and pd.isna(r["ci_hi"]) else f"[{_num(r['ci_lo'])}, {_num(r['ci_hi'])}]"
        if ci != "-" and pd.notna(r.get("ci_level")):
            ci += f" ({100 * r['ci_level']:.2f}%, exact)"
        rows.append("<tr>" + "".join(f"<td>{x}</td>" for x in (
            html.escape(r["finding"]), html.escape(r["claim"]), html.escape(r["statistic"]),
            f"{_num(r['estimate'])} {html.escape(r['unit'])}", ci, "-" if pd.isna(r["p"]) else f"{r['p']:.3g}",
            html.escape(r["n"]), f"<span class='{r['verdict'].split(':')[0].replace(' ', '-')}'>{html.escape(r['verdict'])}"
                                 f"</span>",
            html.escape(str(r.get("power", "") or "-")), html.escape(r["criterion"]), html.escape(r["detail"]))) + "</tr>")
    rows.append("</table>")
    if len(fi) and "criteria_hash" in fi:
        rows.append(f"<p style='font-size:12px;color:#555'>Criteria fixed in <code>ltnb.analysis.findings</code> before the data; "
                    f"criteria hash <code>{html.escape(str(fi['criteria_hash'].iloc[0]))}</code> (the criteria's text and "
                    f"the code of ltnb.analysis.findings and of the statistics modules; docs/statistics.md, docs/simulations.md).</p>")
    return "\n".join(rows)


def _num(v) -> str:
    if pd.isna(v):
        return "-"
    if v in (float("inf"), float("-inf")):
        return "open" if v > 0 else "-inf"
    return f"{v:.2f}"
