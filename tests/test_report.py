import itertools
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from ltnb import plots, report


def synthetic_rows(seeds=(0, 1, 2)):
    rng = np.random.default_rng(0)
    rows = []
    for dom, strat, seed, r in itertools.product(["products", "movies"], ["reset", "random"], seeds, range(4)):
        rows.append(dict(stage="obtain", source=dom, target=dom, domain=dom, pair=dom, seed=seed, strategy=strat,
                         round=r, sparsity=1 - 0.65 ** r, val_acc=0.7 + rng.normal(0, .01),
                         test_acc=0.8 - 0.02 * r * (strat == "random") + rng.normal(0, .01),
                         best_epoch=1, epochs_run=2, seconds=1.0, settings_hash="h"))
    for strat, seed, r in itertools.product(["masks-reset", "masks-random"], seeds, range(4)):
        rows.append(dict(stage="transfer", source="products", target="movies", domain="movies", pair="products->movies",
                         seed=seed, strategy=strat, round=r, sparsity=1 - 0.65 ** r, val_acc=0.7,
                         test_acc=0.75 + rng.normal(0, .01), best_epoch=1, epochs_run=2, seconds=1.0, settings_hash="h"))
    return pd.DataFrame(rows)


def test_summary_matches_pandas_by_hand():
    rows = synthetic_rows()
    s = report.summarize(rows)
    sel = rows[(rows.pair == "movies") & (rows.strategy == "random") & (rows["round"] == 2)]
    got = s[(s.pair == "movies") & (s.strategy == "random") & (s["round"] == 2)].iloc[0]
    assert got.test_acc_mean == pytest.approx(sel.test_acc.mean())
    assert got.test_acc_std == pytest.approx(np.std(sel.test_acc.values, ddof=1))  # sample std over seeds
    assert got.n == 3 and got.sparsity == pytest.approx(1 - 0.65 ** 2)
    one = report.summarize(rows[rows.seed == 0])
    assert (one.test_acc_std == 0).all()


def test_tick_labels_are_readable_sparsities():
    assert [report.sparsity_label(1 - 0.65 ** r) for r in (0, 1, 2, 5, 8, 10, 11, 15)] == \
        ["0", "35", "58", "88", "96.8", "98.7", "99.1", "99.84"]


def test_figures_and_table(tmp_path):
    s = report.summarize(synthetic_rows())
    curves = report.transfer_curves(s)
    assert set(curves.series) == {"MASKS-RESET", "MASKS-RANDOM", "TICKET-TARGET"}
    obtain = report.obtain_curves(s)
    assert set(obtain.series) == {"FULL-MODEL", "TICKET-RESET", "TICKET-RANDOM"}
    for name, chart in (("f3", report.figure3(s)), ("f4", report.figure4(s))):
        png, svg = plots.save(chart, tmp_path / name)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        root = ET.parse(svg).getroot()
        assert root.tag.endswith("svg")
        assert "TICKET-RANDOM" in svg.read_text() or name == "f4"
    wide = report.table(s)
    assert wide.loc[("obtain", "movies", "random")].iloc[0].count("±") == 1
    assert list(wide.columns)[:3] == ["r0 (0%)", "r1 (35%)", "r2 (58%)"]


def test_one_setting_keeps_the_main_settings_and_says_what_it_left_out():
    rows = synthetic_rows()
    other = rows[(rows.stage == "obtain") & (rows.pair == "movies")].head(5).assign(settings_hash="old")
    said = []
    kept = report.one_setting(pd.concat([rows, other]), log=said.append)
    assert set(kept.settings_hash) == {"h"} and len(kept) == len(rows)
    assert len(said) == 1 and "old (5 rows)" in said[0]
