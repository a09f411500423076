"""A verdict for each of the paper's four findings, computed from the result rows, never written by hand.

Each finding (docs/protocol.md, "Reported findings") is one estimand with its own test and its own interval,
and a verdict that either side can reach: **held**, **not held** or **inconclusive**. The criteria are
the texts in ``CRITERIA`` below, fixed before any data is seen; every verdict carries
``criteria_hash``, a hash of those texts and of this module's and ``ltnb.phase``'s code, so a verdict
computed under other criteria or other code shows it.

The seed is the unit throughout (a seed's domains or pairs share its draws): per seed, the mean over
its domains or pairs; tests are exact one-sided sign-flip tests (``phase.signflip_p``) and intervals
invert them (``phase.signflip_interval``: the lower bound is above 0 exactly when the test of "> 0" is
significant, the upper below 0 exactly when the test of "< 0" is), labelled with their exact coverage
(5 seeds: 93.75%). "Equivalent within +-m" means the whole interval lies inside (-m, m) (two one-sided
tests at alpha each).

**Knife edges.** A verdict must not hinge on one chain's last digit (the same code and seeds run on
another CPU give accuracies a test example or more apart). Every verdict is recomputed with every
accuracy it reads moved by ``robust_examples`` test examples (default 2) up or down, in every
combination of the groups of rows its statistics are monotone in (reset's dense round, reset's pruned
rounds, random's rounds, ...): the extremes of each monotone statistic under any perturbation of that
size lie at these corners (finding 4's spread across domains is not monotone: its groups are the
domains). If any gives another
verdict, the verdict is **inconclusive**, with why. The reach is 2 examples so that data one example away
from ours get the same verdict: with a reach of 1, data one example towards the robust side of a knife
edge turn an "inconclusive" back (seen on the demo's finding 1). The price: with 248 test texts two
examples are 0.8 points, so a difference must be that far inside a margin to count as inside it. A
finding whose trainings mostly did not converge (``converged``: the rows' column, or ``best_epoch <
epochs_run`` for rows written before it) is **not assessable: not converged**, with the numbers.
"""
from __future__ import annotations

import hashlib
import inspect
import itertools
import math
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np
import pandas as pd

from ltnb.analysis import phase

LOW_SPARSITY = 0.90  # "up to 90% sparsity"
TRANSFER_DROP = 0.05  # "a 3-5% drop": at most 5 points
SAME_ROUND = 1.0  # collapse points within one IMP round of each other count as the same (the design's resolution)
#: the knife-edge check moves every accuracy by this many test examples. Verdicts must not change for data one
#: example away from ours; with a check of reach 1 that cannot hold (data one example towards the robust side
#: undo an "inconclusive"), so the check reaches twice that far.
ROBUST_EXAMPLES = 2
CONVERGED_SHARE = 0.5  # below this share of converged trainings a finding is not assessable
NOT_CONVERGED = "not assessable: not converged"

CRITERIA = {
    "1": "held if the interval of reset - FULL-MODEL lies above 0 (sign-flip, seed = unit); not held if it lies "
         "below 0 or inside (-delta, delta) (no advantage); else inconclusive",
    "2": "held if below 90% sparsity the reset - random gap is equivalent within +-delta AND reset's collapse point "
         "is significantly later than random's; not held if below 90% the gap's interval lies outside +-delta, or "
         "the collapse difference's interval lies below 0 or inside (-1, 1) rounds; else inconclusive",
    "3a": "held if the drop TICKET-TARGET - MASKS-RESET is significantly positive and its interval's upper end is "
          "<= 5 pp; not held if the interval lies below 0, inside (-delta, delta) (no drop) or above 5 pp; else "
          "inconclusive",
    "3b": "held if the increase of (masks-reset - masks-random) above 90% over at or below 90% has its interval "
          "above 0; not held if it lies below 0 or inside (-delta, delta); else inconclusive",
    "4": "held if the collapse points of TICKET-RANDOM differ between domains (permutation test of the between-domain "
         "spread, domain labels permuted within each seed, p < alpha); not held if every pair of domains is "
         "equivalent within +-1 round (intersection-union); else inconclusive",
}

COLUMNS = ["finding", "claim", "criterion", "statistic", "estimate", "ci_lo", "ci_hi", "ci_level", "unit", "p", "n",
           "verdict", "detail", "criteria_hash"]


def criteria_hash() -> str:
    """SHA-256 (16 hex digits) of the criteria texts, the thresholds and the code of this module and of
    ``ltnb.phase``: what a verdict was decided by."""
    from ltnb.analysis import findings as me

    h = hashlib.sha256()
    for k in sorted(CRITERIA):
        h.update(f"{k}\0{CRITERIA[k]}\0".encode())
    h.update(repr((LOW_SPARSITY, TRANSFER_DROP, SAME_ROUND, ROBUST_EXAMPLES, CONVERGED_SHARE)).encode())
    for module in (me, phase):
        h.update(inspect.getsource(module).encode())
    return h.hexdigest()[:16]


@dataclass
class Finding:
    finding: str
    claim: str
    criterion: str
    statistic: str
    estimate: float = float("nan")
    ci_lo: float = float("nan")
    ci_hi: float = float("nan")
    ci_level: float = float("nan")
    unit: str = "pp"
    p: float = float("nan")
    n: str = ""
    verdict: str = "no data"
    detail: str = ""


# ---------------------------------------------------------------------------------- shared pieces

@dataclass(frozen=True)
class SeedStat:
    """A per-unit value summarised with the seed as the unit."""
    estimate: float
    lo: float
    hi: float
    level: float
    p: float  # one-sided, "greater than 0"
    seeds: int


def seed_stat(values: pd.DataFrame, alpha: float) -> SeedStat:
    """``values``: columns seed, value (one per domain-seed or pair-seed unit). Per seed the mean over
    its units; the estimate is the mean of those; exact sign-flip p of "> 0" and the exact interval."""
    per_seed = values.groupby("seed")["value"].mean().to_numpy(float)
    n = len(per_seed)
    if n == 0:
        return SeedStat(*(float("nan"),) * 5, 0)
    lo, hi = phase.signflip_interval(per_seed, alpha) if n >= 2 else (float("nan"), float("nan"))
    return SeedStat(float(per_seed.mean()), lo, hi, phase.interval_level(n, alpha) if n >= 2 else float("nan"),
                    float(phase.signflip_p(per_seed)) if n >= 2 else float("nan"), n)


def _three_way(s: SeedStat, margin: float) -> str:
    """held (interval above 0), not held (below 0, or inside +-margin), or inconclusive."""
    if s.lo > 0:
        return "held"
    if s.hi < 0 or (-margin < s.lo and s.hi < margin):
        return "not held"
    return "inconclusive"


def _fill(f: Finding, s: SeedStat, scale: float = 100.0) -> None:
    f.estimate, f.ci_lo, f.ci_hi, f.ci_level, f.p = scale * s.estimate, scale * s.lo, scale * s.hi, s.level, s.p


def _n(values: pd.DataFrame, what: str) -> str:
    return f"{values['seed'].nunique()} seeds x {values['pair'].nunique()} {what}"


def _few(seeds: int, alpha: float) -> str:
    """A note when the exact test cannot reach alpha with this many seeds."""
    return (f"; with {seeds} seed(s) the sign-flip test cannot reach p < {alpha:g} (smallest p {2.0 ** -seeds:.3g})"
            if phase.smallest_p(seeds) >= alpha else "")


def _pp(v: float) -> str:
    return "-" if not np.isfinite(v) else f"{100 * v:+.2f}"


# ---------------------------------------------------------------------------------- the findings

def finding1(rows: pd.DataFrame, alpha: float, delta: float) -> Finding:
    f = Finding("1", "TICKET-RESET beats FULL-MODEL at 0-90% sparsity (paper: on Books, Electronics, Home)",
                CRITERIA["1"], "reset - FULL-MODEL, mean over rounds with sparsity in (0, 90%] (pp)")
    ob = rows[(rows["stage"] == "obtain") & (rows["strategy"] == "reset")]
    if ob.empty or not (ob["round"] == 0).any():
        f.detail = "needs reset chains with their dense round 0"
        return f
    dense = ob[ob["round"] == 0].set_index(["pair", "seed"])["test_acc"]
    low = ob[(ob["round"] >= 1) & (ob["sparsity"] <= LOW_SPARSITY + 1e-9)]
    if low.empty:
        f.detail = "needs reset rounds between 0 and 90% sparsity"
        return f
    v = low.groupby(["pair", "seed"])["test_acc"].mean() - dense
    values = v.dropna().rename("value").reset_index()
    s = seed_stat(values, alpha)
    _fill(f, s)
    f.n = _n(values, "domains")
    f.verdict = _three_way(s, delta)
    per = values.groupby("pair")["value"].mean().mul(100).round(1)
    f.detail = "per domain (pp): " + ", ".join(f"{k} {v:+.1f}" for k, v in per.items()) + _few(s.seeds, alpha)
    return f


def _low_gap(rows: pd.DataFrame, cmp: phase.Comparison, alpha: float) -> SeedStat:
    """The a - b gap, mean over rounds with sparsity in (0, 90%), per unit; seed statistics."""
    p = phase.paired(rows, cmp.a, cmp.b)
    low = p[(p["round"] >= 1) & (p["sparsity"] < LOW_SPARSITY - 1e-9)]
    values = low.groupby(["pair", "seed"])["gap"].mean().rename("value").reset_index()
    return seed_stat(values, alpha)


def finding2(rows: pd.DataFrame, alpha: float, delta: float, *, detail: bool = True) -> Finding:
    f = Finding("2", "TICKET-RESET and TICKET-RANDOM match until ~96% sparsity; beyond it random drops faster and is "
                "unstable, reset stays stable", CRITERIA["2"],
                "collapse point reset - random, pooled over domains (rounds; 1 round = x0.65 density)", unit="rounds")
    ob = rows[rows["stage"] == "obtain"]
    cmp = phase.COMPARISONS[0]
    if ob.empty or not {cmp.a, cmp.b} <= set(ob["strategy"]):
        f.detail = "needs reset and random chains"
        return f
    both = ob[ob["strategy"].isin([cmp.a, cmp.b])]
    pts = phase.collapse_points(both, alpha=alpha)
    c = phase.collapse_test(pts, cmp, alpha)
    eq = _low_gap(ob, cmp, alpha)
    f.n = f"{both['seed'].nunique()} seeds x {ob['pair'].nunique()} domains"
    f.estimate, f.ci_lo, f.ci_hi, f.ci_level, f.p = c.diff, c.lo, c.hi, c.level, c.p
    alike = eq.seeds >= 2 and -delta < eq.lo and eq.hi < delta
    apart = eq.seeds >= 2 and (eq.lo > delta or eq.hi < -delta)
    later = c.n >= 2 and c.lo > 0
    not_later = c.n >= 2 and (c.hi < 0 or (-SAME_ROUND < c.lo and c.hi < SAME_ROUND))
    f.verdict = ("held" if alike and later else "not held" if apart or not_later else "inconclusive")
    if detail:
        t = phase.transition(ob, cmp, alpha=alpha, points=pts)
        f.detail = (f"collapse points (midpoint of start level and chance): reset "
                    f"{_sp(t.collapse_a_sparsity, c.a_censored)}, random {_sp(t.collapse_b_sparsity, c.b_censored)}; "
                    f"below 90%: gap {_pp(eq.estimate)} pp, {100 * eq.level:.2f}% interval [{_pp(eq.lo)}, {_pp(eq.hi)}] "
                    f"(alike if inside +-{100 * delta:g}); onset (max-T) {t.text}; instability (random spreads more) "
                    f"{t.instability_text}; chains at chance at the last round: {t.chance_last}" + _few(t.seeds, alpha))
    return f


def _sp(s: float, censored: int) -> str:
    return ("-" if not np.isfinite(s) else f"{100 * s:.1f}%") + (f" ({censored} chains never fell, counted at their "
                                                                   f"last round)" if censored else "")


def _target_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Per transfer (pair, seed, round): masks-reset, masks-random and TICKET-TARGET (the target's reset
    chain, same seed and settings)."""
    tr = rows[rows["stage"] == "transfer"]
    ob = rows[(rows["stage"] == "obtain") & (rows["strategy"] == "reset")]
    wide = tr.pivot_table(index=["pair", "target", "seed", "round", "settings_hash"], columns="strategy",
                          values="test_acc").reset_index()
    sp = tr.groupby(["pair", "round"])["sparsity"].mean().rename("sparsity").reset_index()
    target = ob[["pair", "seed", "round", "settings_hash", "test_acc"]].rename(
        columns={"pair": "target", "test_acc": "ticket-target"})
    return wide.merge(target, on=["target", "seed", "round", "settings_hash"], how="left").merge(sp, on=["pair", "round"])


def finding3(rows: pd.DataFrame, alpha: float, delta: float) -> list[Finding]:
    a = Finding("3a", "Transfer: masks found in one domain lose 3-5% against the target's own tickets up to 90% sparsity",
                CRITERIA["3a"], "TICKET-TARGET - MASKS-RESET, mean over rounds with sparsity in (0, 90%] (pp)")
    b = Finding("3b", "Transfer: initial values matter more at high sparsity (MASKS-RESET vs MASKS-RANDOM)",
                CRITERIA["3b"], "(masks-reset - masks-random) above 90% minus at or below 90% sparsity (pp)")
    if rows[rows["stage"] == "transfer"].empty:
        a.detail = b.detail = "no transfer rows in this study (the plan has no transfer stage)"
        return [a, b]
    w = _target_rows(rows)
    w = w[w["round"] >= 1]
    low = w[w["sparsity"] <= LOW_SPARSITY + 1e-9]
    a.detail = "needs the transfer's masks-reset rows and the target's own reset chain (ticket-target) at 0-90% sparsity"
    if {"masks-reset", "ticket-target"} <= set(w.columns) and len(low.dropna(subset=["masks-reset", "ticket-target"])):
        d = low.assign(value=low["ticket-target"] - low["masks-reset"]).dropna(subset=["value"])
        values = d.groupby(["pair", "seed"])["value"].mean().reset_index()
        s = seed_stat(values, alpha)
        _fill(a, s)
        a.n = _n(values, "pairs")
        if s.lo > 0 and s.hi <= TRANSFER_DROP:
            a.verdict = "held"
        elif s.hi < 0 or (-delta < s.lo and s.hi < delta) or s.lo > TRANSFER_DROP:
            a.verdict = "not held"
        else:
            a.verdict = "inconclusive"
        per = values.groupby("pair")["value"].mean().mul(100)
        a.detail = "per pair (pp): " + ", ".join(f"{k} {v:+.1f}" for k, v in per.items()) + _few(s.seeds, alpha)
    b.detail = "needs masks-reset and masks-random rows both above and at or below 90% sparsity"
    if len(w):
        b.detail += f" (this study's transfer rounds reach {100 * w['sparsity'].max():.1f}%)"
    if {"masks-reset", "masks-random"} <= set(w.columns):
        g = w.assign(gap=w["masks-reset"] - w["masks-random"], high=w["sparsity"] > LOW_SPARSITY + 1e-9)
        per = g.groupby(["pair", "seed", "high"])["gap"].mean().unstack("high")
        if True in per.columns and False in per.columns:
            values = (per[True] - per[False]).dropna().rename("value").reset_index()
            s = seed_stat(values, alpha)
            _fill(b, s)
            b.n = _n(values, "pairs")
            b.verdict = _three_way(s, delta)
            hi, lo = g[g["high"]]["gap"].mean(), g[~g["high"]]["gap"].mean()
            b.detail = f"gap above 90%: {_pp(hi)} pp; at or below 90%: {_pp(lo)} pp" + _few(s.seeds, alpha)
    return [a, b]


def domain_permutation_p(table: np.ndarray, *, resamples: int = 20000, rng_seed: int = 0) -> float:
    """Permutation p of the between-domain spread of ``table`` [seeds, domains] (the sum of squared
    deviations of the domains' means from their grand mean), domain labels permuted within each seed
    (exact over all (D!)^seeds relabellings up to 50,000 of them, else Monte Carlo with the identity).
    Under "no domain effect" a seed's values are exchangeable across domains, whatever the seeds share."""
    x = np.asarray(table, float)
    n, d = x.shape

    def stat(v):  # [..., seeds, domains]
        m = v.mean(axis=-2)
        return ((m - m.mean(axis=-1, keepdims=True)) ** 2).sum(axis=-1)

    perms = np.array(list(itertools.permutations(range(d))))
    total = len(perms) ** n
    if total <= 50000:
        choice = np.array(list(itertools.product(range(len(perms)), repeat=n)))  # [total, seeds]
    else:
        choice = np.random.default_rng(rng_seed).integers(0, len(perms), size=(resamples, n))
        choice[0] = 0  # the identity permutation is perms[0]
    idx = perms[choice]  # [P, seeds, domains]
    relabelled = np.take_along_axis(np.broadcast_to(x, idx.shape), idx, axis=-1)
    null = stat(relabelled)
    obs = stat(x)
    return float((null >= obs - 1e-12 * max(1.0, abs(obs))).mean())


def finding4(rows: pd.DataFrame, alpha: float, delta: float) -> Finding:
    f = Finding("4", "The sparsity of the phase transition is dataset-dependent", CRITERIA["4"],
                "range (max - min) across domains of TICKET-RANDOM's mean collapse point (rounds)", unit="rounds")
    ob = rows[(rows["stage"] == "obtain") & (rows["strategy"] == "random")]
    domains = sorted(ob["pair"].unique())
    if len(domains) < 2:
        f.detail = f"needs random chains in at least 2 domains (this study: {len(domains)})"
        return f
    pts = phase.collapse_points(ob, alpha=alpha).dropna(subset=["collapse_round"])
    wide = pts.pivot_table(index="seed", columns="pair", values="collapse_round").dropna()
    if len(wide) < 2 or wide.shape[1] < 2:
        f.detail = f"needs collapse points of at least 2 seeds in every domain (this study: {len(wide)})"
        return f
    x = wide.to_numpy(float)
    means = x.mean(axis=0)
    f.estimate = float(means.max() - means.min())
    f.p = domain_permutation_p(x)
    f.n = f"{len(wide)} seeds x {wide.shape[1]} domains"
    pairs = []
    equivalent = True
    for i, j in itertools.combinations(range(x.shape[1]), 2):
        lo, hi = phase.signflip_interval(x[:, i] - x[:, j], alpha)
        pairs.append(f"{wide.columns[i]} - {wide.columns[j]} {x[:, i].mean() - x[:, j].mean():+.2f} [{lo:+.2f}, {hi:+.2f}]")
        equivalent &= -SAME_ROUND < lo and hi < SAME_ROUND
    f.verdict = "held" if f.p < alpha else "not held" if equivalent else "inconclusive"
    censored = int((pts["status"] == "censored").sum())
    f.detail = ("random's mean collapse point per domain (round): "
                + ", ".join(f"{d} {m:.2f}" for d, m in zip(wide.columns, means))
                + f"; pairwise differences (rounds, {100 * phase.interval_level(len(wide), alpha):.2f}% exact): "
                + "; ".join(pairs) + (f"; {censored} chains never fell (counted at their last round)" if censored else ""))
    return f


# ---------------------------------------------------------------------------------- robustness and gating

#: per finding: the function, and the groups of rows it reads, its statistics monotone in each (for the knife-edge
#: check; the convergence gate reads the same rows)
def _groups_1(rows):
    return np.where((rows["stage"] == "obtain") & (rows["strategy"] == "reset"),
                    np.where(rows["round"] == 0, "dense", "pruned"), "")


def _groups_2(rows):  # round 0 is one dense network per seed, shared by reset and random
    ob = (rows["stage"] == "obtain") & rows["strategy"].isin(["reset", "random"])
    return np.where(ob, np.where(rows["round"] == 0, "dense", rows["strategy"].astype(str)), "")


def _groups_3(rows):
    return np.where((rows["stage"] == "obtain") & (rows["strategy"] == "reset"), "target",
                    np.where(rows["stage"] == "transfer", rows["strategy"].astype(str), ""))


def _groups_4(rows):
    return np.where((rows["stage"] == "obtain") & (rows["strategy"] == "random"), rows["pair"].astype(str), "")


FINDINGS: list[tuple[Callable, Callable]] = [
    (lambda r, a, d, detail=True: [finding1(r, a, d)], _groups_1),
    (lambda r, a, d, detail=True: [finding2(r, a, d, detail=detail)], _groups_2),
    (lambda r, a, d, detail=True: finding3(r, a, d), _groups_3),
    (lambda r, a, d, detail=True: [finding4(r, a, d)], _groups_4),
]


def perturbations(rows: pd.DataFrame, groups: np.ndarray, examples: int) -> list[pd.DataFrame]:
    """``rows`` with every accuracy of each group moved by ``examples`` test examples (1 / test_n each)
    up or down, one copy per combination of directions (2^groups); rows of no group ("") stay. A
    statistic monotone in each group takes its extremes over all perturbations of that size at these
    corners."""
    names = sorted(set(groups) - {""})
    n = pd.to_numeric(rows["test_n"], errors="coerce").to_numpy(float) if "test_n" in rows else np.full(len(rows), np.nan)
    step = np.where(np.isfinite(n) & (n > 0), examples / np.where(n > 0, n, 1), 0.0)
    out = []
    for signs in itertools.product((1.0, -1.0), repeat=len(names)):
        shift = np.zeros(len(rows))
        for name, s in zip(names, signs):
            shift[groups == name] = s
        out.append(rows.assign(test_acc=rows["test_acc"].to_numpy(float) + shift * step))
    return out


def _robust(found: list[Finding], rows: pd.DataFrame, make: Callable, groups: np.ndarray, alpha: float, delta: float,
            examples: int) -> list[Finding]:
    if examples <= 0 or not any(f.verdict in ("held", "not held", "inconclusive") for f in found):
        return found
    seen: list[set] = [set() for _ in found]
    for moved in perturbations(rows, groups, examples):
        for k, f in enumerate(make(moved, alpha, delta, detail=False)):
            seen[k].add(f.verdict)
    out = []
    for f, verdicts in zip(found, seen):
        others = verdicts - {f.verdict}
        if others and f.verdict != "no data":
            f = replace(f, verdict="inconclusive",
                        detail=f"knife edge: {f.verdict} as measured, but {' / '.join(sorted(others))} when the accuracies "
                               f"move by {examples} test examples; " + f.detail)
        out.append(f)
    return out


def converged(rows: pd.DataFrame) -> pd.Series:
    """Per row: did its training converge (validation stopped improving before the last epoch run)? The
    ``converged`` column where recorded, else ``best_epoch < epochs_run`` (the same definition, for rows
    written before the column existed); NaN where neither is known."""
    derived = pd.Series(np.nan, index=rows.index)
    if {"best_epoch", "epochs_run"} <= set(rows.columns):
        b, e = (pd.to_numeric(rows[c], errors="coerce") for c in ("best_epoch", "epochs_run"))
        derived = (b < e).astype(float).where(b.notna() & e.notna())
    if "converged" not in rows:
        return derived
    given = pd.to_numeric(rows["converged"].map({True: 1.0, False: 0.0, 1: 1.0, 0: 0.0, 1.0: 1.0, 0.0: 0.0}),
                          errors="coerce")
    return given.fillna(derived)


def _gate(found: list[Finding], rows: pd.DataFrame, groups: np.ndarray) -> list[Finding]:
    """``not assessable: not converged`` where most of the trainings a finding reads did not converge."""
    c = converged(rows)[(groups != "") & (rows["round"] >= 1).to_numpy()].dropna()
    if c.empty:
        return found
    share = float(c.mean())
    if share >= CONVERGED_SHARE:
        return found
    return [replace(f, verdict=NOT_CONVERGED,
                    detail=f"{100 * share:.0f}% of the {len(c)} trainings it reads converged (validation stopped improving "
                           f"before the last epoch; needs >= {100 * CONVERGED_SHARE:.0f}%); as measured: {f.verdict}; "
                           + f.detail) if f.verdict != "no data" else f for f in found]


def verdicts(rows: pd.DataFrame, *, alpha: float = phase.ALPHA, delta: float = phase.DELTA,
             robust_examples: int = ROBUST_EXAMPLES) -> pd.DataFrame:
    """The four findings' verdicts for result rows of one settings hash (see the module doc)."""
    if rows["settings_hash"].nunique() > 1:
        raise ValueError("findings.verdicts: rows of several settings hashes; pass one (ltnb.report.settings_groups)")
    rows = rows.reset_index(drop=True)
    out = []
    for make, grouping in FINDINGS:
        groups = grouping(rows)
        found = _robust(make(rows, alpha, delta), rows, make, groups, alpha, delta, robust_examples)
        out += _gate(found, rows, groups)
    table = pd.DataFrame([asdict(f) for f in out], columns=COLUMNS[:-1])
    table["criteria_hash"] = criteria_hash()
    return table[COLUMNS]


def markdown(table: pd.DataFrame) -> str:
    """The verdict table as Markdown (README, notebooks)."""
    def num(v, unit):
        if pd.isna(v):
            return "-"
        if not math.isfinite(v):
            return "open" if v > 0 else "-inf"
        return f"{v:.1f}" if unit in ("% sparsity",) else f"{v:+.1f}" if unit == "pp" else f"{v:+.2f}"

    lines = ["| finding | claim | statistic | estimate | interval | p | n | verdict |",
             "|---|---|---|---:|---|---:|---|---|"]
    for _, r in table.iterrows():
        level = "" if pd.isna(r.get("ci_level", np.nan)) else f" ({100 * r['ci_level']:.1f}%)"
        ci = ("-" if pd.isna(r["ci_lo"]) and pd.isna(r["ci_hi"])
              else f"[{num(r['ci_lo'], r['unit'])}, {num(r['ci_hi'], r['unit'])}]{level}")
        p = "-" if pd.isna(r["p"]) else f"{r['p']:.3g}"
        lines.append(f"| {r['finding']} | {r['claim']} | {r['statistic']} | {num(r['estimate'], r['unit'])} "
                     f"{'' if r['unit'] == 'pp' else r['unit']} | {ci} | {p} | {r['n']} | **{r['verdict']}** |")
    return "\n".join(lines)
