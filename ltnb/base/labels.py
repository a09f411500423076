"""The paper's names and colours of the strategies' curves, and the short sparsity label: what a
table, a statistic and a chart all call a thing (charts are drawn by ``ltnb.analysis.plots``; this module needs
no chart library). The strategies' labels and colours are their definitions' (``ltnb.base.registry``)."""
from __future__ import annotations

from ltnb.base import registry

#: curve name -> label: every strategy's (``ltnb.base.registry``), the dense round 0 and TICKET-TARGET
LABELS = {"full": "FULL-MODEL", **registry.labels(), "target": "TICKET-TARGET"}
#: label -> colour (TICKET-TARGET, the target's own reset chain, is drawn in TICKET-RESET's colour)
COLORS = {"FULL-MODEL": "#555555", **registry.colors()}
COLORS["TICKET-TARGET"] = COLORS["TICKET-RESET"]
EXTRA_COLORS = ["#e377c2", "#7f7f7f", "#aec7e8", "#98df8a"]
MEAN, SEEDS = "mean ± std", "each seed"


def series_name(strategy: str) -> str:
    """The paper's name of a strategy's curve (TICKET-RESET, MASKS-RANDOM, ...)."""
    return LABELS.get(strategy, strategy)


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
