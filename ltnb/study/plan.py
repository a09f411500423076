"""Batch plans: read a YAML plan, check every key and value, and expand it into cells.

A plan lists the stages of a study in order, each with fixed ``params`` and a ``grid`` of values to
cross; ``defaults`` apply to every stage that accepts the key::

    study: smoke                 # the study folder: <outputs>/<study>
    outputs: outputs             # optional (default "outputs"), relative to the plan root
    defaults: {seed: 0, max_epochs: 1, rounds: 2}
    stages:
      - stage: data
        params: {corpus: builtin, per_domain: 120, domains: [products, movies]}
      - stage: divergence
      - stage: obtain
        params: {strategies: [reset, random, reinit]}
        grid: {domain: [products, movies], seed: [0]}
      - stage: transfer
        params: {strategies: [masks-reset, masks-random]}
        grid: {pair: [[products, movies]], seed: [0]}
      - stage: report
      - stage: phase

What a stage accepts, and what each value may be, is defined once:

- the *settings* of a stage are the fields of its dataclasses in ``ltnb.base.config`` (``ltnb.base.stages``
  names them per stage: obtain and transfer take every ``LotterySettings`` field by its flat name, data takes
  ``DataSettings`` and ``VocabSettings``, ...). Their notebooks take them as one parameter,
  ``settings = {}``, which the runner fills in; each value is checked against the field's schema.
- the *cell parameters* (``study_dir``, ``domain``, ``seed``, ``strategies``, ``progress``, ...) are
  read from the notebook's ``parameters`` cell; those ``ltnb.base.config.CELL_PARAMS`` knows are checked
  against its schemas.

The plan's structure is checked with ``jsonschema`` and every value with ``ltnb.base.config.fits``, against
schemas built from those definitions; every problem is reported at once with its path in the file (``stages[2].grid.domian``)
and YAML line, as a ``PlanError``, before anything runs or any folder is made. What the library
would refuse later is refused here (``patience: 0``, a transfer with ``rounds: 0``, a ``reinit`` chain
without its ``reset`` chain, a transfer longer than its source chain).

Cells: one cell is one folder; data, divergence, report and phase run once per study; obtain runs
once per (domain, seed) with all its ``strategies`` (``obtain/<domain>/seed<k>``), transfer once per
(source, target, seed) (``transfer/<source>__<target>/seed<k>``). A grid may vary a setting that
changes the runs (e.g. ``init_a: [0.0, 2.2360679774997896]``): the cell folders then carry it
(``obtain/products/seed0/init_a=0.0``). ``pair: [source, target]`` (or ``"source->target"``) sets
``source`` and ``target``.

A cell's ``params_hash`` covers its stage, its parameters, its settings with the dataclass defaults
for the rest, and the hashes of the cells it reads from; so changing the data settings makes every
later cell incomplete, while deleting one cell's folder reruns only that cell.
"""
from __future__ import annotations

import ast
import functools
import itertools
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ltnb.base import config, paths, registry, stages
from ltnb.base._io import stable_hash

STAGES = stages.ORDER  # the stages, in the order they run (``ltnb.base.stages`` defines each)
TOP_KEYS = ("study", "outputs", "defaults", "stages")
STAGE_KEYS = ("stage", "notebook", "params", "grid")
SETTINGS_PARAM = "settings"
DEFAULT_ROUNDS = config.LotterySettings().rounds
RUNNER_PARAMS = ("study_dir",)

PLAN_SCHEMA = {
    "type": "object",
    "properties": {
        "study": {"type": "string", "pattern": config.NAME_PATTERN},
        "outputs": {"type": "string", "minLength": 1},
        "defaults": {"type": ["object", "null"]},
        "stages": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["stage"], "additionalProperties": False,
            "properties": {"stage": {"enum": list(STAGES)}, "notebook": {"type": "string", "minLength": 1},
                           "params": {"type": ["object", "null"]}, "grid": {"type": ["object", "null"]}}}},
    },
    "required": ["study", "stages"],
    "additionalProperties": False,
}


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
    key: str  # the cell folder relative to the study folder, e.g. "obtain/products/seed0"
    notebook: Path
    study_dir: Path
    cell_dir: Path
    params: Mapping[str, Any]  # cell parameters and settings, flat (without study_dir)
    settings_names: tuple[str, ...] = ()  # which of ``params`` go into the notebook's ``settings``
    deps: tuple[str, ...] = ()  # keys of cells of this plan it reads from
    external: tuple[str, ...] = ()  # keys of cells it reads from that this plan does not produce
    params_hash: str = ""

    @property
    def parameters(self) -> dict[str, Any]:
        """The papermill parameters: cell parameters, ``settings`` (a dict), and ``study_dir``."""
        out = {k: v for k, v in self.params.items() if k not in self.settings_names}
        if self.settings_names:
            out[SETTINGS_PARAM] = {k: self.params[k] for k in self.settings_names if k in self.params}
        return {**out, "study_dir": str(self.study_dir)}

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
    outputs: str = ""  # where the study goes and by which rule (``outputs_folder``), for the first line printed
    peaks: Mapping[str, tuple[int, str]] = field(default_factory=dict)  # training stage -> (peak bytes, its cell)


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
        p = path
        while line is None and p:  # fall back to the nearest enclosing path that has a line
            parent = re.sub(r"(\.[^.\[\]]+|\[\d+\])$", "", p)
            p = parent if parent != p else ""
            line = self.lines.get(p)
        self.items.append(f"{path} (line {line}): {message}" if line else f"{path}: {message}")


def _path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


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


def _default_value(spec: Mapping[str, Any] | None) -> Any:
    """A notebook parameter's default as a Python value, when it is a literal (else None)."""
    try:
        return ast.literal_eval(spec.get("default", "")) if spec else None
    except (ValueError, SyntaxError):
        return None


def _resolve_notebook(stage: str, given: Any, root: Path) -> Path:
    if given is not None:
        p = Path(str(given)).expanduser()
        return p if p.is_absolute() else root / p
    p = root / stages.STAGES[stage].notebook
    if not p.exists():  # a plan kept outside the repo still finds the project's notebooks
        repo = Path(__file__).resolve().parents[2]
        if (repo / stages.STAGES[stage].notebook).exists():
            return repo / stages.STAGES[stage].notebook
    return p


def _parse_pair(v: Any) -> tuple[str, str] | None:
    if isinstance(v, str) and "->" in v:
        s, t = (x.strip() for x in v.split("->", 1))
        return (s, t) if s and t else None
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v):
        return v[0], v[1]
    return None


# ----------------------------------------------------------------------------------------- stages

@dataclass
class _Stage:
    """One stage entry of the plan while it is being checked."""
    name: str
    at: str  # "stages[i]"
    notebook: Path
    params: dict
    grid: dict
    nb_params: dict | None = None  # the notebook's parameters cell (None: unreadable)
    cells: list = field(default_factory=list)

    @functools.cached_property
    def settings(self) -> dict:
        """Flat setting name -> field, when the notebook takes ``settings`` (read after ``nb_params`` is set)."""
        return stages.stage_settings(self.name) if self.nb_params and SETTINGS_PARAM in self.nb_params else {}

    @functools.cached_property
    def accepted(self) -> list[str]:
        cell = [k for k in (self.nb_params or {}) if k not in RUNNER_PARAMS and k != SETTINGS_PARAM]
        return sorted(set(cell) | set(self.settings))

    def schema(self, key: str) -> dict:
        if key in self.settings:
            return self.settings[key].metadata["schema"]
        return stages.param_schema(self.name, key) or {}


#: a plan is a page of YAML; the paper's full protocol is 2 KB. Bigger files are refused before parsing.
MAX_PLAN_BYTES = 1 << 20
#: values a plan may hold once its YAML aliases are expanded (the paper's plan: about 200)
MAX_PLAN_VALUES = 100_000


def _expanded_size(text: str, plan_path: Path) -> int:
    """How many values the YAML in ``text`` holds once every alias (``*name``) is expanded, counted
    from the event stream in one pass without building anything, so a "billion laughs" file (aliases
    of aliases, 10^9 values from 1 KB) is refused in milliseconds instead of exhausting memory.
    Raises ``PlanError`` as soon as the count passes ``MAX_PLAN_VALUES``."""
    sizes: dict[str, int] = {}
    stack: list[list] = []  # open collections: [anchor, values so far]
    total = 0

    def add(n: int, line: int) -> None:
        nonlocal total
        total += n
        if stack:
            stack[-1][1] += n
        if total > MAX_PLAN_VALUES:
            raise PlanError(plan_path, [f"line {line}: the plan's YAML aliases expand to more than {MAX_PLAN_VALUES:,} "
                                        "values (aliases of aliases); write the values out instead"])

    for ev in yaml.parse(text, Loader=yaml.SafeLoader):
        line = ev.start_mark.line + 1
        if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            stack.append([ev.anchor, 1])
        elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, n = stack.pop()
            if anchor is not None:
                sizes[anchor] = n
            total -= n  # counted again as one value of its parent
            add(n, line)
        elif isinstance(ev, yaml.ScalarEvent):
            if ev.anchor is not None:
                sizes[ev.anchor] = 1
            add(1, line)
        elif isinstance(ev, yaml.AliasEvent):
            add(sizes.get(ev.anchor, 1), line)
    return total


def _read(plan_path: Path) -> tuple[Any, dict[str, int], list[str]]:
    try:
        st = os.stat(plan_path)
        if not stat.S_ISREG(st.st_mode):
            raise PlanError(plan_path, ["not a regular file (a plan is a YAML file)"])
        if st.st_size > MAX_PLAN_BYTES:
            raise PlanError(plan_path, [f"the plan is {st.st_size:,} bytes; a plan may be at most {MAX_PLAN_BYTES:,} "
                                        "bytes (the paper's full protocol takes 2 KB)"])
        with open(plan_path, "rb") as f:
            data = f.read(MAX_PLAN_BYTES + 1)
        text = data.decode("utf-8")
    except OSError as e:
        raise PlanError(plan_path, [f"cannot read the plan: {e.strerror or e}"]) from None
    except UnicodeDecodeError as e:
        raise PlanError(plan_path, [f"not UTF-8 text (byte {e.start}): a plan is a YAML file"]) from None
    try:
        _expanded_size(text, plan_path)
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PlanError(plan_path, [f"not valid YAML: {e}"]) from None
    except RecursionError:
        raise PlanError(plan_path, ["the plan nests its values too deeply to read"]) from None
    lines: dict[str, int] = {}
    pre: list[str] = []
    if node is not None:
        _line_map(node, "", lines, pre)
    if not isinstance(raw, dict):
        raise PlanError(plan_path, ["the plan must be a mapping with keys " + ", ".join(TOP_KEYS)])
    return raw, lines, pre


def _check_structure(raw: dict, P: _Problems) -> None:
    """The plan's shape, by jsonschema: unknown keys, missing keys, wrong types, unknown stages."""
    import jsonschema

    for e in sorted(jsonschema.Draft202012Validator(PLAN_SCHEMA).iter_errors(raw), key=lambda e: list(e.absolute_path)):
        where = _path(e.absolute_path)
        if e.validator == "additionalProperties":
            allowed = TOP_KEYS if not e.absolute_path else STAGE_KEYS
            for k in sorted(set(e.instance) - set(e.schema.get("properties", {}))):
                P.add(_path([*e.absolute_path, k]), f"unknown key; allowed: {', '.join(allowed)}")
        elif e.validator == "required":
            missing = e.message.split("'")[1]
            what = {"study": "a folder name (letters, digits, _ . -)", "stage": f"one of {', '.join(STAGES)}",
                    "stages": f"a non-empty list of stages, in the order {', '.join(STAGES)}"}[missing]
            P.add(_path([*e.absolute_path, missing]), f"required: {what}")
        elif where == "study":
            P.add(where, "required: a folder name (letters, digits, _ . -)")
        elif where == "stages":
            P.add(where, f"required: a non-empty list of stages, in the order {', '.join(STAGES)}")
        elif where.endswith(".stage"):
            P.add(where, f"unknown stage {e.instance!r}; allowed: {', '.join(STAGES)}")
        elif where.endswith((".params", "defaults")):
            P.add(where, "must be a mapping of parameter -> value")
        elif where.endswith(".grid"):
            P.add(where, "must be a mapping of parameter -> list of values")
        else:
            P.add(where, f"{e.message}")


def _stage_entries(raw: dict, root: Path, P: _Problems) -> list[_Stage]:
    entries, seen, last = [], {}, -1
    for i, st in enumerate(raw.get("stages") or []):
        at = f"stages[{i}]"
        if not isinstance(st, dict) or st.get("stage") not in STAGES:
            continue  # reported by _check_structure
        name = st["stage"]
        if name in seen:
            P.add(f"{at}.stage", f"duplicate stage {name!r} (already stages[{seen[name]}])")
            continue
        seen[name] = i
        if STAGES.index(name) < last:
            P.add(f"{at}.stage", f"stage {name!r} is out of order; stages run in the order {', '.join(STAGES)}")
        last = max(last, STAGES.index(name))
        params = st.get("params") if isinstance(st.get("params"), dict) else {}
        grid = st.get("grid") if isinstance(st.get("grid"), dict) else {}
        e = _Stage(name, at, _resolve_notebook(name, st.get("notebook"), root), dict(params), dict(grid))
        where = f"{at}.notebook" if "notebook" in st else f"{at}.stage"
        if not e.notebook.is_file():
            P.add(where, f"notebook not found: {e.notebook}")
        else:
            try:
                e.nb_params = _inspect(e.notebook) or None
            except Exception as ex:  # noqa: BLE001 - any unreadable notebook is a plan problem
                P.add(where, f"cannot read notebook {e.notebook}: {ex}")
            else:
                if e.nb_params is None:
                    P.add(f"{at}.stage", f"notebook {e.notebook} has no cell tagged 'parameters'")
        entries.append(e)
    return entries


def _check_values(entries: list[_Stage], defaults: dict, P: _Problems) -> None:
    """Every key accepted where it is written, every value valid (``ltnb.base.config.fits``)."""
    known = [e for e in entries if e.nb_params is not None]
    union = set().union(*(e.accepted for e in known)) if known else set()
    for k, v in defaults.items():
        if k in RUNNER_PARAMS or k == SETTINGS_PARAM:
            P.add(f"defaults.{k}", "is set by the runner from study/outputs (settings: give each setting by name); remove it")
        elif known and len(known) == len(entries) and k not in union:
            P.add(f"defaults.{k}", f"no stage's notebook accepts {k!r}; accepted: {', '.join(sorted(union))}")
        else:
            e = next((e for e in known if k in e.accepted), None)
            if e is not None:
                _check_one(e, k, v, f"defaults.{k}", P)
    for e in known:
        if e.grid and stages.STAGES[e.name].one_cell:
            P.add(f"{e.at}.grid", f"stage {e.name} runs once per study (one folder); put its values under params")
            e.grid = {}
        allowed = e.accepted + (["pair"] if stages.STAGES[e.name].pair else [])
        for k, v in e.params.items():
            if k in RUNNER_PARAMS or k == SETTINGS_PARAM:
                P.add(f"{e.at}.params.{k}", "is set by the runner from study/outputs (settings: give each setting by name); remove it")
            elif k not in e.accepted:
                P.add(f"{e.at}.params.{k}", f"unknown parameter for stage {e.name} ({e.notebook.name}); allowed: {', '.join(allowed)}")
            else:
                _check_one(e, k, v, f"{e.at}.params.{k}", P)
        for k, vs in list(e.grid.items()):
            if not _check_axis(e, k, vs, allowed, P):
                e.grid.pop(k)  # reported; expand without it


def _check_axis(e: _Stage, k: str, vs: Any, allowed: list[str], P: _Problems) -> bool:
    """One grid entry: a known parameter, a non-empty list, every value valid. False if unusable."""
    gat = f"{e.at}.grid.{k}"
    if k in RUNNER_PARAMS or k == SETTINGS_PARAM:
        P.add(gat, "is set by the runner from study/outputs; remove it")
    elif k not in allowed:
        P.add(gat, f"unknown parameter for stage {e.name} ({e.notebook.name}); allowed: {', '.join(allowed)}")
    elif k in e.params:
        P.add(gat, f"{k} is set both in params and in grid; keep one")
    elif not isinstance(vs, list):
        P.add(gat, "a grid value must be a list of values (write [x] for one value)")
    elif not vs:
        P.add(gat, "impossible grid: empty list, the stage would have no cells")
    else:
        ok = True
        for j, v in enumerate(vs):
            if k == "pair":
                if _parse_pair(v) is None:
                    P.add(f"{gat}[{j}]", f"a pair is [source, target] or \"source->target\", got {v!r}")
                    ok = False
                else:
                    for name, dom in zip(stages.STAGES[e.name].pair, _parse_pair(v)):
                        _check_one(e, name, dom, f"{gat}[{j}]", P)
            else:
                _check_one(e, k, v, f"{gat}[{j}]", P)
        return ok
    return False


def _check_one(e: _Stage, key: str, value: Any, where: str, P: _Problems) -> None:
    schema = e.schema(key)
    if key == "strategies" and stages.STAGES[e.name].strategies:
        allowed = stages.STAGES[e.name].strategies
        if isinstance(value, list) and value:
            for j, s in enumerate(value):
                if s not in allowed:
                    P.add(f"{where}[{j}]", f"unknown {e.name} strategy {s!r}; allowed: {', '.join(allowed)}")
            # strategies that train the reset chain's masks of the same cell (obtain's controls) need it listed
            own = registry.BY_STAGE.get(e.name, {})
            controls = [s for s in value if "reset" in own and s in own and own[s].masks == "reset"]
            if controls and "reset" not in value:
                P.add(where, f"strateg{'ies' if len(controls) > 1 else 'y'} {', '.join(map(str, controls))} "
                             f"train{'' if len(controls) > 1 else 's'} the reset chain's masks: list reset too (it runs first)")
            if len(set(map(str, value))) != len(value):
                P.add(where, "a strategy is listed twice")
            return
    if schema and not config.fits(value, schema):
        P.add(where, f"{key} = {value!r} is not allowed; must be {config.describe(schema)}")


# ----------------------------------------------------------------------------------------- cells

def _data_domains(entries: list[_Stage], defaults: dict, P: _Problems) -> tuple[str, ...] | None:
    """The domains the data stage will produce (None: no data stage, or unknown)."""
    from ltnb.text.corpus import ALL_DOMAINS, BUILTIN_DOMAINS

    e = next((e for e in entries if e.name == "data"), None)
    if e is None:
        return None
    d = {k: v for k, v in defaults.items() if k in e.accepted}
    d.update(e.params)
    corpus = d.get("corpus", "builtin")
    domains = d.get("domains")
    if isinstance(domains, list) and all(isinstance(x, str) for x in domains):
        if corpus == "builtin":
            for j, dom in enumerate(domains):
                if dom not in ALL_DOMAINS:
                    where = f"{e.at}.params.domains[{j}]" if "domains" in e.params else f"defaults.domains[{j}]"
                    P.add(where, f"unknown built-in domain {dom!r}; allowed: {', '.join(ALL_DOMAINS)}")
        return tuple(domains)
    if corpus == "builtin":
        return tuple(BUILTIN_DOMAINS)
    if isinstance(d.get("amazon_files"), dict):
        return tuple(d["amazon_files"])
    if corpus in ("amazon", "blitzer"):
        P.add(f"{e.at}.params", f"corpus {corpus} needs amazon_files: {{domain: path to a file or folder}}")
    return None


def _cell_folder(e: _Stage, study_dir: Path, values: dict, varied: list[str]) -> tuple[Path | None, str | None]:
    """The cell's folder from its values; a problem message when a value that names it is missing."""
    stage = stages.STAGES[e.name]
    if stage.one_cell:
        return stage.cell_dir(study_dir, values), None
    need = stage.cell
    got = {}
    for k in need:
        v = values.get(k, _default_value((e.nb_params or {}).get(k)) if k == "seed" else None)
        if v is None:
            how = "pair: [[source, target], ...]" if k in ("source", "target") else f"{k}: [...]"
            return None, f"impossible grid: stage {e.name} needs {k} for every cell; give it in the grid ({how})"
        got[k] = v
    if isinstance(got["seed"], bool) or not isinstance(got["seed"], int):
        return None, f"impossible grid: the seed of stage {e.name} must be an integer"
    folder = stage.cell_dir(study_dir, got)
    suffix = ",".join(f"{k}={values[k]}" for k in varied if k in values)
    return (folder / suffix if suffix else folder), None


def _expand(e: _Stage, defaults: dict, study_dir: Path, data_domains, P: _Problems) -> list[Cell]:
    """The cells of one stage: defaults, params, and every combination of the grid."""
    fixed = {k: v for k, v in defaults.items() if k in e.accepted}
    fixed.update(e.params)
    axes = [(k, vs) for k, vs in e.grid.items()]
    varied = [k for k, _ in axes if k in e.settings]
    names = tuple(sorted(e.settings))
    cells: list[Cell] = []
    keys: set[str] = set()  # the folders so far (a set: a 20,000-cell grid is checked in linear time)
    for combo in itertools.product(*[vs for _, vs in axes]) if axes else [()]:
        values = dict(fixed)
        for (k, _), v in zip(axes, combo):
            if k == "pair":
                values.update(zip(stages.STAGES[e.name].pair, _parse_pair(v) or (None, None)))
            else:
                values[k] = v
        folder, problem = _cell_folder(e, study_dir, values, varied)
        if problem:
            P.add(f"{e.at}.grid" if e.grid else e.at, problem)
            return []
        if "seed" in stages.STAGES[e.name].cell and "seed" not in values:
            values["seed"] = _default_value((e.nb_params or {}).get("seed"))
        key = folder.relative_to(study_dir).as_posix()
        if key in keys:
            P.add(f"{e.at}.grid", f"two cells would write the same folder {key}: the grid varies a parameter that "
                                  "does not name the folder (or changes no run), or repeats a value")
            return []
        settings = _resolved_settings(e, values)
        unset = {k: v["default"] for k, v in (e.nb_params or {}).items()
                 if k not in values and k not in RUNNER_PARAMS and k != SETTINGS_PARAM}
        cell_params = {k: v for k, v in values.items() if k not in e.settings}
        keys.add(key)
        cells.append(Cell(stage=e.name, key=key, notebook=e.notebook, study_dir=study_dir, cell_dir=folder,
                          params=values, settings_names=tuple(n for n in names if n in values),
                          params_hash=stable_hash({"stage": e.name, "params": cell_params, "settings": settings,
                                                   "notebook_defaults": unset})))
    return cells


def _resolved_settings(e: _Stage, values: dict) -> dict:
    """Every setting of the cell with the dataclass defaults filled in (part of its hash); a setting marked
    ``omit_default`` only when it differs from its default."""
    return {name: config._plain(values.get(name, f.default)) for name, f in e.settings.items()
            if not (f.metadata.get("omit_default") and values.get(name, f.default) == f.default)}


def _check_sizes(entries: list[_Stage], defaults: dict, data_domains, P: _Problems) -> None:
    """The data stage's ``sizes`` (with ``per_domain``, even sizes, one training size per domain) and each
    chain's ``train_size`` against the training split its domain will have: refused now, not at run time."""
    from ltnb.text.data import resolve_sizes

    e = next((e for e in entries if e.name == "data"), None)
    train: dict[str, int] = {}
    if e is not None:
        d = {k: v for k, v in defaults.items() if k in e.accepted}
        d.update(e.params)
        sizes = d.get("sizes")
        where = f"{e.at}.params.sizes" if "sizes" in e.params else "defaults.sizes"
        if isinstance(sizes, dict) and _valid(config.SIZES_SCHEMA, sizes):
            fields = config.DataSettings.settings_fields()
            given = {k: v for k, v in d.items() if k in fields and _valid(fields[k].metadata["schema"], v)}
            try:
                # (the corpus' own rules are checked where they are written; here what sizes adds)
                config.DataSettings(**{k: v for k, v in given.items()
                                       if k in ("sizes", "per_domain", "pos_threshold", "neg_threshold")})
            except ValueError as ex:
                P.add(where, str(ex))
                return
            if data_domains is not None:
                try:
                    train = resolve_sizes(sizes, list(data_domains))["train"]
                except ValueError as ex:
                    P.add(where, str(ex))
                    return
    for s in entries:
        if stages.STAGES[s.name].cost != "chains" or not train:
            continue
        for c in s.cells or ():
            n, dom = c.params.get("train_size"), c.params.get("domain") or c.params.get("target")
            if isinstance(n, int) and dom in train and n > train[dom]:
                P.add(_grid_where(s, "train_size", n), f"train_size = {n}: the data stage's training split of {dom!r} "
                                                       f"holds {train[dom]} texts (sizes.train)")


def _check_cells(e: _Stage, cells: list[Cell], data_domains, P: _Problems) -> None:
    """What the library would refuse for these cells, refused now (one rule, defined in ltnb.base.config)."""
    for c in cells:
        for k in ("domain", "source", "target"):
            v = c.params.get(k)
            if v is not None and data_domains is not None and v not in data_domains:
                P.add(_grid_where(e, k, v), f"unknown domain {v!r}; the data stage makes: {', '.join(data_domains)}")
        stage = stages.STAGES[e.name]
        for key, message in (stage.check(c.params, data_domains) if stage.check else ()):
            P.add(_grid_where(e, key, c.params.get(key)) if key else e.at, message)
        if stage.pair and c.params.get(stage.pair[0]) == c.params.get(stage.pair[1]):
            a, b = stage.pair
            P.add(_grid_where(e, a, c.params[a]),
                  f"{a} and {b} are both {c.params[a]!r}; a {e.name} needs two different domains")
        if stage.check_settings is None:
            continue
        try:  # the valid values only: a bad one is already reported where it is written
            settings = config.LotterySettings.from_params(**{k: c.params[k] for k in c.settings_names
                                                             if _valid(e.schema(k), c.params[k])})
        except ValueError:
            continue
        try:
            stage.check_settings(settings)
        except ValueError as ex:
            P.add(_grid_where(e, "rounds", c.params.get("rounds")), str(ex))


def _check_memory(entries: list[_Stage], defaults: dict, P: _Problems) -> dict[str, tuple[int, str]]:
    """Refuse a training cell whose peak memory (``ltnb.study.memory.peak_bytes``) exceeds the machine's,
    saying by how much; one message per stage, for its largest cell. Returns each training stage's
    largest estimate and its cell, ``{stage: (bytes, key)}``."""
    from ltnb.study import memory

    data = next((e for e in entries if e.name == "data"), None)
    vocab = {k: v for k, v in defaults.items() if data is not None and k in data.accepted}
    vocab.update(data.params if data is not None else {})
    vocab_size = vocab.get("vocab_size", config.VocabSettings.vocab_size)
    vocab_max_len = vocab.get("max_len", config.VocabSettings.max_len)
    have = memory.machine_bytes()
    flat = config.LotterySettings.flat_fields()
    peaks: dict[str, tuple[int, str]] = {}
    for e in entries:
        if stages.STAGES[e.name].cost not in ("chains", "federated"):
            continue
        worst, seen = None, {}
        for c in e.cells:
            given = {k: c.params[k] for k in c.settings_names if k in flat}
            key = repr(sorted(given.items()))
            if key not in seen:
                seen[key] = memory.peak_bytes(config.LotterySettings.from_params(**given), vocab_size, vocab_max_len)
                if worst is None or seen[key] > worst[0]:
                    worst = (seen[key], c, given)
        if worst is not None:
            peaks[e.name] = (worst[0], worst[1].key)
        if worst is not None and worst[0] > have:
            need, c, given = worst
            sizes = [k for k in ("embed_dim", "channels", "hidden", "kernel_sizes", "batch_size", "max_len") if k in given]
            where = _grid_where(e, sizes[0], given[sizes[0]]) if sizes else e.at
            P.add(where, f"cell {c.key} needs about {memory.fmt_bytes(need)} of memory at its peak "
                         f"({memory.parameter_count(config.LotterySettings.from_params(**given), vocab_size):,} "
                         f"parameters, vocab_size {vocab_size}), but this machine has {memory.fmt_bytes(have)}: "
                         f"{memory.fmt_bytes(need - have)} too much; make the model smaller "
                         f"({', '.join(sizes) or 'embed_dim, channels, hidden'})")
    return peaks


def _valid(schema: dict, value) -> bool:
    return not schema or config.fits(value, schema)


def _grid_where(e: _Stage, key: str, value) -> str:
    for k in (key, "pair"):
        if k in e.grid:
            for j, v in enumerate(e.grid[k]):
                if v == value or (k == "pair" and value in (_parse_pair(v) or ())):
                    return f"{e.at}.grid.{k}[{j}]"
    if key in e.params:
        return f"{e.at}.params.{key}"
    return f"defaults.{key}" if key in e.accepted and key not in e.grid else e.at


def _chain_settings(c: Cell) -> dict | None:
    """A cell's chain settings (every ``LotterySettings`` field, defaults filled in, without ``rounds``,
    which never names a chain's folder); None if they are not valid."""
    flat = config.LotterySettings.flat_fields()
    given = {k: c.params[k] for k in c.settings_names if k in flat}
    key = repr(sorted(given.items()))
    if key not in _CHAIN_SETTINGS:  # a grid of 20,000 seeds has a handful of distinct settings
        try:
            s = config.LotterySettings.from_params(**given)
        except ValueError:
            _CHAIN_SETTINGS[key] = None
        else:
            d = config._plain(s.flat())
            d.pop("rounds")
            _CHAIN_SETTINGS[key] = d
    return _CHAIN_SETTINGS[key]


_CHAIN_SETTINGS: dict[str, dict | None] = {}


def _obtain_index(obtain: list[Cell]) -> dict[tuple, list[tuple[dict | None, Cell]]]:
    """The obtain cells by (domain, seed), each with its chain settings (computed once per cell)."""
    index: dict[tuple, list] = {}
    for c in obtain:
        index.setdefault((c.params.get("domain"), repr(c.params.get("seed"))), []).append((_chain_settings(c), c))
    return index


def _source_cell(tr: Cell, domain: str, obtain: dict) -> Cell | None:
    """The obtain cell of ``domain`` whose reset chain a transfer or federated cell reads: the same seed
    and chain settings (it may run more rounds). ``obtain``: ``_obtain_index`` of the obtain cells."""
    want = _chain_settings(tr)
    for settings, c in obtain.get((domain, repr(tr.params.get("seed"))), ()):
        if settings == want and "reset" in (c.params.get("strategies") or ["reset"]):
            return c
    return None


def _link(entries: list[_Stage], study_dir: Path, stages_present: set, P: _Problems) -> list[Cell]:
    """Dependencies (and the inputs the plan does not produce) and the final hashes."""
    final: list[Cell] = []
    hashes: dict[str, str] = {}
    obtain = _obtain_index(next((e.cells for e in entries if e.name == stages.CHAINS), []))
    for e in entries:
        stage = stages.STAGES[e.name]
        needs = stage.needs
        for c in e.cells:
            deps: list[str] = []
            external: list[str] = []
            if "data" in needs:
                (deps if "data" in stages_present else external).append("data")
            for dom in (stage.reads(c.params) if stage.reads else ()):
                _chain_input(e, stage, c, dom, obtain, deps, external, stages_present, P)
            if needs == stages.EVERYTHING_BEFORE:  # summaries of everything run before them
                deps.extend(k.key for k in final)
            elif stage.one_cell:  # a stage that runs once reads every cell of the stages it needs
                deps.extend(k.key for k in final if k.stage in needs)
            deps = list(dict.fromkeys(deps))
            h = stable_hash({"cell": c.params_hash, "inputs": [hashes.get(d, d) for d in deps]})
            hashes[c.key] = h
            final.append(Cell(stage=c.stage, key=c.key, notebook=c.notebook, study_dir=c.study_dir,
                              cell_dir=c.cell_dir, params=c.params, settings_names=c.settings_names,
                              deps=tuple(deps), external=tuple(external), params_hash=h))
    return final


def _chain_input(e: _Stage, stage, c: Cell, domain: str, obtain: dict, deps: list, external: list, stages_present: set,
                 P: _Problems) -> None:
    """A cell that reads the reset chain of ``domain`` (same seed and settings; ``Stage.reads``) depends on
    the cell that makes it, which must run enough rounds for it (``Stage.rounds_problem``)."""
    src = _source_cell(c, domain, obtain)
    key = f"{stages.CHAINS}/{domain}/seed{c.params['seed']}"
    if src is not None:
        deps.append(src.key)
        problem = stage.rounds_problem(c.params, domain, src.params.get("rounds", DEFAULT_ROUNDS)) \
            if stage.rounds_problem else None
        if problem is not None:
            grid_key, message = problem
            P.add(_grid_where(e, grid_key, c.params.get(grid_key)) if grid_key else e.at, message.format(src=src.key))
    elif stages.CHAINS in stages_present:
        name = "->".join(str(c.params[k]) for k in (stage.pair or stage.cell[:-1]))
        P.add(f"{e.at}.grid" if e.grid else e.at,
              f"impossible grid: {e.name} {name} seed {c.params['seed']} needs the obtain cell {key} with strategy "
              "reset and the same settings, which the obtain stage does not produce; add it")
    elif key not in external:
        external.append(key)


#: system folders a study never writes into, nor under (an absolute ``outputs`` elsewhere is allowed)
SYSTEM_FOLDERS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run", "/sbin",
                  "/srv", "/sys", "/usr", "/var")
OUTPUTS_RULE = ("a relative outputs folder stays inside the project root (symlinks resolved); an absolute one must "
                "exist, be a writable folder and not be a system folder")


def outputs_folder(outputs: str, root: Path) -> tuple[Path, str | None]:
    """Where a plan's ``outputs`` points, and why it is refused (``None``: allowed), by ``OUTPUTS_RULE``:
    a relative path is resolved against the project root, symlinks followed, and must stay inside it
    (``../../..`` and a link to ``/etc`` are refused); an absolute path (or ``~``) must already exist as
    a writable folder outside the system folders (``/``, ``/etc``, ``/usr``, ...), so a typo never makes
    a study somewhere unintended. Nothing is created."""
    given = Path(outputs).expanduser()
    real = Path(os.path.realpath(given if given.is_absolute() else root / given))
    if not given.is_absolute():
        real_root = os.path.realpath(root)
        if not (str(real) == real_root or str(real).startswith(real_root.rstrip(os.sep) + os.sep)):
            return real, (f"outputs = {outputs!r} resolves to {real}, outside the project root {real_root}; "
                          f"{OUTPUTS_RULE}")
        return real, None
    if str(real) == os.sep or any(str(real) == d or str(real).startswith(d + os.sep) for d in SYSTEM_FOLDERS):
        return real, f"outputs = {outputs!r} resolves to {real}, a system folder; {OUTPUTS_RULE}"
    if not real.is_dir():
        return real, f"outputs = {outputs!r}: {real} is not an existing folder; {OUTPUTS_RULE} (create it first)"
    if not os.access(real, os.W_OK | os.X_OK):
        return real, f"outputs = {outputs!r}: {real} is not writable by this user; {OUTPUTS_RULE}"
    return real, None


def load_plan(plan_path: str | os.PathLike, *, root: str | os.PathLike | None = None) -> Plan:
    """Read, check and expand a plan; raise ``PlanError`` listing every problem. Creates nothing."""
    plan_path = Path(plan_path)
    raw, lines, pre = _read(plan_path)
    P = _Problems(lines)
    P.items.extend(pre)
    root = Path(root).resolve() if root else plan_root(plan_path)
    _check_structure(raw, P)
    study = raw.get("study") if isinstance(raw.get("study"), str) and re.match(config.NAME_PATTERN, raw["study"]) else "invalid"
    outputs = raw.get("outputs") if isinstance(raw.get("outputs"), str) and raw.get("outputs") else "outputs"
    out_dir, problem = outputs_folder(outputs, root)
    if problem:
        P.add("outputs", problem)
    study_dir = out_dir / study
    defaults = raw.get("defaults") if isinstance(raw.get("defaults"), dict) else {}
    entries = _stage_entries(raw, root, P)
    _check_values(entries, defaults, P)
    data_domains = _data_domains(entries, defaults, P)
    for e in entries:
        if e.nb_params is None:
            continue
        e.cells = _expand(e, defaults, study_dir, data_domains, P)
        _check_cells(e, e.cells, data_domains, P)
    _check_sizes(entries, defaults, data_domains, P)
    cells = _link(entries, study_dir, {e.name for e in entries}, P)
    peaks = _check_memory(entries, defaults, P) if not P.items else {}
    if P.items:
        raise PlanError(plan_path, P.items)
    where = (f"inside the project root {root}" if not Path(outputs).expanduser().is_absolute()
             else "an absolute folder that exists and is writable")
    return Plan(path=plan_path.resolve(), root=root, study=study, study_dir=study_dir,
                stages=tuple(e.name for e in entries), cells=tuple(cells),
                outputs=f"outputs {out_dir} ({where})", peaks=peaks)
