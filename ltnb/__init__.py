"""ltnb: lottery tickets under distribution shift (Desai, Zhan & Aly, 2019), as a runnable study.

A thin helper package for the notebooks in ``notebooks/``, in rooms by concern, stacked as layers; a
module imports only from its own subpackage or the ones below it (``lint-imports`` checks it in CI,
with the contracts in ``pyproject.toml``):

    cli                       the ``ltnb`` command
    analysis                  results, plots, phase, findings, federated_results, report, explore (no torch)
    study                     plan, memory, estimate, batch, recorded, federated (protocol, flower, simulation)
    core                      model, pruning, strategies, train, sparse, tickets, lottery
    text                      corpus, airlines, amazon, data, vocab, tokens, divergence
    base                      registry, config, stages, paths, integrity, labels, tensorfiles, _io

Short names. Notebooks, tests and users write ``from ltnb import lottery`` or
``from ltnb.model import KimCNN``: every module is also importable as ``ltnb.<name>``, per the table
``ALIASES`` below (``ltnb.model`` *is* ``ltnb.core.model``, the same module object, loaded when first
used). Code inside the package imports the full names, so the layers stay visible to ``lint-imports``.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

#: short name -> the subpackage that holds the module (``ltnb.<name>`` is ``ltnb.<subpackage>.<name>``)
ALIASES: dict[str, str] = {
    **dict.fromkeys(("_io", "registry", "config", "stages", "paths", "integrity", "labels", "tensorfiles"), "base"),
    **dict.fromkeys(("corpus", "airlines", "amazon", "data", "vocab", "tokens", "divergence"), "text"),
    **dict.fromkeys(("model", "pruning", "strategies", "train", "sparse", "tickets", "lottery"), "core"),
    **dict.fromkeys(("plan", "memory", "estimate", "batch", "federated", "recorded"), "study"),
    **dict.fromkeys(("results", "plots", "phase", "findings", "federated_results", "report", "explore", "signflip",
                    "collapse", "simulate", "scale"), "analysis"),
}


class _ShortNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``ltnb.<name>`` as the module ``ltnb.<ALIASES[name]>.<name>`` (the same object)."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, name = fullname.partition(".")
        if prefix == __name__ and name in ALIASES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        name = spec.name.partition(".")[2]
        module = importlib.import_module(f"{__name__}.{ALIASES[name]}.{name}")
        spec.loader_state = module.__spec__  # the import system puts the alias's spec on the module next
        return module

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state  # give the module back its own spec


if not any(isinstance(f, _ShortNames) for f in sys.meta_path):
    sys.meta_path.append(_ShortNames())


def __getattr__(name: str):
    """``ltnb.lottery`` and ``from ltnb import lottery`` without an import statement of its own."""
    if name in ALIASES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
