"""The phase-transition explorer: ipywidgets controls and Altair views, and its Voila launcher.

``app(study)`` builds the interactive view of ``notebooks/05_phase_transition.ipynb``; ``serve(study)``
(``ltnb explore STUDY``) serves that notebook as a standalone Voila app: controls and views only, no
code.

Rendering choice: every chart is rendered in the kernel to static SVG by vl-convert (which ships its
own Vega engine inside the Python package) and shown in an ``ipywidgets.HTML``. Nothing is loaded from
a CDN and nothing depends on a JupyterLab or Voila front-end extension beyond ipywidgets itself, so the
same notebook shows the same charts in JupyterLab, in Voila, in VS Code and offline. Tooltips are lost;
the table beside the charts carries the numbers instead.

The x axis of every chart is the fraction of weights that remain, ``1 - sparsity``, on a log scale and
reversed (sparsity grows to the right), labelled with the sparsity in percent. With a constant pruning
fraction p the remaining fraction after round r is (1 - p)^r, so this axis spaces the rounds evenly and
keeps the high-sparsity end (96.8, 98.7, 99.2 ...) as readable as the paper's figures do.

How the app finds its study (Voila passes no papermill parameters): the notebook's ``study_dir``
parameter, overridden by the environment variable ``LTNB_STUDY`` (``serve`` sets it for the Voila
server, whose kernels inherit it), overridden by a ``?study=PATH`` query string on the app's URL
(Voila hands the query string to the kernel as ``QUERY_STRING``).
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

import altair as alt
import numpy as np
import pandas as pd

from . import phase
from .report import COLORS, LABELS, sparsity_label

STUDY_ENV = "LTNB_STUDY"
NOTEBOOK = "05_phase_transition.ipynb"
ALPHAS = (0.001, 0.01, 0.05, 0.1)
MEAN, SEEDS = "mean ± std", "each seed"
WIDTH, HEIGHT = 470, 240

# Vega expression: a remaining fraction -> the sparsity in percent, with as many decimals as the
# high-sparsity end needs to tell rounds apart.
_SPARSITY_LABEL = ("datum.value >= 0.1 ? format(100 - 100 * datum.value, '.0f') : "
                   "datum.value >= 0.01 ? format(100 - 100 * datum.value, '.1f') : "
                   "datum.value >= 0.001 ? format(100 - 100 * datum.value, '.2f') : "
                   "format(100 - 100 * datum.value, '.3f')")


# ---------------------------------------------------------------- where the study comes from

def study_from_env(default: str | os.PathLike) -> str:
    """The study folder: ``?study=`` of the Voila URL, else ``$LTNB_STUDY``, else ``default``."""
    query = urllib.parse.parse_qs(os.environ.get("QUERY_STRING", ""))
    if query.get("study"):
        return query["study"][0]
    return os.environ.get(STUDY_ENV) or str(default)


def app_mode() -> bool:
    """True when the notebook runs as the ``ltnb explore`` app (``$LTNB_STUDY`` set by ``serve``)."""
    return bool(os.environ.get(STUDY_ENV))


# ---------------------------------------------------------------- views (pure functions: rows -> chart)

def svg(chart: alt.TopLevelMixin) -> str:
    """Render a chart to an SVG string in-process (vl-convert; no browser, no network)."""
    import vl_convert as vlc

    version = alt.SCHEMA_VERSION.lstrip("v").rsplit(".", 1)[0]
    return vlc.vegalite_to_svg(chart.to_dict(), vl_version=version)


def _series(strategy: str) -> str:
    return LABELS.get(strategy, strategy)


def _color(strategies) -> alt.Scale:
    names = [_series(s) for s in strategies]
    palette = ["#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]
    return alt.Scale(domain=names, range=[COLORS.get(n, palette[i % 4]) for i, n in enumerate(names)])


def _x(rounds: pd.DataFrame) -> alt.X:
    """Log-scaled remaining fraction, reversed, ticks at the rounds shown, labelled as sparsity %."""
    rem = (1 - rounds["sparsity"]).clip(lower=1e-9)
    lo, hi = float(rem.min()), float(rem.max())
    if lo == hi:
        lo, hi = lo / 1.3, hi * 1.3
    pad = (hi / lo) ** 0.04
    step = max(1, int(np.ceil(len(rem) / 14)))  # at most ~14 tick labels
    values = sorted(rem.tolist(), reverse=True)[::step]
    return alt.X("remaining:Q", title="sparsity (%) - log scale of the remaining weights",
                 scale=alt.Scale(type="log", reverse=True, domain=[lo / pad, hi * pad], nice=False),
                 axis=alt.Axis(values=values, labelExpr=_SPARSITY_LABEL, labelAngle=-45, grid=False, labelOverlap=False))


def _marker(sparsity: float | None, text: str, color: str, ydatum: str = "top") -> list:
    """A vertical rule at an estimated sparsity, labelled."""
    if sparsity is None:
        return []
    d = pd.DataFrame({"remaining": [max(1 - sparsity, 1e-9)], "label": [f"{text} {sparsity_label(sparsity)}%"]})
    rule = alt.Chart(d).mark_rule(color=color, strokeDash=[6, 3], strokeWidth=2).encode(x="remaining:Q")
    label = alt.Chart(d).mark_text(color=color, align="left", dx=4, dy=8, y=0 if ydatum == "top" else HEIGHT - 12,
                                   fontWeight="bold").encode(x="remaining:Q", text="label:N")
    return [rule, label]


def _in_range(df: pd.DataFrame, rounds: tuple[int, int]) -> pd.DataFrame:
    return df[df["round"].between(rounds[0], rounds[1])]


def accuracy_chart(rows: pd.DataFrame, *, strategies, rounds: tuple[int, int], mode: str = MEAN,
                   estimate: phase.Transition | None = None, title: str = "") -> alt.LayerChart:
    """Test accuracy (%) against sparsity per strategy: mean line and +-1 std band over seeds, or each
    seed's chain as its own thin line with the mean on top; the estimated transitions as rules."""
    r = _in_range(rows[rows["strategy"].isin(strategies)], rounds).copy()
    r["series"] = r["strategy"].map(_series)
    r["remaining"] = (1 - r["sparsity"]).clip(lower=1e-9)
    r["acc"] = 100 * r["test_acc"]
    s = (r.groupby(["series", "round"]).agg(remaining=("remaining", "mean"), mean=("acc", "mean"), std=("acc", "std"))
         .reset_index().fillna({"std": 0.0}))
    s["lo"], s["hi"] = s["mean"] - s["std"], s["mean"] + s["std"]
    color = alt.Color("series:N", title=None, scale=_color([x for x in strategies]), legend=alt.Legend(orient="bottom"))
    x = _x(r if len(r) else rows)
    y = alt.Y("mean:Q", title="test accuracy (%)", scale=alt.Scale(zero=False))
    layers = []
    if mode == SEEDS:
        layers.append(alt.Chart(r).mark_line(strokeWidth=1, opacity=0.55, point=alt.OverlayMarkDef(size=12))
                      .encode(x=x, y=alt.Y("acc:Q", title="test accuracy (%)", scale=alt.Scale(zero=False)),
                              color=color, detail="seed:N"))
    else:
        layers.append(alt.Chart(s).mark_area(opacity=0.2).encode(x=x, y=alt.Y("lo:Q", title="test accuracy (%)",
                                                                              scale=alt.Scale(zero=False)),
                                                                  y2="hi:Q", color=color))
    layers.append(alt.Chart(s).mark_line(point=True, strokeWidth=2.5).encode(x=x, y=y, color=color))
    if estimate is not None:
        layers += _marker(estimate.sparsity if estimate.status == "detected" else None, "gap transition", "#111111")
        layers += _marker(estimate.spread_sparsity if estimate.spread_status == "detected" else None,
                          "spread", "#7f7f7f", ydatum="bottom")
    return alt.layer(*layers).properties(width=WIDTH, height=HEIGHT, title=title)


def gap_chart(gaps: pd.DataFrame, *, rounds: tuple[int, int], pairs: pd.DataFrame | None = None,
              estimate: phase.Transition | None = None, title: str = "") -> alt.LayerChart:
    """The paired gap (percentage points) per round with its 1 - alpha confidence interval; filled when
    significant after Holm; with ``pairs`` (seeds mode) each seed's own gap as a small tick."""
    g = _in_range(gaps, rounds).copy()
    g["remaining"] = (1 - g["sparsity"].astype(float)).clip(lower=1e-9)
    g["gap"] = 100 * g["mean_gap"].astype(float)
    g["lo"], g["hi"] = 100 * g["ci_lo"].astype(float), 100 * g["ci_hi"].astype(float)
    g["verdict"] = np.where(~g["tested"].astype(bool), "too few seeds",
                            np.where(g["significant"].astype(bool), "significant (Holm)", "not significant"))
    verdicts = ["significant (Holm)", "not significant", "too few seeds"]
    color = alt.Color("verdict:N", title=None, scale=alt.Scale(domain=verdicts, range=["#1f77b4", "#d62728", "#aaaaaa"]),
                      legend=alt.Legend(orient="bottom"))
    x = _x(g)
    y_title = "reset - random gap (pp)"
    layers = [alt.Chart(pd.DataFrame({"zero": [0.0]})).mark_rule(color="#999999").encode(y="zero:Q")]
    if pairs is not None and len(pairs):
        p = _in_range(pairs, rounds).copy()
        p = p[p["round"] >= 1]
        p["remaining"] = (1 - p["sparsity"]).clip(lower=1e-9)
        p["seed_gap"] = 100 * p["gap"]
        layers.append(alt.Chart(p).mark_tick(color="#555555", opacity=0.7, thickness=1.5, size=12, orient="horizontal")
                      .encode(x="remaining:Q", y=alt.Y("seed_gap:Q", title=y_title)))
    layers.append(alt.Chart(g).mark_rule(strokeWidth=2).encode(x=x, y=alt.Y("lo:Q", title=y_title), y2="hi:Q", color=color))
    layers.append(alt.Chart(g).mark_point(size=60, filled=True).encode(x=x, y=alt.Y("gap:Q", title=y_title), color=color))
    if estimate is not None:
        layers += _marker(estimate.sparsity if estimate.status == "detected" else None, "transition", "#111111")
    return alt.layer(*layers).properties(width=WIDTH, height=HEIGHT, title=title)


def spread_chart(rows: pd.DataFrame, *, strategies, rounds: tuple[int, int], estimate: phase.Transition | None = None,
                 title: str = "") -> alt.LayerChart:
    """Standard deviation across seeds (pp) of test accuracy per strategy and round."""
    s = _in_range(phase.spread_table(rows[rows["strategy"].isin(strategies)]), rounds).copy()
    s["series"] = s["strategy"].map(_series)
    s["remaining"] = (1 - s["sparsity"]).clip(lower=1e-9)
    s["std_pp"] = 100 * s["std"].astype(float)
    color = alt.Color("series:N", title=None, scale=_color(strategies), legend=alt.Legend(orient="bottom"))
    layers = [alt.Chart(s).mark_line(point=True).encode(x=_x(s if len(s) else rows),
                                                         y=alt.Y("std_pp:Q", title="std across seeds (pp)"), color=color)]
    if estimate is not None:
        layers += _marker(estimate.spread_sparsity if estimate.spread_status == "detected" else None,
                          f"random > {estimate.spread_factor:g} x reset", "#7f7f7f")
    return alt.layer(*layers).properties(width=WIDTH, height=HEIGHT, title=title)


def numbers(rows: pd.DataFrame, gaps: pd.DataFrame, *, strategies, rounds: tuple[int, int]) -> pd.DataFrame:
    """The table behind the views: per round, each strategy's mean ± std (n) and the gap's test."""
    s = _in_range(phase.spread_table(rows[rows["strategy"].isin(strategies)]), rounds)
    if s.empty:
        return pd.DataFrame()
    s = s.assign(cell=[f"{100 * m:.2f} ± {0 if np.isnan(d) else 100 * d:.2f} ({n})"
                       for m, d, n in zip(s["mean"], s["std"], s["n"])])
    wide = s.pivot(index="round", columns="strategy", values="cell")
    wide = wide[[x for x in strategies if x in wide.columns]]
    wide.columns = [_series(c) for c in wide.columns]
    sp = s.groupby("round")["sparsity"].mean()
    wide.insert(0, "sparsity %", [f"{sparsity_label(v)}" for v in sp.reindex(wide.index)])
    g = _in_range(gaps, rounds).set_index("round") if len(gaps) else pd.DataFrame()
    if len(g):
        def fmt(v, spec):
            return "" if pd.isna(v) else format(v, spec)
        gap = g.reindex(wide.index)
        wide["gap (pp)"] = [fmt(100 * v, "+.2f") for v in gap["mean_gap"]]
        wide["CI (pp)"] = ["" if pd.isna(lo) else f"[{100 * lo:+.2f}, {100 * hi:+.2f}]"
                           for lo, hi in zip(gap["ci_lo"], gap["ci_hi"])]
        wide["p"] = [fmt(v, ".2g") for v in gap["p"]]
        wide["p (Holm)"] = [fmt(v, ".2g") for v in gap["p_holm"]]
        wide["significant"] = ["" if not t or pd.isna(t) else ("yes" if sig else "no")
                               for t, sig in zip(gap["tested"], gap["significant"])]
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

    def __init__(self, rows: pd.DataFrame, *, study: str = "", alpha: float = phase.ALPHA,
                 spread_factor: float = phase.SPREAD_FACTOR, min_seeds: int = phase.MIN_SEEDS):
        import ipywidgets as w

        self.rows, self.study, self.min_seeds = rows, study, int(min_seeds)
        self.sels = {s.label: s for s in phase.selections(rows) if s.stage in phase.COMPARED}
        alphas = sorted(set(ALPHAS) | {float(alpha)})
        self.controls = dict(
            pair=w.Dropdown(options=list(self.sels), description="domain / pair",
                            style={"description_width": "initial"}),
            strategies=w.SelectMultiple(description="strategies", rows=3, layout=w.Layout(width="260px")),
            rounds=w.SelectionRangeSlider(options=[("0", 0)], index=(0, 0), description="sparsity %",
                                          continuous_update=False, layout=w.Layout(width="560px")),
            zoom=w.Button(description="zoom: >= 90% sparsity", tooltip="show the rounds at 90% sparsity and beyond",
                          layout=w.Layout(width="auto")),
            reset_zoom=w.Button(description="all rounds"),
            mode=w.ToggleButtons(options=[MEAN, SEEDS], description="seeds"),
            alpha=w.Dropdown(options=alphas, value=float(alpha), description="alpha",
                             layout=w.Layout(width="160px")),
            spread_factor=w.BoundedFloatText(value=float(spread_factor), min=1.0, max=100.0, step=0.5,
                                             description="spread factor", style={"description_width": "initial"},
                                             layout=w.Layout(width="190px")),
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
                      f"<div style='font-family:sans-serif;font-size:12px;color:#555'>{len(rows)} result rows"
                      f"{' from ' + html.escape(str(study)) if study else ''}. Every control redraws the views.</div>")
        method = w.Accordion(children=[w.HTML(f"<div style='font-family:sans-serif;font-size:13px;max-width:900px'>"
                                              f"{html.escape(phase.METHOD)}<br>Seeds are paired: the reset and random "
                                              f"chains of a seed share theta_0 and the dense round 0. Error bars: the "
                                              f"two-sided 1 - alpha t-interval of the mean gap, not corrected; filled "
                                              f"blue points: significant after Holm. With fewer than {self.min_seeds} "
                                              f"paired seeds nothing is estimated.</div>")])
        method.set_title(0, "How the transition is measured")
        self.widget = w.VBox([
            head,
            w.HBox([c["pair"], c["strategies"], w.VBox([c["mode"], w.HBox([c["alpha"], c["spread_factor"]])])]),
            w.HBox([c["rounds"], c["zoom"], c["reset_zoom"]]),
            v["estimate"],
            w.HBox([v["accuracy"], v["gap"]]),
            w.HBox([v["spread"], v["table"]]),
            w.HTML("<h3 style='font-family:sans-serif'>The transition, measured: every domain and pair</h3>"),
            v["summary"], method,
        ])
        self._busy = False
        if not self.sels:
            v["estimate"].value = (f"<b>No obtain or transfer result rows in {html.escape(str(study) or 'the rows given')}"
                                   " yet</b>: run the study's obtain stage (03_obtain) first.")
            return
        c["pair"].observe(lambda _: self._on_pair(), "value")
        for name in ("strategies", "rounds", "mode", "alpha", "spread_factor"):
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
        strategies = [s for s in ("reset", "random", "rewind", "masks-reset", "masks-random") if s in set(rows["strategy"])]
        strategies += sorted(set(rows["strategy"]) - set(strategies))
        levels = rows.groupby("round")["sparsity"].mean().sort_index()
        self._busy = True
        try:
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
        rounds = tuple(c["rounds"].value)
        alpha, factor = float(c["alpha"].value), float(c["spread_factor"].value or phase.SPREAD_FACTOR)
        t = phase.transition(rows, alpha=alpha, spread_factor=factor, min_seeds=self.min_seeds)
        gaps = phase.gap_table(rows, alpha=alpha, min_seeds=self.min_seeds) if t.status != "missing strategy" else \
            pd.DataFrame(columns=phase.GAP_COLUMNS)
        pairs = phase.paired(rows, t.reset, t.random) if c["mode"].value == SEEDS else None
        new = {}  # compute every view first, then swap them in together (no half-updated app)
        new["estimate"] = (f"<div><b>{html.escape(sel.label)}: transition {html.escape(t.text)}</b> &mdash; "
                           f"{html.escape(t.message)}</div><div><b>spread: {html.escape(t.spread_text)}</b> &mdash; "
                           f"{html.escape(t.spread_message)}</div>")
        new["accuracy"] = svg(accuracy_chart(rows, strategies=strategies, rounds=rounds, mode=c["mode"].value,
                                             estimate=t, title=f"{sel.label}: test accuracy"))
        if len(gaps):
            new["gap"] = svg(gap_chart(gaps, rounds=rounds, pairs=pairs, estimate=t,
                                       title=f"{sel.label}: {t.reset} - {t.random}, {100 * (1 - alpha):g}% CI"))
        else:
            new["gap"] = f"<p>{html.escape(t.message)}</p>"
        new["spread"] = svg(spread_chart(rows, strategies=strategies, rounds=rounds, estimate=t,
                                         title=f"{sel.label}: spread across seeds"))
        new["table"] = numbers(rows, gaps, strategies=strategies, rounds=rounds).to_html(index=False, border=0)
        s = phase.summary(self.rows, alpha=alpha, spread_factor=factor, min_seeds=self.min_seeds)
        cols = ["stage", "pair", "seeds", "rounds_tested", "transition", "spread_transition", "message"]
        new["summary"] = "<div class='ltnb-table'>" + s[cols].to_html(index=False, border=0) + "</div>"
        for name, value in new.items():
            v[name].value = value

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def app(study_dir=None, *, rows: pd.DataFrame | None = None, alpha: float = phase.ALPHA,
        spread_factor: float = phase.SPREAD_FACTOR, min_seeds: int = phase.MIN_SEEDS) -> Explorer:
    """The explorer over a study folder (``ltnb.results.load``) or over ``rows`` directly."""
    if rows is None:
        if study_dir is None:
            raise ValueError("app() needs a study folder (study_dir) or a DataFrame of result rows (rows=)")
        from . import paths, results

        study_dir = paths.resolve_study(study_dir)
        rows = results.load(study_dir)
    return Explorer(rows, study=str(study_dir or ""), alpha=alpha, spread_factor=spread_factor, min_seeds=min_seeds)


# ---------------------------------------------------------------- the Voila app

def notebook_path() -> Path:
    """notebooks/05_phase_transition.ipynb of the checkout ltnb is installed from (editable install)."""
    nb = Path(__file__).resolve().parents[1] / "notebooks" / NOTEBOOK
    if not nb.exists():
        raise FileNotFoundError(f"{nb} not found: ltnb must be installed from a checkout (pip install -e .), "
                                "or pass notebook= the path of 05_phase_transition.ipynb")
    return nb


def voila_command(notebook: str | os.PathLike, *, port: int, ip: str = "127.0.0.1", open_browser: bool = False) -> list[str]:
    return [sys.executable, "-m", "voila", str(notebook), f"--port={int(port)}", "--Voila.port_retries=0",
            f"--Voila.ip={ip}", "--strip_sources=True", "--show_tracebacks=True", *([] if open_browser else ["--no-browser"])]


def serve(study_dir: str | os.PathLike, *, port: int = 8866, open_browser: bool = False, ip: str = "127.0.0.1",
          notebook: str | os.PathLike | None = None, wait: bool = True, env: dict | None = None):
    """Serve the explorer of ``study_dir`` as a Voila app at http://{ip}:{port}/ (no code shown).

    ``wait=True`` (the command line) runs until interrupted and returns Voila's exit status;
    ``wait=False`` returns the running ``subprocess.Popen`` (tests; terminate it when done). The study is
    handed to the notebook through ``$LTNB_STUDY``."""
    from . import paths

    study = paths.resolve_study(study_dir)
    if not study.is_dir():
        raise FileNotFoundError(f"study folder {study} does not exist (give the folder a batch wrote, e.g. outputs/demo)")
    nb = Path(notebook) if notebook else notebook_path()
    cmd = voila_command(nb, port=port, ip=ip, open_browser=open_browser)
    environ = {**os.environ, **(env or {}), STUDY_ENV: str(study)}
    proc = subprocess.Popen(cmd, env=environ, cwd=str(nb.parent))
    if not wait:
        return proc
    print(f"ltnb explore: serving {study} at http://{ip}:{port}/ (Ctrl-C to stop)", flush=True)

    def _stop(signum, frame):  # `kill` of this process also stops Voila (and its kernels)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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
