"""The stages of a study, each written down once: ``STAGES["obtain"]`` says which notebook runs it, which
settings and cell parameters it takes, which folder a cell writes, which stages it reads from and which
of its files later cells read. The plan (``ltnb.study.plan``: expansion, checks, dependencies) and the cell
records (``cell_outputs``) read these objects; adding a stage is one ``Stage`` here and its
notebook.

A cell of a stage is named by its cell parameters (``cell``): none for a stage that runs once per study
(data, divergence, report, phase), ``(domain, seed)`` for an obtain cell, and so on. Its folder is
``folder(study, values)``; its key is that folder relative to the study (``obtain/products/seed0``).
``outputs`` are the files of a cell that later cells (or, for the report, its readers) read, relative to the study folder, with
``{key}``, ``{name}`` (the second part of the key: a domain, a pair or a source) and ``{seed}`` (the
third: ``seed<k>``) filled in; patterns are expanded with ``glob`` (sorted), and ``VOCAB`` stands for the
current vocabulary's files. ``cell_outputs`` hashes them for a cell's completeness record
(``ltnb.study.batch``); a cell is complete only while they still have those hashes.

``needs`` names the stages whose cells a cell reads (``ltnb.study.plan`` makes them its inputs: the batch runs
it after them and reruns it when they change). A cell of a grid stage reads the data cell and (transfer,
federated) the obtain cells of its own domains and seed; a stage that runs once reads every cell of the stages it needs, and
``EVERYTHING_BEFORE`` every cell that runs before it.

``cost`` names the model by which ``ltnb.study.estimate.estimate_cells`` prices a cell: ``"chains"`` (IMP
rounds: calibrated training rates by sparsity, epochs and ratios learned from finished trainings),
``"federated"`` (``estimate._federated_seconds``) or ``"wall"`` (the cell's measured wall time).
Until a batch on this machine has measured them, ``overhead`` (seconds per cell besides training:
kernel start, imports, the notebook's other cells) and, for ``"wall"`` cells, ``wall`` stand in.

Every cell of a stage lies under the study's folder of the stage's name (``root``; the first part of
a cell key); the explorer knows a study folder by them.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from ltnb.base import config, integrity, paths
from ltnb.base.config import (DataSettings, DivergenceSettings, FederatedSettings, LotterySettings,
                              PhaseSettings, VocabSettings)

#: stands for the current vocabulary's files in ``Stage.outputs`` (``ltnb.base.integrity`` lists them)
VOCAB = "<vocabulary>"
#: ``Stage.needs`` of a stage that reads every cell that runs before it (report)
EVERYTHING_BEFORE = ("*",)
#: the stage whose cells make the IMP chains other stages read (``Stage.reads``)
CHAINS = "obtain"


@dataclass(frozen=True)
class Stage:
    """One stage of a study (see the module doc)."""

    name: str
    notebook: str                                # relative to the project root
    settings: tuple[type, ...]                   # the settings classes its notebook takes in ``settings = {}``
    cell: tuple[str, ...] = ()                   # the cell parameters that name a cell (none: one cell per study)
    folder: Callable[[Path, Mapping], Path] | None = None  # a cell's folder from its values (None: ``single``)
    single: Callable[[Path], Path] | None = None  # the folder of a stage with one cell per study
    strategies: tuple[str, ...] = ()             # what its ``strategies`` may name (empty: no strategies)
    needs: tuple[str, ...] = ()                  # the stages whose cells it reads
    outputs: tuple[str, ...] = ()                # the files of a cell that later cells read (module doc)
    pair: tuple[str, ...] = ()                   # the two cell parameters a grid's ``pair: [a, b]`` sets (module doc)
    reads: Callable[[Mapping], tuple[str, ...]] | None = None  # the domains whose reset chains a cell reads
    rounds_problem: Callable[[Mapping, str, int], tuple[str | None, str] | None] | None = None  # (module doc)
    check: Callable[[Mapping, tuple | None], list[tuple[str | None, str]]] | None = None  # (module doc)
    check_settings: Callable[[LotterySettings], None] | None = None  # refuses settings this stage cannot run
    cost: str = "wall"                           # how ``ltnb.study.estimate`` prices a cell (module doc)
    overhead: float = 6.0                        # seconds per cell besides training, until measured (module doc)
    wall: float = 10.0                           # seconds of a ``"wall"`` cell, until measured (module doc)

    @property
    def one_cell(self) -> bool:
        """Whether the stage runs once per study (no grid)."""
        return not self.cell

    def cell_dir(self, study_dir: Path, values: Mapping) -> Path:
        """The folder of the cell with these ``values`` (its cell parameters)."""
        return self.single(study_dir) if self.one_cell else self.folder(study_dir, values)

    def root(self, study_dir: str | os.PathLike) -> Path:
        """The folder every cell of the stage lies under (``<study>/<name>``)."""
        return Path(study_dir) / self.name


def _seed(values: Mapping) -> str:
    return f"seed{values['seed']}"


def _transfer_rounds(v: Mapping, domain: str, have: int) -> tuple[str | None, str] | None:
    """A transfer trains every round 1..rounds of its source's chain."""
    need = v.get("rounds", config.LotterySettings.rounds)
    if domain == v.get("source") and isinstance(need, int) and have < need:
        return None, (f"transfer {v['source']}->{v['target']} needs rounds 1..{need} of the source chain, but {{src}} "
                      f"runs {have}")
    return None


def _federated_clients(v: Mapping, data_domains) -> list[tuple[str | None, str]]:
    """The federated stage's clients: domains the data stage makes, not the source, at least one."""
    source, clients, out = v.get("source"), v.get("client_domains"), []
    for d in clients or []:
        if d == source:
            out.append(("client_domains", f"client_domains: {d!r} is the source (the server's domain); clients hold "
                                          "the other domains"))
        elif data_domains is not None and d not in data_domains:
            out.append(("client_domains", f"client_domains: unknown domain {d!r}; the data stage makes: "
                                          f"{', '.join(data_domains)}"))
    if clients is None and data_domains is not None and not [d for d in data_domains if d != source]:
        out.append((None, f"federated {source}: no client domain; the data stage makes only {', '.join(data_domains)}"))
    return out


def _federated_rounds(v: Mapping, domain: str, have: int) -> tuple[str | None, str] | None:
    """A federated cell reads the source chain's tickets of its ``ticket_rounds``."""
    wanted = v.get("ticket_rounds", config.FederatedSettings.ticket_rounds)
    if isinstance(wanted, list) and wanted and all(isinstance(r, int) for r in wanted) and max(wanted) > have:
        return "ticket_rounds", (f"ticket_rounds = {wanted!r}: round {max(wanted)} is beyond the source chain {{src}}, "
                                 f"which runs rounds 0..{have}")
    return None


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("data", "notebooks/01_data.ipynb", (DataSettings, VocabSettings), single=paths.data_dir,
          outputs=("data/corpus.parquet", VOCAB), overhead=8.0, wall=20.0),
    Stage("divergence", "notebooks/02_divergence.ipynb", (DivergenceSettings,), single=paths.divergence_dir,
          needs=("data",), outputs=("divergence/jsd.parquet",), overhead=6.0, wall=4.0),
    Stage("obtain", "notebooks/03_obtain.ipynb", (LotterySettings,), cell=("domain", "seed"),
          folder=lambda study, v: study / "obtain" / v["domain"] / _seed(v),
          strategies=config.OBTAIN_STRATEGIES, needs=("data",), cost="chains", overhead=7.0,
          # transfer and federated cells read the reset chain's tickets and theta_0
          outputs=("obtain/{name}/*/{seed}/*/results.parquet", "obtain/{name}/reset/{seed}/*/round_*.safetensors",
                   "obtain/{name}/reset/{seed}/*/theta_0.safetensors")),
    Stage("transfer", "notebooks/04_transfer.ipynb", (LotterySettings,), cell=("source", "target", "seed"),
          folder=lambda study, v: study / "transfer" / f"{v['source']}__{v['target']}" / _seed(v),
          strategies=config.TRANSFER_STRATEGIES, needs=("data", "obtain"), cost="chains", overhead=7.0,
          pair=("source", "target"), reads=lambda v: (v["source"], v["target"]), rounds_problem=_transfer_rounds,
          check_settings=config.check_transfer,
          outputs=("transfer/{name}/*/{seed}/*/results.parquet",)),
    Stage("federated", "notebooks/05_federated.ipynb", (LotterySettings, FederatedSettings), cell=("source", "seed"),
          folder=lambda study, v: study / "federated" / v["source"] / _seed(v),
          strategies=config.FEDERATED_STRATEGIES, needs=("data", "obtain"), cost="federated",
          reads=lambda v: (v["source"],), rounds_problem=_federated_rounds, check=_federated_clients,
          outputs=("{key}/*/results.parquet",)),
    Stage("report", "notebooks/06_report.ipynb", (PhaseSettings,), single=paths.report_dir, needs=EVERYTHING_BEFORE,
          # everything a reader reads, not only what later cells read: a changed table, figure or page
          # makes the report cell rerun and draw it again
          outputs=("report/*.parquet", "report/*.csv", "report/*.html", "report/*.svg", "report/*.png"),
          overhead=8.0, wall=25.0),
    # the explorer and its worked example read the obtain and transfer result rows only (and write
    # nothing under report/), so it runs beside the report
    Stage("phase", "notebooks/07_phase_transition.ipynb", (PhaseSettings,), single=paths.phase_dir,
          needs=("obtain", "transfer"), overhead=8.0, wall=25.0),
)}
#: the stages in the order they run
ORDER = tuple(STAGES)


def of_key(key: str) -> Stage:
    """The stage of a cell key (``obtain/products/seed0`` -> ``STAGES["obtain"]``)."""
    return STAGES[key.split("/")[0]]


def output_patterns(key: str) -> list[str]:
    """``of_key(key).outputs`` with the key's parts filled in."""
    parts = key.split("/")
    fill = {"key": key, "name": parts[1] if len(parts) > 1 else "", "seed": parts[2] if len(parts) > 2 else ""}
    return [p if p == VOCAB else p.format(**fill) for p in of_key(key).outputs]


def cell_outputs(study_dir: str | os.PathLike, key: str) -> dict[str, str]:
    """``{path relative to the study: sha256}`` of the files of cell ``key`` that later cells read (its
    stage's ``outputs`` in ``ltnb.base.stages``). An obtain cell ``obtain/<domain>/seed<k>[/<settings>]`` runs the
    chains ``obtain/<domain>/<strategy>/seed<k>/<hash>/`` (likewise transfer): every chain of that domain
    (pair) and seed."""
    study = Path(study_dir)
    files: list[Path] = []
    for pattern in output_patterns(key):
        if pattern == VOCAB:
            files += integrity.vocab_files(study)
        elif "*" in pattern:
            files += sorted(study.glob(pattern))
        else:
            files.append(study / pattern)
    return {p.relative_to(study).as_posix(): integrity.file_sha256(p) for p in files if p.is_file()}


def cell_inputs(study_dir: str | os.PathLike, deps: Iterable[str]) -> dict[str, str]:
    """The files (with their sha256) of the cells ``deps`` that a cell reads from."""
    out: dict[str, str] = {}
    for dep in deps:
        out.update(cell_outputs(study_dir, dep))
    return out


# ----------------------------------------------------------------------- a stage's settings, by flat name
def stage_settings(stage: str) -> dict[str, dataclasses.Field]:
    """Flat setting name -> field, for the settings a stage's notebook takes in ``settings = {}``."""
    out: dict[str, dataclasses.Field] = {}
    for cls in STAGES[stage].settings if stage in STAGES else ():
        if cls is LotterySettings:
            out.update({n: f for n, (_, f) in LotterySettings.flat_fields().items()})
        else:
            out.update(cls.settings_fields())
    return out


def for_stage(stage: str, settings: dict | None = None) -> tuple:
    """The settings objects of a stage from a notebook's ``settings = {...}`` (flat names; the rest keep
    their defaults); an unknown name is refused, naming the allowed ones."""
    settings = dict(settings or {})
    known = stage_settings(stage)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ValueError(f"settings of stage {stage}: unknown name(s) {unknown}; allowed: {', '.join(sorted(known))}")
    out = []
    for cls in STAGES[stage].settings:
        if cls is LotterySettings:
            out.append(LotterySettings.from_params(**{k: v for k, v in settings.items()
                                                      if k in LotterySettings.flat_fields()}))
        else:
            out.append(cls(**{k: v for k, v in settings.items() if k in cls.settings_fields()}))
    return tuple(out)


def param_schema(stage: str, name: str) -> dict | None:
    """The JSON schema of a stage's parameter (a setting or a cell parameter), or None if unchecked."""
    if name in stage_settings(stage):
        return stage_settings(stage)[name].metadata["schema"]
    if name == "strategies" and stage in STAGES and STAGES[stage].strategies:
        return {"type": "array", "minItems": 1, "uniqueItems": True, "items": config.one_of(STAGES[stage].strategies)}
    spec = config.CELL_PARAMS.get(name)
    return spec["schema"] if spec else None
