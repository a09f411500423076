"""ltnb.phase on planted tables whose answer is known; the tests against scipy; the error rates and
power of the transition estimators, simulated (500 null studies, planted effects, correlated seeds)."""
import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ltnb import phase
from ltnb._io import write_parquet

ROUNDS = 12
GAP = phase.COMPARISONS[0]


def sparsity(r):
    return 1 - 0.65 ** r


def planted_rows(*, seeds=5, rounds=ROUNDS, transition=8, drop=0.03, noise=0.004, domain="products",
                 stage="obtain", source=None, rng=0, random_noise_after=None, hash_="h0", reinit=False):
    """Schema-true result rows of one domain (or pair): reset flat at ~0.80 (its own seed noise); random
    equals reset (same seed, small independent noise) before round ``transition`` and then falls by
    ``drop`` per round with ``random_noise_after`` extra spread. ``transition=None``: no transition.
    ``reinit``: add a reinit chain that sits half-way between reset and random."""
    rng = np.random.default_rng(rng)
    strategies = ("reset", "random") if stage == "obtain" else ("masks-reset", "masks-random")
    src = source or domain
    pair = domain if stage == "obtain" else f"{src}->{domain}"
    rows = []
    for seed in range(seeds):
        level = 0.80 + rng.normal(0, 0.01)  # a seed's theta_0 shifts both chains alike (the pairing)
        for r in range(rounds + 1):
            base = level - 0.002 * r
            accs = {}
            for s in strategies:
                acc = base + rng.normal(0, noise) if r else base  # round 0: the shared dense network
                if s == strategies[1] and transition is not None and r >= transition:
                    acc -= drop * (r - transition + 1)
                    acc += rng.normal(0, random_noise_after or 0.0)
                accs[s] = acc
            if reinit:
                accs["reinit"] = (accs[strategies[0]] + accs[strategies[1]]) / 2
            for s, acc in accs.items():
                rows.append(dict(stage=stage, source=src, target=domain, domain=domain, pair=pair, seed=seed,
                                 strategy=s, round=r, sparsity=sparsity(r), val_acc=acc, test_acc=acc, test_n=248,
                                 best_epoch=1, epochs_run=2, seconds=0.5, settings_hash=hash_))
    return pd.DataFrame(rows)


def write_study(study, *, seeds=5, rounds=ROUNDS):
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


# ------------------------------------------------------------------------------ the tests themselves

@pytest.mark.parametrize("n", [3, 4, 5, 8])
def test_signflip_is_scipys_exact_permutation_test(n):
    rng = np.random.default_rng(n)
    for _ in range(5):
        x = rng.normal(0.01, 0.02, n)
        ref = stats.permutation_test((x,), np.mean, permutation_type="samples", alternative="greater",
                                     n_resamples=np.inf).pvalue
        assert phase.signflip_p(x) == pytest.approx(ref, abs=1e-12)
    # vectorised over leading axes, the same numbers
    xs = rng.normal(0, 1, (3, 4, n))
    assert phase.signflip_p(xs).shape == (3, 4)
    assert phase.signflip_p(xs)[1, 2] == pytest.approx(phase.signflip_p(xs[1, 2]))


def test_signflip_monte_carlo_beyond_exact_and_never_zero():
    x = np.random.default_rng(0).normal(0.3, 1, 24)  # 2^24 patterns: Monte Carlo
    ref = stats.permutation_test((x,), np.mean, permutation_type="samples", alternative="greater",
                                 n_resamples=20000, random_state=1).pvalue
    assert phase.signflip_p(x) == pytest.approx(ref, abs=0.01)
    # identical positive differences: the smallest p the design allows, 2^-n, never 0 (nor a t limit)
    assert phase.signflip_p(np.full(5, 0.04)) == pytest.approx(1 / 32)
    assert phase.signflip_p(np.zeros(5)) == 1.0
    assert phase.smallest_p(5) == 1 / 32 and phase.smallest_p(4) == 1 / 16


def test_t_option_is_scipys_t_test():
    x = np.array([0.01, 0.03, -0.005, 0.02, 0.04])
    assert phase.t_p(x) == pytest.approx(stats.ttest_1samp(x, 0, alternative="greater").pvalue, rel=1e-12)
    assert np.isnan(phase.t_p(np.full(4, 0.02)))  # no spread: undefined, not 0


def test_fixed_sequence_by_hand():
    # tested from the last round down: .01 ok, .03 ok, .04 ok, .2 stops -> the run starts at index 1
    assert phase.fixed_sequence(np.array([0.2, 0.04, 0.03, 0.01]), 0.05) == 1
    assert phase.fixed_sequence(np.array([0.01, 0.01, 0.2]), 0.05) == 3  # the last round fails: none
    assert phase.fixed_sequence(np.array([0.01, np.nan, 0.01]), 0.05) == 2  # NaN stops the sequence
    assert phase.fixed_sequence(np.array([0.01, 0.02]), 0.05) == 0
    assert list(phase.fixed_sequence(np.array([[0.2, 0.01], [0.01, 0.01]]), 0.05)) == [1, 0]


def test_planted_transition_is_found_per_domain():
    for k in (3, 8, 12):
        t = phase.transition(planted_rows(transition=k, rng=k), GAP)
        assert t.status == "detected" and t.round == k, t.message
        assert t.sparsity == pytest.approx(sparsity(k))
    t = phase.transition(planted_rows(transition=8), GAP)
    assert t.text == "96.8%" and "round 8" in t.message
    tr = planted_rows(transition=5, stage="transfer", source="books", domain="movies")
    t = phase.transition(tr)
    assert (t.a, t.b, t.pair, t.round) == ("masks-reset", "masks-random", "books->movies", 5)


def test_no_transition_and_a_gap_that_closes_again():
    t = phase.transition(planted_rows(transition=None), GAP)
    assert t.status == "not detected" and t.round is None and t.sparsity is None
    assert "not significantly positive" in t.message and "pp at a round (80% power)" in t.message
    rows = planted_rows(transition=None)
    mid = (rows.strategy == "random") & rows["round"].between(5, 7)
    rows.loc[mid, "test_acc"] -= 0.05
    assert phase.transition(rows, GAP).status == "not detected"
    g = phase.gap_table(rows, GAP).set_index("round")
    assert g.loc[6, "significant"] and not g.loc[6, "in_sequence"]


def test_too_few_seeds_says_how_many_are_needed():
    t = phase.transition(planted_rows(seeds=4, transition=4), GAP)
    assert t.status == "too few seeds" and t.round is None
    assert "0.0625" in t.message and "at least 5 seeds" in t.message and t.mde == float("inf")
    assert phase.transition(planted_rows(seeds=4, transition=4), GAP, test="t").status == "detected"
    one = phase.summary(planted_rows(seeds=1))
    assert set(one["transition"]) == {"too few seeds"} and one["transition_sparsity"].isna().all()


def test_gap_table_numbers_by_hand():
    rows = planted_rows(seeds=5, transition=6, rng=7)
    g = phase.gap_table(rows, GAP, alpha=0.1).set_index("round")
    for r in (3, 9):
        sel = rows[rows["round"] == r]
        d = (sel[sel.strategy == "reset"].sort_values("seed").test_acc.to_numpy()
             - sel[sel.strategy == "random"].sort_values("seed").test_acc.to_numpy())
        assert g.loc[r, "mean_gap"] == pytest.approx(d.mean()) and g.loc[r, "n"] == 5
        assert g.loc[r, "p"] == pytest.approx(stats.permutation_test(
            (d,), np.mean, permutation_type="samples", alternative="greater", n_resamples=np.inf).pvalue)
        half = stats.t.ppf(0.95, 4) * d.std(ddof=1) / np.sqrt(5)
        assert (g.loc[r, "ci_lo"], g.loc[r, "ci_hi"]) == (pytest.approx(d.mean() - half), pytest.approx(d.mean() + half))
    assert 0 not in g.index and list(g.index) == list(range(1, ROUNDS + 1))


def test_control_splits_the_gap_into_values_and_history():
    rows = planted_rows(transition=7, reinit=True)
    tables = {c.name: phase.gap_table(rows, c).set_index("round")["mean_gap"] for c in phase.COMPARISONS[:3]}
    assert np.allclose(tables["gap"], tables["values"] + tables["history"])  # exact at every round
    s = phase.summary(rows)
    assert list(s["comparison"]) == ["gap", "values", "history"]
    assert set(s["transition"]) <= {"96.8%", "95.1%", "98.7%", "97.9%", "99.1%", "99.4%", "not detected"}


def test_pooled_treats_the_seed_as_the_unit():
    rows = pd.concat([planted_rows(transition=8, domain=d, rng=i) for i, d in enumerate(("a", "b", "c"))])
    sels = phase.selections(rows, pooled=True)
    pooled = next(s for s in sels if s.pair == phase.POOLED)
    part = phase.select(rows, pooled)
    g = phase.gap_table(part, GAP).set_index("round")
    r9 = part[part["round"] == 9]
    per_seed = (r9[r9.strategy == "reset"].groupby("seed").test_acc.sum()
                - r9[r9.strategy == "random"].groupby("seed").test_acc.sum())
    assert g.loc[9, "n"] == 5 and g.loc[9, "units"] == 15
    assert g.loc[9, "p"] == pytest.approx(stats.permutation_test(
        (per_seed.to_numpy(),), np.mean, permutation_type="samples", alternative="greater", n_resamples=np.inf).pvalue)
    t = phase.transition(part, GAP)
    assert t.pair == phase.POOLED and t.round == 8 and t.seeds == 5


def test_effect_size_transition_and_its_interval():
    means = np.array([[0.0, 0.01, -0.01], [0.03, 0.025, 0.02], [0.05, 0.04, 0.06]])  # rounds x seeds
    assert phase.effect_index(means, 0.02)[0] == 1  # rounds 1 and 2 have mean >= 2 pp
    assert phase.effect_index(means, 0.045)[0] == 2
    assert phase.effect_index(means, 0.2)[0] == 3  # never: one past the end
    w = phase.bootstrap_weights(3, 500, seed=1)
    assert w.shape == (500, 3) and (w.sum(axis=1) == 3).all()
    boot = phase.effect_index(means, 0.02, w)
    assert set(np.unique(boot)) <= {1, 2}  # resamples can only move it within what the seeds allow
    t = phase.transition(planted_rows(transition=8, drop=0.06), GAP, delta=0.02)
    assert t.effect_status == "detected" and t.effect_round == 8
    assert t.effect_ci_lo <= t.effect_sparsity <= t.effect_ci_hi


def test_minimal_detectable_effect():
    assert phase.mde_factor(4, 0.05) == float("inf") and phase.mde_factor(5, 0.05) < 10
    k = phase.mde_factor(5, 0.05, "t")  # against scipy's noncentral t directly
    crit = stats.t.ppf(0.95, 4)
    assert stats.nct.sf(crit, 4, k * np.sqrt(5)) == pytest.approx(0.8, abs=1e-6)
    # the sign-flip MDE has 80% power on fresh draws (not the draws it was found with)
    k = phase.mde_factor(8, 0.05)
    assert phase.power(k, 1.0, 8, seed=99) == pytest.approx(0.8, abs=0.02)
    assert phase.power(0.0, 1.0, 8, seed=3) <= 0.05 + 0.01  # no effect: at most alpha


def test_instability_needs_more_spread_at_every_sparser_round():
    noisy = planted_rows(seeds=8, transition=8, random_noise_after=0.08, rng=3, drop=0.0)
    t = phase.transition(noisy, GAP)
    assert t.instability_status == "detected" and t.instability_round >= 8
    calm = phase.transition(planted_rows(seeds=8, transition=8, rng=3), GAP)
    assert calm.instability_status == "not detected"


def test_instability_test_error_rate_under_the_null():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (500, 5))
    b = rng.normal(0, 1, (500, 5))
    p = phase._brown_forsythe_p(a, b)
    assert (p < 0.05).mean() <= 0.05 + 0.02


def test_chains_at_chance_by_the_binomial_test():
    rows = planted_rows(seeds=3, transition=None)
    rows.loc[(rows.strategy == "random") & (rows["round"] == ROUNDS), "test_acc"] = [0.5, 0.54, 0.56]
    c = phase.chance_table(rows).set_index(["strategy", "round"])
    # 0.5 and 0.54 of 248 are not above chance at 5%; 0.56 (139/248) is
    for acc, expect in ((0.5, True), (0.54, True), (0.56, False)):
        k = round(acc * 248)
        assert (stats.binomtest(k, 248, 0.5, alternative="greater").pvalue >= 0.05) == expect
    assert c.loc[("random", ROUNDS), "at_chance"] == 2 and c.loc[("reset", ROUNDS), "at_chance"] == 0
    assert phase.chance_table(rows.drop(columns="test_n"))["at_chance"].isna().all()  # unknown test size: unknown


def test_summary_of_a_study_folder(tmp_path):
    study = write_study(tmp_path / "study")
    s = phase.summary(study)
    assert list(s.columns) == phase.SUMMARY_COLUMNS
    s = s[s.comparison == "gap"].set_index("pair")
    assert s.loc["products", "transition"] == "96.8%" and s.loc["products", "transition_round"] == 8
    assert s.loc["movies", "transition"] == "not detected" and np.isnan(s.loc["movies", "transition_sparsity"])
    assert s.loc["movies", "mde_pp"] > 0
    assert s.loc["products->movies", "transition_round"] == 6 and s.loc["products->movies", "a"] == "masks-reset"
    assert phase.POOLED in s.index and (s["seeds"] == 5).all() and s["method"].str.contains("fixed-sequence").all()
    from ltnb import results
    assert phase.summary(results.load(study)).equals(phase.summary(study))


def test_several_settings_are_kept_apart_and_bad_input_is_named():
    rows = pd.concat([planted_rows(hash_="aaa"), planted_rows(hash_="bbb", transition=None)])
    assert [s.label for s in phase.selections(rows)] == ["products [aaa]", "products [bbb]"]
    s = phase.summary(rows)
    assert list(s.transition) == ["96.8%", "not detected"]
    with pytest.raises(ValueError, match="settings_hash"):
        phase.transition(rows, GAP)
    with pytest.raises(ValueError, match="alpha"):
        phase.transition(planted_rows(), GAP, alpha=5)
    with pytest.raises(ValueError, match="test"):
        phase.transition(planted_rows(), GAP, test="z")
    with pytest.raises(TypeError, match="study folder or a DataFrame"):
        phase.summary(42)
    assert phase.summary(planted_rows().iloc[:0]).empty


# ------------------------------------------------------------------------------ simulated error rates

DEMO = dict(domains=3, seeds=5, rounds=15, sigma=0.04)  # the demo's design; sigma: a domain-seed's noise


@pytest.mark.parametrize("seed_sd", [0.0, 0.03])
def test_500_null_studies_false_positive_rate_at_most_alpha(seed_sd):
    """No effect anywhere: how often does each estimator claim a transition? Per domain (each domain's
    own family) and pooled, with seeds independent and with seeds correlated across domains."""
    sim = phase.simulate_transitions(500, effect=0.0, seed_sd=seed_sd, rng_seed=11, **DEMO)
    per_domain = (sim["per_domain"] < DEMO["rounds"]).mean()
    pooled = (sim["pooled"] < DEMO["rounds"]).mean()
    print(f"\nnull, seed_sd={seed_sd}: false-positive rate per domain {per_domain:.3f}, pooled {pooled:.3f} (alpha 0.05)")
    assert per_domain <= 0.05 and pooled <= 0.05


def test_naive_pooling_exceeds_alpha_when_seeds_are_correlated():
    """Why the pooled test resamples seeds: treating the 15 domain-seed pairs as independent units (here
    with the t-test, its fast form) claims transitions that are not there."""
    naive = phase.simulate_transitions(500, effect=0.0, seed_sd=0.03, rng_seed=12, test="t", naive_pooled=True, **DEMO)
    rate = (naive["pooled"] < DEMO["rounds"]).mean()
    print(f"\nnull, correlated seeds, naive pooled t-test: false-positive rate {rate:.3f}")
    assert rate > 0.10


@pytest.mark.parametrize("seed_sd", [0.0, 0.03])
def test_planted_transitions_are_found_with_correlated_seeds(seed_sd):
    """A 10-point gap from round 9 on: the transition is found at round 9 (index 8) in most studies,
    and no study puts it before the planted round more often than alpha allows."""
    sim = phase.simulate_transitions(300, effect=0.10, from_round=9, seed_sd=seed_sd, rng_seed=13, **DEMO)
    pooled = sim["pooled"]
    assert (pooled == 8).mean() >= 0.8
    assert (pooled < 8).mean() <= 0.05
    assert ((sim["per_domain"] < 8).mean()) <= 0.05


def test_power_at_the_demo_design_is_printed():
    """The chance that the demo's design finds a 5-point gap that holds from round 9 to the end, per
    domain and pooled (5 seeds x 3 domains), for noise levels around the demo's."""
    lines = []
    for sigma in (0.02, 0.04, 0.06):
        sim = phase.simulate_transitions(300, effect=0.05, from_round=9, rng_seed=14, **{**DEMO, "sigma": sigma})
        per_domain = (sim["per_domain"] <= 8).mean()
        pooled = (sim["pooled"] <= 8).mean()
        found_any = (sim["pooled"] < DEMO["rounds"]).mean()
        lines.append(f"sigma {100 * sigma:.0f} pp: per domain {per_domain:.2f}, pooled {pooled:.2f} "
                     f"(pooled finds some transition {found_any:.2f})")
        assert pooled >= per_domain - 0.05  # pooling over domains never costs power here
    print("\npower for a 5-point gap from round 9 (5 seeds x 3 domains, 15 rounds):\n  " + "\n  ".join(lines))
    assert lines
