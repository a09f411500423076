"""Altair charts for the study, rendered offline.

Static PNG/SVG come from vl-convert (no browser, no network); HTML reports inline the
JavaScript that vl-convert ships, so nothing is loaded from a CDN at view time.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import altair as alt
import pandas as pd

from ._io import atomic_path


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
