"""ltnb.analysis.phase on planted tables whose answer is known; the tests against scipy and brute force; the error
rates, power, onset accuracy and interval coverage of the estimators, simulated at the demo's design with
curves shaped like the real ones (both strategies collapse, random first). ``pytest -s`` prints the tables."""
import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from ltnb.analysis import phase
from ltnb.analysis import simulate
from ltnb.base._io import write_parquet

ROUNDS = 12
GAP = phase.COMPARISONS[0]


def sparsity(r):
    return 1 - 0.65 ** r


def planted_rows(*, seeds=5, rounds=ROUNDS, transition=8, reset_collapse=None, drop=0.06, noise=0.004,
                 domain="products", stage="obtain", source=None, rng=0, random_noise_after=None, hash_="h0",
                 reinit=False, test_n=248):
    """Schema-true result rows of one domain (or pair): reset flat at ~0.80 (its own seed level) until
    ``reset_collapse`` (from then on at exactly chance, 50%); random equals reset (same seed, small
    independent noise) before round ``transition`` and then falls by ``drop`` per round, never below
    chance, with ``random_noise_after`` extra spread. ``transition=None``: random behaves like reset.
    ``reinit``: add a reinit chain half-way between reset and random."""
    rng = np.random.default_rng(rng)
    strategies = ("reset", "random") if stage == "obtain" else ("masks-reset", "masks-random")
    src = source or domain
    pair = domain if stage == "obtain" else f"{src}->{domain}"
    rows = []
    for seed in range(seeds):
        level = 0.80 + rng.normal(0, 0.01)  # a seed's draws shift both chains alike (the pairing)
        for r in range(0 if stage == "obtain" else 1, rounds + 1):
            base = level - 0.002 * r
            accs = {}
            for s in strategies:
                acc = base + rng.normal(0, noise) if r else base  # round 0: the shared dense network
                if s == strategies[1] and transition is not None and r >= transition:
                    acc = max(0.5, acc - drop * (r - transition + 1) + rng.normal(0, random_noise_after or 0.0))
                if reset_collapse is not None and r >= reset_collapse:
                    acc = 0.5
                accs[s] = acc
            if reinit:
                accs["reinit"] = (accs[strategies[0]] + accs[strategies[1]]) / 2
            for s, acc in accs.items():
                acc = round(acc * test_n) / test_n
                rows.append(dict(stage=stage, source=src, target=domain, domain=domain, pair=pair, seed=seed,
                                 strategy=s, round=r, sparsity=sparsity(r), val_acc=acc, test_acc=acc, test_n=test_n,
                                 best_epoch=1, epochs_run=2, seconds=0.5, settings_hash=hash_))
    return pd.DataFrame(rows)


def write_study(study, *, seeds=5, rounds=ROUNDS):
    """A study folder of synthetic rows laid out as ltnb.core.lottery writes them: two domains (products: random
    breaks away at round 8 and reset itself is at chance from round 11, as in the demo; movies: no
    difference) and a transfer pair products->movies (random breaks away at round 6)."""
    parts = [planted_rows(seeds=seeds, rounds=rounds, transition=8, reset_collapse=11, domain="products",
                          noise=0.003, random_noise_after=0.015),
             planted_rows(seeds=seeds, rounds=rounds, transition=None, domain="movies", rng=1),
             planted_rows(seeds=seeds, rounds=rounds, transition=6, domain="movies", source="products",
                          stage="transfer", rng=2, drop=0.04)]
    for df in parts:
        for (stage, pair, strategy, seed), g in df.groupby(["stage", "pair", "strategy", "seed"]):
            if stage == "obtain":
                folder = study / "obtain" / pair / strategy / f"seed{seed}" / "h0"
            else:
                src, tgt = pair.split("->")
                folder = study / "transfer" / f"{src}__{tgt}" / strategy / f"seed{seed}" / "h0"
            write_parquet(folder / "results.parquet", g.reset_index(drop=True))
    return study


# ------------------------------------------------------------------------------ the tests against references

@pytest.mark.parametrize("n", [3, 4, 5, 8])
def test_signflip_is_scipys_exact_permutation_test(n):
    rng = np.random.default_rng(n)
    for _ in range(5):
        x = rng.normal(0.01, 0.02, n)
        ref = stats.permutation_test((x,), np.mean, permutation_type="samples", alternative="greater",
                                     n_resamples=np.inf).pvalue
        assert phase.signflip_p(x) == pytest.approx(ref, abs=1e-12)
    xs = rng.normal(0, 1, (3, 4, n))  # vectorised over leading axes, the same numbers
    assert phase.signflip_p(xs).shape == (3, 4)
    assert phase.signflip_p(xs)[1, 2] == pytest.approx(phase.signflip_p(xs[1, 2]))


def test_signflip_monte_carlo_beyond_exact_and_never_zero():
    x = np.random.default_rng(0).normal(0.3, 1, 24)  # 2^24 patterns: Monte Carlo
    ref = stats.permutation_test((x,), np.mean, permutation_type="samples", alternative="greater",
                                 n_resamples=20000, random_state=1).pvalue
    assert phase.signflip_p(x) == pytest.approx(ref, abs=0.01)
    assert phase.signflip_p(np.full(5, 0.04)) == pytest.approx(1 / 32)
    assert phase.signflip_p(np.zeros(5)) == 1.0
    assert phase.smallest_p(5) == 1 / 32 and phase.smallest_p(4) == 1 / 16


def test_t_option_is_scipys_t_test():
    x = np.array([0.01, 0.03, -0.005, 0.02, 0.04])
    assert phase.t_p(x) == pytest.approx(stats.ttest_1samp(x, 0, alternative="greater").pvalue, rel=1e-12)
    assert np.isnan(phase.t_p(np.full(4, 0.02)))  # no spread: undefined, not 0


def test_signflip_interval_inverts_the_test():
    # by hand: 5 seeds at alpha 0.05 -> k = ceil(1.6) - 1 = 1: [smallest, largest] subset mean = [min, max]
    assert phase.signflip_interval([1.0, 2, 3, 4, 5]) == (1.0, 5.0)
    assert phase.interval_level(5, 0.05) == pytest.approx(1 - 2 / 32)
    assert phase.interval_level(6, 0.05) == pytest.approx(1 - 6 / 64)  # k = ceil(3.2) - 1 = 3
    # subset means of 0..5 sorted: 0, 0.5, 1 ({1}, {0, 2}, ...): the third smallest and third largest
    assert phase.signflip_interval(np.arange(6.0)) == (1.0, 4.0)
    assert phase.signflip_interval([1.0, 2, 3, 4]) == (-np.inf, np.inf)  # 4 seeds: no bound at 5%
    rng = np.random.default_rng(3)
    for n in (5, 6, 7):
        for _ in range(20):
            x = rng.normal(0.5, 1, n)
            lo, hi = phase.signflip_interval(x, 0.05)
            # a theta is inside exactly when neither one-sided test of mean = theta rejects (brute force)
            for theta in np.linspace(x.min() - 1, x.max() + 1, 41):
                inside = phase.signflip_p(x - theta) >= 0.05 and phase.signflip_p(theta - x) >= 0.05
                if not (np.isclose(theta, lo) or np.isclose(theta, hi)):
                    assert inside == (lo < theta < hi), (n, theta, lo, hi)
            assert (lo > 0) == (phase.signflip_p(x) < 0.05)


def _maxt_brute(x, use, alpha=None, studentize=True):
    """Westfall-Young step-down max-T written out with loops (rounds x units, no vectorisation). The
    statistic of a flipped round is scipy's one-sample t statistic of the flipped values (the mean with
    ``studentize=False``): the max over rounds of t and of ``S / sqrt(Q)`` order the patterns alike."""
    rounds, n = x.shape
    pats = list(itertools.product((1, -1), repeat=n))

    def stat(s, r):
        v = np.array([si * x[r, i] for i, si in enumerate(s)])
        if not studentize:
            return v.mean()
        with np.errstate(all="ignore"):
            t = stats.ttest_1samp(v, 0.0).statistic
        return np.inf if v.min() > 0 and v.std() < 1e-12 * abs(v.mean()) else -np.inf if np.isnan(t) else t
    idx = [r for r in range(rounds) if use[r]]
    order = sorted(idx, key=lambda r: -stat(pats[0], r))
    adj, prev = {}, 0.0
    for j, r in enumerate(order):
        rest = order[j:]
        obs = stat(pats[0], r)
        q = np.mean([max(stat(s, k) for k in rest) >= obs - 1e-9 * max(1.0, abs(obs)) for s in pats])
        prev = max(prev, q)
        adj[r] = prev
    return np.array([adj.get(r, np.nan) for r in range(rounds)])


def test_maxt_stepdown_against_brute_force():
    rng = np.random.default_rng(5)
    for trial in range(6):
        x = rng.normal(0, 1, (6, 5)) + np.array([0, 0, 0.5, 1.5, 2.5, 0.2])[:, None]
        x[0] *= 8.0  # one round 8x as noisy: the studentized statistic is not set by it
        use = np.array([True, True, True, True, True, trial % 2 == 0])
        got = phase.maxt_stepdown(x, use)
        want = _maxt_brute(x, use)
        assert np.allclose(np.nan_to_num(got, nan=-1), np.nan_to_num(want, nan=-1)), (got, want)
        raw = phase.maxt_stepdown(x, use, studentize=False)
        assert np.allclose(np.nan_to_num(raw, nan=-1), np.nan_to_num(_maxt_brute(x, use, studentize=False), nan=-1))
    # vectorised over leading axes
    xs = rng.normal(0.3, 1, (4, 6, 5))
    assert np.allclose(phase.maxt_stepdown(xs)[2], phase.maxt_stepdown(xs[2]))
    # a round whose values are all 0 takes no part
    z = np.vstack([np.zeros(5), rng.normal(1, 1, 5)])
    assert np.isnan(phase.maxt_stepdown(z)[0]) and np.isfinite(phase.maxt_stepdown(z)[1])
    assert phase.first_significant(np.array([0.2, 0.01, 0.3, 0.02]), 0.05) == 1
    assert phase.first_significant(np.array([0.2, np.nan]), 0.05) == 2


def test_studentized_maxt_is_not_set_by_the_noisiest_round():
    """The issue's example: restaurants at round 14, every seed positive, +4.0 pp (sd 1.0 pp) beside rounds
    8x as noisy: raw means leave it at an adjusted p of about 0.2, the studentized max-T finds it."""
    rng = np.random.default_rng(14)
    x = rng.normal(0, 0.01, (10, 5))
    x[[2, 5, 8]] = rng.normal(0, 0.08, (3, 5))
    x[7] = np.array([0.04, 0.03, 0.05, 0.045, 0.035])
    assert phase.maxt_stepdown(x)[7] < 0.05
    assert phase.maxt_stepdown(x, studentize=False)[7] > 0.05


def test_informative_rounds_are_invariant_to_swapping_a_and_b_in_one_seed():
    """The issue's counterexample: a at chance in seeds {0, 1, 2}, b in {0, 1, 3}: swapping a and b in seed 2
    alone must not change whether the round takes part (the exact test needs that invariance)."""
    n = np.full((1, 5, 1), 248.0)
    a = np.full((1, 5, 1), 0.75)
    b = np.full((1, 5, 1), 0.75)
    a[0, [0, 1, 2], 0] = 0.5
    b[0, [0, 1, 3], 0] = 0.5
    a2, b2 = a.copy(), b.copy()
    a2[0, 2], b2[0, 2] = b[0, 2], a[0, 2]
    assert phase.informative_rounds(a, b, n, n) == phase.informative_rounds(a2, b2, n, n)
    rng = np.random.default_rng(3)
    for _ in range(50):
        A = np.where(rng.random((4, 5, 2)) < 0.5, 0.5, 0.72)
        B = np.where(rng.random((4, 5, 2)) < 0.5, 0.5, 0.72)
        swap = rng.random((1, 5, 1)) < 0.5
        N = np.full(A.shape, 248.0)
        assert np.array_equal(phase.informative_rounds(A, B, N, N),
                              phase.informative_rounds(np.where(swap, B, A), np.where(swap, A, B), N, N))
    # every chain of both at chance: not informative; one strategy entirely at chance, the other not: informative
    assert not phase.informative_rounds(np.full((1, 5, 1), 0.5), np.full((1, 5, 1), 0.5), n, n)[0]
    assert phase.informative_rounds(np.full((1, 5, 1), 0.75), np.full((1, 5, 1), 0.5), n, n)[0]


def test_collapse_round_by_hand():
    # start 0.80, midpoint 0.65; first below at round 3 (0.60): 2 + (0.78 - 0.65) / (0.78 - 0.60)
    r, status = phase.collapse_round([0.80, 0.80, 0.78, 0.60, 0.50], n=248)
    assert status == "collapsed" and r == pytest.approx(2 + 0.13 / 0.18)
    # a dip of one round does not make a collapse: the isotonic fit pools it (scipy's fit, by hand)
    y = [0.80, 0.62, 0.80, 0.80, 0.50]
    fit = optimize.isotonic_regression(y, increasing=False).x
    assert fit[1] > 0.65
    r, status = phase.collapse_round(y, n=248)
    k = int(np.argmax(fit < (fit[0] + 0.5) / 2))
    assert status == "collapsed" and r == pytest.approx(k - 1 + (fit[k - 1] - (fit[0] + 0.5) / 2) / (fit[k - 1] - fit[k]))
    assert r > 3
    # never below the midpoint: censored at the last round; at chance from the start: none
    assert phase.collapse_round([0.8, 0.79, 0.7, 0.68], [1, 2, 3, 4], n=248) == (4.0, "censored")
    assert np.isnan(phase.collapse_round([0.51, 0.5, 0.5], n=248)[0])
    # raising a chain's later accuracies can only delay its collapse (monotone in the data)
    base = np.array([0.75, 0.76, 0.74, 0.70, 0.62, 0.55, 0.50])
    assert phase.collapse_round(base + np.r_[0, [0.01] * 6], n=248)[0] >= phase.collapse_round(base, n=248)[0]


def test_collapse_points_of_rows_and_their_test():
    rows = planted_rows(transition=6, reset_collapse=10, rng=4)
    pts = phase.collapse_points(rows)
    assert len(pts) == 10 and set(pts["status"]) == {"collapsed"}
    reset = pts[pts.strategy == "reset"].set_index("seed")["collapse_round"]
    random = pts[pts.strategy == "random"].set_index("seed")["collapse_round"]
    assert reset.between(9, 10).all() and random.between(6, 9).all()
    c = phase.collapse_test(pts, GAP)
    d = (reset - random).to_numpy()
    assert c.diff == pytest.approx(d.mean()) and c.p == pytest.approx(phase.signflip_p(d)) and c.p == 1 / 32
    assert (c.lo, c.hi) == pytest.approx(phase.signflip_interval(d)) and c.level == pytest.approx(0.9375)
    s = pts.loc[pts.strategy == "reset", "collapse_sparsity"]
    assert s.between(sparsity(9), sparsity(10)).all()  # interpolated on log density between the rounds
    # reset that never falls: censored, the interval's upper end is open
    c2 = phase.collapse_test(phase.collapse_points(planted_rows(transition=6, rng=4)), GAP)
    assert c2.a_censored == 5 and c2.hi == np.inf and c2.lo > 0


# ------------------------------------------------------------------------------ planted studies

def test_onset_is_found_although_reset_collapses_too():
    """The demo's shape: random breaks away at round 8, reset holds and then falls to chance itself at
    round 11, so at the last rounds both are at chance. The old "significant from here to the end" said
    "not detected"; the onset over informative rounds finds round 8, per domain."""
    rows = planted_rows(transition=8, reset_collapse=11)
    t = phase.transition(rows, GAP)
    assert t.status == "detected" and t.round == 8 and t.text == "96.8%", t.message
    assert t.chance_last.startswith("random 5/5") and "reset 5/5" in t.chance_last
    g = phase.gap_table(rows, GAP).set_index("round")
    assert not g.loc[11:, "informative"].any() and g.loc[:10, "informative"].all()
    assert t.rounds_tested == 10 and set(t.significant_rounds) >= {8, 9, 10}
    assert t.collapse.p == 1 / 32 and t.collapse.diff > 1
    tr = planted_rows(transition=5, reset_collapse=11, stage="transfer", source="books", domain="movies")
    t = phase.transition(tr)
    assert (t.a, t.b, t.pair, t.round) == ("masks-reset", "masks-random", "books->movies", 5)


def test_no_difference_is_not_detected_and_says_what_it_could_detect():
    t = phase.transition(planted_rows(transition=None, reset_collapse=10), GAP)
    assert t.status == "not detected" and t.round is None and t.sparsity is None
    assert "no round where reset significantly beats random" in t.message
    assert "pp with 80% power" in t.message and 0 < t.mde < 0.05
    assert abs(t.collapse.diff) < 0.5


def test_too_few_seeds_says_how_many_are_needed():
    t = phase.transition(planted_rows(seeds=4, transition=4), GAP)
    assert t.status == "too few seeds" and t.round is None
    assert "0.0625" in t.message and "at least 5 seeds" in t.message and t.mde == float("inf")
    one = phase.summary(planted_rows(seeds=1))
    assert set(one["transition"]) == {"too few seeds"} and one["transition_sparsity"].isna().all()


def test_gap_table_numbers_by_hand():
    rows = planted_rows(seeds=5, transition=6, rng=7)
    g = phase.gap_table(rows, GAP, alpha=0.1).set_index("round")
    per_round = {}
    for r in range(1, ROUNDS + 1):
        sel = rows[rows["round"] == r]
        per_round[r] = (sel[sel.strategy == "reset"].sort_values("seed").test_acc.to_numpy()
                        - sel[sel.strategy == "random"].sort_values("seed").test_acc.to_numpy())
    for r in (3, 9):
        d = per_round[r]
        assert g.loc[r, "mean_gap"] == pytest.approx(d.mean()) and g.loc[r, "n"] == 5
        assert g.loc[r, "p"] == pytest.approx(stats.permutation_test(
            (d,), np.mean, permutation_type="samples", alternative="greater", n_resamples=np.inf).pvalue)
        assert (g.loc[r, "ci_lo"], g.loc[r, "ci_hi"]) == pytest.approx(phase.signflip_interval(d, 0.1))
    x = np.array([per_round[r] for r in range(1, ROUNDS + 1)])
    assert np.allclose(g["p_adj"].to_numpy(), _maxt_brute(x, np.ones(ROUNDS, bool)))
    assert 0 not in g.index and list(g.index) == list(range(1, ROUNDS + 1))


def test_control_splits_the_gap_into_values_and_history():
    rows = planted_rows(transition=7, reinit=True)
    tables = {c.name: phase.gap_table(rows, c).set_index("round")["mean_gap"] for c in phase.COMPARISONS[:3]}
    assert np.allclose(tables["gap"], tables["values"] + tables["history"])  # exact at every round
    s = phase.summary(rows)
    assert list(s["comparison"]) == ["gap", "values", "history"]
    assert s.set_index("comparison").loc["gap", "transition_round"] == 7


def test_pooled_treats_the_seed_as_the_unit():
    rows = pd.concat([planted_rows(transition=8, reset_collapse=11, domain=d, rng=i) for i, d in enumerate("abc")])
    pooled = next(s for s in phase.selections(rows, pooled=True) if s.pair == phase.POOLED)
    part = phase.select(rows, pooled)
    g = phase.gap_table(part, GAP).set_index("round")
    r9 = part[part["round"] == 9]
    per_seed = (r9[r9.strategy == "reset"].groupby("seed").test_acc.mean()
                - r9[r9.strategy == "random"].groupby("seed").test_acc.mean())
    assert g.loc[9, "n"] == 5 and g.loc[9, "units"] == 15
    assert g.loc[9, "p"] == pytest.approx(stats.permutation_test(
        (per_seed.to_numpy(),), np.mean, permutation_type="samples", alternative="greater", n_resamples=np.inf).pvalue)
    t = phase.transition(part, GAP)
    assert t.pair == phase.POOLED and t.round == 8 and t.seeds == 5 and t.collapse.n == 5


def test_minimal_detectable_effect_uses_informative_rounds_only():
    assert phase.mde_factor(4, 0.05) == float("inf") and phase.mde_factor(5, 0.05) < 10
    k = phase.mde_factor(5, 0.05, "t")  # against scipy's noncentral t directly
    assert stats.nct.sf(stats.t.ppf(0.95, 4), 4, k * np.sqrt(5)) == pytest.approx(0.8, abs=1e-6)
    k = phase.mde_factor(8, 0.05)  # the sign-flip MDE has 80% power on fresh draws
    assert phase.power(k, 1.0, 8, seed=99) == pytest.approx(0.8, abs=0.02)
    assert phase.power(0.0, 1.0, 8, seed=3) <= 0.05 + 0.01
    # rounds where both strategies sit at exactly chance have no spread: they must not deflate the noise
    rows = planted_rows(transition=None, reset_collapse=9, noise=0.01, rng=2)
    g = phase.gap_table(rows, GAP)
    sigma = g.loc[g["informative"], "std_gap"].median()
    t = phase.transition(rows, GAP)
    assert t.sigma == pytest.approx(sigma) and sigma > g["std_gap"].median()
    assert t.mde == pytest.approx(phase.mde_factor(5, 0.05) * sigma)


def test_instability_keeps_its_power_when_the_means_differ():
    """Random spreads 3x more than reset at the same rounds: the centred test finds it whether or not
    random's mean also drops 10 points (the old swap test lost it: 0.22 -> 0.06)."""
    rng = np.random.default_rng(1)
    lines = []
    for gap in (0.0, 0.10):
        a = rng.normal(0.70, 0.02, (400, 4, 8))  # studies, rounds, seeds
        b = rng.normal(0.70 - gap, 0.06, (400, 4, 8))
        p = phase.maxt_stepdown(phase.spread_deviations(a, b))
        hit = (np.nanmin(p, axis=-1) < 0.05).mean()
        b0 = rng.normal(0.70 - gap, 0.02, (400, 4, 8))
        null = (np.nanmin(phase.maxt_stepdown(phase.spread_deviations(a, b0)), axis=-1) < 0.05).mean()
        lines.append(f"gap {100 * gap:.0f} pp: power {hit:.2f} (3x spread), false positives {null:.3f}")
        assert hit >= 0.5 and null <= 0.06
    print("\ninstability, 8 seeds x 4 rounds, 400 studies:\n  " + "\n  ".join(lines))
    t = phase.transition(planted_rows(seeds=8, transition=8, random_noise_after=0.08, rng=3, drop=0.0), GAP)
    assert t.instability_status == "detected" and t.instability_round >= 8
    assert phase.transition(planted_rows(seeds=8, transition=8, rng=3), GAP).instability_status == "not detected"


def test_chains_at_chance_by_the_binomial_test():
    rows = planted_rows(seeds=3, transition=None)
    rows.loc[(rows.strategy == "random") & (rows["round"] == ROUNDS), "test_acc"] = [0.5, 0.54, 0.56]
    c = phase.chance_table(rows).set_index(["strategy", "round"])
    for acc, expect in ((0.5, True), (0.54, True), (0.56, False)):  # 0.56 (139/248) is above chance at 5%
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
    assert s.loc["products", "collapse_p"] == 1 / 32 and s.loc["products", "collapse_ci_lo"] > 0
    assert s.loc["movies", "transition"] == "not detected" and np.isnan(s.loc["movies", "transition_sparsity"])
    assert s.loc["movies", "mde_pp"] > 0
    assert s.loc["products->movies", "transition_round"] == 6 and s.loc["products->movies", "a"] == "masks-reset"
    assert phase.POOLED in s.index and (s["seeds"] == 5).all() and s["method"].str.contains("max-T").all()
    from ltnb.analysis import results
    assert phase.summary(results.load(study)).equals(phase.summary(study))


def test_several_settings_are_kept_apart_and_bad_input_is_named():
    rows = pd.concat([planted_rows(hash_="aaa"), planted_rows(hash_="bbb", transition=None)])
    assert [s.label for s in phase.selections(rows)] == ["products [aaa]", "products [bbb]"]
    assert list(phase.summary(rows).transition) == ["96.8%", "not detected"]
    with pytest.raises(ValueError, match="settings_hash"):
        phase.transition(rows, GAP)
    with pytest.raises(ValueError, match="alpha"):
        phase.transition(planted_rows(), GAP, alpha=5)
    with pytest.raises(ValueError, match="test"):
        phase.transition(planted_rows(), GAP, test="z")
    with pytest.raises(TypeError, match="study folder or a DataFrame"):
        phase.summary(42)
    assert phase.summary(planted_rows().iloc[:0]).empty


def test_the_simulations_array_path_is_the_rows_path():
    """The simulations call the array functions directly (fast); on one planted study, as result rows, the
    public path (``phase.summary``) makes exactly the same calls: onsets and collapse differences."""
    shape = dict(domains=3, seeds=5, rounds=15, rng=11)
    rows = simulate.simulate_rows(**shape)
    a, b, _ = simulate.simulate_curves(1, **shape)
    calls = simulate.simulate_calls(a, b)
    s = phase.summary(rows).set_index("pair")
    for d in range(3):
        k = int(calls["onset_domain"][0, d])  # an index into rounds 1..15; 15: none
        assert np.array_equal([s.loc[f"d{d}", "transition_round"]], [k + 1.0 if k < 15 else np.nan], equal_nan=True)
        diff = np.nanmean(calls["collapse_a"][0, d] - calls["collapse_b"][0, d])
        assert s.loc[f"d{d}", "collapse_diff"] == pytest.approx(diff)
    assert s.loc[phase.POOLED, "transition_round"] == int(calls["onset_pooled"][0]) + 1


# ------------------------------------------------------------------------------ simulated at the demo's design

DEMO = dict(domains=3, seeds=5, rounds=15, sd=0.03, seed_sd=0.01)  # 3 domains x 5 seeds x 16 rounds (0..15)
STUDIES = 200
_TABLE: dict[str, dict] = {}


def _simulate(name, *, stage="obtain", **shape):
    kw = {**DEMO, **shape}
    domains = kw.pop("domains")
    a, b, expected = simulate.simulate_curves(STUDIES, domains=domains, rng=sum(map(ord, name)), **kw)
    calls = simulate.simulate_calls(a, b, stage=stage)
    R = kw["rounds"]
    planted = simulate.planted_onset(expected)
    od, op = calls["onset_domain"], calls["onset_pooled"]
    truth = shape.get("collapse_a", 12.0) - shape.get("collapse_b", 8.0)
    row = dict(onset_domain=(od < R).mean(), onset_pooled=(op < R).mean(),
               within1_domain=(np.abs(od - planted) <= 1)[od < R].mean() if (od < R).any() else np.nan,
               within1_pooled=(np.abs(op - planted[:, 0]) <= 1)[op < R].mean() if (op < R).any() else np.nan,
               within2_domain=(np.abs(od - planted) <= 2)[od < R].mean() if (od < R).any() else np.nan,
               early_domain=((od < planted - 1) & (od < R)).mean(),
               collapse_domain=(calls["collapse_p_domain"] < 0.05).mean(),
               collapse_pooled=(calls["collapse_p_pooled"] < 0.05).mean(),
               coverage=((calls["collapse_lo_domain"] <= truth) & (truth <= calls["collapse_hi_domain"])).mean())
    _TABLE[name] = row
    return row


NULLS = {
    "null: both collapse at round 10": dict(collapse_a=10.0, collapse_b=10.0),
    "null: both collapse at round 14": dict(collapse_a=14.0, collapse_b=14.0),
    "null: round 10, seeds correlated (sd 3 pp)": dict(collapse_a=10.0, collapse_b=10.0, seed_sd=0.03),
    "null: transfer, 2 pairs, round 9": dict(collapse_a=9.0, collapse_b=9.0, domains=2, stage="transfer"),
}
PLANTED = {
    "random at 8, reset at 12 (noise 3 pp)": dict(),
    "random at 8, reset at 12 (noise 2 pp)": dict(sd=0.02),
    "random at 8, reset at 12 (noise 4 pp)": dict(sd=0.04),
    "random at 8, reset at 12, seeds correlated": dict(seed_sd=0.03),
    "random at 7, reset never (past round 15)": dict(collapse_a=40.0, collapse_b=7.0),
    "gradual: width 1.5 rounds": dict(width=1.5),
    "transfer: 2 pairs, random at 6, reset at 10": dict(collapse_a=10.0, collapse_b=6.0, domains=2, stage="transfer"),
}


@pytest.mark.parametrize("name", list(NULLS))
def test_null_studies_false_positive_rates(name):
    """Both strategies collapse at the same round (the same planted curve): how often is an onset or a
    collapse difference called? Per domain and pooled, at most alpha."""
    row = _simulate(name, **NULLS[name])
    print(f"\n{name}: onset called per domain {row['onset_domain']:.3f}, pooled {row['onset_pooled']:.3f}; collapse "
          f"difference called per domain {row['collapse_domain']:.3f}, pooled {row['collapse_pooled']:.3f}; interval "
          f"coverage {row['coverage']:.3f}")
    for k in ("onset_domain", "onset_pooled", "collapse_domain", "collapse_pooled"):
        assert row[k] <= 0.05 + 0.02, (k, row)  # alpha, plus Monte Carlo error of 200 studies
    assert row["coverage"] >= 0.9375 - 0.03


@pytest.mark.parametrize("name", list(PLANTED))
def test_planted_collapses_are_found(name):
    """Random collapses four (or more) rounds before reset, both within the rounds or reset never: the
    onset is called per domain and pooled, near the planted onset (the first round where the expected gap
    reaches 2 points), and the collapse difference is found, with intervals that cover it."""
    row = _simulate(name, **PLANTED[name])
    print(f"\n{name}: onset called per domain {row['onset_domain']:.3f} (within one round {row['within1_domain']:.2f}, "
          f"two {row['within2_domain']:.2f}), "
          f"pooled {row['onset_pooled']:.3f} ({row['within1_pooled']:.2f}); collapse difference found per domain "
          f"{row['collapse_domain']:.3f}, pooled {row['collapse_pooled']:.3f}; coverage {row['coverage']:.3f}")
    assert row["onset_pooled"] >= row["onset_domain"] - 0.01 and row["collapse_pooled"] >= row["collapse_domain"] - 0.01
    if name.startswith("random at 8, reset at 12 (noise 3 pp)") or name.startswith("random at 8, reset at 12 (noise 2"):
        # at the demo's noise (a chain's sd about 3 pp): >= 90% called and >= 80% within two rounds of the planted
        # start. The studentized max-T calls a steep collapse 1-2 rounds after it (within one round: 45% at 3 pp;
        # with raw means, before 2026-12, >= 80%): the price of not letting the noisiest rounds set the null
        # maximum (tests/test_simulations.py: a 3-pp gap over quiet rounds, 87% called against 7.5%). The onset
        # stays an upper confidence bound: called more than one round early in at most 5% of domains.
        assert row["onset_domain"] >= 0.90 and row["within2_domain"] >= 0.80 and row["collapse_domain"] >= 0.90
        assert row["early_domain"] <= 0.05
    else:
        assert row["onset_domain"] >= 0.85 and row["collapse_domain"] >= 0.90
    if "never" not in name:
        assert row["coverage"] >= 0.9375 - 0.04


def test_print_the_simulation_table():
    """The table the README shows (run with -s after the simulations above)."""
    if not _TABLE:
        pytest.skip("run with the simulation tests")
    print("\n| scenario | onset called, per domain | within 1 round | onset called, pooled | within 1 round | "
          "collapse difference called, per domain | pooled | interval coverage (93.75% nominal) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in _TABLE.items():
        cov = "-" if "never" in name else f"{r['coverage']:.3f}"
        w_d, w_p = ("-", "-") if name.startswith("null") else (f"{r['within1_domain']:.2f}", f"{r['within1_pooled']:.2f}")
        print(f"| {name} | {r['onset_domain']:.3f} | {w_d} | {r['onset_pooled']:.3f} | "
              f"{w_p} | {r['collapse_domain']:.3f} | {r['collapse_pooled']:.3f} | {cov} |")
