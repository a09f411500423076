"""The phase transition, measured where the eye sees it: per-chain collapse points, the onset of the
gap with family-wise error control, and instability, per domain, per transfer pair and pooled.

The paper (Section 5.2) finds that TICKET-RESET and TICKET-RANDOM behave alike until about 96%
sparsity, after which random collapses and becomes unstable while reset holds. On real curves both
strategies collapse, random first and reset later, often before the last round, so no estimand here
asks "from this round to the end". Torch-free: it is analysis, not engine.

Comparisons (``COMPARISONS``), each the paired difference ``a - b`` per seed and round:

* ``gap``: reset - random, what the paper compares (transfer: masks-reset - masks-random);
* ``values``: reset - reinit: the same masks (the reset chain's), theta_0 vs fresh values;
* ``history``: reinit - random: the same fresh values, the reset chain's masks vs random's own
  pruning history (``gap = values + history`` at every round);
* ``placement``: reset - shuffle: the same mask and the same multiset of surviving values, in their
  own places vs permuted (does the specific value of each weight matter, or only the set?);
* ``distribution``: shuffle - rescaled: theta_0's surviving values (permuted) vs fresh values with the
  same RMS (does their distribution matter beyond its scale?);
* ``magnitude``: rescaled - reinit: fresh values under the same mask, rescaled to the RMS of reset's
  survivors or not (does the survivors' larger scale alone carry the gap?).
* ``mask``: reset - randmask-reset (obtain) and masks-reset - randmask-reset (transfer): the ticket's (or
  the source's) mask against random positions with the same per-layer counts, from the same values (does
  the mask matter at all, or only its per-layer sparsity?); ``randmask-values``: randmask-reset -
  randmask-random, theta_0 vs fresh values on a random mask.
  ``values = placement + distribution + magnitude`` at every round.

Pairing: the chains of one seed share the dense round 0 and every training draw (``ltnb.core.lottery``).
The **seed is the unit** of every test. Pooled over domains or pairs, a seed's differences are averaged
over its domains first and its sign is flipped in all domains together (a cluster sign-flip test): a
seed's chains are not independent across domains (they share the seed's draws and the vocabulary).

**1. Collapse point (primary, per chain).** Each chain's test accuracy is fitted by a non-increasing
isotonic regression over its rounds (scipy's ``isotonic_regression``: a dip or a bump of one round does
not move it, and it is monotone in the data). Its *start level* is the fit at the first round (obtain:
the dense round 0, the same for every strategy of a seed). The collapse point is where the fit first
falls below the midpoint between the start level and chance (50%), interpolated linearly in rounds,
i.e. on log density (density is 0.65^round), reported as a (fractional) round and its sparsity. A chain
that never falls below the midpoint is *censored* at its last round (its collapse is later than that);
a chain whose start level is not significantly above chance (exact binomial test on ``test_n``) has
none. Why the midpoint: it is where "holds" turns into "at chance" on any curve, whatever the dense
level of the domain, and it is estimated from many rounds at once; a fitted sigmoid needs a shape the
3-epoch and converged curves do not share, and "first round below a fixed accuracy" depends on the
domain's dense level. Compared a vs b per seed (mean over the seed's domains when pooled): the exact
one-sided sign-flip test (all 2^n sign patterns) of "a collapses later", and an exact interval by
inverting it (two one-sided alpha-level bounds, labelled with the coverage the n seeds allow: with 5
seeds the interval is [min, max] of the seeds' differences and covers 93.75%). A censored ``a`` leaves
the upper end open; a censored ``b`` the lower end.

**2. Onset (``transition_round``, secondary).** The first round at which ``a`` is significantly better than
``b``, with the family-wise error rate over rounds controlled at ``alpha`` by Westfall and Young's
step-down max-T on a studentized statistic (``ltnb.analysis.signflip``: per round the seeds' sum over the
root of their sum of squares plus a floor of one test example, so the noisiest rounds do not set the null
maximum); the null distribution of its maximum over rounds comes from flipping each seed's signs jointly
across all rounds (all 2^n patterns), so the rounds' dependence is kept. Only *informative* rounds take
part: rounds where at most ``AT_CHANCE_SHARE`` (3/4) of the chains of both strategies together are at
chance. That count is over both strategies, so swapping a and b within any seed cannot change it, and the
test stays exact. Every significant round is a claim "a beats b here" with FWER <= alpha; the onset is the
first of them, so with probability >= 1 - alpha the gap has begun by the onset (it is an upper confidence
bound on where the gap begins). The findings (``ltnb.analysis.findings``) are decided by window estimands, not by this.

**Minimal detectable effect**: the difference one round's test detects with 80% power at ``alpha``
with n seeds, from the noise of the informative rounds only (rounds with both strategies at exactly
chance have no spread and would deflate it); before the max-T adjustment, so a lower bound.

**Instability**: does ``b`` spread more across seeds than ``a``? Per informative round, each
strategy's absolute deviations from its own median over seeds (centred, so a gap between the means
costs no power: Brown-Forsythe), compared per seed with the same sign-flip max-T over rounds; rounds
where both strategies are constant across seeds are left out. And per round, the chains at chance
(test accuracy not significantly above 50%: one-sided exact binomial test on the test split's size).
"""
from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import optimize, stats

from ltnb.base.config import PhaseSettings
from ltnb.base.labels import sparsity_label

from ltnb.analysis.collapse import (CHAIN_KEY, COLLAPSE_COLUMNS, CollapseTest, _collapse,  # noqa: F401
                                   collapse_points, collapse_round, collapse_test, round_sparsity)
from ltnb.analysis.signflip import (ALPHA, CHANCE, EXACT_MAX_N, MC_PATTERNS, POWER, TESTS,  # noqa: F401
                                    _check_alpha, _check_test, at_chance, first_significant, interval_level,
                                    maxt_stepdown, mde_factor, power, sign_patterns, signflip_interval, signflip_p,
                                    smallest_p, t_p)

DELTA = PhaseSettings.delta
POOLED = "pooled"


@dataclass(frozen=True)
class Comparison:
    stage: str
    a: str
    b: str
    name: str
    label: str


COMPARISONS = (
    Comparison("obtain", "reset", "random", "gap", "reset - random"),
    Comparison("obtain", "reset", "reinit", "values", "initial values: reset - reinit (same masks)"),
    Comparison("obtain", "reinit", "random", "history", "mask history: reinit - random (same fresh values)"),
    Comparison("obtain", "reset", "shuffle", "placement", "placement: reset - shuffle (same mask, same values permuted)"),
    Comparison("obtain", "shuffle", "rescaled", "distribution",
               "distribution: shuffle - rescaled (theta_0's values vs fresh ones at their scale)"),
    Comparison("obtain", "rescaled", "reinit", "magnitude", "magnitude: rescaled - reinit (fresh values at reset's scale or not)"),
    Comparison("obtain", "reset", "randmask-reset", "mask",
               "mask: reset - randmask-reset (the ticket's mask vs random positions at its per-layer sparsity, theta_0)"),
    Comparison("obtain", "randmask-reset", "randmask-random", "randmask-values",
               "values on a random mask: randmask-reset - randmask-random"),
    Comparison("transfer", "masks-reset", "masks-random", "gap", "masks-reset - masks-random"),
    Comparison("transfer", "masks-reset", "randmask-reset", "mask",
               "mask: masks-reset - randmask-reset (the source's mask vs random positions, same values)"),
)

METHOD = (
    "Per comparison a - b, the seed is the unit (pooled: a seed's mean over its domains or pairs, signs flipped "
    "jointly). Collapse point: where a chain's isotonic (non-increasing) fit first falls below the midpoint between "
    "its start level and chance, interpolated on log density; a vs b by the exact one-sided sign-flip test, interval "
    "by inverting it. Onset: the first round where a beats b under Westfall-Young step-down max-T on a studentized "
    "statistic over the informative rounds (at most 3/4 of both strategies' chains at chance), signs flipped jointly "
    "across rounds (FWER <= alpha). "
    "Instability: the same max-T on centred absolute deviations (Brown-Forsythe). Chains at chance: exact binomial."
)


def comparisons(stage: str, strategies) -> list[Comparison]:
    """The comparisons of ``stage`` whose two strategies are both in ``strategies``."""
    have = set(strategies)
    return [c for c in COMPARISONS if c.stage == stage and c.a in have and c.b in have]


# ------------------------------------------------------------------------------------ selections

@dataclass(frozen=True)
class Selection:
    """One domain (obtain) or pair (transfer) of one settings hash; ``pair == "pooled"`` for all of a stage."""
    stage: str
    pair: str
    settings_hash: str
    label: str


def selections(rows: pd.DataFrame, *, pooled: bool = False) -> list[Selection]:
    """Every (stage, domain or pair, settings hash) in ``rows``; obtain first, then transfer. The hash is
    named in the label only where a domain or pair holds several settings. ``pooled=True`` adds one
    pooled selection per stage and settings hash (when it has more than one domain or pair)."""
    if rows.empty:
        return []
    keys = rows[["stage", "pair", "settings_hash"]].drop_duplicates()
    keys = keys.assign(order=keys["stage"].map({"obtain": 0, "transfer": 1}).fillna(2))
    keys = keys.sort_values(["order", "pair", "settings_hash"])
    several = keys.groupby(["stage", "pair"])["settings_hash"].transform("nunique") > 1
    out = []
    for (_, k), many in zip(keys.iterrows(), several):
        out.append(Selection(k.stage, k.pair, k.settings_hash, f"{k.pair} [{k.settings_hash}]" if many else k.pair))
    if pooled:
        for (stage, h), part in keys.groupby(["stage", "settings_hash"], sort=False):
            if part["pair"].nunique() > 1:
                many = keys[keys["stage"] == stage]["settings_hash"].nunique() > 1
                label = f"{stage}: pooled over {part['pair'].nunique()} {'domains' if stage == 'obtain' else 'pairs'}"
                out.append(Selection(stage, POOLED, h, f"{label} [{h}]" if many else label))
    return out


def select(rows: pd.DataFrame, sel: Selection) -> pd.DataFrame:
    """The rows of one selection (all domains or pairs of the stage for a pooled one)."""
    m = (rows["stage"] == sel.stage) & (rows["settings_hash"] == sel.settings_hash)
    if sel.pair != POOLED:
        m &= rows["pair"] == sel.pair
    return rows[m]


def paired(rows: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Per (pair, seed, round) where both strategies finished: sparsity, accuracy of ``a`` and ``b``
    (test accuracy, fractions), their test sizes ``na``, ``nb``, and the difference ``gap = a - b``."""
    cols = ["pair", "seed", "round", "sparsity", "test_acc", "test_n"]
    rows = rows if "test_n" in rows else rows.assign(test_n=np.nan)
    left = rows.loc[rows["strategy"] == a, cols].rename(columns={"test_acc": "a", "test_n": "na"})
    right = rows.loc[rows["strategy"] == b, cols].rename(columns={"test_acc": "b", "sparsity": "sparsity_b",
                                                                   "test_n": "nb"})
    both = left.merge(right, on=["pair", "seed", "round"], how="inner")
    both["sparsity"] = (both["sparsity"] + both["sparsity_b"]) / 2
    both["gap"] = both["a"] - both["b"]
    return both.drop(columns="sparsity_b").sort_values(["round", "pair", "seed"]).reset_index(drop=True)


# ------------------------------------------------------------------------------------ the units

@dataclass(frozen=True)
class Units:
    """One selection's paired data as arrays: ``per_round`` (round, sparsity), the seeds, and per round,
    seed and domain/pair the two strategies' accuracies ``a``, ``b`` and test sizes ``na``, ``nb``
    ([rounds, seeds, pairs], NaN where missing)."""
    per_round: pd.DataFrame
    seeds: list
    a: np.ndarray
    b: np.ndarray
    na: np.ndarray
    nb: np.ndarray

    @property
    def g(self) -> np.ndarray:
        return self.a - self.b

    @property
    def counts(self) -> np.ndarray:
        """[rounds, seeds]: how many domains/pairs a seed has at a round."""
        return (~np.isnan(self.g)).sum(axis=2)

    def seed_means(self, values: np.ndarray | None = None) -> np.ndarray:
        """[rounds, seeds]: each seed's mean over its domains/pairs (of the differences by default)."""
        v = self.g if values is None else values
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nansum(v, axis=2) / np.where(self.counts > 0, self.counts, np.nan)

    def resolution(self) -> np.ndarray:
        """[rounds]: one test example (1 / test_n, the mean over the round's chains; 0 where unknown), the
        floor of the studentized max-T (``maxt_stepdown``)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            inv = np.concatenate([1 / self.na, 1 / self.nb], axis=-1).reshape(len(self.na), -1)
            r = np.nanmean(np.where(np.isfinite(inv), inv, np.nan), axis=1) if inv.size else np.zeros(len(self.na))
        return np.nan_to_num(r)

    def informative(self, alpha: float = ALPHA) -> np.ndarray:
        """[rounds]: rounds where not both strategies have most of their chains at chance (where the test
        sizes are unknown: rounds whose differences are not all exactly 0)."""
        return informative_rounds(self.a, self.b, self.na, self.nb, alpha)


#: a round takes part in the onset and instability tests unless more than this share of its chains, both
#: strategies together, are at chance (one strategy entirely at chance and the other mostly: nothing left to
#: compare). Counted over both strategies, so swapping a and b within any seed cannot change it.
AT_CHANCE_SHARE = 0.75


def informative_rounds(a, b, na, nb, alpha: float = ALPHA) -> np.ndarray:
    """[..., rounds] from [..., rounds, seeds, pairs] accuracies and test sizes: at most ``AT_CHANCE_SHARE``
    of the round's chains of both strategies together at chance. A function of each unit's unordered pair
    {a, b}, so invariant to swapping a and b in any seed: the sign-flip tests stay exact. Where the test sizes
    are unknown: rounds whose differences are not all exactly 0."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ca, cb = at_chance(a, na, alpha), at_chance(b, nb, alpha)
    known = (~np.isnan(ca)).sum(axis=(-1, -2)) + (~np.isnan(cb)).sum(axis=(-1, -2))
    at = np.nansum(ca, axis=(-1, -2)) + np.nansum(cb, axis=(-1, -2))
    g = a - b
    unknown = np.isnan(np.asarray(na, float)).all(axis=(-1, -2)) | np.isnan(np.asarray(nb, float)).all(axis=(-1, -2))
    nonzero = np.nansum(np.abs(g), axis=(-1, -2)) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        few = np.where(known > 0, at <= AT_CHANCE_SHARE * known, False)
    return np.where(unknown, nonzero, few)


def units(rows: pd.DataFrame, cmp: Comparison, *, min_round: int = 1) -> Units:
    """The paired rounds >= ``min_round`` of ``rows`` for ``cmp`` as arrays (see ``Units``)."""
    p = paired(rows, cmp.a, cmp.b)
    p = p[p["round"] >= min_round]
    rounds = sorted(p["round"].unique().tolist())
    seeds = sorted(p["seed"].unique().tolist())
    pairs = sorted(p["pair"].unique().tolist())
    shape = (len(rounds), len(seeds), len(pairs))
    arrays = {k: np.full(shape, np.nan) for k in ("a", "b", "na", "nb")}
    idx = (p["round"].map({r: i for i, r in enumerate(rounds)}).to_numpy(),
           p["seed"].map({x: i for i, x in enumerate(seeds)}).to_numpy(),
           p["pair"].map({q: i for i, q in enumerate(pairs)}).to_numpy())
    for k in arrays:
        arrays[k][idx] = pd.to_numeric(p[k], errors="coerce").to_numpy(float)
    per_round = p.groupby("round", sort=True)["sparsity"].mean().reset_index()
    return Units(per_round, seeds, **arrays)


# ------------------------------------------------------------------------------------ per round

GAP_COLUMNS = ["round", "sparsity", "n", "units", "mean_gap", "std_gap", "p", "p_adj", "ci_lo", "ci_hi",
               "informative", "significant", "tested", "p_spread_adj", "spread_significant"]


def gap_table(rows: pd.DataFrame, cmp: Comparison | None = None, *, alpha: float = ALPHA,
              test: str = "signflip") -> pd.DataFrame:
    """Per round >= 1 of one selection (a domain, a pair, or pooled): the paired difference and its tests.

    Columns: round, sparsity, n (seeds, the units), units (domain-seed pairs), mean_gap, std_gap (over
    the seeds' means), p (one round's own one-sided test, unadjusted; ``test``), p_adj (Westfall-Young
    step-down max-T over the informative rounds), ci_lo/ci_hi (one round's exact sign-flip interval,
    coverage ``interval_level``; not a simultaneous band), informative, significant (p_adj < alpha),
    tested (n >= 2), p_spread_adj and spread_significant (the instability test, the same way)."""
    _check_alpha(alpha)
    _check_test(test)
    return _gap_table(units(rows, cmp or _default_comparison(rows)), alpha, test)


def _gap_table(u: Units, alpha: float, test: str) -> pd.DataFrame:
    per_round, g, counts = u.per_round, u.g, u.counts
    if not len(per_round):
        return pd.DataFrame(columns=GAP_COLUMNS)
    means = u.seed_means()  # [rounds, seeds]
    info = u.informative(alpha)
    out = []
    for i, r in enumerate(per_round["round"]):
        m = means[i][~np.isnan(means[i])]
        n = len(m)
        row = dict(round=int(r), sparsity=float(per_round["sparsity"].iloc[i]), n=n, units=int(counts[i].sum()),
                   mean_gap=float(np.nansum(g[i]) / max(counts[i].sum(), 1)),
                   std_gap=float(np.std(m, ddof=1)) if n > 1 else np.nan, tested=n >= 2, informative=bool(info[i]))
        if n >= 2:
            row["p"] = float(signflip_p(m)) if test == "signflip" else float(t_p(m))
            row["ci_lo"], row["ci_hi"] = signflip_interval(m, alpha)
        else:
            row.update(p=np.nan, ci_lo=np.nan, ci_hi=np.nan)
        out.append(row)
    t = pd.DataFrame(out)
    use = info & t["tested"].to_numpy(bool)
    floor = u.resolution()
    t["p_adj"] = maxt_stepdown(means, use, floor=floor) if means.shape[1] >= 2 else np.nan
    t["significant"] = t["p_adj"] < alpha
    t["p_spread_adj"] = _spread_p(u, use, floor)
    t["spread_significant"] = t["p_spread_adj"] < alpha
    return t[GAP_COLUMNS]


def spread_deviations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per round and seed (last axis): |b - median(b)| - |a - median(a)|, each strategy centred on its
    own median over seeds (Brown-Forsythe), so a difference between the means does not enter."""
    za = np.abs(a - np.nanmedian(a, axis=-1, keepdims=True))
    zb = np.abs(b - np.nanmedian(b, axis=-1, keepdims=True))
    return zb - za


def _spread_p(u: Units, use: np.ndarray, floor=0.0) -> np.ndarray:
    """Per round: the instability test's max-T adjusted p (b spreads more than a), on the seeds' values
    (pooled: seed means over domains or pairs); rounds where both strategies are constant left out."""
    a, b = u.seed_means(u.a), u.seed_means(u.b)
    if a.shape[1] < 2:
        return np.full(len(a), np.nan)
    with np.errstate(invalid="ignore"):
        constant = (np.nanstd(a, axis=1) == 0) & (np.nanstd(b, axis=1) == 0)
    return maxt_stepdown(spread_deviations(a, b), use & ~constant, floor=floor)


def _default_comparison(rows: pd.DataFrame) -> Comparison:
    stages = sorted(set(rows["stage"]))
    if len(stages) != 1:
        raise ValueError(f"rows must come from exactly one stage; got stages {stages}")
    found = comparisons(stages[0], set(rows["strategy"]))
    if not found:
        raise ValueError(f"no comparison possible for stage {stages[0]} with strategies {sorted(set(rows['strategy']))}")
    return found[0]


def chance_table(rows: pd.DataFrame, *, alpha: float = ALPHA) -> pd.DataFrame:
    """Per (strategy, round): chains, and chains at chance (``at_chance``; NaN where ``test_n`` is
    unknown, i.e. rows written before it was recorded)."""
    cols = ["strategy", "round", "sparsity", "chains", "at_chance"]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    r = rows.copy()
    n = pd.to_numeric(r["test_n"], errors="coerce") if "test_n" in r else pd.Series(np.nan, index=r.index)
    r["at_chance"] = at_chance(r["test_acc"].to_numpy(float), n.to_numpy(float), alpha)
    out = (r.groupby(["strategy", "round"], sort=True)
           .agg(sparsity=("sparsity", "mean"), chains=("seed", "size"), at_chance=("at_chance", "sum"))
           .reset_index())
    known = r.groupby(["strategy", "round"])["at_chance"].apply(lambda v: v.notna().all()).to_numpy()
    out.loc[~known, "at_chance"] = np.nan
    return out[cols]

# ------------------------------------------------------------------------------------ transitions

@dataclass(frozen=True)
class Transition:
    """The measured transition of one selection and comparison. ``round``/``sparsity``: the onset
    (None unless ``status`` is "detected"); ``collapse_*``: the collapse points (rounds)."""
    stage: str
    pair: str
    settings_hash: str
    comparison: str
    a: str
    b: str
    seeds: int
    units: int
    rounds_tested: int  # informative rounds
    alpha: float
    test: str
    status: str  # detected | not detected | too few seeds
    round: int | None
    sparsity: float | None
    p: float  # the onset's adjusted p (or the smallest adjusted p when none)
    significant_rounds: tuple
    message: str
    collapse: CollapseTest
    collapse_a_sparsity: float
    collapse_b_sparsity: float
    mde: float  # in accuracy (fraction); inf where not detectable at all
    sigma: float
    instability_status: str
    instability_round: int | None
    instability_sparsity: float | None
    chance_last: str  # "reset 0/5, random 5/5" at the sparsest round

    @property
    def text(self) -> str:
        return sparsity_text(self.sparsity) if self.status == "detected" else self.status

    @property
    def collapse_text(self) -> str:
        return collapse_text(self.collapse)

    @property
    def mde_text(self) -> str:
        return "not detectable" if not math.isfinite(self.mde) else f"{100 * self.mde:.1f} pp"

    @property
    def instability_text(self) -> str:
        return sparsity_text(self.instability_sparsity) if self.instability_status == "detected" else self.instability_status


def collapse_text(c: CollapseTest) -> str:
    """"+4.10 rounds [+3.20, +5.00] (93.75% exact), p = 0.0312"; an open side shows as -inf / open."""
    if not c.n:
        return "no collapse points"
    lo = "-inf" if not np.isfinite(c.lo) else f"{c.lo:+.2f}"
    hi = "open" if not np.isfinite(c.hi) else f"{c.hi:+.2f}"
    return f"{c.diff:+.2f} rounds [{lo}, {hi}] ({100 * c.level:.2f}% exact), p = {c.p:.3g}"


def sparsity_text(s: float | None) -> str:
    """"96.8%", "99.84%" (``ltnb.base.labels.sparsity_label``), "-" when unknown."""

    return "-" if s is None or not np.isfinite(s) else f"{sparsity_label(s)}%"


def _censor_text(c: CollapseTest, cmp: Comparison) -> str:
    parts = [f"{s} {k}/{c.chains}" for s, k in ((cmp.a, c.a_censored), (cmp.b, c.b_censored)) if k]
    return ("; never below the midpoint by the last round (censored): " + ", ".join(parts)) if parts else ""


def transition(rows: pd.DataFrame, cmp: Comparison | None = None, *, alpha: float = ALPHA,
               test: str = "signflip", points: pd.DataFrame | None = None) -> Transition:
    """Measure one selection (one domain or pair, or pooled) for one comparison. ``points``: the selection's
    ``collapse_points`` when already computed."""
    _check_alpha(alpha)
    _check_test(test)
    if rows.empty:
        raise ValueError("no result rows given (has the study's obtain/transfer stage run?)")
    for col in ("stage", "settings_hash"):
        if rows[col].nunique() > 1:
            raise ValueError(f"rows mix several values of column {col!r}; pass one selection (ltnb.analysis.phase.select)")
    cmp = cmp or _default_comparison(rows)
    stage, h = rows["stage"].iloc[0], str(rows["settings_hash"].iloc[0])
    pair = rows["pair"].iloc[0] if rows["pair"].nunique() == 1 else POOLED
    u = units(rows, cmp)
    gaps = _gap_table(u, alpha, test)
    tested = gaps[gaps["tested"]].reset_index(drop=True)
    n = int(tested["n"].max()) if len(tested) else 0
    used = tested[tested["informative"]]
    base = dict(stage=stage, pair=pair, settings_hash=h, comparison=cmp.name, a=cmp.a, b=cmp.b, seeds=len(u.seeds),
                units=int(u.counts.max(axis=0).sum()) if u.counts.size else 0, rounds_tested=len(used),
                alpha=float(alpha), test=test)
    chance = chance_table(rows[rows["strategy"].isin([cmp.a, cmp.b])], alpha=alpha)
    last = chance[chance["round"] == chance["round"].max()] if len(chance) else chance
    base["chance_last"] = ", ".join(
        f"{s} {'?' if pd.isna(c) else int(c)}/{k}" for s, c, k in zip(last["strategy"], last["at_chance"], last["chains"]))
    sd = used["std_gap"].to_numpy(float)
    sd = sd[np.isfinite(sd) & (sd > 0)]
    sigma = float(np.median(sd)) if len(sd) else float("nan")
    base["sigma"] = sigma
    base["mde"] = mde_factor(n, float(alpha), test) * sigma if n >= 2 and np.isfinite(sigma) else math.inf

    pts = collapse_points(rows[rows["strategy"].isin([cmp.a, cmp.b])], alpha=alpha) if points is None else points
    ct = collapse_test(pts, cmp, alpha)
    levels = u.per_round if stage == "transfer" else rows.groupby("round")["sparsity"].mean().reset_index()
    base.update(collapse=ct, collapse_a_sparsity=round_sparsity(ct.a_round, levels),
                collapse_b_sparsity=round_sparsity(ct.b_round, levels))

    spread = tested[tested["spread_significant"]]
    if len(spread):
        base.update(instability_status="detected", instability_round=int(spread["round"].iloc[0]),
                    instability_sparsity=float(spread["sparsity"].iloc[0]))
    else:
        base.update(instability_status="not detected" if len(tested) else "too few seeds", instability_round=None,
                    instability_sparsity=None)

    where = "pooled over domains or pairs (seed = unit)" if pair == POOLED else pair
    collapse_msg = f"collapse point {cmp.a} - {cmp.b}: {collapse_text(ct)}{_censor_text(ct, cmp)}"
    sig = tested[tested["significant"]]
    if tested.empty or smallest_p(n, "signflip") >= alpha:
        msg = (f"{where}: too few seeds for the exact sign-flip test: {n} seed(s) with both {cmp.a} and {cmp.b}; its "
               f"smallest p-value is {smallest_p(n):.3g}, not below alpha = {alpha:g}. Run at least "
               f"{_seeds_needed(alpha)} seeds.")
        return Transition(**base, status="too few seeds", round=None, sparsity=None, p=float("nan"),
                          significant_rounds=(), message=msg)
    if len(sig):
        first = sig.iloc[0]
        msg = (f"{where}: {cmp.a} beats {cmp.b} from round {int(first['round'])} ({sparsity_text(float(first['sparsity']))} "
               f"sparsity; difference {100 * first['mean_gap']:+.2f} pp, adjusted p = {first['p_adj']:.3g} < alpha = "
               f"{alpha:g}; max-T over {len(used)} informative rounds, {n} seeds); significant at rounds "
               f"{', '.join(str(int(r)) for r in sig['round'])}; {collapse_msg}")
        return Transition(**base, status="detected", round=int(first["round"]), sparsity=float(first["sparsity"]),
                          p=float(first["p_adj"]), significant_rounds=tuple(int(r) for r in sig["round"]), message=msg)
    best = float(used["p_adj"].min()) if len(used) else float("nan")
    msg = (f"{where}: no round where {cmp.a} significantly beats {cmp.b} (smallest adjusted p = {best:.3g}, max-T over "
           f"{len(used)} informative rounds, {n} seeds); one round's test detects about {base['mde'] * 100:.1f} pp with "
           f"80% power; {collapse_msg}")
    return Transition(**base, status="not detected", round=None, sparsity=None, p=best, significant_rounds=(),
                      message=msg)


def _seeds_needed(alpha: float, test: str = "signflip") -> int:
    """The fewest units with which the test can give p < alpha (sign-flip: 2^-n < alpha)."""
    return max(2, math.floor(math.log2(1 / alpha)) + 1) if test == "signflip" else 2


SUMMARY_COLUMNS = ["stage", "pair", "settings_hash", "comparison", "a", "b", "seeds", "units", "rounds_tested",
                   "test", "alpha", "transition", "transition_round", "transition_sparsity", "onset_p",
                   "significant_rounds", "collapse_a_round", "collapse_a_sparsity", "collapse_b_round",
                   "collapse_b_sparsity", "collapse_diff", "collapse_ci_lo", "collapse_ci_hi", "collapse_ci_level",
                   "collapse_p", "collapse_censored", "collapse", "mde_pp", "instability", "instability_sparsity",
                   "chance_last", "message", "method"]


def summary(study_or_rows, alpha: float = ALPHA, test: str = "signflip") -> pd.DataFrame:
    """One row per (stage, domain or pair or pooled, settings hash, comparison) with the measured
    onset (``transition_round``, NaN when none) and collapse points. ``study_or_rows``: a study folder
    or result rows (``ltnb.analysis.results.load``)."""
    if isinstance(study_or_rows, pd.DataFrame):
        rows = study_or_rows
    elif isinstance(study_or_rows, (str, os.PathLike)):
        from ltnb.base import paths
        from ltnb.analysis import results

        rows = results.load(paths.resolve_study(study_or_rows))
    else:
        raise TypeError(f"study_or_rows must be a study folder or a DataFrame of result rows, "
                        f"got {type(study_or_rows).__name__}")
    out = []
    points = collapse_points(rows, alpha=alpha)
    for sel in selections(rows, pooled=True):
        part = select(rows, sel)
        pts = points[(points["stage"] == sel.stage) & (points["settings_hash"] == sel.settings_hash)]
        if sel.pair != POOLED:
            pts = pts[pts["pair"] == sel.pair]
        for cmp in comparisons(sel.stage, set(part["strategy"])):
            t = transition(part, cmp, alpha=alpha, test=test, points=pts)
            c = t.collapse
            out.append(dict(
                stage=t.stage, pair=sel.pair, settings_hash=t.settings_hash, comparison=t.comparison, a=t.a, b=t.b,
                seeds=t.seeds, units=t.units, rounds_tested=t.rounds_tested, test=t.test, alpha=t.alpha,
                transition=t.text, transition_round=t.round, transition_sparsity=t.sparsity, onset_p=t.p,
                significant_rounds=" ".join(map(str, t.significant_rounds)),
                collapse_a_round=c.a_round, collapse_a_sparsity=t.collapse_a_sparsity, collapse_b_round=c.b_round,
                collapse_b_sparsity=t.collapse_b_sparsity, collapse_diff=c.diff, collapse_ci_lo=c.lo,
                collapse_ci_hi=c.hi, collapse_ci_level=c.level, collapse_p=c.p,
                collapse_censored=f"{t.a} {c.a_censored}/{c.chains}, {t.b} {c.b_censored}/{c.chains}",
                collapse=t.collapse_text, mde_pp=100 * t.mde, instability=t.instability_text,
                instability_sparsity=t.instability_sparsity, chance_last=t.chance_last, message=t.message,
                method=METHOD))
    table = pd.DataFrame(out, columns=SUMMARY_COLUMNS)
    for col in ("transition_round", "transition_sparsity", "onset_p", "collapse_a_round", "collapse_a_sparsity",
                "collapse_b_round", "collapse_b_sparsity", "collapse_diff", "collapse_ci_lo", "collapse_ci_hi",
                "collapse_ci_level", "collapse_p", "instability_sparsity", "mde_pp"):
        table[col] = pd.to_numeric(table[col], errors="coerce").astype(float)
    return table

