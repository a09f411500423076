"""The verdicts on the paper's four findings, on planted tables whose verdict is known."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ltnb import findings


def rows_for(*, domains=("a", "b"), seeds=5, rounds=12, reset_gain=0.0, transition=None, drop=0.05,
             random_early=0.0, transfer_drop=None, masks_gap_high=0.0, transitions=None, noise=0.004, rng=0):
    """Result rows: reset at 0.70 + ``reset_gain`` after round 0 (dense at 0.70); random equal to reset
    (+ ``random_early`` below 90%) until ``transition`` (or the per-domain ``transitions``), then
    ``drop`` lower; reinit half-way. With ``transfer_drop``: a pair a->b whose masks-reset is that much
    below b's reset chain, and masks-random ``masks_gap_high`` below masks-reset above 90% sparsity."""
    rng = np.random.default_rng(rng)
    out = []

    def add(**kw):
        out.append(dict(test_n=248, val_acc=kw["test_acc"], best_epoch=1, epochs_run=1, seconds=0.0,
                        settings_hash="h", **kw))

    for d in domains:
        k = (transitions or {}).get(d, transition)
        for s in range(seeds):
            level = 0.70 + rng.normal(0, 0.01)
            for r in range(rounds + 1):
                sp = 1 - 0.65 ** r
                reset = level + (reset_gain if r else 0.0) + (rng.normal(0, noise) if r else 0.0)
                random = reset + (rng.normal(0, noise) if r else 0.0)
                if r and sp <= 0.9:
                    random -= random_early
                if k is not None and r >= k:
                    random -= drop
                for strategy, acc in (("reset", reset), ("random", random), ("reinit", (reset + random) / 2)):
                    add(stage="obtain", source=d, target=d, domain=d, pair=d, seed=s, strategy=strategy, round=r,
                        sparsity=sp, test_acc=acc)
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
                        pair=f"{domains[0]}->{domains[1]}", seed=s, strategy=strategy, round=r, sparsity=sp, test_acc=acc)
    return pd.DataFrame(out)


def verdict(table, finding):
    return table.set_index("finding").loc[finding, "verdict"]


def test_finding_1_reset_beats_the_dense_network():
    held = findings.verdicts(rows_for(reset_gain=0.03))
    assert verdict(held, "1") == "held"
    f = held.set_index("finding").loc["1"]
    assert f["estimate"] == pytest.approx(3.0, abs=0.3) and f["p"] == pytest.approx(1 / 32) and f["n"] == "5 seeds x 2 domains"
    assert verdict(findings.verdicts(rows_for(reset_gain=-0.03)), "1") == "not held"
    assert verdict(findings.verdicts(rows_for(reset_gain=0.0, noise=0.02)), "1") in ("inconclusive", "not held")


def test_finding_1_interval_by_hand():
    rows = rows_for(reset_gain=0.01, noise=0.01, rng=3)
    f = findings.verdicts(rows).set_index("finding").loc["1"]
    ob = rows[(rows.strategy == "reset")]
    dense = ob[ob["round"] == 0].set_index(["pair", "seed"])["test_acc"]
    low = ob[(ob["round"] >= 1) & (ob.sparsity <= 0.9)].groupby(["pair", "seed"])["test_acc"].mean() - dense
    seed_means = low.groupby("seed").mean().to_numpy()
    ci = stats.t.interval(0.95, 4, loc=seed_means.mean(), scale=stats.sem(seed_means))
    assert (f["ci_lo"], f["ci_hi"]) == (pytest.approx(100 * ci[0]), pytest.approx(100 * ci[1]))


def test_finding_2_alike_then_reset_wins():
    held = findings.verdicts(rows_for(transition=8))  # 96.8% sparsity
    assert verdict(held, "2") == "held", held.set_index("finding").loc["2", "detail"]
    assert held.set_index("finding").loc["2", "estimate"] == pytest.approx(96.8, abs=0.1)
    early = findings.verdicts(rows_for(transition=2))  # random already worse at 58%
    assert verdict(early, "2") == "not held"
    apart = findings.verdicts(rows_for(transition=8, random_early=0.05))  # not alike below 90%
    assert verdict(apart, "2") == "not held"
    never = findings.verdicts(rows_for(transition=None, noise=0.004))
    assert verdict(never, "2") in ("not held", "inconclusive")


def test_finding_3_transfer():
    small = findings.verdicts(rows_for(transfer_drop=0.02, masks_gap_high=0.05))
    assert verdict(small, "3a") == "held" and verdict(small, "3b") == "held"
    big = findings.verdicts(rows_for(transfer_drop=0.10, masks_gap_high=-0.02))
    assert verdict(big, "3a") == "not held" and verdict(big, "3b") == "not held"
    none = findings.verdicts(rows_for()).set_index("finding")
    assert none.loc["3a", "verdict"] == "no data" and "no transfer rows" in none.loc["3a", "detail"]


def test_finding_4_transition_depends_on_the_domain():
    differ = findings.verdicts(rows_for(transitions={"a": 4, "b": 10}, drop=0.06))
    assert verdict(differ, "4") == "held"
    f = differ.set_index("finding").loc["4"]
    assert f["estimate"] == 6 and "a round 4" in f["detail"] and "b round 10" in f["detail"]
    same = findings.verdicts(rows_for(transition=7, drop=0.06))
    assert verdict(same, "4") == "not held"


def test_markdown_and_bad_input():
    t = findings.verdicts(rows_for(transition=8))
    md = findings.markdown(t)
    assert md.count("\n") == 1 + len(t) and "**held**" in md
    with pytest.raises(ValueError, match="several settings"):
        findings.verdicts(pd.concat([rows_for(), rows_for().assign(settings_hash="x")]))
