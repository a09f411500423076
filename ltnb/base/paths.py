"""Where things live: the corpus cache (outside the git tree) and the layout of a study folder.

A study folder (``outputs/<study>/``) holds everything one study writes::

    data/            corpus.parquet (text, label, domain, source, split), summary.json,
                     vocab/<key>/ (SentencePiece model + encoded token ids per domain)
    divergence/      jsd.parquet, figure1.{png,svg}
    obtain/<domain>/<strategy>/seed<k>/     one IMP chain (folders named by a settings hash inside)
    transfer/<source>__<target>/<strategy>/seed<k>/
    federated/<source>/seed<k>/             federated runs with the source's tickets (ltnb.study.federated)
    report/          figures and tables of the whole study (written by the report stage only)
    phase/           the executed phase-transition notebook

Each of these ``cell`` folders is complete when its ``_COMPLETE.json`` marker exists.
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "LTNB_CACHE"
COMPLETE_MARKER = "_COMPLETE.json"

# the files of one chain or transfer run (``ltnb.core.lottery``), and the columns of its result rows
RESULTS = "results.parquet"
THETA_0 = "theta_0.safetensors"
REWOUND = "theta_rewind.safetensors"
#: what a chain recorded of each finished round when it wrote it (the ticket's SHA-256, a digest of its
#: row): a rerun checks the round against it and refuses a changed one instead of blessing it
LEDGER = "ledger.json"
#: ``<study>/stale/``: chain folders set aside because they cannot be resumed (their theta_0 was drawn
#: again and differs from what their tickets record); kept for a person to look at, read by nothing
STALE = "stale"
#: one row per (stage, domain or pair, seed, strategy, round); ``test_n`` is the test split's size.
#: The training diagnostics (``ltnb.core.lottery.diagnostics``): ``converged`` is ``best_epoch < epochs_run``
#: (validation accuracy stopped improving before the last epoch run); ``wchange_*`` the relative L2
#: change ||w_end - w_start|| / ||w_start|| of a layer group's weight matrices over the round (pruned
#: entries are 0 at both ends); ``emb_rows_seen`` the share of the embedding rows with a surviving
#: entry whose token id occurs in the training split, ``emb_weights_seen`` the share of surviving
#: embedding entries in such rows (the others get no gradient but weight decay).
#: ``seconds`` is a round's wall time; ``cpu_seconds`` the CPU time its process got meanwhile (all its
#: threads): on a machine shared with other work, wall time grows and CPU time does not (``ltnb.study.estimate``
#: learns from the smaller of the two when a worker trains with one thread).
DIAGNOSTIC_COLUMNS = ["converged", "wchange_embedding", "wchange_conv", "wchange_mlp", "emb_rows_seen",
                      "emb_weights_seen"]
ROW_COLUMNS = [
    "stage", "source", "target", "domain", "pair", "seed", "strategy", "round", "sparsity",
    "val_acc", "test_acc", "test_n", "best_epoch", "epochs_run", "seconds", "settings_hash",
    *DIAGNOSTIC_COLUMNS, "cpu_seconds",
]


def ticket_name(round: int) -> str:
    """The ticket file of a round: ``round_RR.safetensors``."""
    return f"round_{int(round):02d}.safetensors"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The corpus cache: ``override``, else ``$LTNB_CACHE``, else ``$XDG_CACHE_HOME/ltnb``
    (``~/.cache/ltnb``)."""
    if override:
        return Path(override).expanduser().resolve()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return (Path(base) / "ltnb").resolve()


def data_dir(study_dir: str | os.PathLike) -> Path:
    return Path(study_dir) / "data"


def divergence_dir(study_dir: str | os.PathLike) -> Path:
    return Path(study_dir) / "divergence"


def _name(value, what: str) -> str:
    from ltnb.base.integrity import check_name  # names from plans and data become folder names here

    return check_name(value, what)


def obtain_dir(study_dir: str | os.PathLike, domain: str, strategy: str, seed: int) -> Path:
    return Path(study_dir) / "obtain" / _name(domain, "domain") / _name(strategy, "strategy") / f"seed{int(seed)}"


def transfer_dir(study_dir: str | os.PathLike, source: str, target: str, strategy: str, seed: int) -> Path:
    return (Path(study_dir) / "transfer" / f"{_name(source, 'source')}__{_name(target, 'target')}"
            / _name(strategy, "strategy") / f"seed{int(seed)}")


def federated_dir(study_dir: str | os.PathLike, source: str, seed: int) -> Path:
    """One source's federated runs for a seed (ltnb.study.federated; folders named by a settings hash inside)."""
    return Path(study_dir) / "federated" / source / f"seed{int(seed)}"


def report_dir(study_dir: str | os.PathLike) -> Path:
    return Path(study_dir) / "report"


def phase_dir(study_dir: str | os.PathLike) -> Path:
    """The executed phase-transition notebook (the explorer and a worked example; it writes no tables)."""
    return Path(study_dir) / "phase"


def project_root(start: str | os.PathLike | None = None) -> Path | None:
    """The ltnb checkout holding ``start`` (default: the working folder), if any.

    Recognised by ``notebooks/`` and ``params/`` beside ``pyproject.toml``.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists() and (folder / "notebooks").is_dir() and (folder / "params").is_dir():
            return folder
    return None


def resolve_study(study_dir: str | os.PathLike) -> Path:
    """A study folder as an absolute path.

    Relative paths are taken from the project's root (so ``outputs/demo`` means the same folder
    whether a notebook runs from ``notebooks/`` in JupyterLab or from the root under papermill);
    outside a checkout, from the working folder.
    """
    p = Path(study_dir).expanduser()
    if p.is_absolute():
        return p
    return ((project_root() or Path.cwd()) / p).resolve()
