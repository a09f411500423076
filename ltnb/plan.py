"""Batch plans: read a YAML plan, check every key and value, and expand it into cells.

A plan lists the stages of a study in order, each with fixed ``params`` and a ``grid`` of values to
cross; ``defaults`` apply to every stage whose notebook accepts the key::

    study: smoke                 # the study folder: <outputs>/<study>
    outputs: outputs             # optional (default "outputs"), relative to the repo root
    defaults: {seed: 0, max_epochs: 1}
    stages:
      - stage: data
        params: {corpus: builtin, per_domain: 120, domains: [products, movies]}
      - stage: divergence
      - stage: obtain
        params: {rounds: 2}
        grid: {domain: [products, movies], strategy: [reset, random], seed: [0]}
      - stage: transfer
        grid: {pair: [[products, movies]], strategy: [masks-reset, masks-random], seed: [0]}
      - stage: report

Choices:
- The parameter names a stage accepts are read from its notebook's ``parameters`` cell
  (``papermill.inspect_notebook``), so a new notebook parameter needs no change here. ``study_dir``
  is filled in from ``study``/``outputs``, never by the plan.
- A stage may name its own notebook (``notebook: path.ipynb``); by default ``notebooks/01_data.ipynb``
  etc. Relative paths (notebooks, ``outputs``, and the papermill working directory of every cell)
  resolve against the plan's *root*: the folder holding ``params/`` when the plan lives in a
  ``params/`` folder, else the plan's own folder. Default notebooks missing there are taken from the
  repository ``ltnb`` is installed from.
- One cell is one folder of ``ltnb.paths`` (data, divergence, obtain/<domain>/<strategy>/seed<k>,
  transfer/<source>__<target>/<strategy>/seed<k>, report); a grid that would put two cells in one
  folder is an error. ``pair: [source, target]`` (or ``"source->target"``) in a transfer grid sets
  ``source`` and ``target``.
- Every problem (unknown key, bad value, impossible grid) is collected with its path in the file
  (``stages[2].grid.domian``) and YAML line, and all are raised at once as a ``PlanError`` before
  anything runs or any folder is made.
- A cell's ``params_hash`` covers its stage, the values the plan gives it, the notebook's defaults
  for the rest, and the hashes of the cells it reads from; so changing the data settings makes every
  later cell incomplete, while deleting one cell's folder reruns only that cell.
"""
from __future__ import annotations

import ast
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ltnb import paths
from ltnb._io import stable_hash
from ltnb.integrity import name_problem

STAGES = ("data", "divergence", "obtain", "transfer", "report", "phase")
DEFAULT_NOTEBOOKS = {
    "data": "notebooks/01_data.ipynb",
    "divergence": "notebooks/02_divergence.ipynb",
    "obtain": "notebooks/03_obtain.ipynb",
    "transfer": "notebooks/04_transfer.ipynb",
    "report": "notebooks/06_report.ipynb",
    "phase": "notebooks/05_phase_transition.ipynb",
}
STRATEGIES = {"obtain": ("reset", "random", "rewind"), "transfer": ("masks-reset", "masks-random")}
CORPORA = ("builtin", "amazon", "blitzer")
# Transfer reads the masks and theta_0 of the source's TICKET-RESET chain and compares with the
# target's TICKET-RESET chain (TICKET-TARGET), so both obtain cells are its inputs.
TRANSFER_NEEDS_STRATEGY = "reset"
SINGLE_CELL_STAGES = ("data", "divergence", "report", "phase")
TOP_KEYS = ("study", "outputs", "defaults", "stages")
STAGE_KEYS = ("stage", "notebook", "params", "grid")

try:  # the data helper's list; a copy here so plans validate before ltnb.corpus exists
    from ltnb.corpus import BUILTIN_DOMAINS
except Exception:  # pragma: no cover - depends on the other module being present
    BUILTIN_DOMAINS = ("products", "movies", "restaurants", "tweets", "news")


class PlanError(ValueError):
    """Everything wrong with a plan, one line per problem."""

    def __init__(self, plan_path: str | os.PathLike, problems: list[str]):
        self.plan_path = str(plan_path)
        self.problems = list(dict.fromkeys(problems))  # drop repeats, keep order
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(f"{self.plan_path}: {n} problem{'s' * (n != 1)} in the plan; nothing was run:\n{lines}")


@dataclass(frozen=True)
class Cell:
    """One notebook run: a stage, its parameters and the folder it writes."""

    stage: str
    key: str  # the cell folder relative to the study folder, e.g. "obtain/products/reset/seed0"
    notebook: Path
    study_dir: Path
    cell_dir: Path
    params: Mapping[str, Any]  # what the plan gives the notebook (without study_dir)
    deps: tuple[str, ...] = ()  # keys of cells of this plan it reads from
    external: tuple[str, ...] = ()  # keys of cells it reads from that this plan does not produce
    params_hash: str = ""

    @property
    def parameters(self) -> dict[str, Any]:
        """The papermill parameters: the plan's values plus ``study_dir``."""
        return {**self.params, "study_dir": str(self.study_dir)}

    @property
    def executed(self) -> Path:
        """Where the executed copy of the notebook is kept: next to the cell's outputs."""
        return self.cell_dir / f"{self.notebook.stem}.ipynb"

    @property
    def marker(self) -> Path:
        return self.cell_dir / paths.COMPLETE_MARKER


@dataclass(frozen=True)
class Plan:
    path: Path
    root: Path
    study: str
    study_dir: Path
    stages: tuple[str, ...]
    cells: tuple[Cell, ...] = field(repr=False)

    def cells_of(self, stage: str) -> tuple[Cell, ...]:
        return tuple(c for c in self.cells if c.stage == stage)


# ----------------------------------------------------------------------------------------- reading
def plan_root(plan_path: str | os.PathLike) -> Path:
    """The folder relative paths resolve against: the parent of ``params/``, else the plan's folder."""
    folder = Path(plan_path).resolve().parent
    return folder.parent if folder.name == "params" else folder


def _line_map(node: yaml.Node, path: str, lines: dict[str, int], problems: list[str]) -> None:
    """Record the 1-based line of every key path (``stages[2].grid.domain``); flag repeated keys."""
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for k, v in node.value:
            key = str(k.value)
            sub = f"{path}.{key}" if path else key
            if key in seen:
                problems.append(f"{sub} (line {k.start_mark.line + 1}): key given twice")
            seen.add(key)
            lines[sub] = k.start_mark.line + 1
            _line_map(v, sub, lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _line_map(v, f"{path}[{i}]", lines, problems)


class _Problems:
    """Collects messages as ``path (line N): message``."""

    def __init__(self, lines: dict[str, int]):
        self.lines = lines
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        line = self.lines.get(path)
        if line is None:  # fall back to the nearest enclosing path that has a line
            p = path
            while line is None and p:
                parent = re.sub(r"(\.[^.\[\]]+|\[\d+\])$", "", p)  # drop the last .key or [i]
                p = parent if parent != p else ""
                line = self.lines.get(p)
        where = f"{path} (line {line})" if line else path
        self.items.append(f"{where}: {message}")


# ---------------------------------------------------------------------------------------- values
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# name -> (test, what is allowed). Applied wherever the name appears; unknown names are only
# checked against the notebook's parameter list.
VALUE_CHECKS = {
    "seed": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "rounds": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "prune_fraction": (lambda v: _is_num(v) and 0 < v < 1, "a number in (0, 1)"),
    "max_epochs": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "patience": (lambda v: v is None or (_is_int(v) and v >= 0), "an integer >= 0 or null"),
    "per_domain": (lambda v: v is None or (_is_int(v) and v >= 1), "an integer >= 1 or null"),
    "vocab_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "max_len": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "embed_dim": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "channels": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "hidden": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "rewind_steps": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "lr": (lambda v: _is_num(v) and v > 0, "a number > 0"),
    "weight_decay": (lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    "dropout": (lambda v: _is_num(v) and 0 <= v < 1, "a number in [0, 1)"),
    "character_coverage": (lambda v: _is_num(v) and 0 < v <= 1, "a number in (0, 1]"),
    "corpus": (lambda v: v in CORPORA, f"one of {', '.join(CORPORA)}"),
    "domains": (
        lambda v: v is None or (isinstance(v, list) and v and all(isinstance(d, str) for d in v) and len(set(v)) == len(v)),
        "null or a non-empty list of distinct domain names",
    ),
    "amazon_files": (
        lambda v: v is None or (isinstance(v, dict) and v and all(isinstance(k, str) and isinstance(p, str) for k, p in v.items())),
        "null or a mapping domain -> file path",
    ),
}


def _default_value(spec: Mapping[str, Any] | None) -> Any:
    """A notebook parameter's default as a Python value, when it is a literal (else None)."""
    if not spec:
        return None
    try:
        return ast.literal_eval(spec.get("default", ""))
    except (ValueError, SyntaxError):
        return None


def _inspect(notebook: Path) -> dict[str, dict]:
    """The parameters of a notebook: ``{name: {"name", "default"}}`` from its ``parameters`` cell.

    The cell is parsed with ``ast`` (every top-level assignment is a parameter; ``default`` is the
    source text of its value). ``papermill.inspect_notebook`` is the fallback for cells that are not
    plain Python; it is not the first choice because its line parser silently drops a parameter
    whose line has a second ``=`` (e.g. ``x = 1  # x >= 0``).
    """
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    cell = next((c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        return {}
    try:
        tree = ast.parse(cell.source)
    except SyntaxError:
        import papermill

        return papermill.inspect_notebook(str(notebook))
    found: dict[str, dict] = {}
    for stmt in tree.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
        value = getattr(stmt, "value", None)
        for t in targets:
            if isinstance(t, ast.Name):
                default = ast.get_source_segment(cell.source, value) if value is not None else "None"
                found[t.id] = {"name": t.id, "default": default}
    return found


def _resolve_notebook(stage: str, given: Any, root: Path) -> Path:
    if given is not None:
        p = Path(str(given)).expanduser()
        return p if p.is_absolute() else root / p
    p = root / DEFAULT_NOTEBOOKS[stage]
    if not p.exists():  # a plan kept outside the repo still finds the project's notebooks
        repo = Path(__file__).resolve().parent.parent
        if (repo / DEFAULT_NOTEBOOKS[stage]).exists():
            return repo / DEFAULT_NOTEBOOKS[stage]
    return p


def _parse_pair(v: Any) -> tuple[str, str] | None:
    if isinstance(v, str) and "->" in v:
        s, t = (x.strip() for x in v.split("->", 1))
        return (s, t) if s and t else None
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v):
        return v[0], v[1]
    return None


# ---------------------------------------------------------------------------------------- loading
def load_plan(plan_path: str | os.PathLike, *, root: str | os.PathLike | None = None) -> Plan:
    """Read, check and expand a plan; raise ``PlanError`` listing every problem. Creates nothing."""
    plan_path = Path(plan_path)
    try:
        text = plan_path.read_text(encoding="utf-8")
    except OSError as e:
        raise PlanError(plan_path, [f"cannot read the plan: {e}"]) from None
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PlanError(plan_path, [f"not valid YAML: {e}"]) from None
    lines: dict[str, int] = {}
    pre: list[str] = []
    if node is not None:
        _line_map(node, "", lines, pre)
    P = _Problems(lines)
    P.items.extend(pre)
    root = Path(root).resolve() if root else plan_root(plan_path)

    if not isinstance(raw, dict):
        raise PlanError(plan_path, ["the plan must be a mapping with keys " + ", ".join(TOP_KEYS)])
    for k in raw:
        if k not in TOP_KEYS:
            P.add(str(k), f"unknown key; allowed: {', '.join(TOP_KEYS)}")
    study = raw.get("study")
    if not isinstance(study, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", study or ""):
        P.add("study", "required: a folder name (letters, digits, _ . -)")
        study = "invalid"
    outputs = raw.get("outputs", "outputs")
    if not isinstance(outputs, str) or not outputs:
        P.add("outputs", "must be a folder path (relative paths resolve against the plan root)")
        outputs = "outputs"
    out_path = Path(outputs).expanduser()
    study_dir = (out_path if out_path.is_absolute() else root / out_path).resolve() / study
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        P.add("defaults", "must be a mapping of parameter -> value")
        defaults = {}
    if "study_dir" in defaults:
        P.add("defaults.study_dir", "is set by the runner from study/outputs; remove it")
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        P.add("stages", f"required: a non-empty list of stages, in the order {', '.join(STAGES)}")
        stages_raw = []

    # --- per stage: structure, notebook, accepted keys
    entries: list[dict] = []  # {name, i, notebook, accepted, params, grid}
    last_order = -1
    seen_stages: dict[str, int] = {}
    for i, st in enumerate(stages_raw):
        at = f"stages[{i}]"
        if not isinstance(st, dict):
            P.add(at, "must be a mapping with keys " + ", ".join(STAGE_KEYS))
            continue
        for k in st:
            if k not in STAGE_KEYS:
                P.add(f"{at}.{k}", f"unknown key; allowed: {', '.join(STAGE_KEYS)}")
        name = st.get("stage")
        if name not in STAGES:
            P.add(f"{at}.stage", f"unknown stage {name!r}; allowed: {', '.join(STAGES)}")
            continue
        if name in seen_stages:
            P.add(f"{at}.stage", f"duplicate stage {name!r} (already stages[{seen_stages[name]}])")
            continue
        seen_stages[name] = i
        order = STAGES.index(name)
        if order < last_order:
            P.add(f"{at}.stage", f"stage {name!r} is out of order; stages run in the order {', '.join(STAGES)}")
        last_order = max(last_order, order)
        params = st.get("params") or {}
        grid = st.get("grid") or {}
        if not isinstance(params, dict):
            P.add(f"{at}.params", "must be a mapping of parameter -> value")
            params = {}
        if not isinstance(grid, dict):
            P.add(f"{at}.grid", "must be a mapping of parameter -> list of values")
            grid = {}
        notebook = _resolve_notebook(name, st.get("notebook"), root)
        accepted = None
        if not notebook.is_file():
            P.add(f"{at}.notebook" if "notebook" in st else f"{at}.stage", f"notebook not found: {notebook}")
        else:
            try:
                accepted = _inspect(notebook)
            except Exception as e:  # noqa: BLE001 - report any unreadable notebook as a plan problem
                P.add(f"{at}.notebook" if "notebook" in st else f"{at}.stage", f"cannot read notebook {notebook}: {e}")
            else:
                if not accepted:
                    P.add(f"{at}.stage", f"notebook {notebook} has no cell tagged 'parameters'")
                    accepted = None
        entries.append(dict(name=name, i=i, at=at, notebook=notebook, accepted=accepted, params=params, grid=grid))

    # --- the domains the data stage will produce (None: unknown, not checked)
    data_domains: tuple[str, ...] | None = None
    for e in entries:
        if e["name"] != "data":
            continue
        acc = e["accepted"] or {}
        d = {k: v for k, v in defaults.items() if k in acc}
        d.update(e["params"])
        corpus = d.get("corpus", _default_value(acc.get("corpus")) or "builtin")
        domains = d.get("domains", _default_value(acc.get("domains")))
        if isinstance(domains, list) and all(isinstance(x, str) for x in domains):
            data_domains = tuple(domains)
            if corpus == "builtin":
                for j, dom in enumerate(domains):
                    if dom not in BUILTIN_DOMAINS:
                        where = f"{e['at']}.params.domains[{j}]" if "domains" in e["params"] else f"defaults.domains[{j}]"
                        P.add(where, f"unknown built-in domain {dom!r}; allowed: {', '.join(BUILTIN_DOMAINS)}")
        elif corpus == "builtin":
            data_domains = tuple(BUILTIN_DOMAINS)
        elif isinstance(d.get("amazon_files"), dict):
            data_domains = tuple(d["amazon_files"])
        if corpus == "amazon" and not d.get("amazon_files") and "amazon_files" in acc:
            P.add(f"{e['at']}.params", "corpus amazon needs amazon_files: {domain: path to a McAuley file}")
    if "data" not in seen_stages:
        data_domains = None

    # --- defaults: every key must be accepted by at least one stage's notebook
    known = [e for e in entries if e["accepted"] is not None]
    if known and len(known) == len(entries):
        union = set().union(*(e["accepted"] for e in known)) - {"study_dir"}
        for k in defaults:
            if k != "study_dir" and k not in union:
                P.add(f"defaults.{k}", f"no stage's notebook accepts {k!r}; accepted: {', '.join(sorted(union))}")

    def check_value(stage: str, key: str, value: Any, where: str) -> None:
        if key in VALUE_CHECKS:
            ok, allowed = VALUE_CHECKS[key]
            if not ok(value):
                P.add(where, f"{key} = {value!r} is not allowed; must be {allowed}")
        if key == "strategy" and stage in STRATEGIES and value not in STRATEGIES[stage]:
            P.add(where, f"unknown {stage} strategy {value!r}; allowed: {', '.join(STRATEGIES[stage])}")
        if key in ("domains", "amazon_files") and isinstance(value, (list, dict)):  # names that become folder names
            for name in value:
                problem = name_problem(name, "domain")
                if problem:
                    P.add(where, problem)
        if key in ("domain", "source", "target"):
            if not isinstance(value, str):
                P.add(where, f"{key} must be a domain name")
            elif name_problem(value, key):
                P.add(where, name_problem(value, key))
            elif data_domains is not None and value not in data_domains:
                P.add(where, f"unknown domain {value!r}; the data stage makes: {', '.join(data_domains)}")

    # --- expand each stage into cells
    cells: list[Cell] = []
    by_stage: dict[str, list[Cell]] = {}
    for e in entries:
        name, at, acc = e["name"], e["at"], e["accepted"]
        params, grid = e["params"], e["grid"]
        if acc is None:
            continue
        allowed = sorted(set(acc) - {"study_dir"})
        allowed_grid = allowed + (["pair"] if name == "transfer" else [])
        # values from defaults / params / grid, each with where it came from
        fixed: dict[str, tuple[Any, str]] = {}
        for k, v in defaults.items():
            if k in acc and k != "study_dir":
                fixed[k] = (v, f"defaults.{k}")
        for k, v in params.items():
            if k == "study_dir":
                P.add(f"{at}.params.study_dir", "is set by the runner from study/outputs; remove it")
            elif k not in acc:
                P.add(f"{at}.params.{k}", f"unknown parameter for stage {name} ({e['notebook'].name}); allowed: {', '.join(allowed)}")
            else:
                fixed[k] = (v, f"{at}.params.{k}")
        if grid and name in SINGLE_CELL_STAGES:
            P.add(f"{at}.grid", f"stage {name} runs once per study (one folder); put its values under params")
            grid = {}
        axes: list[tuple[str, list]] = []
        for k, vs in grid.items():
            gat = f"{at}.grid.{k}"
            if k == "study_dir":
                P.add(gat, "is set by the runner from study/outputs; remove it")
                continue
            if k not in allowed_grid:
                P.add(gat, f"unknown parameter for stage {name} ({e['notebook'].name}); allowed: {', '.join(allowed_grid)}")
                continue
            if k in params:
                P.add(gat, f"{k} is set both in params and in grid; keep one")
                continue
            if not isinstance(vs, list):
                P.add(gat, "a grid value must be a list of values (write [x] for one value)")
                continue
            if not vs:
                P.add(gat, "impossible grid: empty list, the stage would have no cells")
                continue
            axes.append((k, [(v, f"{gat}[{j}]") for j, v in enumerate(vs)]))
        if name == "transfer" and "pair" in grid and ("source" in fixed or "target" in fixed or "source" in grid or "target" in grid):
            P.add(f"{at}.grid.pair", "pair sets source and target; do not also give source/target")
        # check every value once, where it was written
        for k, (v, where) in fixed.items():
            check_value(name, k, v, where)
        for k, vals in axes:
            for v, where in vals:
                if k == "pair":
                    pr = _parse_pair(v)
                    if pr is None:
                        P.add(where, f"a pair is [source, target] or \"source->target\", got {v!r}")
                    else:
                        check_value(name, "source", pr[0], where)
                        check_value(name, "target", pr[1], where)
                        if pr[0] == pr[1]:
                            P.add(where, f"source and target are both {pr[0]!r}; a transfer needs two different domains")
                else:
                    check_value(name, k, v, where)

        # the cell folder is named by these keys; each must be known for every cell
        def dflt(k: str) -> Any:
            return _default_value(acc.get(k))

        stage_cells: list[Cell] = []
        combos = list(itertools.product(*[vals for _, vals in axes])) if axes else [()]
        for combo in combos:
            values = {k: v for k, (v, _) in fixed.items()}
            for (k, _), (v, _w) in zip(axes, combo):
                if k == "pair":
                    pr = _parse_pair(v) or (None, None)
                    values["source"], values["target"] = pr
                else:
                    values[k] = v
            if name == "transfer" and values.get("source") is not None and values.get("source") == values.get("target"):
                if "pair" not in grid:  # a pair was reported where it was written
                    P.add(at, f"source and target are both {values['source']!r}; a transfer needs two different domains")
                continue
            cell_dir, named, problem = _cell_dir(name, study_dir, values, dflt)
            if problem:
                P.add(f"{at}.grid" if f"{at}.grid" in lines else at, problem)
                break
            values.update(named)  # pass what names the folder explicitly, so both always agree
            key = cell_dir.relative_to(study_dir).as_posix()
            if any(c.key == key for c in stage_cells):
                P.add(f"{at}.grid", f"two cells would write the same folder {key}: the grid varies a parameter that "
                                    f"does not name the folder, or repeats a value")
                break
            unset = {k: acc[k].get("default") for k in acc if k != "study_dir" and k not in values}
            stage_cells.append(Cell(stage=name, key=key, notebook=e["notebook"], study_dir=study_dir,
                                    cell_dir=cell_dir, params=values, params_hash=stable_hash(
                                        {"stage": name, "params": values, "notebook_defaults": unset})))
        by_stage[name] = stage_cells
        e["cells"] = stage_cells

    # --- dependencies (and transfer inputs the obtain stage must produce)
    final: list[Cell] = []
    keys_in_plan = {c.key for cs in by_stage.values() for c in cs}
    hashes: dict[str, str] = {}
    for e in entries:
        name = e["name"]
        for c in e.get("cells", []):
            deps: list[str] = []
            external: list[str] = []

            def need(key: str, stage: str) -> bool:
                if stage in seen_stages:
                    if key in keys_in_plan:
                        deps.append(key)
                        return True
                    return False
                external.append(key)
                return True

            if name in ("divergence", "obtain", "transfer"):
                need("data", "data")
            if name == "transfer":
                for dom in (c.params["source"], c.params["target"]):
                    k = paths.obtain_dir(study_dir, dom, TRANSFER_NEEDS_STRATEGY, c.params["seed"]).relative_to(study_dir).as_posix()
                    if not need(k, "obtain"):
                        P.add(f"{e['at']}.grid", f"impossible grid: transfer {c.params['source']}->{c.params['target']} "
                                                 f"seed {c.params['seed']} needs the obtain cell {k} (domain {dom}, "
                                                 f"strategy {TRANSFER_NEEDS_STRATEGY}, seed {c.params['seed']}), which the "
                                                 f"obtain stage does not produce; add it to the obtain grid")
            if name in ("report", "phase"):  # summaries of everything run before them
                deps.extend(k.key for k in final)
            h = stable_hash({"cell": c.params_hash, "inputs": [hashes.get(d, d) for d in deps]})
            hashes[c.key] = h
            final.append(Cell(stage=c.stage, key=c.key, notebook=c.notebook, study_dir=c.study_dir,
                              cell_dir=c.cell_dir, params=c.params, deps=tuple(deps),
                              external=tuple(external), params_hash=h))

    if P.items:
        raise PlanError(plan_path, P.items)
    return Plan(path=plan_path.resolve(), root=root, study=study, study_dir=study_dir,
                stages=tuple(e["name"] for e in entries), cells=tuple(final))


def _cell_dir(stage: str, study_dir: Path, values: dict, dflt) -> tuple[Path, dict, str | None]:
    """The cell's folder from its values (falling back to the notebook's literal defaults)."""
    if stage == "data":
        return paths.data_dir(study_dir), {}, None
    if stage == "divergence":
        return paths.divergence_dir(study_dir), {}, None
    if stage == "report":
        return paths.report_dir(study_dir), {}, None
    if stage == "phase":
        return paths.phase_dir(study_dir), {}, None
    need = ("domain", "strategy", "seed") if stage == "obtain" else ("source", "target", "strategy", "seed")
    got = {}
    for k in need:
        # what the folder is about (domain, source, target) must come from the plan; seed and
        # strategy may fall back to the notebook's default
        v = values.get(k) if k in ("domain", "source", "target") else (values[k] if k in values else dflt(k))
        if v is None:
            how = "pair: [[source, target], ...]" if k in ("source", "target") else f"{k}: [...]"
            return study_dir, {}, f"impossible grid: stage {stage} needs {k} for every cell; give it in the grid ({how})"
        got[k] = v
    if not _is_int(got["seed"]) or not isinstance(got["strategy"], str):
        return study_dir, {}, f"impossible grid: seed and strategy of stage {stage} must be an integer and a name"
    for k in ("domain", "source", "target", "strategy"):
        if k in got and name_problem(got[k], k):
            return study_dir, {}, f"impossible grid: {name_problem(got[k], k)}"
    if stage == "obtain":
        return paths.obtain_dir(study_dir, got["domain"], got["strategy"], got["seed"]), got, None
    return paths.transfer_dir(study_dir, got["source"], got["target"], got["strategy"], got["seed"]), got, None
