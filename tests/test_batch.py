"""The batch runner on tiny fixture notebooks, with a real Dask cluster of two worker processes."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ltnb.study import batch
from ltnb.study.plan import load_plan
from test_plan import HEADER, OBTAIN, REPORT, TRANSFER



def plan_text(obtain_params: str = "rounds: 2", transfer_grid: str = "[[products, movies]]") -> str:
    """The fixture plan of tests/test_plan.py, with the obtain parameters and transfer pairs given."""
    obtain = OBTAIN.replace("params: {rounds: 2, ", f"params: {{{obtain_params}, ")
    transfer = TRANSFER.replace("pair: [[products, movies]]", f"pair: {transfer_grid}")
    return HEADER + obtain + transfer + REPORT


@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def write_plan(tmp_path: Path, **kw) -> Path:
    p = tmp_path / "plan.yaml"
    p.write_text(plan_text(**kw))
    return p


def run(plan, **kw) -> tuple[int, str]:
    out = io.StringIO()
    code = batch.main(plan, out=out, **{"estimate": False, **kw})
    return code, out.getvalue()


def runs(study: Path) -> dict[str, int]:
    """How often each cell's notebook ran (the fixtures append to runs.log)."""
    return {p.parent.relative_to(study).as_posix(): len(p.read_text().splitlines()) for p in study.rglob("runs.log")}


def test_dry_run_lists_cells_and_runs_nothing(tmp_path):
    code, out = run(write_plan(tmp_path), dry_run=True)
    assert code == 0
    assert out.count("[  to run]") == 6 and "obtain/movies/seed0" in out and "strategies=['reset', 'random']" in out
    assert not (tmp_path / "outputs").exists()


def test_run_skip_rerun_deleted_and_killed_cells(tmp_path, scheduler):
    plan_path = write_plan(tmp_path)
    plan = load_plan(plan_path)
    study = plan.study_dir
    code, out = run(plan_path, scheduler=scheduler)
    assert code == 0, out
    assert "done:    6" in out
    assert all(n == 1 for n in runs(study).values()) and len(runs(study)) == 6
    for c in plan.cells:
        marker = json.loads(c.marker.read_text())
        assert marker["params_hash"] == c.params_hash and marker["seconds"] > 0
        assert c.executed.exists()  # executed notebook kept next to the outputs
    rec = json.loads((study / "obtain/products/seed0/out.json").read_text())
    assert rec["params"] == {"domain": "products", "seed": 0, "strategies": ["reset", "random"],
                             "settings": {"rounds": 2, "max_epochs": 1}}
    assert Path(rec["python"]).resolve() == Path(sys.executable).resolve()  # the venv's kernel
    assert rec["env"] == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LTNB_TORCH_THREADS": "1",
                          "MALLOC_TRIM_THRESHOLD_": None}  # Dask's nanny sets it; it slows torch 1.6x
    assert rec["cwd"] == str(tmp_path.resolve())  # papermill runs in the plan root

    # a second run does nothing
    code, out = run(plan_path, scheduler=scheduler)
    assert code == 0 and "skipped: 6 (complete)" in out and "done:    0" in out
    assert all(n == 1 for n in runs(study).values())

    # deleting one cell's outputs reruns exactly that cell; a cell killed mid-way (no marker,
    # partial files left) reruns too
    shutil.rmtree(study / "obtain/movies/seed0")
    (study / "transfer/products__movies/seed0" / "_COMPLETE.json").unlink()
    code, out = run(plan_path, scheduler=scheduler)
    assert code == 0 and "done:    2" in out and "skipped: 4" in out
    counts = runs(study)
    assert counts.pop("obtain/movies/seed0") == 1
    assert counts.pop("transfer/products__movies/seed0") == 2
    assert all(n == 1 for n in counts.values())

    # changed parameters make the marker stale: those cells (and the report that reads them) rerun
    code, out = run(write_plan(tmp_path, obtain_params="rounds: 3"), scheduler=scheduler, dry_run=True)
    assert out.count("[  to run]") == 2 + 1 + 1 and out.count("[complete]") == 2


def test_failing_cell_reported_others_finish_dependents_skipped(tmp_path, scheduler):
    plan_path = write_plan(tmp_path, obtain_params="rounds: 2, fail_on: movies")
    study = load_plan(plan_path).study_dir
    code, out = run(plan_path, scheduler=scheduler)
    assert code == 1
    assert "failed:  1" in out and "not run: 2" in out and "done:    3" in out
    assert "obtain/movies/seed0: ValueError: obtain asked to fail on movies" in out
    failed_nb = study / "obtain/movies/seed0/obtain.ipynb"
    assert f"notebook: {failed_nb}" in out and failed_nb.exists()
    assert not (study / "obtain/movies/seed0/_COMPLETE.json").exists()
    assert "transfer/products__movies/seed0: input obtain/movies/seed0 failed" in out
    assert "report: input obtain/movies/seed0 failed" in out
    assert (study / "obtain/products/seed0/_COMPLETE.json").exists()
    assert not (study / "transfer").exists()


def test_only_stage_needs_complete_inputs(tmp_path, scheduler):
    plan_path = write_plan(tmp_path)
    code, out = run(plan_path, scheduler=scheduler, only="obtain")
    assert code == 1 and "not run: 2" in out
    assert "input data is not complete; run its stage first" in out
    code, out = run(plan_path, scheduler=scheduler, only="data")
    assert code == 0 and "done:    1" in out
    code, out = run(plan_path, scheduler=scheduler, only="obtain")
    assert code == 0 and "done:    2" in out
    assert not (load_plan(plan_path).study_dir / "transfer").exists()
    assert run(plan_path, only="bogus")[0] == 2


def test_default_local_cluster_and_threads(tmp_path):
    p = tmp_path / "plan.yaml"
    text = plan_text().split("  - stage: divergence")[0].replace("max_epochs: 1", "per_domain: 5")
    p.write_text(text.replace(", per_domain: 120", ""))  # the data stage alone
    code, out = run(p, workers=1, threads_per_worker=2)
    assert code == 0, out
    rec = json.loads((tmp_path / "outputs/t/data/out.json").read_text())
    assert rec["env"]["LTNB_TORCH_THREADS"] == "2" and rec["env"]["OMP_NUM_THREADS"] == "2"


def test_ctrl_c_cancels_and_prints_partial_summary(tmp_path):
    p = write_plan(tmp_path, obtain_params="rounds: 2, sleep: 60")
    code = f"import sys; from ltnb.study import batch; sys.exit(batch.main({str(p)!r}, workers=2, estimate=False))"
    # as in a terminal, SIGINT at its default: a shell's background job (as some CI runners start the suite)
    # inherits it ignored, and Python then keeps ignoring it
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    study = tmp_path / "outputs/t"
    deadline = time.time() + 60
    while not list(study.glob("obtain/*/seed0/partial.txt")) and time.time() < deadline:
        time.sleep(0.2)
    assert list(study.glob("obtain/*/seed0/partial.txt")), "no obtain cell started"
    t0 = time.time()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group gets it
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    print("seconds to stop:", time.time() - t0)
    assert proc.returncode == 130, out
    assert "partial summary (interrupted)" in out and "interrupted" in out.split("not run:")[1]
    assert (study / "data/_COMPLETE.json").exists()
    assert not list(study.glob("obtain/*/seed0/_COMPLETE.json"))


def test_times_of_a_run_are_written_and_split(tmp_path, scheduler):
    """batch_times.csv: per cell wall, training (the notebook cells tagged 'train') and overhead; the
    summary splits the workers' time into training, other work and idle."""
    import pandas as pd

    plan_path = write_plan(tmp_path, obtain_params="rounds: 2, sleep: 0.5")
    code, out = run(plan_path, scheduler=scheduler)
    assert code == 0, out
    assert "worker time:" in out and "training" in out and "idle" in out
    t = pd.read_csv(load_plan(plan_path).study_dir / "batch_times.csv")
    assert list(t.columns) == ["cell", "stage", "status", "host", "start", "wall", "training", "overhead", "estimate"]
    cells = t[t.cell != "(idle)"]
    assert len(cells) == 6 and (cells.wall > 0).all()
    assert (cells.overhead - (cells.wall - cells.training)).abs().max() < 1e-3
    assert (cells.training == 0).all()  # the fixtures tag no cell "train"
    assert t.iloc[-1]["cell"] == "(idle)" and t.iloc[-1]["wall"] >= 0


def test_training_seconds_come_from_the_tagged_cells(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell("x = 1", metadata={"papermill": {"duration": 2.0}}),
                             new_code_cell("fit()", metadata={"tags": ["train"], "papermill": {"duration": 30.5}}),
                             new_code_cell("y", metadata={"tags": ["train"], "papermill": {"duration": None}})])
    nbformat.write(nb, tmp_path / "x.ipynb")
    assert batch.training_seconds(tmp_path / "x.ipynb") == 30.5
    assert batch.training_seconds(tmp_path / "missing.ipynb") == 0.0
