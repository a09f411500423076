"""What a study ran: the parameters a notebook opens with when its parameters are left as ``None``.

A notebook's parameters cell names a study (``study_dir = "outputs/demo"``) and leaves the rest as
``None``; ``cell(study_dir, stage, ...)`` fills each ``None`` in from the study itself, so a notebook run
with its defaults after ``make study`` reads the demo's chains instead of training new ones with the
library's defaults (the settings are part of a chain's folder name, so other settings mean other
chains). Where the values come from, in order:

1. **recorded**: the cells of that stage the batch completed in the study folder; each
   ``_COMPLETE.json`` holds the parameters and settings its notebook ran with (``ltnb.study.batch``); the
   first is the first in the study's plan order (by key when no plan in ``params/`` names the study);
2. **the plan**: a plan in the project's ``params/`` whose study is this folder (``params/demo.yaml`` for
   ``outputs/demo``): what the batch would run, before it has run;
3. neither: a ``NotInStudy`` error that says what to run, or which parameters to give.

Values given (not ``None``) choose among the study's cells (``domain="tweets"``: its first tweets
cell) or, when the study ran none with that value, replace the first cell's value (the rest as the
study ran it). ``settings`` given as a dict are used as they are, over the library's defaults (what
the batch gives a notebook), never mixed with recorded ones. Inside a batch (``$LTNB_CELL`` set by the
runner) nothing is read from the study: a ``None`` is the library's default, as the plan's hash took it.

``Opened.announce()`` says, before a notebook trains, whether its training cell will train (how many
rounds of which chains, with ``ltnb.study.estimate``'s time for them on this machine) or read finished
rounds back.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltnb.base import paths, registry, stages
from ltnb.base._io import read_json

CELL_ENV = "LTNB_CELL"  # set by the batch runner for the kernel of a cell it runs (ltnb.study.batch)
#: what a stage's cell runs when ``strategies`` is left as None and nothing is recorded
DEFAULT_STRATEGIES = {"obtain": list(registry.defaults("obtain")), "transfer": list(registry.defaults("transfer")),
                      "federated": [s for s in registry.defaults("transfer") if s in registry.federated()]}


class NotInStudy(LookupError):
    """The study has no cell of this stage to open, and no plan that would run one."""


@dataclass
class Opened:
    """A notebook's cell resolved against its study: ``params`` (the cell parameters, every ``None``
    filled in), ``settings`` (flat, for ``ltnb.base.stages.for_stage``) and where they came from."""

    study: Path
    stage: str
    params: dict[str, Any]
    settings: dict[str, Any]
    origin: str                      # "recorded", "plan", "given" or "batch"
    where: str                       # the file or cell they came from, in words
    others: list[str] = field(default_factory=list)  # the study's other cells of this stage (keys)
    given: dict[str, Any] = field(default_factory=dict)  # the values the notebook gave (not None)

    def __getitem__(self, name: str) -> Any:
        return self.params[name]

    def describe(self) -> str:
        """Where the notebook's values came from, in a few lines."""
        order = [*stages.STAGES[self.stage].cell, *sorted(self.params)]  # the values that name the cell first
        shown = ", ".join(f"{k} {_fmt(self.params[k])}" for k in dict.fromkeys(order) if k in self.params)
        head = {"recorded": f"as the batch ran it ({self.where})",
                "plan": f"as {self.where} will run it (not run yet)",
                "given": "as given in the parameters cell",
                "defaults": f"with the library's defaults ({self.where})",
                "batch": "as the batch gives it"}[self.origin]
        lines = [f"study {self.study}: {self.stage}{' ' + shown if shown else ''}, {head}"]
        changed = [k for k in self.given if k != "settings" and self.origin in ("recorded", "plan")]
        if changed:
            lines.append(f"  given in the parameters cell: {', '.join(f'{k} {_fmt(self.given[k])}' for k in changed)}")
        if self.settings:
            lines.append("  settings: " + ", ".join(f"{k} {_fmt(v)}" for k, v in sorted(self.settings.items())))
        if self.others:
            more = f" (+{len(self.others) - 8})" if len(self.others) > 8 else ""
            lines.append(f"  the study's other {self.stage} cells: {', '.join(self.others[:8])}{more}")
        return "\n".join(lines)

    def pending(self) -> dict[str, tuple[int, int]]:
        """Per run of a chain stage (obtain, transfer): (rounds to train, rounds in all). Empty for a
        stage that does not train chains."""
        if self.stage not in ("obtain", "transfer"):
            return {}
        from ltnb.core import lottery
        from ltnb.text import vocab

        (s,) = stages.for_stage(self.stage, self.settings)
        data_key = vocab.data_key(self.study)
        vocab_size = int(vocab.info(self.study)["vocab_size"])
        p = self.params
        out = {}
        for strategy in p["strategies"]:
            h = lottery.run_hash(s, data_key=data_key, vocab_size=vocab_size, strategy=strategy)
            if self.stage == "obtain":
                run = paths.obtain_dir(self.study, p["domain"], strategy, p["seed"]) / h
                # round 0 is trained by reset (the others copy it) and by a strategy that trains its own
                own0 = strategy == "reset" or registry.get("obtain", strategy).trains_round0
                wanted = set(range(0 if own0 else 1, s.rounds + 1))
            else:
                run = paths.transfer_dir(self.study, p["source"], p["target"], strategy, p["seed"]) / h
                wanted = set(range(1, s.rounds + 1))
            done = lottery._finished_rounds(run) if run.exists() else set()
            out[strategy] = (len(wanted - done), s.rounds + 1 if self.stage == "obtain" else s.rounds)
        return out

    def announce(self, *, log=print) -> float:
        """Say whether the training cell will train, and for how long (``ltnb.study.estimate``); return the
        estimated seconds (0: nothing to train)."""
        log(self.describe())
        if self.stage in ("obtain", "transfer"):
            try:
                todo = self.pending()
            except FileNotFoundError as e:  # no data or vocabulary yet: the training cell will say the same
                log(f"  cannot train yet: {e}")
                return float("nan")
            left = sum(t for t, _ in todo.values())
            if not left:
                log(f"  nothing to train: every round of the {len(todo)} run(s) is finished and is read back")
                return 0.0
            seconds = self._estimate(log) * left / max(1, sum(n for _, n in todo.values()))
            runs = ", ".join(f"{k} {t} of {n}" for k, (t, n) in todo.items() if t)
            log(f"  THE TRAINING CELL TRAINS: rounds to train per run: {runs}; estimated {_seconds(seconds)} on this "
                "machine (ltnb.study.estimate); finished rounds are read back")
            return seconds
        if self.stage == "federated":
            if self.origin == "recorded" and self._complete():
                log("  nothing to train: the cell's federated runs are finished and are read back")
                return 0.0
            seconds = self._estimate(log)
            log(f"  THE TRAINING CELL TRAINS the cell's unfinished federated runs: estimated {_seconds(seconds)} on this "
                "machine (ltnb.study.estimate; finished runs are read back)")
            return seconds
        return 0.0

    # -- helpers
    def _cell(self):
        from ltnb.study.plan import Cell

        st = stages.STAGES[self.stage]
        values = {k: self.params[k] for k in st.cell}
        folder = st.cell_dir(self.study, values)
        return Cell(stage=self.stage, key=folder.relative_to(self.study).as_posix(), notebook=Path(st.notebook),
                    study_dir=self.study, cell_dir=folder, params={**self.params, **self.settings},
                    settings_names=tuple(self.settings))

    def _complete(self) -> bool:
        from ltnb.study.batch import marker_problem

        marker = self._cell().marker
        try:
            m = read_json(marker)
        except (OSError, ValueError):
            return False
        return marker_problem(marker, m.get("params_hash", ""), self.study) is None

    def _estimate(self, log) -> float:
        from types import SimpleNamespace

        from ltnb.study import estimate

        cell = self._cell()
        threads = int(os.environ.get("LTNB_TORCH_THREADS") or 1)
        try:
            cells, _ = estimate.estimate_cells(SimpleNamespace(study_dir=self.study, cells=[cell]), threads=threads,
                                               workers=1, log=lambda *_: None)
        except Exception as e:  # noqa: BLE001 - an estimate that cannot be made must not stop the notebook
            log(f"  (no estimate: {type(e).__name__}: {e})")
            return float("nan")
        return sum(c.training for c in cells)


def _fmt(v) -> str:
    return ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def _seconds(s: float) -> str:
    from ltnb.study.estimate import fmt_seconds

    return "unknown" if s != s else fmt_seconds(s)


def _split(parameters: dict) -> tuple[dict, dict]:
    """A cell's papermill parameters -> (cell parameters without study_dir, settings)."""
    p = {k: v for k, v in parameters.items() if k != "study_dir"}
    return p, dict(p.pop("settings", None) or {})


def recorded_cells(study_dir, stage: str) -> list[tuple[str, dict, dict]]:
    """``(cell key, cell parameters, settings)`` of every cell of ``stage`` the batch completed in the
    study (its ``_COMPLETE.json``), sorted by key."""
    study = Path(study_dir)
    root = stages.STAGES[stage].root(study)
    out = []
    for marker in sorted(root.rglob(paths.COMPLETE_MARKER)) if root.is_dir() else []:
        try:
            m = read_json(marker)
        except (OSError, ValueError):
            continue
        if not isinstance(m, dict) or m.get("stage") != stage or not isinstance(m.get("parameters"), dict):
            continue  # a run folder's marker, or another stage's
        p, s = _split(m["parameters"])
        out.append((str(m.get("cell") or marker.parent.relative_to(study).as_posix()), p, s))
    return out


def plan_cells(study_dir, stage: str) -> list[tuple[str, dict, dict, str]]:
    """``(cell key, cell parameters, settings, plan file)`` of the cells of ``stage`` that a plan in the
    project's ``params/`` would run in this study, in plan order (the first plan that names it)."""
    from ltnb.study.plan import PlanError, load_plan

    study = Path(study_dir).resolve()
    root = paths.project_root(study)  # its plan is in the checkout that holds it
    if root is None or not (root / "params").is_dir():
        return []
    for plan_path in sorted((root / "params").glob("*.yaml")):
        try:
            plan = load_plan(plan_path)
        except (PlanError, OSError):
            continue
        if plan.study_dir.resolve() != study:
            continue
        return [(c.key, *_split(c.parameters), os.path.relpath(plan_path, root)) for c in plan.cells if c.stage == stage]
    return []


def cell(study_dir, stage: str, *, settings: dict | None = None, missing_ok: bool = False, **given) -> Opened:
    """The cell a notebook of ``stage`` opens on (see the module doc). ``given``: the notebook's cell
    parameters (``domain``, ``seed``, ``strategies``, ``source``, ``target``, ...); ``None`` means "as the
    study ran it". ``missing_ok`` (stages that train nothing: divergence, report, phase): a study with no
    record of the stage opens with the library's defaults instead of raising ``NotInStudy``."""
    if stage not in stages.STAGES:
        raise ValueError(f"stage {stage!r}: unknown; allowed: {', '.join(stages.STAGES)}")
    if settings is not None and not isinstance(settings, dict):
        raise TypeError(f"settings = {settings!r}: must be a dict of settings by name, or None (the study's)")
    study = paths.resolve_study(study_dir)
    chosen = {k: v for k, v in given.items() if v is not None}
    given_all = {**chosen, **({"settings": settings} if settings is not None else {})}
    if os.environ.get(CELL_ENV):  # run by the batch: the plan gave every value it means
        return Opened(study, stage, _with_defaults(stage, chosen), dict(settings or {}), "batch",
                      os.environ[CELL_ENV], given=given_all)
    planned = plan_cells(study, stage)
    order = {k: i for i, (k, *_) in enumerate(planned)}  # the study's plan order first, then by key
    found = sorted([(k, p, s, "recorded", f"{k}/{paths.COMPLETE_MARKER}") for k, p, s in recorded_cells(study, stage)],
                   key=lambda f: (order.get(f[0], len(order)), f[0]))
    if not found:
        found = [(k, p, s, "plan", plan) for k, p, s, plan in planned]
    if not found:
        if settings is not None:  # everything given: the notebook runs what it names
            return Opened(study, stage, _with_defaults(stage, chosen), dict(settings), "given", "the parameters cell",
                          given=given_all)
        if missing_ok:
            return Opened(study, stage, _with_defaults(stage, chosen), {}, "defaults",
                          f"the study records no {stage} cell", given=given_all)
        what = "the study folder does not exist" if not study.exists() else \
            f"it has no completed {stage} cell and no plan in params/ names this study"
        raise NotInStudy(
            f"study_dir = {str(study_dir)!r} ({study}): nothing to open for stage {stage}: {what}. Run the study's plan "
            f"first (ltnb batch params/<plan>.yaml; `make study` runs outputs/demo, `make federated` "
            f"outputs/federated-demo), or give settings = {{...}} (a dict) to run this notebook with those settings.")
    keys = [k for k, *_ in found]
    ident = {k: v for k, v in chosen.items() if k in stages.STAGES[stage].cell}  # what names a cell
    match = [f for f in found if all(_same(f[1].get(k), v) for k, v in ident.items())]
    key, params, rec_settings, origin, where = (match or found)[0]
    params = {**params, **chosen}
    return Opened(study, stage, _with_defaults(stage, params),
                  dict(rec_settings) if settings is None else dict(settings), origin, where,
                  others=[k for k in keys if k != key], given=given_all)


def settings(study_dir, stage: str, given: dict | None = None) -> dict:
    """The settings a notebook of a stage that trains nothing (divergence, report, phase) uses: ``given``
    when it is a dict, else those the study ran the stage with (``cell``), else ``{}``, the library's
    defaults (a folder with no record of the stage, e.g. rows written by hand)."""
    return dict(given) if given is not None else cell(study_dir, stage, missing_ok=True).settings


def _same(a, b) -> bool:
    return list(a) == list(b) if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) else a == b


def _with_defaults(stage: str, params: dict) -> dict:
    out = dict(params)
    out.pop("progress", None)  # a notebook's own choice, never the study's
    if stage in DEFAULT_STRATEGIES and out.get("strategies") is None:
        out["strategies"] = list(DEFAULT_STRATEGIES[stage])
    if "seed" in stages.STAGES[stage].cell and out.get("seed") is None:
        out["seed"] = 0
    return out
