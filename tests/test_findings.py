"""The verdicts on the paper's four findings: planted tables whose verdict is known (each side reachable),
numbers by hand, calibration by simulation, knife edges, the convergence gate and the criteria hash."""
import re

import numpy as np
import pandas as pd
import pytest

from ltnb import findings, phase


def curve(r, level, collapse, width=0.4):
    """A chain's expected accuracy: ``level`` until it collapses to chance around round ``collapse``."""
    return 0.5 + (level - 0.5) / (1 + np.exp(-(collapse - r) / width))


def rows_for(*, domains=("a", "b"), seeds=5, rounds=15, reset_gain=0.0, reset_collapse=12.0, random_collapse=8.0,
             random_collapses=None, random_early=0.0, transfer_drop=None, masks_gap_high=0.0, noise=0.004, rng=0,
             converged=None, test_n=2000):
    """Result rows: dense at ~0.70 per seed; reset ``reset_gain`` above it up to 90% sparsity, collapsing
    around ``reset_collapse``; random like reset (minus ``random_early`` below 90%) but collapsing around
    ``random_collapse`` (or the per-domain ``random_collapses``); reinit half-way. With ``transfer_drop``:
    a pair a->b whose masks-reset is that much below b's reset chain, and masks-random ``masks_gap_high``
    below masks-reset above 90%. ``converged``: the rows' ``converged`` value. ``test_n``: test texts per
    domain (2000: one example is 0.05 points, far from any verdict's edge unless a test puts it there)."""
    rng = np.random.default_rng(rng)
    out = []

    def add(**kw):
        out.append(dict(test_n=test_n, val_acc=kw["test_acc"], best_epoch=1, epochs_run=2, seconds=0.0,
                        settings_hash="h", **({} if converged is None else {"converged": converged}), **kw))

    for d in domains:
        rc = (random_collapses or {}).get(d, random_collapse)
        for s in range(seeds):
            level = 0.70 + rng.normal(0, 0.01)
            for r in range(rounds + 1):
                sp = 1 - 0.65 ** r
                if r == 0:
                    reset = random = level
                else:
                    gain = reset_gain if sp <= 0.9 else 0.0
                    reset = curve(r, level + gain, reset_collapse) + rng.normal(0, noise)
                    random = curve(r, level + gain - (random_early if sp <= 0.9 else 0.0), rc) + rng.normal(0, noise)
                for strategy, acc in (("reset", reset), ("random", random), ("reinit", (reset + random) / 2)):
                    add(stage="obtain", source=d, target=d, domain=d, pair=d, seed=s, strategy=strategy, round=r,
                        sparsity=sp, test_acc=round(acc * test_n) / test_n)
    if transfer_drop is not None:
        target = pd.DataFrame(out)
        target = target[(target.pair == domains[1]) & (target.strategy == "reset")].set_index(["seed", "round"])
        for s in range(seeds):
            for r in range(1, rounds + 1):
                sp = 1 - 0.65 ** r
                mr = target.loc[(s, r), "test_acc"] - transfer_drop + rng.normal(0, noise)
                mrand = mr - (masks_gap_high if sp > 0.9 else 0.0) + rng.normal(0, noise)
                for strategy, acc in (("masks-reset", mr), ("masks-random", mrand)):
                    add(stage="transfer", source=domains[0], target=domains[1], domain=domains[1],
                        pair=f"{domains[0]}->{domains[1]}", seed=s, strategy=strategy, round=r, sparsity=sp,
                        test_acc=round(acc * test_n) / test_n)
    return pd.DataFrame(out)


def get(table, finding):
    return table.set_index("finding").loc[finding]


def verdict(table, finding):
    return get(table, finding)["verdict"]


def test_finding_1_both_sides_and_its_interval_by_hand():
    held = findings.verdicts(rows_for(reset_gain=0.03))
    f = get(held, "1")
    assert f["verdict"] == "held" and f["p"] == pytest.approx(1 / 32) and f["n"] == "5 seeds x 2 domains"
    assert f["estimate"] == pytest.approx(3.0, abs=0.4) and f["ci_level"] == pytest.approx(0.9375)
    assert verdict(findings.verdicts(rows_for(reset_gain=-0.03)), "1") == "not held"  # worse than dense
    assert verdict(findings.verdicts(rows_for(reset_gain=0.0, noise=0.02)), "1") == "not held"  # inside +-2 pp
    assert verdict(findings.verdicts(rows_for(reset_gain=0.01, noise=0.03, rng=3)), "1") == "inconclusive"
    rows = rows_for(reset_gain=0.01, noise=0.01, rng=3)
    f = get(findings.verdicts(rows), "1")
    ob = rows[rows.strategy == "reset"]
    dense = ob[ob["round"] == 0].set_index(["pair", "seed"])["test_acc"]
    low = ob[(ob["round"] >= 1) & (ob.sparsity <= 0.9)].groupby(["pair", "seed"])["test_acc"].mean() - dense
    seed_means = low.groupby("seed").mean().to_numpy()
    assert (f["ci_lo"], f["ci_hi"]) == (pytest.approx(100 * seed_means.min()), pytest.approx(100 * seed_means.max()))


def test_finding_2_one_estimand_both_sides():
    held = findings.verdicts(rows_for())  # alike below 90%, random collapses 4 rounds before reset
    f = get(held, "2")
    assert f["verdict"] == "held", f["detail"]
    assert f["unit"] == "rounds" and f["estimate"] == pytest.approx(4.0, abs=0.3) and f["p"] == pytest.approx(1 / 32)
    assert f["ci_lo"] <= f["estimate"] <= f["ci_hi"] and re.search(r"onset \(max-T\) (95.1|96.8)%", f["detail"])
    assert verdict(findings.verdicts(rows_for(random_early=0.05)), "2") == "not held"  # apart below 90%
    # random collapses with reset: the difference is within +-1 round (with noise enough that one test
    # example more or less cannot make a consistent sign: with none, any shift is "significant")
    same = findings.verdicts(rows_for(random_collapse=12.0, noise=0.02, rng=5))
    assert verdict(same, "2") == "not held" and abs(get(same, "2")["estimate"]) < 0.5, get(same, "2")["detail"]
    assert verdict(findings.verdicts(rows_for(random_collapse=12.0, reset_collapse=8.0)), "2") == "not held"
    # reset never collapses within the rounds: censored, the interval's upper end is open, still held
    never = get(findings.verdicts(rows_for(reset_collapse=40.0)), "2")
    assert never["verdict"] == "held" and never["ci_hi"] == np.inf and "never fell" in never["detail"]


def test_finding_3_transfer_both_sides():
    small = findings.verdicts(rows_for(transfer_drop=0.025, masks_gap_high=0.05))
    assert verdict(small, "3a") == "held" and verdict(small, "3b") == "held"
    big = findings.verdicts(rows_for(transfer_drop=0.10, masks_gap_high=-0.03))
    assert verdict(big, "3a") == "not held" and verdict(big, "3b") == "not held"
    none = findings.verdicts(rows_for(transfer_drop=0.0, masks_gap_high=0.0, noise=0.015, rng=2))
    assert verdict(none, "3a") == "not held" and verdict(none, "3b") == "not held"  # no drop, no increase
    missing = findings.verdicts(rows_for()).set_index("finding")
    assert missing.loc["3a", "verdict"] == "no data" and "no transfer rows" in missing.loc["3a", "detail"]


def test_finding_4_both_sides_and_the_permutation_test_by_hand():
    differ = findings.verdicts(rows_for(domains=("a", "b", "c"), random_collapses={"a": 6.0, "b": 10.0},
                                        reset_collapse=14.0))
    f = get(differ, "4")
    assert f["verdict"] == "held" and f["estimate"] == pytest.approx(4.0, abs=0.3)
    assert f["p"] == pytest.approx(6 / 6 ** 5)  # the 6 joint relabellings of every seed give the same spread
    # with 2 domains a joint swap of all seeds is one of 2^5 relabellings: p >= 2/32, never below 0.05
    two = get(findings.verdicts(rows_for(random_collapses={"a": 6.0, "b": 10.0}, reset_collapse=14.0)), "4")
    assert two["p"] == pytest.approx(2 / 32) and two["verdict"] == "inconclusive"
    same = findings.verdicts(rows_for(random_collapse=8.0))
    assert verdict(same, "4") == "not held"  # every pair of domains within +-1 round
    # by hand, 2 seeds x 2 domains, 4 relabellings (swap within each seed): the domain means differ by
    # 1, 0, 0, 1 -> p = 2/4; for [[3, 1], [2, 2.5]] by 0.75, 1.25, 1.25, 0.75 -> every one >= 0.75: p = 1
    assert findings.domain_permutation_p(np.array([[1.0, 0.0], [1.0, 0.0]])) == pytest.approx(0.5)
    assert findings.domain_permutation_p(np.array([[3.0, 1.0], [2.0, 2.5]])) == pytest.approx(1.0)


def test_finding_4_is_calibrated_when_every_domain_collapses_alike():
    """Identical collapse in every domain, noise like the demo's, seeds correlated across domains: the
    permutation test calls a domain effect at most alpha of the time (the old range-of-estimates rule
    was biased upward)."""
    a, b, _ = phase.simulate_curves(300, domains=3, seeds=5, rounds=15, collapse_a=12.0, collapse_b=8.0,
                                    sd=0.03, seed_sd=0.02, rng=42)
    calls = phase.simulate_calls(a, b)
    cb = np.moveaxis(calls["collapse_b"], 1, 2)  # [studies, seeds, domains]: random's collapse points
    p = np.array([findings.domain_permutation_p(t) for t in cb])
    rate = (p < 0.05).mean()
    a2, b2, _ = phase.simulate_curves(300, domains=3, seeds=5, rounds=15, collapse_a=14.0, collapse_b=8.0,
                                      sd=0.03, rng=43)
    a3, b3, _ = phase.simulate_curves(300, domains=1, seeds=5, rounds=15, collapse_a=14.0, collapse_b=10.0,
                                      sd=0.03, rng=44)
    shifted = np.concatenate([b2[:, :2], b3], axis=1)  # domains 1-2 collapse at 8, domain 3 at 10
    cb2 = np.moveaxis(phase.simulate_calls(np.concatenate([a2[:, :2], a3], axis=1), shifted)["collapse_b"], 1, 2)
    power = (np.array([findings.domain_permutation_p(t) for t in cb2]) < 0.05).mean()
    print(f"\nfinding 4: 'held' under identical collapse {rate:.3f} (alpha 0.05); power for a 2-round difference "
          f"in one of 3 domains {power:.2f}")
    assert rate <= 0.05 + 0.02 and power >= 0.8


def test_a_verdict_on_a_knife_edge_is_inconclusive():
    rows = rows_for(reset_gain=0.02, noise=0.0005, rng=1, test_n=248)
    low = (rows.strategy == "reset") & (rows["round"] >= 1) & (rows.sparsity <= 0.9)
    # make seed 0's advantage over its dense round +0.1 pp in both domains: positive, but one example is 0.4 pp
    for d in ("a", "b"):
        m = low & (rows.seed == 0) & (rows.pair == d)
        dense = rows.loc[(rows.strategy == "reset") & (rows["round"] == 0) & (rows.seed == 0) & (rows.pair == d),
                         "test_acc"].iloc[0]
        rows.loc[m, "test_acc"] = dense + 0.001
    as_is = findings.verdicts(rows, robust_examples=0)
    assert verdict(as_is, "1") == "held"
    f = get(findings.verdicts(rows), "1")
    assert f["verdict"] == "inconclusive" and f["detail"].startswith("knife edge: held as measured")


def test_not_converged_trainings_are_not_assessable():
    f = get(findings.verdicts(rows_for(reset_gain=0.03, converged=False)), "1")
    assert f["verdict"] == findings.NOT_CONVERGED and "0% of the" in f["detail"] and "as measured: held" in f["detail"]
    assert verdict(findings.verdicts(rows_for(reset_gain=0.03, converged=True)), "1") == "held"


def test_criteria_hash_names_the_criteria(monkeypatch):
    t = findings.verdicts(rows_for())
    assert t["criteria_hash"].nunique() == 1 and re.fullmatch(r"[0-9a-f]{16}", t["criteria_hash"].iloc[0])
    assert list(t.columns) == findings.COLUMNS
    before = findings.criteria_hash()
    monkeypatch.setitem(findings.CRITERIA, "1", findings.CRITERIA["1"] + " (changed)")
    assert findings.criteria_hash() != before


def test_markdown_and_bad_input():
    t = findings.verdicts(rows_for())
    md = findings.markdown(t)
    assert md.count("\n") == 1 + len(t) and "**held**" in md and "(93.8%)" in md
    with pytest.raises(ValueError, match="several settings"):
        findings.verdicts(pd.concat([rows_for(), rows_for().assign(settings_hash="x")]))


# ------------------------------------------------------------------------------ the demo's verdicts, perturbed

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"
DEMO_ROWS_3EPOCHS = FIXTURES / "demo_rows_3epochs.csv.gz"
DEMO_ROWS = FIXTURES.parent.parent / "ltnb" / "analysis" / "data" / "demo_rows.csv.gz"  # shipped with ltnb


def _one_example_moves(rows: pd.DataFrame) -> dict:
    """Every accuracy moved by one test example: all up, all down, and 8 draws of random signs."""
    rng = np.random.default_rng(2026)
    moves = {"all up": np.ones(len(rows)), "all down": -np.ones(len(rows))}
    moves.update({f"random {k}": rng.choice((-1.0, 1.0), len(rows)) for k in range(8)})
    step = 1.0 / rows["test_n"].to_numpy(float)
    return {name: rows.assign(test_acc=rows["test_acc"] + sign * step) for name, sign in moves.items()}


def test_the_3_epoch_demos_verdicts_survive_one_test_example_more_or_less():
    """The 3-epoch demo's result rows (tests/fixtures/demo_rows_3epochs.csv.gz: ``ltnb.results.load`` of a
    fresh clone's ``make study`` with 3 epochs per round, 2026-12-03): moving every accuracy by one test
    example up or down (at random, and all up, and all down) changes no verdict. The same code on another CPU gives chains a little
    apart; a verdict that cannot stand that is reported as inconclusive instead (the knife-edge rule; with
    a check that reaches 1 example instead of 2, 7 of 16 such perturbations changed a verdict here)."""
    rows = pd.read_csv(DEMO_ROWS_3EPOCHS)
    base = findings.verdicts(rows).set_index("finding")["verdict"]
    for name, moved_rows in _one_example_moves(rows).items():
        moved = findings.verdicts(moved_rows).set_index("finding")["verdict"]
        assert moved.equals(base), (name, pd.concat([base, moved], axis=1))
    print("\nthe 3-epoch demo's verdicts, unchanged by one test example more or less: "
          + ", ".join(f"{k} {v}" for k, v in base.items()))


def test_the_converged_demos_verdicts_and_how_far_they_move():
    """The converged demo's result rows (ltnb/analysis/data/demo_rows.csv.gz, shipped with ltnb: ``ltnb.results.load`` of a fresh
    clone's ``make study``, 15 epochs, the best kept, 2026-12-03; docs/results.md reports them): the verdicts
    docs/results.md states, recomputed from the rows. Moved by one test example, no verdict turns into its
    opposite (held <-> not held). A weaker guarantee than on the 3-epoch rows, measured, not chosen: finding
    1's "not held" sits near the knife-edge rule's boundary (the monotone 2-example check does not cover the
    wider spread of random-sign moves), and 2 of the 8 random draws make it "inconclusive" (knife edge)."""
    rows = pd.read_csv(DEMO_ROWS)
    base = findings.verdicts(rows).set_index("finding")["verdict"]
    assert base.to_dict() == {"1": "not held", "2": "inconclusive", "3a": "not held", "3b": "inconclusive",
                              "4": "inconclusive"}
    opposite = {"held": "not held", "not held": "held"}
    changed = []
    for name, moved_rows in _one_example_moves(rows).items():
        moved = findings.verdicts(moved_rows).set_index("finding")["verdict"]
        for f, v in moved.items():
            assert v != opposite.get(base[f]), (name, f, base[f], v)
            if v != base[f]:
                changed.append((name, f, v))
    assert all(v == "inconclusive" for _, _, v in changed)
    print(f"\nthe converged demo's verdicts moved by one test example: {len(changed)} of "
          f"{10 * len(base)} (draw, finding) became inconclusive: {changed}")
