"""Where things live: the corpus cache (outside the git tree) and the layout of a study folder.

A study folder (``outputs/<study>/``) holds everything one study writes::

    data/            corpus.parquet (text, label, domain, source, split), summary.json,
                     vocab/<key>/ (SentencePiece model + encoded token ids per domain)
    divergence/      jsd.parquet, figure1.{png,svg}
    obtain/<domain>/<strategy>/seed<k>/     one IMP chain (folders named by a settings hash inside)
    transfer/<source>__<target>/<strategy>/seed<k>/
    federated/<source>/seed<k>/             federated runs with the source's tickets (ltnb.federated)
    report/          figures and tables of the whole study (phase_transition.csv too)
    phase/           the executed phase-transition notebook

Each of these ``cell`` folders is complete when its ``_COMPLETE.json`` marker exists.
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "LTNB_CACHE"
STUBS_ENV = "LTNB_IMPORT_STUBS"  # "0": no import stubs for child processes (see import_stubs)
COMPLETE_MARKER = "_COMPLETE.json"

# the files of one chain or transfer run (``ltnb.lottery``), and the columns of its result rows
RESULTS = "results.parquet"
THETA_0 = "theta_0.safetensors"
REWOUND = "theta_rewind.safetensors"
#: one row per (stage, domain or pair, seed, strategy, round); ``test_n`` is the test split's size.
#: The training diagnostics (``ltnb.lottery.diagnostics``): ``converged`` is ``best_epoch < epochs_run``
#: (validation accuracy stopped improving before the last epoch run); ``wchange_*`` the relative L2
#: change ||w_end - w_start|| / ||w_start|| of a layer group's weight matrices over the round (pruned
#: entries are 0 at both ends); ``emb_rows_seen`` the share of the embedding rows with a surviving
#: entry whose token id occurs in the training split, ``emb_weights_seen`` the share of surviving
#: embedding entries in such rows (the others get no gradient but weight decay).
DIAGNOSTIC_COLUMNS = ["converged", "wchange_embedding", "wchange_conv", "wchange_mlp", "emb_rows_seen",
                      "emb_weights_seen"]
ROW_COLUMNS = [
    "stage", "source", "target", "domain", "pair", "seed", "strategy", "round", "sparsity",
    "val_acc", "test_acc", "test_n", "best_epoch", "epochs_run", "seconds", "settings_hash",
    *DIAGNOSTIC_COLUMNS,
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
    from .integrity import check_name  # names from plans and data become folder names here

    return check_name(value, what)


def obtain_dir(study_dir: str | os.PathLike, domain: str, strategy: str, seed: int) -> Path:
    return Path(study_dir) / "obtain" / _name(domain, "domain") / _name(strategy, "strategy") / f"seed{int(seed)}"


def transfer_dir(study_dir: str | os.PathLike, source: str, target: str, strategy: str, seed: int) -> Path:
    return (Path(study_dir) / "transfer" / f"{_name(source, 'source')}__{_name(target, 'target')}"
            / _name(strategy, "strategy") / f"seed{int(seed)}")


def federated_dir(study_dir: str | os.PathLike, source: str, seed: int) -> Path:
    """One source's federated runs for a seed (ltnb.federated; folders named by a settings hash inside)."""
    return Path(study_dir) / "federated" / source / f"seed{int(seed)}"


def report_dir(study_dir: str | os.PathLike) -> Path:
    return Path(study_dir) / "report"


def phase_dir(study_dir: str | os.PathLike) -> Path:
    """The executed phase-transition notebook (its tables go to ``report_dir``)."""
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


# ------------------------------------------------------------------------- child processes: import stubs
_STUB = ('raise ImportError("hidden by ltnb.paths.import_stubs: jsonschema builds this package\'s Lark grammar '
         'at import (~2.5 s per process), for an IRI format check nothing here uses")\n')
_stubs_dir: str | None = None


def import_stubs() -> str:
    """A folder holding a stub ``rfc3987_syntax`` that raises ImportError, to put first on
    ``PYTHONPATH`` of notebook kernels (the batch's cells, the explorer's pages). ``jsonschema``,
    imported by Altair, builds that optional package's grammar at import: about 2.5 of the 7 s a cell
    spends importing ltnb here, for the ``iri`` format check, which neither Altair nor ltnb uses
    (jsonschema then skips it, as where the package is not installed).

    The folder is ``<tmp>/ltnb-stubs-<uid>``, used only while it is a real directory of this user that
    nobody else may write to (else a private ``mkdtemp`` folder, removed at exit). ``""`` when
    ``$LTNB_IMPORT_STUBS`` is ``0``."""
    global _stubs_dir
    if os.environ.get(STUBS_ENV, "1") == "0":
        return ""
    if _stubs_dir is None or not os.path.isfile(os.path.join(_stubs_dir, "rfc3987_syntax.py")):
        import stat
        import tempfile

        uid = os.getuid()
        folder = os.path.join(tempfile.gettempdir(), f"ltnb-stubs-{uid}")
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(folder)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
            import atexit
            import shutil

            folder = tempfile.mkdtemp(prefix="ltnb-stubs-")
            atexit.register(shutil.rmtree, folder, True)
        target = os.path.join(folder, "rfc3987_syntax.py")
        if not os.path.isfile(target) or Path(target).read_text() != _STUB:
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write(_STUB)
            os.replace(tmp, target)
        _stubs_dir = folder
    return _stubs_dir


def with_import_stubs(env: dict) -> dict:
    """``env`` with ``import_stubs()`` first on its ``PYTHONPATH`` (unchanged when stubs are off)."""
    folder = import_stubs()
    if not folder:
        return env
    rest = [p for p in (env.get("PYTHONPATH") or "").split(os.pathsep) if p and p != folder]
    return {**env, "PYTHONPATH": os.pathsep.join([folder, *rest])}
