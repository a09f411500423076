"""Shared fixtures: the real built-in corpus (fetched once per machine into the user's cache), and the
smoke plan run once per session (tests/test_study.py, tests/test_cluster.py)."""
import pytest

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]

NOTEBOOKS = {"data": "01_data.ipynb", "divergence": "02_divergence.ipynb", "obtain": "03_obtain.ipynb",
             "transfer": "04_transfer.ipynb", "report": "06_report.ipynb", "phase": "07_phase_transition.ipynb"}
TIMES = ["seconds", "cpu_seconds"]  # the columns of result rows that differ between two runs of one cell


@pytest.fixture(scope="session")
def builtin_cache():
    """The fetched built-in corpus: `ltnb data fetch` into the default cache (idempotent, ~5 s once)."""
    from ltnb.base import paths
    from ltnb.text import corpus

    corpus.fetch(log=lambda *_: None)
    return paths.cache_dir()


def smoke_plan(folder, stages=None):
    """params/smoke.yaml copied to ``folder/smoke.yaml``, its outputs in ``folder/outputs`` (and only the
    ``stages`` named, if given): the plan's path and its contents."""
    import yaml

    plan = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    plan["outputs"] = str(folder / "outputs")
    (folder / "outputs").mkdir(exist_ok=True)  # an absolute outputs folder must exist (ltnb.study.plan.outputs_folder)
    if stages is not None:
        plan["stages"] = [s for s in plan["stages"] if s["stage"] in stages]
    for stage in plan["stages"]:  # the plan lives outside the repo: name the repo's notebooks
        stage.setdefault("notebook", str(ROOT / "notebooks" / NOTEBOOKS[stage["stage"]]))
    path = folder / "smoke.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path, plan


def assert_rows_equal_except_times(before, after) -> None:
    """Two runs' result rows (``ltnb.analysis.results.load``) are the same numbers, their times aside (CPU, same
    seeds: a resumed or rerun cell gives what an uninterrupted one gave)."""
    import pandas as pd

    key = ["stage", "pair", "strategy", "seed", "round"]
    pd.testing.assert_frame_equal(before.sort_values(key).reset_index(drop=True).drop(columns=TIMES),
                                  after.sort_values(key).reset_index(drop=True).drop(columns=TIMES))


@pytest.fixture(scope="session")
def smoke(tmp_path_factory, builtin_cache):
    """Run params/smoke.yaml once (outputs redirected to a temporary folder) on a LocalCluster of 2
    workers. ``pristine`` is a copy as the batch left it, for tests that need it unchanged by others."""
    import io
    import shutil

    from ltnb.study import batch

    tmp = tmp_path_factory.mktemp("smoke")
    path, plan = smoke_plan(tmp)
    out = io.StringIO()
    code = batch.main(path, workers=2, out=out)
    pristine = tmp / "pristine"
    shutil.copytree(tmp / "outputs" / "smoke", pristine)
    return {"plan": path, "study": tmp / "outputs" / "smoke", "code": code, "log": out.getvalue(), "raw": plan,
            "pristine": pristine}
