"""Plan loading: every problem found before anything runs, with its path and line; grid expansion."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from ltnb import batch
from ltnb.plan import PlanError, load_plan, plan_root

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
    params: {{rounds: 2}}
    grid: {{domain: [products, movies], strategy: [reset, random], seed: [0]}}
"""
TRANSFER = f"""\
  - stage: transfer
    notebook: {FIX / 'transfer.ipynb'}
    grid: {{pair: [[products, movies]], strategy: [masks-reset, masks-random], seed: [0]}}
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
    assert keys == ["data", "divergence",
                    "obtain/products/reset/seed0", "obtain/products/random/seed0",
                    "obtain/movies/reset/seed0", "obtain/movies/random/seed0",
                    "transfer/products__movies/masks-reset/seed0", "transfer/products__movies/masks-random/seed0",
                    "report"]
    assert plan.study_dir == (tmp_path / "outputs" / "t").resolve()
    tr = plan.cells[6]
    assert tr.params == {"seed": 0, "max_epochs": 1, "source": "products", "target": "movies", "strategy": "masks-reset"}
    assert tr.parameters["study_dir"] == str(plan.study_dir)
    assert set(tr.deps) == {"data", "obtain/products/reset/seed0", "obtain/movies/reset/seed0"}
    assert plan.cells[-1].deps == tuple(keys[:-1])
    assert plan.cells[2].params["rounds"] == 2 and plan.cells[0].params["seed"] == 0
    assert "max_epochs" not in plan.cells[0].params  # defaults only where the notebook accepts them
    assert tr.executed == tr.cell_dir / "transfer.ipynb"
    assert not (tmp_path / "outputs").exists()


def test_hash_is_stable_and_follows_inputs(tmp_path):
    a = {c.key: c.params_hash for c in load_plan(write(tmp_path, GOOD)).cells}
    assert a == {c.key: c.params_hash for c in load_plan(write(tmp_path, GOOD)).cells}
    b = {c.key: c.params_hash for c in load_plan(write(tmp_path, GOOD.replace("per_domain: 120", "per_domain: 99"))).cells}
    assert all(a[k] != b[k] for k in a)  # data changed: everything downstream is stale
    c = {c.key: c.params_hash for c in load_plan(write(tmp_path, GOOD.replace("rounds: 2", "rounds: 3"))).cells}
    assert a["data"] == c["data"] and a["divergence"] == c["divergence"]
    assert a["obtain/products/reset/seed0"] != c["obtain/products/reset/seed0"]


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
    assert "stages[2].grid.strategy[1]" in ps and "unknown obtain strategy 'rset'; allowed: reset, random, rewind" in ps
    assert "stages[3].grid.pair[0]" in ps and "source and target are both 'products'" in ps
    assert "stages[3].grid.pair[1]" in ps and "unknown domain 'books'" in ps


def test_impossible_grids(tmp_path):
    # obtain without a domain, transfer without pairs, and an empty list
    text = (HEADER + OBTAIN.replace("domain: [products, movies], ", "")
            + TRANSFER.replace("pair: [[products, movies]], ", "") .replace("seed: [0]", "seed: []") + REPORT)
    ps = problems(tmp_path, text)
    assert any(p.startswith("stages[2].grid") and "impossible grid" in p and "domain" in p for p in ps)
    assert any(p.startswith("stages[3].grid.seed") and "impossible grid: empty list" in p for p in ps)
    # transfer needs the reset chains of both domains, which this obtain grid lacks
    text = HEADER + OBTAIN.replace("strategy: [reset, random]", "strategy: [random]") + TRANSFER + REPORT
    ps = problems(tmp_path, text)
    assert any("impossible grid" in p and "obtain/products/reset/seed0" in p for p in ps)
    # a grid over a parameter that does not name the cell folder would make two cells share one
    text = HEADER + OBTAIN.replace("seed: [0]}", "seed: [0], rounds: [1, 2]}").replace("params: {rounds: 2}", "params: {}") + REPORT
    assert any("same folder" in p for p in problems(tmp_path, text))


def test_structure_and_values_all_reported_at_once(tmp_path):
    text = GOOD.replace("study: t", "study: t\ncolour: red").replace("seed: 0, max_epochs: 1", "seed: -1, max_epochs: 1, bogus: 3")
    text = text.replace("params: {rounds: 2}", "params: {rounds: -1, prune_fraction: 1.0, study_dir: x}")
    text = text + REPORT  # report twice
    text = text.replace("  - stage: divergence\n", "  - stage: divergence\n    grid: {log_base: [2]}\n")
    ps = problems(tmp_path, text)
    joined = "\n".join(ps)
    for expected in ("colour (line 2): unknown key; allowed: study, outputs, defaults, stages",
                     "defaults.seed", "a non-negative integer",
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


def test_invalid_plan_via_main_returns_2_and_creates_nothing(tmp_path, capsys):
    p = write(tmp_path, GOOD.replace("domain: [products", "domian: [products"))
    assert batch.main(p, dry_run=False) == 2
    assert "stages[2].grid.domian" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


def test_inputs_outside_the_plan_are_external(tmp_path):
    plan = load_plan(write(tmp_path, HEADER.split("  - stage: divergence")[0] + TRANSFER))
    tr = plan.cells[1]
    assert tr.deps == ("data",) and tr.external == ("obtain/products/reset/seed0", "obtain/movies/reset/seed0")


def test_plan_root_is_parent_of_params(tmp_path):
    (tmp_path / "params").mkdir()
    assert plan_root(tmp_path / "params" / "x.yaml") == tmp_path.resolve()
    assert plan_root(tmp_path / "x.yaml") == tmp_path.resolve()


# The notebooks' parameters as agreed in the team contract, for checking the shipped plans before
# (and independently of) the real notebooks.
CONTRACT = {
    "01_data": "study_dir corpus domains per_domain seed vocab_size character_coverage max_len pos_threshold "
               "neg_threshold cache_dir amazon_files strict",
    "02_divergence": "study_dir log_base",
    "03_obtain": "study_dir domain seed strategy rounds prune_fraction prune_biases rewind_steps max_epochs patience "
                 "batch_size lr weight_decay embed_dim channels hidden dropout progress",
    "04_transfer": "study_dir source target seed strategy rounds prune_fraction prune_biases rewind_steps max_epochs "
                   "patience batch_size lr weight_decay embed_dim channels hidden dropout progress",
    "06_report": "study_dir",
}


@pytest.mark.parametrize("name,cells", [("smoke", 10), ("demo", 1 + 1 + 30 + 16 + 1 + 1), ("paper", 1 + 1 + 50 + 90 + 1 + 1)])
def test_shipped_plans_are_valid(tmp_path, name, cells):
    (tmp_path / "notebooks").mkdir()
    for stem, params in CONTRACT.items():
        src = "\n".join(f"{p} = None" for p in params.split())
        nb = new_notebook(cells=[new_code_cell(src, metadata={"tags": ["parameters"]})])
        nbformat.write(nb, tmp_path / "notebooks" / f"{stem}.ipynb")
    plan = load_plan(REPO / "params" / f"{name}.yaml", root=tmp_path)
    assert plan.study == name and len(plan.cells) == cells
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("name", ["smoke", "demo", "paper"])
def test_shipped_plans_match_the_real_notebooks(name):
    if not all((REPO / "notebooks" / f"{stem}.ipynb").exists() for stem in CONTRACT):
        pytest.skip("the real notebooks are not written yet")
    load_plan(REPO / "params" / f"{name}.yaml")
