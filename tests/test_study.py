"""The smoke plan end to end: the real notebooks, the real runner, a real Dask LocalCluster of 2 workers."""
import io
import json
import shutil
import xml.etree.ElementTree as ET

import nbformat
import pandas as pd
import pytest
import yaml

from conftest import assert_rows_equal_except_times
from ltnb.analysis import results
from ltnb.study import batch
from ltnb.base._io import write_parquet


def _run(smoke, **kw):
    out = io.StringIO()
    code = batch.main(smoke["plan"], workers=2, out=out, **kw)
    return code, out.getvalue()


def test_smoke_plan_runs_every_stage(smoke):
    assert smoke["code"] == 0, smoke["log"]
    study = smoke["study"]
    rows = results.load(study)
    rounds = smoke["raw"]["defaults"]["rounds"]
    ob = rows[rows.stage == "obtain"]
    assert set(ob.groupby(["pair", "strategy", "seed"]).size()) == {rounds + 1}  # rounds 0..R per chain
    assert len(ob.groupby(["pair", "strategy", "seed"])) == 6 and set(ob.strategy) == {"reset", "random", "reinit"}
    r0 = ob[ob["round"] == 0].groupby("pair")["test_acc"].nunique()
    assert (r0 == 1).all()  # one dense round 0 per domain and seed, shared by its three chains
    tr = rows[rows.stage == "transfer"]
    assert set(tr.strategy) == {"masks-reset", "masks-random"} and set(tr.pair) == {"products->movies"}
    assert sorted(tr["round"].unique()) == list(range(1, rounds + 1))
    assert rows.sparsity.between(0, 1).all() and rows.test_acc.between(0, 1).all()
    # the sparsity of round r is 1 - 0.65^r up to the rounding of tiny tensors
    for r, s in ob.groupby("round").sparsity.mean().items():
        assert s == pytest.approx(1 - 0.65 ** r, abs=0.01)
    # executed notebooks kept next to the outputs, all without errors
    executed = sorted(study.rglob("*.ipynb"))
    assert len(executed) == 1 + 1 + 2 + 1 + 1 + 1
    for nb_path in executed:
        nb = nbformat.read(nb_path, as_version=4)
        assert not any(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs), nb_path
    # figures: valid PNG and SVG; the report page inlines them
    for fig in (study / "divergence" / "figure1", study / "report" / "figure3", study / "report" / "figure4"):
        assert fig.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert ET.parse(fig.with_suffix(".svg")).getroot().tag.endswith("svg")
    page = (study / "report" / "index.html").read_text()
    assert page.count("<svg") >= 3 and "TICKET-REINIT" in page and "MASKS-RESET" in page
    assert "The paper's findings" in page and "NaN" not in page
    assert "http://" not in page.replace("http://www.w3.org", "")  # nothing fetched from the web
    phase = pd.read_csv(study / "report" / "phase_transition.csv")
    assert set(phase["transition"]) == {"too few seeds"}  # one seed: a message, not a number
    summary = pd.read_csv(study / "report" / "summary.csv")
    assert len(summary) == len(rows.groupby(["stage", "pair", "strategy", "round"]))
    # the runner's record of where the time went, and its estimate beside what happened
    times = pd.read_csv(study / "batch_times.csv")
    assert set(times.stage.dropna()) >= {"data", "obtain", "transfer", "report", "phase"}
    ob_t = times[times.stage == "obtain"]
    assert (ob_t.training > 0).all() and (ob_t.training < ob_t.wall).all()
    assert "estimate vs actual" in smoke["log"] and "worker time" in smoke["log"]


def test_rerun_does_nothing_and_a_deleted_cell_reruns_alone(smoke):
    assert smoke["code"] == 0, smoke["log"]
    code, log = _run(smoke)
    assert code == 0 and "0 to run" in log, log
    import shutil

    victim = smoke["study"] / "obtain" / "movies" / "seed0"
    shutil.rmtree(victim)
    code, log = _run(smoke, only="obtain")
    assert code == 0 and "1 to run" in log, log
    assert (victim / "_COMPLETE.json").exists()


def test_a_cell_killed_mid_way_keeps_its_finished_rounds(smoke):
    assert smoke["code"] == 0, smoke["log"]
    cell = smoke["study"] / "obtain" / "products" / "seed0"
    run = next(p.parent for p in (smoke["study"] / "obtain" / "products" / "reset" / "seed0").glob("*/results.parquet"))
    before = results.load(smoke["study"])
    # what a kill during the last round leaves: no cell marker, no last ticket, no last row
    (cell / "_COMPLETE.json").unlink()
    for marker in run.glob("_COMPLETE.json"):
        marker.unlink()
    last = max(int(p.stem.split("_")[1]) for p in run.glob("round_*.safetensors"))
    (run / f"round_{last:02d}.safetensors").unlink()
    table = pd.read_parquet(run / "results.parquet")
    write_parquet(run / "results.parquet", table[table["round"] < last])  # as a kill after round last-1 leaves it
    kept = {p.name: p.stat().st_mtime_ns for p in run.glob("round_*.safetensors")}
    code, log = _run(smoke, only="obtain")
    assert code == 0 and "1 to run" in log, log
    assert {p.name: p.stat().st_mtime_ns for p in run.glob("round_*.safetensors") if p.name in kept} == kept
    assert (run / f"round_{last:02d}.safetensors").exists()
    assert_rows_equal_except_times(before, results.load(smoke["study"]))  # as the uninterrupted run's


def test_a_failing_chain_is_reported_and_the_others_finish(tmp_path, builtin_cache, smoke):
    """A `rewind` chain asking to rewind past the end of round 0 fails inside its cell's notebook; the
    reset chain of the same cell and the other domain's cell finish; the transfer, whose input cell
    failed, is not run and says why; exit code 1."""
    plan = json.loads(json.dumps(smoke["raw"]))
    plan["outputs"] = str(tmp_path / "outputs")
    (tmp_path / "outputs").mkdir(exist_ok=True)  # an absolute outputs folder must exist
    study = tmp_path / "outputs" / "smoke"
    plan["stages"] = [s for s in plan["stages"] if s["stage"] in ("data", "obtain", "transfer")]
    plan["stages"][1]["params"] = {"strategies": ["reset", "rewind"], "rewind_steps": 10**6}
    plan["stages"][1]["grid"] = {"domain": ["products", "movies"], "seed": [0]}
    plan["stages"][2]["params"] = {**plan["stages"][2].get("params", {}), "rewind_steps": 10**6}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    out = io.StringIO()
    code = batch.main(path, workers=2, out=out, estimate=False)
    log = out.getvalue()
    assert code == 1, log
    for domain in ("products", "movies"):
        assert next((study / "obtain" / domain / "reset" / "seed0").glob("*/_COMPLETE.json"))  # reset finished
        failed_nb = study / "obtain" / domain / "seed0" / "03_obtain.ipynb"
        assert failed_nb.exists() and str(failed_nb) in log
        assert not (failed_nb.parent / "_COMPLETE.json").exists()
    assert "rewind_steps" in log and "ChainsFailed" in log  # the notebook's error is in the summary
    assert "transfer/products__movies/seed0: input obtain/products/seed0 failed" in log


def test_changed_inputs_rerun_what_depends_on_them(smoke, tmp_path):
    """Issue 13, item 3: an edited corpus table is noticed (the data stage reruns and restores it; the cells
    that read it are checked again and stay complete once it is as it was), and a transfer cell that
    reruns makes the report and the phase stage rerun: every rerun names the file, expected and found."""
    assert smoke["code"] == 0, smoke["log"]
    from ltnb.base import integrity

    study = tmp_path / "outputs" / "smoke"
    shutil.copytree(smoke["pristine"], study)  # as the batch left it (other tests change the shared study)
    plan = json.loads(json.dumps(smoke["raw"]))
    plan["outputs"] = str(tmp_path / "outputs")
    (tmp_path / "outputs").mkdir(exist_ok=True)  # an absolute outputs folder must exist
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(plan))
    corpus = study / "data" / "corpus.parquet"
    original = integrity.file_sha256(corpus)
    table = pd.read_parquet(corpus)
    table.loc[0, "text"] = "an edited sentence"
    table.to_parquet(corpus, index=False)
    edited = integrity.file_sha256(corpus)
    shutil.rmtree(study / "transfer" / "products__movies" / "masks-reset")  # a chain of the transfer cell, gone
    report_inputs = json.loads((study / "report" / "_COMPLETE.json").read_text())["inputs"]

    out = io.StringIO()
    code = batch.main(path, dry_run=True, out=out, estimate=False)
    assert code == 0 and f"rerun: data/corpus.parquet changed since it ran (expected sha256 {original[:16]}, " \
                          f"found {edited[:16]})" in out.getvalue()
    out = io.StringIO()
    code = batch.main(path, workers=2, out=out, estimate=False)
    log = out.getvalue()
    assert code == 0, log
    assert f"rerun    data: data/corpus.parquet changed since it ran (expected sha256 {original[:16]}" in log
    for key in ("data", "transfer/products__movies/seed0", "report", "phase"):
        assert f"done     {key}" in log, (key, log)
    for key in ("divergence", "obtain/products/seed0", "obtain/movies/seed0"):
        assert f"skipped  {key}: complete; what it read is as it was when it ran" in log, (key, log)
    assert "rerun    report: transfer/products__movies/masks-reset/seed0/" in log
    assert integrity.file_sha256(corpus) == original  # the data stage wrote the table again, as it was
    now = json.loads((study / "report" / "_COMPLETE.json").read_text())["inputs"]
    changed = {k for k in now if now[k] != report_inputs.get(k)}
    assert changed and all(k.startswith("transfer/products__movies/masks-reset/") for k in changed)
    out = io.StringIO()
    assert batch.main(path, workers=2, out=out, estimate=False) == 0 and "0 to run" in out.getvalue()


def test_finished_trainings_teach_the_estimate_per_level_and_strategy(smoke, tmp_path):
    """``estimate.learn`` on the smoke study's cells: one value per trained round (not the rounds 0
    that a seed's strategies share), the per-level mean of measured / modelled seconds and the
    per-strategy mean of epochs run (patience 1 here), and nothing counted twice."""
    from ltnb.study import estimate
    from ltnb.base._io import write_json
    from ltnb.study.plan import load_plan

    plan = load_plan(smoke["plan"])
    cells = [c for c in plan.cells if c.stage in ("obtain", "transfer")]
    cache = tmp_path / "cache"  # this machine's rates for the smoke model (measured by the smoke batch), nothing learned
    write_json(cache / estimate.RATES_FILE, {"models": estimate._load_cache()["models"]})
    n = estimate.learn(plan, [(c, 0.0) for c in cells], workers=2, cache_dir=cache)
    rows = results.load(smoke["study"])
    trained = rows[rows.seconds > estimate.MIN_TRAINED]
    assert n == len(trained) and len(trained) == len(rows) - 2 * 2  # random and reinit share reset's round 0, 2 domains
    # every trained round records the CPU time its process got: positive, and (one torch thread per
    # worker) not more than its wall time beyond what other threads of the kernel add
    assert (trained.cpu_seconds > 0).all() and (trained.cpu_seconds <= 1.5 * trained.seconds + 0.05).all()
    assert estimate.learn(plan, [(c, 0.0) for c in cells], workers=2, cache_dir=cache) == 0
    observed = estimate._load_cache(cache)["observed"]
    [(key, bins)] = observed["round_ratio"].items()
    assert key.startswith("2|")
    c0 = cells[0]
    s = estimate._cell_settings(c0)
    r = estimate.rates(s.model, 300, s.train.batch_size, cache_dir=cache, measure=False)
    expected = {}
    for row in trained.itertuples():
        domain = row.domain if row.stage == "obtain" else row.target
        shape, length, _, _ = estimate._data_shape(plan, domain)
        model = estimate.round_seconds(r, sparsity=row.sparsity, n=shape, length=min(length, s.train.max_len),
                                       epochs=int(row.epochs_run), batch_size=s.train.batch_size)
        # one thread per worker: the smaller of wall and CPU time (what the round needed, not what it waited)
        expected.setdefault(estimate.level(row.sparsity), []).append(min(row.seconds, row.cpu_seconds) / model)
    assert {int(k) for k in bins} == set(expected) == {0, 1, 2}
    for lvl, values in expected.items():
        assert bins[str(lvl)] == [len(values), pytest.approx(sum(values) / len(values))]
    for strategy, part in trained.groupby("strategy"):
        learned = observed["epochs"][estimate._epochs_key(strategy, s.train)]
        for lvl, sub in part.groupby(part.sparsity.map(estimate.level)):
            assert learned[str(lvl)][1] == pytest.approx(sub.epochs_run.mean())


def _copy(smoke, tmp_path):
    """The pristine smoke study in a folder of its own, with its plan."""
    study = tmp_path / "outputs" / "smoke"
    shutil.copytree(smoke["pristine"], study)
    plan = json.loads(json.dumps(smoke["raw"]))
    plan["outputs"] = str(tmp_path / "outputs")
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(plan))
    return study, path


def test_an_edited_report_file_is_drawn_again(smoke, tmp_path):
    """Issue 31: what readers read is verified like every other output: an edited report/summary.csv
    makes the report cell rerun (naming the file) and write it anew."""
    assert smoke["code"] == 0, smoke["log"]
    study, path = _copy(smoke, tmp_path)
    summary = study / "report" / "summary.csv"
    original = summary.read_text()
    summary.write_text(original.replace("0.", "0.9", 5))
    out = io.StringIO()
    assert batch.main(path, workers=2, out=out, estimate=False) == 0, out.getvalue()
    log = out.getvalue()
    assert "rerun    report: report/summary.csv changed since it ran" in log and "done     report" in log, log
    assert summary.read_text() == original


def test_a_rerun_refuses_a_result_table_sealed_again(smoke, tmp_path):
    """Issue 31: re-sealed result rows (test_acc 0.99) make the obtain cell rerun; the rerun refuses them
    (the chain's ledger), the cell fails naming the file, and what reads it is not run."""
    assert smoke["code"] == 0, smoke["log"]
    study, path = _copy(smoke, tmp_path)
    f = next((study / "obtain" / "products" / "reset" / "seed0").glob("*/results.parquet"))
    table = pd.read_parquet(f)
    table["test_acc"] = 0.99
    write_parquet(f, table)
    out = io.StringIO()
    assert batch.main(path, workers=2, out=out, estimate=False) == 1
    log = out.getvalue()
    assert "failed:  1" in log and "    obtain/products/seed0: " in log and "round 0's row is not the row" in log, log
    assert "transfer/products__movies/seed0: " in log.split("not run:")[1]
