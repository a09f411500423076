"""ltnb: lottery tickets under distribution shift (Desai, Zhan & Aly, 2019), as a runnable study.

A thin helper package for the notebooks in ``notebooks/``: data, vocabulary, divergence, model,
pruning, initial-value strategies, training, IMP chains, results, plots and the batch runner.
"""

__version__ = "0.1.0"
