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
