"""Notebooks 01 and 02 executed through papermill with smoke parameters; their outputs checked."""
import json
import xml.etree.ElementTree as ET

import nbformat
import pandas as pd
import papermill as pm
import pytest

from conftest import ROOT

NB = ROOT / "notebooks"


@pytest.mark.parametrize("name", sorted(p.name for p in NB.glob("*.ipynb")))
def test_notebooks_read_as_teaching_material(name):
    """Each opens with what the step does, has a parameters cell, imports nothing private, draws or
    shows its result, and says how to read it."""
    nb = nbformat.read(NB / name, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# 0")
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "ltnb._" not in code and "from ltnb._" not in code, f"{name} imports a private module"
    assert "How to read it" in "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    if name.startswith(("03", "04")):
        assert sum("train" in c.metadata.get("tags", []) for c in nb.cells) == 1  # timed by the runner


@pytest.mark.parametrize("name", sorted(p.name for p in NB.glob("*.ipynb")))
def test_notebooks_are_committed_clean_with_a_parameters_cell(name):
    nb = nbformat.read(NB / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), f"{name}: first code cell must be tagged parameters"
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name} is committed with outputs"
    params = pm.inspect_notebook(str(NB / name))
    assert "study_dir" in params
    # every assignment of the parameters cell is understood by papermill (the batch plans are checked against it)
    import re
    assigned = re.findall(r"^(\w+)\s*=", code[0].source, re.M)
    assert list(params) == assigned, f"{name}: papermill cannot parse {set(assigned) - set(params)}"


def test_data_and_divergence_notebooks(tmp_path, builtin_cache):
    study = tmp_path / "smoke"
    out = tmp_path / "executed"
    out.mkdir()
    pm.execute_notebook(str(NB / "01_data.ipynb"), str(out / "01.ipynb"), kernel_name="python3", progress_bar=False,
                        parameters=dict(study_dir=str(study), settings=dict(per_domain=120, vocab_size=400, seed=3,
                                                                             domains=["products", "news", "tweets"])))
    table = pd.read_parquet(study / "data" / "corpus.parquet")
    assert sorted(table.domain.unique()) == ["news", "products", "tweets"]
    counts = table.groupby(["domain", "split", "label"]).size()
    assert (counts.xs("train", level="split") == 30).all()
    assert (counts.xs("validation", level="split") == 15).all()
    test = counts.xs("test", level="split").unstack("label")  # each domain's surplus goes to its test split, balanced
    assert (test[0] == test[1]).all() and (test[0] >= 15).all() and test.loc["products", 0] > 15
    summary = json.loads((study / "data" / "summary.json").read_text())
    assert summary["settings"]["per_domain"] == 120
    info = json.loads(next((study / "data" / "vocab").glob("*/info.json")).read_text())
    assert info["vocab_size"] == 400 and info["domains"] == ["news", "products", "tweets"]
    executed = nbformat.read(out / "01.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "400 pieces" in text and "'in_train_or_validation': 0" in text
    with pytest.raises(pm.PapermillExecutionError, match="unknown name.*'per_domian'"):  # a typo is refused
        pm.execute_notebook(str(NB / "01_data.ipynb"), str(out / "bad.ipynb"), kernel_name="python3",
                            progress_bar=False, parameters=dict(study_dir=str(study), settings={"per_domian": 5}))

    pm.execute_notebook(str(NB / "02_divergence.ipynb"), str(out / "02.ipynb"), kernel_name="python3",
                        progress_bar=False, parameters=dict(study_dir=str(study)))
    jsd = pd.read_parquet(study / "divergence" / "jsd.parquet")
    assert len(jsd) == 9 and jsd.jsd.between(0, 1).all()
    m = jsd.pivot(index="domain", columns="other", values="jsd")
    assert (m.values == m.values.T).all()
    assert (study / "divergence" / "figure1.png").read_bytes()[:4] == b"\x89PNG"
    assert ET.parse(study / "divergence" / "figure1.svg").getroot().tag.endswith("svg")


# ------------------------------------------------------------------ notebooks open on the study they name

STUDY_NOTEBOOKS = ["01_data.ipynb", "02_divergence.ipynb", "03_obtain.ipynb", "04_transfer.ipynb",
                   "06_report.ipynb", "07_phase_transition.ipynb"]


def _files(study):
    """sha256 of every file of the study a batch wrote, except the executed notebooks and the report
    (which these notebooks may rewrite) and the batch's own records."""
    from ltnb.base import integrity

    return {p.relative_to(study).as_posix(): integrity.file_sha256(p) for p in sorted(study.rglob("*"))
            if p.is_file() and p.suffix != ".ipynb" and p.parts[len(study.parts)] not in ("report", "phase")
            and p.name != "batch_times.csv"}


def _text(executed):
    nb = nbformat.read(executed, as_version=4)
    return "".join(o.get("text", "") + json.dumps(o.get("data", {})) for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)


def test_notebooks_run_with_their_defaults_after_the_smoke_plan_train_nothing(smoke, tmp_path):
    """Item 1 of issue 29: after the smoke plan, each notebook executed with only the study named (every
    other parameter its default) opens the smoke study's own cells, trains nothing new, leaves every file
    the batch recorded as it was (so a rerun of the batch still skips every cell), and finishes in
    seconds. 05_federated, whose study this is not, refuses at once with what to do."""
    import shutil
    import time

    from ltnb.analysis import results
    from ltnb.study import batch
    from ltnb.base._io import read_json

    assert smoke["code"] == 0, smoke["log"]
    study = tmp_path / "outputs" / "smoke"
    shutil.copytree(smoke["pristine"], study)
    files, rows = _files(study), results.load(study)
    seconds = {}
    for name in STUDY_NOTEBOOKS:
        start = time.perf_counter()
        pm.execute_notebook(str(NB / name), str(tmp_path / name), parameters={"study_dir": str(study)},
                            kernel_name="python3", progress_bar=False, cwd=str(ROOT))
        seconds[name] = time.perf_counter() - start
    print("\nnotebooks with their defaults after the smoke plan (s):", {k: round(v, 1) for k, v in seconds.items()})
    assert _files(study) == files  # no new chain, round or table; nothing rewritten
    pd.testing.assert_frame_equal(results.load(study), rows)
    for marker in study.rglob("_COMPLETE.json"):  # the batch would still skip every cell
        m = read_json(marker)
        if "stage" in m:
            assert batch.marker_problem(marker, m["params_hash"], study) is None, marker
    texts = {name: _text(tmp_path / name) for name in STUDY_NOTEBOOKS}
    assert "as the batch ran it (obtain/movies/seed0/_COMPLETE.json)" in texts["03_obtain.ipynb"]
    assert "strategies reset, random, reinit" in texts["03_obtain.ipynb"]
    assert "settings: batch_size 32, channels 8, embed_dim 16, hidden 8, max_epochs 1" in texts["03_obtain.ipynb"]
    for name in ("03_obtain.ipynb", "04_transfer.ipynb"):
        assert "nothing to train: every round of the" in texts[name] and "TRAINS" not in texts[name], name
    assert "transfer source products, target movies, seed 0" in texts["04_transfer.ipynb"]
    assert "read back" in texts["01_data.ipynb"] and "already built" in texts["01_data.ipynb"]
    assert "<svg" in texts["03_obtain.ipynb"] and "<svg" in texts["04_transfer.ipynb"]
    assert "widget-view+json" in texts["07_phase_transition.ipynb"]  # the explorer (its charts: tests/test_browser.py)
    assert "the paper&#x27;s findings, tested" in texts["07_phase_transition.ipynb"] or \
        "the paper's findings, tested" in texts["07_phase_transition.ipynb"]
    assert all(s < 60 for s in seconds.values()), seconds  # seconds (kernel start included), not a training run

    start = time.perf_counter()
    with pytest.raises(pm.PapermillExecutionError, match="nothing to open for stage federated"):
        pm.execute_notebook(str(NB / "05_federated.ipynb"), str(tmp_path / "05.ipynb"),
                            parameters={"study_dir": str(study)}, kernel_name="python3", progress_bar=False)
    assert time.perf_counter() - start < 60 and _files(study) == files


def test_a_notebook_names_what_it_would_train_first(smoke, tmp_path, monkeypatch):
    """A value the study did not run makes the notebook say, before it trains, how many rounds of which
    chains will train, with the estimate; the settings of the study's cells come with it."""
    from ltnb.study import recorded

    study = smoke["pristine"]
    opened = recorded.cell(study, "obtain", domain="movies", seed=1)
    assert opened.origin == "recorded" and opened.params == {"domain": "movies", "seed": 1,
                                                             "strategies": ["reset", "random", "reinit"]}
    assert opened.settings["embed_dim"] == 16 and opened.settings["rounds"] == 2
    lines = []
    seconds = opened.announce(log=lines.append)
    assert "THE TRAINING CELL TRAINS: rounds to train per run: reset 3 of 3, random 2 of 3, reinit 2 of 3" in lines[-1]
    assert seconds > 0 and "estimated" in lines[-1]
    lines.clear()
    assert recorded.cell(study, "obtain", domain="movies").announce(log=lines.append) == 0
    assert "nothing to train" in lines[-1]
    # settings given as a dict are used as they are (the rest the library's defaults), never mixed in
    assert recorded.cell(study, "obtain", settings={"rounds": 1}).settings == {"rounds": 1}
    # inside a batch the plan's values alone count: nothing is read from the study
    monkeypatch.setenv(recorded.CELL_ENV, "obtain/movies/seed0")
    batch_cell = recorded.cell(study, "obtain", domain="movies", seed=0)
    assert batch_cell.origin == "batch" and batch_cell.settings == {}


def test_before_a_study_has_run_its_plan_gives_the_values(tmp_path):
    """outputs/demo before `make study` (or as it ran): the demo plan's values, not the library's."""
    from ltnb.study import recorded

    opened = recorded.cell(ROOT / "outputs" / "demo", "obtain")
    assert opened.origin in ("plan", "recorded") and opened["domain"] == "products" and opened["seed"] == 0
    assert opened.settings["precision"] == "bfloat16" and opened.settings["rounds"] == 20
    assert opened["strategies"] == ["reset", "random", "reinit", "randmask-reset"]
    tr = recorded.cell(ROOT / "outputs" / "demo", "transfer")
    assert (tr["source"], tr["target"]) == ("restaurants", "products")
    with pytest.raises(recorded.NotInStudy, match=r"study_dir = .*nothing to open for stage obtain: the study folder "
                                                  r"does not exist"):
        recorded.cell(tmp_path / "nowhere", "obtain")
    with pytest.raises(TypeError, match="settings = 'x': must be a dict"):
        recorded.cell(tmp_path, "obtain", settings="x")
