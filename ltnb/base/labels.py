"""The paper's names and colours of the strategies' curves, and the short sparsity label: what a
table, a statistic and a chart all call a thing (charts are drawn by ``ltnb.plots``; this module needs
no chart library)."""
from __future__ import annotations

LABELS = {
    "full": "FULL-MODEL",
    "reset": "TICKET-RESET",
    "random": "TICKET-RANDOM",
    "reinit": "TICKET-REINIT",
    "shuffle": "TICKET-SHUFFLE",
    "rescaled": "TICKET-RESCALED",
    "rewind": "TICKET-REWIND",
    "masks-reset": "MASKS-RESET",
    "masks-random": "MASKS-RANDOM",
    "target": "TICKET-TARGET",
}
COLORS = {
    "FULL-MODEL": "#555555",
    "TICKET-RESET": "#1f77b4",
    "TICKET-RANDOM": "#d62728",
    "TICKET-REINIT": "#9467bd",
    "TICKET-SHUFFLE": "#17becf",
    "TICKET-RESCALED": "#bcbd22",
    "TICKET-REWIND": "#8c564b",
    "MASKS-RESET": "#2ca02c",
    "MASKS-RANDOM": "#ff7f0e",
    "TICKET-TARGET": "#1f77b4",
}
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
