"""Plan loading: every problem found before anything runs, with its path and line; grid expansion;
the value checks come from the settings' own definitions (ltnb.base.config)."""
from __future__ import annotations

from pathlib import Path

import pytest

from ltnb.base import config
from ltnb.study import batch
from ltnb.study.plan import PlanError, load_plan, plan_root

FIX = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parent.parent

HEADER = f"""\
study: t
defaults: {{seed: 0, max_epochs: 1}}
stages:
  - stage: data
    notebook: {FIX / 'data.ipynb'}
    params: {{corpus: builtin, per_domain: 120, domains: [products, movies]}}
  - stage: divergence
    notebook: {FIX / 'divergence.ipynb'}
"""
OBTAIN = f"""\
  - stage: obtain
    notebook: {FIX / 'obtain.ipynb'}
    params: {{rounds: 2, strategies: [reset, random]}}
    grid: {{domain: [products, movies], seed: [0]}}
"""
TRANSFER = f"""\
  - stage: transfer
    notebook: {FIX / 'transfer.ipynb'}
    params: {{rounds: 2}}
    grid: {{pair: [[products, movies]], seed: [0]}}
"""
REPORT = f"""\
  - stage: report
    notebook: {FIX / 'report.ipynb'}
"""
GOOD = HEADER + OBTAIN + TRANSFER + REPORT


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "plan.yaml"
    p.write_text(text)
    return p


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(PlanError) as e:
        load_plan(write(tmp_path, text))
    assert "nothing was run" in str(e.value)
    assert not (tmp_path / "outputs").exists()
    return e.value.problems


def test_good_plan_expands_into_cells_with_dependencies(tmp_path):
    plan = load_plan(write(tmp_path, GOOD))
    keys = [c.key for c in plan.cells]
    assert keys == ["data", "divergence", "obtain/products/seed0", "obtain/movies/seed0",
                    "transfer/products__movies/seed0", "report"]
    assert plan.study_dir == (tmp_path / "outputs" / "t").resolve()
    tr = plan.cells[4]
    assert tr.params == {"seed": 0, "max_epochs": 1, "rounds": 2, "source": "products", "target": "movies"}
    # the notebook gets its settings as one dict, its cell parameters by name
    assert tr.parameters == {"seed": 0, "source": "products", "target": "movies",
                             "settings": {"max_epochs": 1, "rounds": 2}, "study_dir": str(plan.study_dir)}
    assert set(tr.deps) == {"data", "obtain/products/seed0", "obtain/movies/seed0"}
    assert plan.cells[-1].deps == tuple(keys[:-1])
    assert plan.cells[2].parameters["strategies"] == ["reset", "random"]
    assert plan.cells[0].parameters["settings"] == {"seed": 0, "corpus": "builtin", "per_domain": 120,
                                                    "domains": ["products", "movies"]}
    assert "max_epochs" not in plan.cells[0].params  # defaults only where the stage accepts them
    assert tr.executed == tr.cell_dir / "transfer.ipynb"
    assert not (tmp_path / "outputs").exists()


def test_hash_is_stable_and_follows_inputs(tmp_path):
    a = {c.key: c.params_hash for c in load_plan(write(tmp_path, GOOD)).cells}
    assert a == {c.key: c.params_hash for c in load_plan(write(tmp_path, GOOD)).cells}
    b = {c.key: c.params_hash for c in load_plan(write(tmp_path, GOOD.replace("per_domain: 120", "per_domain: 98"))).cells}
    assert all(a[k] != b[k] for k in a)  # data changed: everything downstream is stale
    c = {c.key: c.params_hash for c in load_plan(write(tmp_path, GOOD.replace("rounds: 2, strat", "rounds: 3, strat"))).cells}
    assert a["data"] == c["data"] and a["divergence"] == c["divergence"]
    assert a["obtain/products/seed0"] != c["obtain/products/seed0"]
    # a setting left at its default and the same value written out are the same cell
    d = {c.key: c.params_hash for c in load_plan(write(tmp_path, GOOD.replace("max_epochs: 1}", "max_epochs: 1, lr: 0.001}"))).cells}
    assert d == a


def test_typo_key_names_path_line_and_allowed(tmp_path):
    ps = problems(tmp_path, GOOD.replace("grid: {domain: [products", "grid: {domian: [products"))
    typo = [p for p in ps if p.startswith("stages[2].grid.domian")]
    assert typo and "(line 12)" in typo[0] and "allowed:" in typo[0] and "domain" in typo[0]
    assert any("impossible grid" in p and "domain" in p for p in ps)  # and the grid now misses domain


def test_unknown_domain_bad_strategy_source_equals_target(tmp_path):
    text = (HEADER + OBTAIN.replace("movies]", "books]").replace("random]", "rset]")
            + TRANSFER.replace("[[products, movies]]", "[[products, products], [products, books]]") + REPORT)
    ps = "\n".join(problems(tmp_path, text))
    assert "stages[2].grid.domain[1] (line 12): unknown domain 'books'; the data stage makes: products, movies" in ps
    assert "stages[2].params.strategies[1]" in ps and "unknown obtain strategy 'rset'; allowed: reset, random, reinit, shuffle, rescaled, rewind, randmask-reset, randmask-random" in ps
    assert "stages[3].grid.pair[0]" in ps and "source and target are both 'products'" in ps
    assert "stages[3].grid.pair[1]" in ps and "unknown domain 'books'" in ps


def test_what_the_library_would_refuse_is_refused_at_dry_run(tmp_path, capsys):
    """patience: 0 passed --dry-run and then failed in every obtain kernel; rounds: 0 with a transfer
    stage likewise. Now one rule (the dataclass field's schema) refuses both, with the line."""
    text = GOOD.replace("max_epochs: 1}", "max_epochs: 1, patience: 0}").replace("rounds: 2}", "rounds: 0}")
    p = write(tmp_path, text)
    assert batch.main(p, dry_run=True, estimate=False) == 2
    err = capsys.readouterr().err
    assert "defaults.patience (line 2): patience = 0 is not allowed; must be an integer >= 1 or null" in err
    assert "rounds = 0: a transfer needs at least 1 round" in err
    # the same rule the library applies
    with pytest.raises(ValueError, match="patience"):
        config.TrainSettings(patience=0)
    # reinit without its reset chain, and a transfer longer than its source chain
    ps = "\n".join(problems(tmp_path, GOOD.replace("strategies: [reset, random]", "strategies: [random, reinit]")))
    assert "strategy reinit trains the reset chain's masks" in ps and "impossible grid" in ps
    ps = "\n".join(problems(tmp_path, GOOD.replace("params: {rounds: 2}\n    grid: {pair", "params: {rounds: 5}\n    grid: {pair")))
    assert "needs rounds 1..5 of the source chain" in ps


def test_a_grid_over_a_setting_names_the_cell_folders(tmp_path):
    text = GOOD.replace("grid: {domain: [products, movies], seed: [0]}",
                        "grid: {domain: [products], seed: [0], init_a: [0.0, 2.0]}")
    text = text.replace("grid: {pair: [[products, movies]], seed: [0]}", "grid: {pair: [[products, movies]], seed: [0]}")
    ps = "\n".join(problems(tmp_path, text))  # the transfer has no source chain with its (default) init_a
    assert "impossible grid" in ps
    plan = load_plan(write(tmp_path, HEADER + OBTAIN.replace(
        "grid: {domain: [products, movies], seed: [0]}", "grid: {domain: [products], seed: [0], init_a: [0.0, 2.0]}")))
    keys = [c.key for c in plan.cells if c.stage == "obtain"]
    assert keys == ["obtain/products/seed0/init_a=0.0", "obtain/products/seed0/init_a=2.0"]
    assert plan.cells[-1].parameters["settings"]["init_a"] == 2.0


def test_impossible_grids(tmp_path):
    text = (HEADER + OBTAIN.replace("domain: [products, movies], ", "")
            + TRANSFER.replace("pair: [[products, movies]], ", "").replace("seed: [0]", "seed: []") + REPORT)
    ps = problems(tmp_path, text)
    assert any(p.startswith("stages[2].grid") and "impossible grid" in p and "domain" in p for p in ps)
    assert any(p.startswith("stages[3].grid.seed") and "impossible grid: empty list" in p for p in ps)
    # transfer needs the reset chains of both domains, which this obtain stage lacks
    text = HEADER + OBTAIN.replace("strategies: [reset, random]", "strategies: [random]") + TRANSFER + REPORT
    ps = problems(tmp_path, text)
    assert any("impossible grid" in p and "obtain/products/seed0" in p for p in ps)
    # a grid over a parameter that does not name the cell folder (rounds never changes a run's folder)
    text = HEADER + OBTAIN.replace("seed: [0]}", "seed: [0], max_len: [100, 200]}").replace("rounds: 2, ", "") + REPORT
    ps = problems(tmp_path, text.replace("max_len: [100, 200]", "sleep: [0.0, 0.1]"))
    assert any("same folder" in p for p in ps)


def test_structure_and_values_all_reported_at_once(tmp_path):
    text = GOOD.replace("study: t", "study: t\ncolour: red").replace("seed: 0, max_epochs: 1", "seed: -1, max_epochs: 1, bogus: 3")
    text = text.replace("params: {rounds: 2, strategies", "params: {rounds: -1, prune_fraction: 1.0, study_dir: x, strategies")
    text = text + REPORT  # report twice
    text = text.replace("  - stage: divergence\n", "  - stage: divergence\n    grid: {log_base: [2]}\n")
    ps = problems(tmp_path, text)
    joined = "\n".join(ps)
    for expected in ("colour (line 2): unknown key; allowed: study, outputs, defaults, stages",
                     "defaults.seed", "an integer >= 0",
                     "defaults.bogus", "no stage's notebook accepts 'bogus'",
                     "stages[2].params.rounds", "an integer >= 0",
                     "stages[2].params.prune_fraction", "a number in (0, 1)",
                     "stages[2].params.study_dir", "set by the runner",
                     "stages[5].stage", "duplicate stage 'report'",
                     "stages[1].grid", "runs once per study"):
        assert expected in joined, expected
    assert len(ps) >= 8


def test_stage_order_and_missing_notebook(tmp_path):
    text = HEADER.replace("stage: divergence", "stage: report").replace("divergence.ipynb", "report.ipynb") + OBTAIN
    ps = "\n".join(problems(tmp_path, text))
    assert "stages[2].stage" in ps and "out of order" in ps
    ps = "\n".join(problems(tmp_path, HEADER.replace(str(FIX / "divergence.ipynb"), "nope/x.ipynb")))
    assert "stages[1].notebook" in ps and "notebook not found" in ps
    ps = "\n".join(problems(tmp_path, "study: t\nstages:\n  - notebook: x.ipynb\n  - stage: nope\n"))
    assert "stages[0].stage (line 3): required: one of data" in ps and "unknown stage 'nope'" in ps


def test_invalid_plan_via_main_returns_2_and_creates_nothing(tmp_path, capsys):
    p = write(tmp_path, GOOD.replace("domain: [products", "domian: [products"))
    assert batch.main(p, dry_run=False, estimate=False) == 2
    assert "stages[2].grid.domian" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


def test_inputs_outside_the_plan_are_external(tmp_path):
    plan = load_plan(write(tmp_path, HEADER.split("  - stage: divergence")[0] + TRANSFER))
    tr = plan.cells[1]
    assert tr.deps == ("data",) and tr.external == ("obtain/products/seed0", "obtain/movies/seed0")


def test_plan_root_is_parent_of_params(tmp_path):
    (tmp_path / "params").mkdir()
    assert plan_root(tmp_path / "params" / "x.yaml") == tmp_path.resolve()
    assert plan_root(tmp_path / "x.yaml") == tmp_path.resolve()


@pytest.mark.parametrize("name,cells", [("smoke", 7), ("demo", None), ("paper", 1 + 1 + 25 + 45 + 1 + 1),
                                        ("init", None)])
def test_shipped_plans_are_valid(name, cells):
    plan = load_plan(REPO / "params" / f"{name}.yaml")
    assert plan.study == name
    if cells is not None:
        assert len(plan.cells) == cells


def test_every_registered_stage_has_its_notebook_with_its_cell_parameters():
    """ltnb.base.stages: each stage's notebook exists, its parameters cell names the stage's cell parameters
    and takes ``settings`` exactly when the stage has settings; the plan runs the stages in that order."""
    from ltnb.base import stages
    from ltnb.study import plan

    root = Path(__file__).resolve().parent.parent
    assert plan.STAGES == tuple(stages.STAGES) == ("data", "divergence", "obtain", "transfer", "federated", "report",
                                                   "phase")
    for stage in stages.STAGES.values():
        params = plan._inspect(root / stage.notebook)
        assert "study_dir" in params and set(stage.cell) <= set(params), stage.name
        assert ("settings" in params) == bool(stage.settings), stage.name
        assert ("strategies" in params) == bool(stage.strategies), stage.name
        assert stage.one_cell == (stage.name in ("data", "divergence", "report", "phase"))


def test_cells_follow_their_stages_needs():
    """ltnb.base.stages: every cell lies under its stage's folder (``Stage.root``, which the explorer looks for);
    a stage that runs once reads every cell of the stages it needs (phase: the obtain and transfer cells,
    so it runs beside the report), the report every cell before it."""
    from ltnb.base import stages

    plan = load_plan(REPO / "params" / "smoke.yaml")
    for c in plan.cells:
        assert c.cell_dir.is_relative_to(stages.STAGES[c.stage].root(plan.study_dir)), c.key
    before = [c.key for c in plan.cells if c.stage != "phase"][:-1]
    by_key = {c.key: c for c in plan.cells}
    assert list(by_key["report"].deps) == before
    assert list(by_key["phase"].deps) == [c.key for c in plan.cells if c.stage in ("obtain", "transfer")]


# ------------------------------------------------------------------ hostile plans (refused in time, with the line)

@pytest.mark.parametrize("setting, value", [
    ("lr", ".nan"), ("lr", ".inf"), ("weight_decay", ".nan"), ("weight_decay", ".inf"), ("prune_fraction", ".nan"),
    ("dropout", ".nan"), ("init_a", ".inf"), ("rounds", "2.0"), ("embed_dim", "16.0"), ("max_epochs", "1.0e+0"),
])
def test_non_finite_numbers_and_floats_for_integers_are_refused_with_their_line(tmp_path, setting, value):
    text = GOOD.replace("params: {rounds: 2, strategies: [reset, random]}",
                        f"params: {{rounds: 2, strategies: [reset, random], {setting}: {value}}}")
    if setting == "rounds":
        text = GOOD.replace("params: {rounds: 2, strategies: [reset, random]}",
                            f"params: {{rounds: {value}, strategies: [reset, random]}}")
    found = problems(tmp_path, text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if f"{setting}: {value}" in t)
    assert any(p.startswith(f"stages[2].params.{setting} (line {line}): {setting} = ") and "is not allowed" in p
               for p in found), found


def test_a_model_that_cannot_fit_the_machine_is_refused_saying_by_how_much(tmp_path):
    from ltnb.study import memory

    text = GOOD.replace("defaults: {seed: 0, max_epochs: 1}", "defaults: {seed: 0, max_epochs: 1, embed_dim: 1000000000000}")
    found = problems(tmp_path, text)
    assert len(found) == 2 and found[0].startswith("defaults.embed_dim (line 2): cell obtain/products/seed0 needs")
    assert found[1].startswith("defaults.embed_dim (line 2): cell transfer/products__movies/seed0 needs")
    assert "of memory at its peak" in found[0] and "too much" in found[0]
    assert memory.fmt_bytes(memory.machine_bytes()) in found[0]
    # the demo's model fits (and its estimate is an upper bound of a few hundred MB beyond the runtime)
    demo = config.LotterySettings.from_params(embed_dim=417, channels=127, hidden=117)
    assert memory.parameter_count(demo, 8000) == 8000 * 417 + sum(k * 417 * 127 + 127 for k in (3, 4, 5)) \
        + 381 * 117 + 117 + 117 * 2 + 2
    assert memory.RUNTIME_BYTES < memory.peak_bytes(demo, 8000, 500) < 2e9


def test_a_yaml_alias_bomb_is_refused_in_milliseconds(tmp_path):
    import time

    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    text = "study: t\nstages: [{stage: data}]\n" + "\n".join(lines) + "\n"
    t0 = time.perf_counter()
    found = problems(tmp_path, text)
    assert time.perf_counter() - t0 < 2.0
    assert len(found) == 1 and "aliases expand to more than 100,000 values" in found[0] and found[0].startswith("line ")
    # a few aliases are fine: they are read as their values
    ok = GOOD.replace("defaults: {seed: 0, max_epochs: 1}", "defaults: &d {seed: 0, max_epochs: 1}")
    assert load_plan(write(tmp_path, ok)).cells


def test_a_huge_plan_is_refused_before_it_is_parsed(tmp_path):
    import time

    p = tmp_path / "plan.yaml"
    with open(p, "w") as f:
        f.write(GOOD)
        f.write("# " + "x" * 1000 + "\n")
        f.seek(50_000_000)
        f.write("\n")
    t0 = time.perf_counter()
    with pytest.raises(PlanError, match=r"the plan is 50,000,001 bytes; a plan may be at most 1,048,576 bytes"):
        load_plan(p)
    assert time.perf_counter() - t0 < 1.0
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(PlanError, match="not a regular file"):
        load_plan(tmp_path / "dir.yaml")


def test_plan_checks_are_linear_in_the_number_of_cells(tmp_path):
    """20,000 obtain cells (and their transfers) are checked in seconds (the folder-collision check and
    the source lookup were quadratic: 120 s and counting before)."""
    import time

    def timed(n: int) -> float:
        seeds = ", ".join(map(str, range(n)))
        text = GOOD.replace("seed: [0]}", f"seed: [{seeds}]}}")
        t0 = time.perf_counter()
        plan = load_plan(write(tmp_path, text))
        took = time.perf_counter() - t0
        assert sum(c.stage == "obtain" for c in plan.cells) == 2 * n
        assert sum(c.stage == "transfer" for c in plan.cells) == n
        return took

    small, big = timed(500), timed(10_000)
    print(f"\nplan check: 1,500 cells {small:.2f} s, 30,000 cells {big:.2f} s ({big / small:.1f}x for 20x the cells)")
    assert big < 60 and big / small < 60  # linear (20x) with slack; quadratic would be 400x


@pytest.mark.parametrize("outputs, why", [
    ("../../..", "outside the project root"),
    ("/etc", "a system folder"),
    ("/", "a system folder"),
    ("/usr/local/x", "a system folder"),
    ("link", "outside the project root"),
    ("/nonexistent-ltnb-folder", "is not an existing folder"),
])
def test_outputs_go_only_where_the_rule_allows(tmp_path, outputs, why):
    (tmp_path / "link").symlink_to("/etc")
    found = problems(tmp_path, GOOD.replace("study: t\n", f"study: t\noutputs: {outputs}\n"))
    assert any(p.startswith("outputs (line 2): ") and why in p and "project root" in p for p in found), found


def test_allowed_outputs_are_named_with_their_rule_in_the_first_line(tmp_path):
    import io

    inside = load_plan(write(tmp_path, GOOD.replace("study: t\n", "study: t\noutputs: runs/here\n")))
    assert inside.study_dir == (tmp_path / "runs" / "here" / "t").resolve()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    absolute = load_plan(write(tmp_path, GOOD.replace("study: t\n", f"study: t\noutputs: {elsewhere}\n")))
    assert absolute.study_dir == elsewhere.resolve() / "t"
    out = io.StringIO()
    batch.print_dry_run(absolute, list(absolute.cells), out)
    first = out.getvalue().splitlines()[0]
    assert f"outputs {elsewhere.resolve()} (an absolute folder that exists and is writable)" in first
    out = io.StringIO()
    batch.print_dry_run(inside, list(inside.cells), out)
    assert f"(inside the project root {tmp_path.resolve()})" in out.getvalue().splitlines()[0]


def test_a_new_stage_is_one_stage_and_its_notebook(tmp_path):
    """docs/extending.md, "A stage": a grid stage that reads the reset chains of its source domain is one
    ``Stage`` (here added before the plan module is imported, as a new entry of ``ltnb/base/stages.py``
    would be) and its notebook; the plan expands it, links each cell to the obtain cell whose chain it reads
    (``Stage.reads``), checks that chain's rounds (``Stage.rounds_problem``) and refuses an impossible grid,
    with no line of ``plan.py`` naming it."""
    import subprocess
    import sys

    plan_text = GOOD.replace(REPORT, f"""\
  - stage: probe
    notebook: {FIX / 'transfer.ipynb'}
    params: {{rounds: 2}}
    grid: {{source: [movies], seed: [0]}}
""")
    (tmp_path / "plan.yaml").write_text(plan_text)
    (tmp_path / "bad.yaml").write_text(plan_text.replace("source: [movies], seed: [0]", "source: [movies], seed: [7]"))
    (tmp_path / "ok.yaml").write_text(plan_text.replace("params: {rounds: 2, strategies: [reset, random]}",
                                                        "params: {rounds: 3, strategies: [reset, random]}"))
    code = f"""
import dataclasses, sys
from ltnb.base import stages
def probe_rounds(v, domain, have):
    return (None, "probe needs round 3 of {{src}}") if have < 3 else None
stages.STAGES["probe"] = stages.Stage("probe", "notebooks/04_transfer.ipynb", stages.STAGES["transfer"].settings,
    cell=("source", "seed"), folder=lambda study, v: study / "probe" / v["source"] / f"seed{{v['seed']}}",
    needs=("data", "obtain"), reads=lambda v: (v["source"],), rounds_problem=probe_rounds)
stages.ORDER = tuple(stages.STAGES)
from ltnb.study.plan import PlanError, load_plan
try:
    load_plan({str(tmp_path / 'plan.yaml')!r})
except PlanError as e:
    print("PROBLEMS", e.problems)
cells = {{c.key: c for c in load_plan({str(tmp_path / 'ok.yaml')!r}).cells}}
print("DEPS", cells["probe/movies/seed0"].deps)
try:
    load_plan({str(tmp_path / 'bad.yaml')!r})
except PlanError as e:
    print("BAD", e.problems)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "probe needs round 3 of obtain/movies/seed0" in out.stdout  # its rounds rule, read from the Stage
    assert "DEPS ('data', 'obtain/movies/seed0')" in out.stdout, out.stdout  # linked to the chain it reads
    bad = out.stdout.split("BAD", 1)[1]
    assert "impossible grid: probe movies seed 7 needs the obtain cell obtain/movies/seed7" in bad
