"""ltnb.phase on synthetic result tables whose answer is known; numbers checked against scipy."""
import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ltnb import phase
from ltnb._io import write_parquet

ROUNDS = 12


def sparsity(r):
    return 1 - 0.65 ** r


def planted_rows(*, seeds=5, rounds=ROUNDS, transition=8, drop=0.03, noise=0.004, domain="products",
                 stage="obtain", source=None, rng=0, random_noise_after=None, hash_="h0"):
    """Schema-true result rows of one domain (or pair): reset flat at ~0.80 (its own seed noise); random
    equals reset (same seed, tiny independent noise) before round ``transition`` and then falls by
    ``drop`` per round with ``random_noise_after`` extra spread. ``transition=None``: no transition."""
    rng = np.random.default_rng(rng)
    strategies = phase.COMPARED[stage]
    src = source or domain
    pair = domain if stage == "obtain" else f"{src}->{domain}"
    rows = []
    for seed in range(seeds):
        level = 0.80 + rng.normal(0, 0.01)  # a seed's theta_0 shifts both chains alike (the pairing)
        for r in range(rounds + 1):
            base = level - 0.002 * r
            for s in strategies:
                acc = base + rng.normal(0, noise) if r else base  # round 0: the shared dense network
                if s == strategies[1] and transition is not None and r >= transition:
                    acc -= drop * (r - transition + 1)
                    acc += rng.normal(0, random_noise_after or 0.0)
                rows.append(dict(stage=stage, source=src, target=domain, domain=domain, pair=pair, seed=seed,
                                 strategy=s, round=r, sparsity=sparsity(r), val_acc=acc, test_acc=acc,
                                 best_epoch=1, epochs_run=2, seconds=0.5, settings_hash=hash_))
    return pd.DataFrame(rows)


def write_study(study, *, seeds=4, rounds=ROUNDS):
    """A study folder of synthetic rows laid out as ltnb.lottery writes them: two domains (products with a
    planted transition at round 8, movies without) and a transfer pair products->movies (transition at 6)."""
    parts = [planted_rows(seeds=seeds, rounds=rounds, transition=8, domain="products", drop=0.06,
                          noise=0.003, random_noise_after=0.015),
             planted_rows(seeds=seeds, rounds=rounds, transition=None, domain="movies", rng=1),
             planted_rows(seeds=seeds, rounds=rounds, transition=6, domain="movies", source="products",
                          stage="transfer", rng=2, drop=0.02)]
    for df in parts:
        for (stage, pair, strategy, seed), g in df.groupby(["stage", "pair", "strategy", "seed"]):
            if stage == "obtain":
                folder = study / "obtain" / pair / strategy / f"seed{seed}" / "h0"
            else:
                src, tgt = pair.split("->")
                folder = study / "transfer" / f"{src}__{tgt}" / strategy / f"seed{seed}" / "h0"
            write_parquet(folder / "results.parquet", g.reset_index(drop=True))
    return study


def test_planted_transition_is_found():
    rows = planted_rows(transition=8)
    t = phase.transition(rows)
    assert t.status == "detected", t.message
    assert t.round == 8 and t.sparsity == pytest.approx(sparsity(8))
    assert t.text == "96.8%"
    assert "round 8" in t.message


def test_planted_transition_at_other_rounds_and_in_transfer():
    for k in (3, 10, 12):
        assert phase.transition(planted_rows(transition=k, rng=k)).round == k
    tr = planted_rows(transition=5, stage="transfer", source="books", domain="movies")
    t = phase.transition(tr)
    assert (t.reset, t.random, t.pair, t.round) == ("masks-reset", "masks-random", "books->movies", 5)


def test_no_transition_is_reported_as_not_detected():
    t = phase.transition(planted_rows(transition=None))
    assert t.status == "not detected" and t.round is None and t.sparsity is None
    assert t.text == "not detected" and "not significantly positive" in t.message
    # the gap must hold at *every* later round: a gap at a middle round that closes again is no transition
    rows = planted_rows(transition=None)
    mid = (rows.strategy == "random") & rows["round"].between(5, 7)
    rows.loc[mid, "test_acc"] -= 0.05
    t = phase.transition(rows)
    assert t.status == "not detected"
    assert phase.gap_table(rows).set_index("round").loc[6, "significant"]


def test_null_false_positive_rate_is_at_most_alpha():
    hits = sum(phase.transition(planted_rows(transition=None, rng=i, seeds=4)).status == "detected" for i in range(40))
    assert hits <= 4  # expected <= 0.05 * 40 = 2 (Holm controls the family-wise error)


def test_too_few_seeds_gives_a_message_not_a_number():
    t = phase.transition(planted_rows(seeds=2, transition=4))
    assert t.status == "too few seeds" and t.round is None and t.sparsity is None
    assert "at least 3" in t.message and "min_seeds" in t.message and "2 seed(s)" in t.message
    assert t.spread_status == "too few seeds"
    # one seed only (the smoke study): no number, the same message
    one = phase.summary(planted_rows(seeds=1))
    assert one.loc[0, "transition"] == "too few seeds" and np.isnan(one.loc[0, "transition_sparsity"])
    # min_seeds can be lowered to 2 explicitly
    assert phase.transition(planted_rows(seeds=2, transition=4), min_seeds=2).status in ("detected", "not detected")


def test_rounds_with_fewer_seeds_are_left_out_and_said_so():
    rows = planted_rows(seeds=4, transition=6)
    rows = rows[~((rows.seed >= 2) & (rows["round"] >= 11))]  # seeds 2, 3 still running
    t = phase.transition(rows)
    assert t.round == 6 and t.rounds_tested == 10
    assert "rounds 11, 12 left out" in t.message


def test_missing_strategy():
    rows = planted_rows()
    t = phase.transition(rows[rows.strategy == "reset"])
    assert t.status == "missing strategy" and "no random chain" in t.message


def test_gap_numbers_match_scipy():
    rows = planted_rows(seeds=5, transition=6, rng=7)
    g = phase.gap_table(rows, alpha=0.1).set_index("round")
    for r in (3, 9):
        sel = rows[rows["round"] == r]
        a = sel[sel.strategy == "reset"].sort_values("seed").test_acc.to_numpy()
        b = sel[sel.strategy == "random"].sort_values("seed").test_acc.to_numpy()
        res = stats.ttest_rel(a, b, alternative="greater")
        assert g.loc[r, "p"] == pytest.approx(res.pvalue, rel=1e-12)
        assert g.loc[r, "t"] == pytest.approx(res.statistic, rel=1e-12)
        # same as the one-sample test of the gaps, and the CI by hand
        d = a - b
        assert g.loc[r, "p"] == pytest.approx(stats.ttest_1samp(d, 0, alternative="greater").pvalue, rel=1e-12)
        half = stats.t.ppf(0.95, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
        assert (g.loc[r, "ci_lo"], g.loc[r, "ci_hi"]) == (pytest.approx(d.mean() - half), pytest.approx(d.mean() + half))
        assert g.loc[r, "n"] == 5 and g.loc[r, "mean_gap"] == pytest.approx(d.mean())
    assert 0 not in g.index  # the dense round 0 is shared, never tested
    assert list(g.index) == list(range(1, ROUNDS + 1))


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.005, np.nan]
    # sorted: .005*4=.02, .01*3=.03, .03*2=.06, .04*1=.04 -> running max: .02, .03, .06, .06
    assert np.allclose(phase.holm(p)[:4], [0.03, 0.06, 0.06, 0.02])
    assert np.isnan(phase.holm(p)[4])
    assert np.allclose(phase.holm([0.5, 0.9]), [1.0, 1.0])
    assert phase.holm([]).shape == (0,)


def test_identical_gaps_take_the_limit_of_t():
    rows = planted_rows(seeds=3, noise=0.0, transition=None)
    g = phase.gap_table(rows)
    assert (g["p"] == 1.0).all() and not g["significant"].any()


def test_spread_transition():
    rows = planted_rows(seeds=5, transition=8, random_noise_after=0.06, rng=3)
    t = phase.transition(rows, spread_factor=2.0)
    assert t.spread_status == "detected" and t.spread_round == 8, t.spread_message
    r = phase.spread_ratio(rows).set_index("round")
    sel = rows[(rows["round"] == 9) & (rows.strategy == "random")]
    assert r.loc[9, "std_random"] == pytest.approx(np.std(sel.test_acc, ddof=1))
    assert phase.transition(rows, spread_factor=1000).spread_status == "not detected"
    assert phase.transition(planted_rows(transition=None), spread_factor=5).spread_status == "not detected"


def test_summary_of_a_study_folder(tmp_path):
    study = write_study(tmp_path / "study")
    s = phase.summary(study)
    assert list(s.columns) == phase.SUMMARY_COLUMNS
    s = s.set_index("pair")
    assert s.loc["products", "transition"] == "96.8%" and s.loc["products", "transition_round"] == 8
    assert s.loc["movies", "transition"] == "not detected" and np.isnan(s.loc["movies", "transition_sparsity"])
    assert s.loc["products->movies", "transition_round"] == 6
    assert s.loc["products->movies", "reset"] == "masks-reset"
    assert s.loc["products", "spread_transition"] == "96.8%"
    assert (s["seeds"] == 4).all() and s["method"].str.contains("Holm").all()
    from ltnb import results
    assert phase.summary(results.load(study)).equals(phase.summary(study))


def test_several_settings_are_kept_apart_and_bad_input_is_named():
    rows = pd.concat([planted_rows(hash_="aaa"), planted_rows(hash_="bbb", transition=None)])
    sels = phase.selections(rows)
    assert [s.label for s in sels] == ["products [aaa]", "products [bbb]"]
    s = phase.summary(rows)
    assert list(s.transition) == ["96.8%", "not detected"]
    with pytest.raises(ValueError, match="settings_hash"):
        phase.gap_table(rows)
    with pytest.raises(ValueError, match="alpha"):
        phase.transition(planted_rows(), alpha=5)
    with pytest.raises(TypeError, match="study folder or a DataFrame"):
        phase.summary(42)
    assert phase.summary(planted_rows().iloc[:0]).empty
