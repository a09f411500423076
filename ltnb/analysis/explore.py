"""The phase-transition explorer: ipywidgets controls over ``ltnb.analysis.phase`` and ``ltnb.analysis.plots``, and its
Voila launcher.

``app(study)`` builds the interactive view of ``notebooks/07_phase_transition.ipynb``; ``serve(study)``
(``ltnb explore STUDY``) serves that notebook as a standalone Voila app: controls and views only, no
code. This module holds no chart and no statistics of its own: the charts are ``ltnb.analysis.plots``'s (the
same as the report's), the numbers ``ltnb.analysis.phase``'s.

Rendering choice: every chart is rendered in the kernel to static SVG by vl-convert (which ships its
own Vega engine inside the Python package) and shown in an ``ipywidgets.HTML``. Nothing is loaded from
a CDN and nothing depends on a JupyterLab or Voila front-end extension beyond ipywidgets itself, so the
same notebook shows the same charts in JupyterLab, in Voila, in VS Code and offline. Tooltips are lost;
the table beside the charts carries the numbers instead.

How the app finds its study (Voila passes no papermill parameters): the notebook's ``study_dir``
parameter, overridden by the environment variable ``LTNB_STUDY`` (``serve`` sets it for the Voila
server, whose kernels inherit it). ``ltnb explore`` serves the study it was started on, or, when given
an outputs folder (``LTNB_OUTPUTS``), the studies in it, chosen by name with ``?study=NAME`` on the
app's URL (Voila hands the query string to the kernel as ``QUERY_STRING``). Beside them it always
offers the demo's result rows shipped with ltnb (``?study=shipped-demo``; ``ltnb/analysis/data/``, with
their date and machine in ``demo_rows.json``), so ``ltnb explore`` on a fresh clone opens in seconds,
before any study has run; the page says whose rows they are. A ``?study=`` naming
anything else (another folder, ``/etc``, ``../..``) or a folder that is gone gets a plain message in the
page (``page``): no traceback and no server path reach the page (Voila runs with
``--show_tracebacks=False``). Idle kernels of closed pages are culled after ``cull_idle`` seconds.
Only requests naming this server are answered (``local_only``: a ``Host`` of another name gets 403, a
kernel websocket from another ``Origin`` is refused), so a DNS-rebinding page cannot reach the app.
"""
from __future__ import annotations

import html
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pandas as pd

from ltnb.analysis import phase, plots
from ltnb.base import registry
from ltnb.base.labels import MEAN, SEEDS, series_name, sparsity_label
from ltnb.base.stages import STAGES

STUDY_ENV = "LTNB_STUDY"
OUTPUTS_ENV = "LTNB_OUTPUTS"  # an outputs folder: ?study=NAME chooses one of the studies in it
CULL_IDLE_S = 300  # a kernel idle (and no page connected) this long is shut down
NOTEBOOK = "07_phase_transition.ipynb"
ALPHAS = (0.001, 0.01, 0.05, 0.1)
#: the demo's result rows shipped with the package: ``?study=shipped-demo``, or ``study_dir = "shipped-demo"``
SHIPPED = "shipped-demo"
SHIPPED_ROWS = Path(__file__).resolve().parent / "data" / "demo_rows.csv.gz"
SHIPPED_INFO = SHIPPED_ROWS.with_name("demo_rows.json")
STRATEGY_ORDER = registry.order()  # every strategy, in the order of their definitions


# ---------------------------------------------------------------- where the study comes from

class StudyRefused(ValueError):
    """A study the app does not serve, or one that is gone; the message is safe to show in the page."""


def is_study(folder: str | os.PathLike) -> bool:
    """A folder a batch wrote a study into (it has one of the stages' folders, ``ltnb.base.stages``)."""
    return any(s.root(folder).is_dir() for s in STAGES.values())


def _studies_in(outputs: Path) -> list[str]:
    from ltnb.base.integrity import name_problem

    try:
        return sorted(p.name for p in outputs.iterdir() if p.is_dir() and not name_problem(p.name) and is_study(p))
    except OSError:
        return []


def shipped_info() -> dict:
    """What the shipped demo rows are: plan, date, machine, wall time (``data/demo_rows.json``)."""
    import json

    return json.loads(SHIPPED_INFO.read_text(encoding="utf-8"))


def shipped_note() -> str:
    """The line the explorer shows over the shipped rows, saying whose rows they are."""
    i = shipped_info()
    return (f"The shipped demo rows: the {i['rows']} result rows of the demo study ({i['plan']}; {i['run']}) "
            f"run on {i['date']} on {i['machine']}; {i['wall_time']}. Shipped with ltnb, not computed on this machine.")


def shipped_rows() -> pd.DataFrame:
    """The shipped demo rows (``ltnb.analysis.results.load`` of the demo study, ``data/demo_rows.csv.gz``)."""
    return pd.read_csv(SHIPPED_ROWS)


def shipped_app(*, alpha: float = phase.ALPHA, test: str = "signflip") -> "Explorer":
    """The explorer over the shipped demo rows, labelled as such."""
    return Explorer(shipped_rows(), study=SHIPPED, alpha=alpha, test=test, note=shipped_note())


def worked_example(study_dir) -> tuple[str, pd.DataFrame] | None:
    """(label, rows) of the study's first settings group (the shipped rows for ``SHIPPED``), for the
    notebook's worked example; None as the app (which shows the explorer only) or when it has no rows."""
    if app_mode():
        return None
    if str(study_dir) == SHIPPED:
        return "the shipped demo rows", shipped_rows()
    from ltnb.analysis import report
    from ltnb.base import paths

    groups = report.groups(paths.resolve_study(study_dir))
    return (groups[0].label, groups[0].rows) if groups else None


def study_from_env(default: str | os.PathLike) -> str:
    """The study folder the notebook shows.

    As the app (``ltnb explore``): the study it serves (``$LTNB_STUDY``), or, when it serves an outputs
    folder (``$LTNB_OUTPUTS``), the study of that folder named by ``?study=NAME``. Elsewhere
    (JupyterLab, papermill): ``default``. A ``?study=`` naming anything else raises ``StudyRefused``.
    """
    from ltnb.base.integrity import name_problem

    query = urllib.parse.parse_qs(os.environ.get("QUERY_STRING", ""))
    asked = query["study"][0] if query.get("study") else None
    outputs = os.environ.get(OUTPUTS_ENV)
    if outputs:
        root = Path(outputs)
        names = _studies_in(root)
        if asked is None and not names:
            return SHIPPED
        if asked is None:
            raise StudyRefused("Choose a study: " + ", ".join(f"?study={n}" for n in [*names, SHIPPED]) +
                               f" ({SHIPPED}: the demo's result rows shipped with ltnb).")
        if asked == SHIPPED and SHIPPED not in names:
            return SHIPPED
        if name_problem(asked, "study") is None and asked in names:
            return str(root / asked)
        raise StudyRefused(f"This explorer serves the studies of its outputs folder ({', '.join(names) or 'none yet'}) "
                           f"and the shipped demo rows (?study={SHIPPED}); "
                           f"?study={asked!r} is not one of them.")
    served = os.environ.get(STUDY_ENV) or str(default)
    if asked is None or asked in (served, Path(served).name):
        return served
    raise StudyRefused(f"This explorer serves the study {Path(served).name!r} only; ?study={asked!r} is not one of its studies.")


def app_mode() -> bool:
    """True when the notebook runs as the ``ltnb explore`` app (``$LTNB_STUDY`` or ``$LTNB_OUTPUTS`` set
    by ``serve``)."""
    return bool(os.environ.get(STUDY_ENV) or os.environ.get(OUTPUTS_ENV))


# ---------------------------------------------------------------- the table behind the views

def numbers(rows: pd.DataFrame, gaps: pd.DataFrame, *, strategies, rounds: tuple[int, int],
            chance: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per round: each strategy's mean ± std (n), chains at chance, and the difference's test."""
    from ltnb.analysis.results import summarize

    r = rows[rows["strategy"].isin(strategies) & rows["round"].between(*rounds)]
    s = summarize(r, by=["strategy", "round"])
    if s.empty:
        return pd.DataFrame()
    s = s.assign(cell=[f"{100 * m:.2f} ± {0 if np.isnan(d) else 100 * d:.2f} ({n})"
                       for m, d, n in zip(s["test_acc_mean"], s["test_acc_std"], s["n"])])
    wide = s.pivot(index="round", columns="strategy", values="cell")
    wide = wide[[x for x in strategies if x in wide.columns]]
    wide.columns = [series_name(c) for c in wide.columns]
    sp = s.groupby("round")["sparsity"].mean()
    wide.insert(0, "sparsity %", [sparsity_label(v) for v in sp.reindex(wide.index)])
    if chance is not None and len(chance) and chance["at_chance"].notna().any():
        c = chance[chance["strategy"].isin(strategies)]
        at = c.pivot(index="round", columns="strategy", values="at_chance").reindex(wide.index)
        n = c.pivot(index="round", columns="strategy", values="chains").reindex(wide.index)
        wide["at chance"] = [", ".join(f"{series_name(k).split('-')[-1].lower()} {int(at.loc[i, k])}/{int(n.loc[i, k])}"
                                       for k in at.columns if pd.notna(at.loc[i, k])) for i in wide.index]
    g = gaps[gaps["round"].between(*rounds)].set_index("round") if len(gaps) else pd.DataFrame()
    if len(g):
        def fmt(v, spec):
            return "" if pd.isna(v) else format(v, spec)
        gap = g.reindex(wide.index)
        wide["difference (pp)"] = [fmt(100 * v, "+.2f") for v in gap["mean_gap"]]
        wide["CI (pp)"] = ["" if pd.isna(lo) else f"[{100 * lo:+.2f}, {100 * hi:+.2f}]"
                           for lo, hi in zip(gap["ci_lo"], gap["ci_hi"])]
        wide["p (round)"] = [fmt(v, ".3g") for v in gap["p"]]
        wide["p (max-T)"] = [fmt(v, ".3g") for v in gap["p_adj"]]
        wide["significant"] = ["" if not t or pd.isna(t) else ("not informative" if not i else "yes" if q else "no")
                               for t, i, q in zip(gap["tested"], gap["informative"], gap["significant"])]
    wide.index.name = "round"
    return wide.reset_index()


# ---------------------------------------------------------------- the app

_CSS = """<style>
.ltnb-table table {border-collapse: collapse; font-size: 12px; font-family: sans-serif}
.ltnb-table td, .ltnb-table th {border: 1px solid #ccc; padding: 2px 6px; white-space: nowrap; text-align: right}
.ltnb-estimate {font-family: sans-serif; font-size: 14px}
</style>"""


class Explorer:
    """The widgets app over one study's result rows. ``.widget`` is the whole app; ``.controls`` and
    ``.views`` name its parts (tests drive them); displaying an Explorer displays ``.widget``."""

    def __init__(self, rows: pd.DataFrame, *, study: str = "", alpha: float = phase.ALPHA, test: str = "signflip",
                 note: str = ""):
        import ipywidgets as w

        self.rows, self.study, self.test, self.note = rows, study, test, note
        self.sels = {s.label: s for s in phase.selections(rows, pooled=True) if s.stage in ("obtain", "transfer")}
        alphas = sorted(set(ALPHAS) | {float(alpha)})
        self.controls = dict(
            pair=w.Dropdown(options=list(self.sels), description="domain / pair",
                            style={"description_width": "initial"}),
            comparison=w.Dropdown(description="compare", style={"description_width": "initial"},
                                  layout=w.Layout(width="420px")),
            strategies=w.SelectMultiple(description="strategies", rows=4, layout=w.Layout(width="260px")),
            rounds=w.SelectionRangeSlider(options=[("0", 0)], index=(0, 0), description="sparsity %",
                                          continuous_update=False, layout=w.Layout(width="560px")),
            zoom=w.Button(description="zoom: >= 90% sparsity", tooltip="show the rounds at 90% sparsity and beyond",
                          layout=w.Layout(width="auto")),
            reset_zoom=w.Button(description="all rounds"),
            mode=w.ToggleButtons(options=[MEAN, SEEDS], description="seeds"),
            alpha=w.Dropdown(options=alphas, value=float(alpha), description="alpha", layout=w.Layout(width="160px")),
        )
        c = self.controls
        self.views = dict(
            estimate=w.HTML().add_class("ltnb-estimate"),
            accuracy=w.HTML().add_class("ltnb-accuracy"),
            gap=w.HTML().add_class("ltnb-gap"),
            spread=w.HTML().add_class("ltnb-spread"),
            table=w.HTML().add_class("ltnb-table"),
            summary=w.HTML().add_class("ltnb-summary"),
        )
        v = self.views
        head = w.HTML(_CSS + f"<h2 style='font-family:sans-serif;margin:4px 0'>Phase transition explorer"
                      f"{': ' + html.escape(Path(study).name) if study else ''}</h2>"
                      + (f"<div class='ltnb-note' style='font-family:sans-serif;font-size:13px;background:#fff4d6;"
                         f"padding:4px 8px;margin:4px 0;max-width:1100px'>{html.escape(note)}</div>" if note else "")
                      + f"<div style='font-family:sans-serif;font-size:12px;color:#555'>{len(rows)} result rows. "
                      f"Every control redraws the views.</div>")
        method = w.Accordion(children=[w.HTML(f"<div style='font-family:sans-serif;font-size:13px;max-width:900px'>"
                                              f"{html.escape(phase.METHOD)} Error bars: one round's exact sign-flip "
                                              f"interval of the mean difference (not a simultaneous band); blue points: "
                                              f"the rounds significant under max-T; grey: not informative (both "
                                              f"strategies mostly at chance). Crosses on the accuracy chart: each "
                                              f"chain's collapse point.</div>")])
        method.set_title(0, "How the transition is measured")
        self.widget = w.VBox([
            head,
            w.HBox([w.VBox([c["pair"], c["comparison"]]), c["strategies"],
                    w.VBox([c["mode"], c["alpha"]])]),
            w.HBox([c["rounds"], c["zoom"], c["reset_zoom"]]),
            v["estimate"],
            w.HBox([v["accuracy"], v["gap"]]),
            w.HBox([v["spread"], v["table"]]),
            w.HTML("<h3 style='font-family:sans-serif'>The transition, measured: every domain, pair and pooled</h3>"),
            v["summary"], method,
        ])
        self._busy = False
        self._summaries: dict = {}
        self._points: dict = {}
        if not self.sels:
            v["estimate"].value = (f"<b>No obtain or transfer result rows in {html.escape(str(study) or 'the rows given')}"
                                   " yet</b>: run the study's obtain stage (03_obtain) first.")
            return
        c["pair"].observe(lambda _: self._on_pair(), "value")
        for name in ("comparison", "strategies", "rounds", "mode", "alpha"):
            c[name].observe(lambda _: self.refresh(), "value")
        c["zoom"].on_click(lambda _: self._zoom(0.9))
        c["reset_zoom"].on_click(lambda _: self._zoom(0.0))
        self._on_pair()

    # -- state changes
    def _selected(self) -> pd.DataFrame:
        return phase.select(self.rows, self.sels[self.controls["pair"].value])

    def _on_pair(self) -> None:
        c = self.controls
        rows = self._selected()
        have = set(rows["strategy"])
        strategies = [s for s in STRATEGY_ORDER if s in have] + sorted(have - set(STRATEGY_ORDER))
        cmps = phase.comparisons(rows["stage"].iloc[0], have)
        levels = rows.groupby("round")["sparsity"].mean().sort_index()
        self._busy = True
        try:
            keep = c["comparison"].value
            c["comparison"].options = [(x.label, x.name) for x in cmps] or [("(needs two strategies)", "")]
            names = [x.name for x in cmps]
            c["comparison"].value = keep if keep in names else (names[0] if names else "")
            c["strategies"].options = strategies
            c["strategies"].value = tuple(strategies)
            c["rounds"].options = [(sparsity_label(s), int(r)) for r, s in levels.items()]
            c["rounds"].index = (0, len(levels) - 1)
        finally:
            self._busy = False
        self.refresh()

    def _zoom(self, at_least: float) -> None:
        opts = self.controls["rounds"].options
        levels = [float(label) / 100 for label, _ in opts]
        first = next((i for i, s in enumerate(levels) if s >= at_least - 1e-9), len(opts) - 1)
        self.controls["rounds"].index = (min(first, len(opts) - 1), len(opts) - 1)

    def refresh(self) -> None:
        """Recompute the estimate and redraw every view from the controls' values."""
        if self._busy:
            return
        c, v = self.controls, self.views
        sel = self.sels[c["pair"].value]
        rows = self._selected()
        strategies = list(c["strategies"].value) or list(c["strategies"].options)
        lo, hi = tuple(c["rounds"].value)
        alpha = float(c["alpha"].value)
        cmp = next((x for x in phase.comparisons(sel.stage, set(rows["strategy"])) if x.name == c["comparison"].value), None)
        shown = rows[rows["strategy"].isin(strategies) & rows["round"].between(lo, hi)]
        curves = plots.obtain_curves(shown) if sel.stage == "obtain" else plots.transfer_curves(shown)
        chance = phase.chance_table(shown, alpha=alpha)
        if (sel, alpha) not in self._points:  # every strategy's (the comparison needs its two), once per selection
            pts = phase.collapse_points(rows, alpha=alpha)
            self._points[(sel, alpha)] = pts.assign(series=pts["strategy"].map(series_name))
        points = self._points[(sel, alpha)]
        new = {}  # compute every view first, then swap them in together (no half-updated app)
        markers = []
        if cmp is None:
            gaps = pd.DataFrame(columns=phase.GAP_COLUMNS)
            new["estimate"] = f"<div><b>{html.escape(sel.label)}</b>: needs two strategies to compare.</div>"
            new["gap"] = "<p>needs two strategies to compare</p>"
        else:
            t = phase.transition(rows, cmp, alpha=alpha, test=self.test,
                                 points=points[points["strategy"].isin([cmp.a, cmp.b])])
            gaps = phase.gap_table(rows, cmp, alpha=alpha, test=self.test)
            markers = [(t.sparsity, "onset", "#111111")]
            new["estimate"] = (
                f"<div><b>{html.escape(sel.label)}: {html.escape(cmp.label)}: transition {html.escape(t.text)}</b>"
                f" &mdash; {html.escape(t.message)}</div>"
                f"<div><b>collapse points</b> (crosses: where a chain falls below the midpoint of its start level and "
                f"chance): {html.escape(cmp.a)} {html.escape(phase.sparsity_text(t.collapse_a_sparsity))}, "
                f"{html.escape(cmp.b)} {html.escape(phase.sparsity_text(t.collapse_b_sparsity))} (means); "
                f"<b>{html.escape(cmp.a)} - {html.escape(cmp.b)}: {html.escape(t.collapse_text)}</b>; "
                f"detectable effect at a round (80% power): {html.escape(t.mde_text)}; instability "
                f"({html.escape(cmp.b)} spreads more): {html.escape(t.instability_text)}; at chance at the last round: "
                f"{html.escape(t.chance_last)}</div>")
            pairs = phase.paired(rows, cmp.a, cmp.b) if c["mode"].value == SEEDS else None
            shown_gaps = gaps[gaps["round"].between(lo, hi)]
            level = 100 * phase.interval_level(int(gaps["n"].max()) if len(gaps) else 0, alpha)
            new["gap"] = plots.svg(plots.gap_chart(
                shown_gaps, pairs=None if pairs is None else pairs[pairs["round"].between(lo, hi)],
                markers=markers, title=f"{sel.label}: {cmp.a} - {cmp.b}, {level:.4g}% exact interval per round",
                ylabel=f"{cmp.a} - {cmp.b} (pp)")) if len(shown_gaps) else f"<p>{html.escape(t.message)}</p>"
        shown_points = points[points["strategy"].isin(strategies) & points["collapse_round"].between(lo, hi)]
        new["accuracy"] = plots.svg(plots.accuracy_chart(curves, facet=None, mode=c["mode"].value, markers=markers,
                                                         title=f"{sel.label}: test accuracy",
                                                         width=plots.WIDTH, height=plots.HEIGHT, collapse=shown_points))
        new["spread"] = plots.svg(plots.spread_chart(curves, chance, title=f"{sel.label}: spread across seeds, "
                                                     "chains at chance"))
        new["table"] = numbers(rows, gaps, strategies=strategies, rounds=(lo, hi), chance=chance).to_html(index=False, border=0)
        if alpha not in self._summaries:  # every selection's transitions: computed once per alpha
            self._summaries[alpha] = phase.summary(self.rows, alpha=alpha, test=self.test)
        s = self._summaries[alpha]
        cols = ["stage", "pair", "comparison", "seeds", "transition", "collapse", "mde_pp", "instability", "chance_last"]
        new["summary"] = "<div class='ltnb-table'>" + s[cols].round({"mde_pp": 1}).to_html(index=False, border=0) + "</div>"
        for name, value in new.items():
            v[name].value = value

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def app(study_dir=None, *, rows: pd.DataFrame | None = None, alpha: float = phase.ALPHA,
        test: str = "signflip") -> Explorer:
    """The explorer over a study folder (``ltnb.analysis.results.load``) or over ``rows`` directly."""
    if rows is None:
        if study_dir is None:
            raise ValueError("app() needs a study folder (study_dir) or a DataFrame of result rows (rows=)")
        from ltnb.base import paths
        from ltnb.analysis import results

        study_dir = paths.resolve_study(study_dir)
        rows = results.load(study_dir)
    return Explorer(rows, study=str(study_dir or ""), alpha=alpha, test=test)


class Message:
    """What the app shows instead of the explorer: a plain message (no traceback, no server path)."""

    def __init__(self, text: str):
        self.text, self.study = text, ""
        self.rows = pd.DataFrame()

    def _repr_mimebundle_(self, **kwargs):  # plain HTML: Voila renders it into the page itself
        return {"text/plain": self.text,
                "text/html": f"<div class='ltnb-message' style='font-family:sans-serif;font-size:15px;margin:12px'>"
                             f"<h2>Phase transition explorer</h2><p>{_links(html.escape(self.text))}</p></div>"}


def _links(text: str) -> str:
    """Every ``?study=NAME`` of an escaped message as a link to that study's page."""
    import re

    return re.sub(r"\?study=([A-Za-z0-9][A-Za-z0-9_.-]*)(?=[,;. )]|$)",
                  lambda m: f"<a href='?study={m.group(1)}'>?study={m.group(1)}</a>", text)


def page(default_study, *, alpha: float = phase.ALPHA, test: str = "signflip"):
    """The explorer of the study ``study_from_env(default_study)`` names; as the app, any problem
    (a study it does not serve, a folder that is gone, a result table that fails its checks) gives a
    ``Message`` instead, so nothing of the server (tracebacks, paths) reaches the page."""
    from ltnb.base import paths
    from ltnb.base.integrity import IntegrityError

    try:
        chosen = study_from_env(default_study)
        if str(chosen) == SHIPPED:
            return shipped_app(alpha=alpha, test=test)
        study = paths.resolve_study(chosen)
        if not app_mode() and not study.is_dir():
            raise FileNotFoundError(f"study_dir = {str(default_study)!r}: {study} does not exist; run its plan "
                                    f"(`make study` for outputs/demo), or open the demo rows shipped with ltnb: "
                                    f"study_dir = {SHIPPED!r}")
        if app_mode() and not study.is_dir():
            raise StudyRefused(f"The study {study.name!r} is not on this server (any more).")
        return app(study, alpha=alpha, test=test)
    except Exception as e:  # noqa: BLE001 - the app shows a message for anything
        if not app_mode():
            raise
        if isinstance(e, StudyRefused):
            return Message(str(e))
        if isinstance(e, IntegrityError):
            return Message("A result table of this study was changed or damaged since it was written, so it is not "
                           "shown; rerun the study's batch (ltnb batch PLAN) to redo what it affects.")
        return Message(f"This study could not be read ({type(e).__name__}).")


# ---------------------------------------------------------------- the Voila app

def notebook_path() -> Path:
    """notebooks/07_phase_transition.ipynb of the checkout ltnb is installed from (editable install)."""
    nb = Path(__file__).resolve().parents[2] / "notebooks" / NOTEBOOK
    if not nb.exists():
        raise FileNotFoundError(f"{nb} not found: ltnb must be installed from a checkout (pip install -e .), "
                                "or pass notebook= the path of 07_phase_transition.ipynb")
    return nb


def local_only(ip: str) -> dict:
    """Voila's tornado settings that answer only requests naming this server (jupyter_server's own checks,
    against DNS rebinding): a ``Host`` header that is a loopback address (127.0.0.1, [::1]), ``localhost``
    or ``ip`` (the host name served), any port; others get 403. A websocket (a kernel's) whose ``Origin``
    is not that same host is refused too (jupyter_server's same-origin rule: no ``allow_origin`` is set).
    The explorer serves this machine only: ``ip`` a loopback address or a host name (jupyter_server's
    check accepts no other address)."""
    import ipaddress

    from jupyter_server import DEFAULT_STATIC_FILES_PATH

    try:
        remote = not ipaddress.ip_address(str(ip).strip("[]")).is_loopback
    except ValueError:  # a host name
        remote = False
    if remote:
        raise ValueError(f"ip={ip!r}: the explorer serves this machine only (a loopback address such as 127.0.0.1, "
                         "or a host name); reach it from elsewhere through an SSH tunnel")

    # static_path: what jupyter_server's error page needs (Voila's app has none, so refusing a kernel's
    # websocket logged a traceback instead of one warning line)
    return {"allow_remote_access": False, "local_hostnames": sorted({"localhost", str(ip)}),
            "static_path": DEFAULT_STATIC_FILES_PATH}


# Voila's own entry point (``python -m voila``) after one warnings filter: a dict given on the command line
# as one literal is deprecated in traitlets 5 (and Voila shows traitlets' deprecations), yet a literal is
# the only way to give ``tornado_settings`` typed values there (its key=value items are strings: "False"
# would be true)
_VOILA = ("import sys, warnings; from voila.app import main; "
          "warnings.filterwarnings('ignore', '--tornado_settings=', DeprecationWarning); sys.exit(main())")


def voila_command(notebook: str | os.PathLike, *, port: int, ip: str = "127.0.0.1", open_browser: bool = False,
                  cull_idle: int = CULL_IDLE_S, cull_interval: int | None = None) -> list[str]:
    """Voila serving ``notebook``: no code, no tracebacks in the page, idle kernels of closed pages culled
    after ``cull_idle`` seconds (checked every ``cull_interval``; pages still open keep theirs), requests
    not naming this server refused (``local_only``)."""
    interval = int(cull_interval or max(1, min(60, int(cull_idle) // 2)))
    return [sys.executable, "-c", _VOILA, str(notebook), f"--port={int(port)}", "--Voila.port_retries=0",
            f"--Voila.ip={ip}", "--strip_sources=True", "--show_tracebacks=False",
            f"--MappingKernelManager.cull_idle_timeout={int(cull_idle)}",
            f"--MappingKernelManager.cull_interval={interval}", "--MappingKernelManager.cull_connected=False",
            "--KernelManager.shutdown_wait_time=2", *([] if open_browser else ["--no-browser"]),
            f"--Voila.tornado_settings={local_only(ip)!r}"]


def _descendants(pid: int) -> list:
    try:
        import psutil

        return psutil.Process(pid).children(recursive=True)
    except Exception:  # noqa: BLE001 - gone already, or no psutil: nothing more to find
        return []


def stop_server(proc: subprocess.Popen, *, grace: float = 5.0) -> None:
    """Stop a Voila server and every kernel it started: SIGTERM, then after ``grace`` seconds SIGKILL to
    whatever is left (kernels run in their own sessions, so they are found as its descendants first)."""
    kids = _descendants(proc.pid)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.wait()
    for k in kids:
        try:
            k.wait(timeout=0.5)
        except Exception:  # noqa: BLE001 - still running (or not ours to wait for): kill it
            try:
                k.kill()
            except Exception:  # noqa: BLE001
                pass


def serve(study_dir: str | os.PathLike, *, port: int = 8866, open_browser: bool = False, ip: str = "127.0.0.1",
          notebook: str | os.PathLike | None = None, wait: bool = True, env: dict | None = None,
          cull_idle: int = CULL_IDLE_S):
    """Serve the explorer of ``study_dir`` as a Voila app at http://{ip}:{port}/ (no code shown).

    ``study_dir`` is a study, or an outputs folder holding studies (then ``?study=NAME`` chooses one,
    and the shipped demo rows are offered beside them: ``?study=shipped-demo``, the first page when the
    folder holds no study yet; an outputs folder that does not exist yet serves them alone).
    ``wait=True`` (the command line) runs until interrupted (Ctrl-C, SIGTERM) and returns Voila's exit
    status, stopping Voila and its kernels within seconds; ``wait=False`` returns the running
    ``subprocess.Popen`` (tests; stop it with ``stop_server``). The study is handed to the notebook
    through ``$LTNB_STUDY`` (``$LTNB_OUTPUTS`` for an outputs folder)."""
    from ltnb.base import paths

    study = paths.resolve_study(study_dir)
    outputs_folder = study.name == "outputs" and (study.parent / "params").is_dir()  # a checkout's outputs/
    if not study.is_dir() and not outputs_folder:
        raise FileNotFoundError(f"study folder {study} does not exist (give the folder a batch wrote, e.g. outputs/demo, "
                                "or no folder: `ltnb explore` serves outputs/ and the shipped demo rows)")
    outputs = outputs_folder or not is_study(study)  # a folder no batch wrote into: an outputs folder, maybe empty
    nb = Path(notebook) if notebook else notebook_path()
    cmd = voila_command(nb, port=port, ip=ip, open_browser=open_browser, cull_idle=cull_idle)
    environ = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in (STUDY_ENV, OUTPUTS_ENV)}
    environ[OUTPUTS_ENV if outputs else STUDY_ENV] = str(study)
    if not wait:
        return subprocess.Popen(cmd, env=environ, cwd=str(nb.parent), start_new_session=True)

    def _stop(signum, frame):  # `kill` of this process also stops Voila (and its kernels)
        raise KeyboardInterrupt

    # handlers first: a signal that arrives while Voila starts must not leave it running on its own
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _stop)
    proc = None
    try:
        # in this process group: a signal to the group (or SIGKILL of it) reaches Voila too; its kernels,
        # in their own sessions, exit when Voila is gone (ipykernel watches its parent)
        proc = subprocess.Popen(cmd, env=environ, cwd=str(nb.parent))
        what = (f"the studies in {study} ({', '.join(_studies_in(study)) or 'none yet'}) and the shipped demo rows: "
                f"http://{ip}:{port}/?study=NAME ({SHIPPED}: the shipped rows"
                + ("; the first page" if not _studies_in(study) else "") + ")") if outputs else f"{study} at http://{ip}:{port}/"
        print(f"ltnb explore: serving {what} (Ctrl-C to stop)", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        if proc is not None:
            stop_server(proc)
        for s, h in previous.items():
            signal.signal(s, h)


def wait_for_http(url: str, *, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Block until ``url`` answers (any HTTP status), or raise naming the URL."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with status {proc.returncode} before answering")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
