import itertools
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from ltnb.analysis import plots, report, results
from test_phase import write_study


def synthetic_rows(seeds=(0, 1, 2)):
    rng = np.random.default_rng(0)
    rows = []
    for dom, strat, seed, r in itertools.product(["products", "movies"], ["reset", "random", "reinit"], seeds, range(4)):
        rows.append(dict(stage="obtain", source=dom, target=dom, domain=dom, pair=dom, seed=seed, strategy=strat,
                         round=r, sparsity=1 - 0.65 ** r, val_acc=0.7 + rng.normal(0, .01),
                         test_acc=0.8 - 0.02 * r * (strat == "random") + rng.normal(0, .01), test_n=248,
                         best_epoch=1, epochs_run=2, seconds=1.0, settings_hash="h"))
    for strat, seed, r in itertools.product(["masks-reset", "masks-random"], seeds, range(1, 4)):
        rows.append(dict(stage="transfer", source="products", target="movies", domain="movies", pair="products->movies",
                         seed=seed, strategy=strat, round=r, sparsity=1 - 0.65 ** r, val_acc=0.7,
                         test_acc=0.75 + rng.normal(0, .01), test_n=248, best_epoch=1, epochs_run=2, seconds=1.0,
                         settings_hash="h"))
    return pd.DataFrame(rows)


def test_summary_matches_pandas_by_hand():
    rows = synthetic_rows()
    s = results.summarize(rows)
    sel = rows[(rows.pair == "movies") & (rows.strategy == "random") & (rows["round"] == 2)]
    got = s[(s.pair == "movies") & (s.strategy == "random") & (s["round"] == 2)].iloc[0]
    assert got.test_acc_mean == pytest.approx(sel.test_acc.mean())
    assert got.test_acc_std == pytest.approx(np.std(sel.test_acc.values, ddof=1))  # sample std over seeds
    assert got.n == 3 and got.sparsity == pytest.approx(1 - 0.65 ** 2)
    one = results.summarize(rows[rows.seed == 0])
    assert one.test_acc_std.isna().all()  # one seed: no spread (drawn as no band)


def test_tick_labels_are_readable_sparsities():
    assert [plots.sparsity_label(1 - 0.65 ** r) for r in (0, 1, 2, 5, 8, 10, 11, 15)] == \
        ["0", "35", "58", "88", "96.8", "98.7", "99.1", "99.84"]


def test_figures_and_table(tmp_path):
    rows = synthetic_rows()
    curves = plots.transfer_curves(rows)
    assert set(curves.series) == {"MASKS-RESET", "MASKS-RANDOM", "TICKET-TARGET"}
    target = curves[curves.series == "TICKET-TARGET"]
    assert set(target.seed) == {0, 1, 2} and (target["round"] >= 1).all()  # same seeds, pruned rounds
    obtain = plots.obtain_curves(rows)
    assert set(obtain.series) == {"FULL-MODEL", "TICKET-RESET", "TICKET-RANDOM", "TICKET-REINIT"}
    full = obtain[obtain.series == "FULL-MODEL"]
    assert len(full) == 2 * 3 * 4  # one dense round 0 per domain and seed, drawn at every round
    for name, chart in (("f3", plots.figure3(rows)), ("f4", plots.figure4(rows))):
        png, svg = plots.save(chart, tmp_path / name)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        root = ET.parse(svg).getroot()
        assert root.tag.endswith("svg")
        assert "TICKET-REINIT" in svg.read_text() or name == "f4"
    wide = report.table(rows)
    assert wide.loc[("obtain", "movies", "random")].iloc[0].count("±") == 1
    assert list(wide.columns)[:3] == ["r0 (0%)", "r1 (35%)", "r2 (58%)"]
    assert wide.loc[("transfer", "products->movies", "masks-reset")].iloc[0] == "-"  # no round 0: a dash, not NaN


def test_settings_groups_are_reported_apart():
    rows = synthetic_rows()
    other = rows.assign(settings_hash="old")
    groups = report.settings_groups(pd.concat([rows, other.head(10)]),
                                    {"h": {"init_a": 2.236, "lr": 0.001}, "old": {"init_a": 0.0, "lr": 0.001}})
    assert [g.settings_hash for g in groups] == ["h", "old"]
    assert groups[0].label == "init_a=2.236" and groups[1].label == "init_a=0"
    assert len(groups[1].rows) == 10


def test_report_of_a_study_folder(tmp_path):
    study = write_study(tmp_path / "study")
    written = report.build(study, log=lambda *_: None)
    html = written["index"].read_text()
    assert "The paper's findings" in html and "Phase transition (obtain), measured" in html
    assert "NaN" not in html and "Traceback" not in html and "http://" not in html.replace("http://www.w3.org", "")
    f = pd.read_csv(study / "report" / "findings.csv")
    assert list(f["finding"].astype(str)) == ["1", "2", "3a", "3b", "4"]
    assert set(f["verdict"]) <= {"held", "not held", "inconclusive", "no data"}
    ph = pd.read_csv(study / "report" / "phase_transition.csv")
    assert "96.8%" in set(ph.loc[(ph.pair == "products") & (ph.comparison == "gap"), "transition"])


def test_a_scale_study_gets_its_training_size_section(tmp_path):
    """Chains of two training sizes (two settings hashes whose settings.json say train_size): the report
    writes report/scale.csv, the figure, and a section; a study of one size has none."""
    from ltnb.base._io import write_json, write_parquet
    from ltnb.analysis import simulate

    study = tmp_path / "scale"
    late = simulate.slow_decline()
    for h, size, gap in (("s500", 500, 0.0), ("s2000", 2000, 0.06)):
        d = simulate.draw(late, late - simulate.ramp(8, gap), studies=1, rng=size)
        rows = simulate.rows_of(d, 0).assign(settings_hash=h)
        for (pair, strategy, seed), g in rows.groupby(["pair", "strategy", "seed"]):
            folder = study / "obtain" / pair / strategy / f"seed{seed}" / h
            write_parquet(folder / "results.parquet", g.reset_index(drop=True))
            write_json(folder / "settings.json", {"settings": {"train_size": size, "seed": int(seed)}})
    written = report.build(study, log=lambda *_: None)
    t = pd.read_csv(study / "report" / "scale.csv")
    assert sorted(t["train_size"].unique()) == [500, 2000]
    assert "Training-set size" in written["index"].read_text() and (study / "report" / "scale.svg").exists()
    assert t.loc[(t.pair == "pooled") & (t.train_size == 2000), "verdict"].iloc[0] == "held"
