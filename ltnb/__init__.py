"""ltnb: lottery tickets under distribution shift (Desai, Zhan & Aly, 2019), as a runnable study.

A thin helper package for the notebooks in ``notebooks/``, in rooms by concern, stacked as layers; a
module imports only from its own subpackage or the ones below it (``lint-imports`` checks it in CI,
with the contracts in ``pyproject.toml``):

    cli                       the ``ltnb`` command
    analysis                  results, plots, phase, signflip, collapse, findings, simulate, scale,
                              federated_results, report, explore (no torch)
    study                     plan, memory, estimate, batch, recorded, federated (protocol, flower, simulation)
    core                      model, pruning, strategies, train, sparse, tickets, lottery
    text                      corpus, airlines, amazon, data, vocab, tokens, divergence
    base                      registry, config, stages, paths, integrity, labels, tensorfiles, _io

Imports name the real module: ``from ltnb.core import lottery``, ``from ltnb.analysis.phase import
summary``. The four public names of the design (``ltnb.model.KimCNN``, ``ltnb.pruning.prune_step``,
``ltnb.tickets.load``, ``ltnb.results.load``) are kept by four one-line files, ``ltnb/model.py`` and its
siblings, each of which *is* its module (``ltnb.model`` is ``ltnb.core.model``, the same object).
"""
from __future__ import annotations

__version__ = "0.1.0"
