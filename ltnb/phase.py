"""The phase transition, measured: where reset's initial values start to matter, with tests that have
power and stay honest.

The paper (Section 5.2) finds that TICKET-RESET and TICKET-RANDOM behave alike until about 96%
sparsity, after which random collapses and becomes unstable while reset holds. This module turns that
reading of a figure into numbers per domain, per transfer pair, and pooled over domains, computed from
the study's result rows (``ltnb.results.load``). Torch-free: it is analysis, not engine.

Comparisons (``COMPARISONS``), each the paired difference ``a - b`` of test accuracy per seed and round:

* ``gap``: reset - random, what the paper compares (transfer: masks-reset - masks-random);
* ``values``: reset - reinit: the same masks (the reset chain's), theta_0 vs fresh values;
* ``history``: reinit - random: the same fresh values, the reset chain's masks vs random's own
  pruning history. ``gap = values + history`` at every round, so the control splits the paper's
  effect into "initial values" and "mask history".

Pairing: the chains of one seed share theta_0, the dense round 0 and every training draw
(``ltnb.lottery``), so per seed and round the difference is one observation.

**Gap transition: fixed-sequence testing.** The rounds are tested from the sparsest one downward,
each at the full ``alpha``, stopping at the first round that is not significant; the transition is
the last round reached. Under the fixed-sequence principle this controls the family-wise error rate
at ``alpha`` (no false "significant from here to the end" claim more often than ``alpha``), and it is
exactly the estimand "significantly positive from here to the end". Holm's correction over all
rounds (this module's earlier method) paid for rounds the estimand never needed.

* Test per round: the exact **sign-flip permutation test** of the mean difference (one-sided,
  ``a > b``): under H0 the difference of each unit is symmetric about 0, so all 2^n sign patterns are
  equally likely; p = share of patterns whose mean is at least the observed one. It needs no normality
  (at collapse, random sits at exactly 50%, so differences are far from normal) and never reports a p
  below 2^-n. With n seeds it can reject at ``alpha`` only if 2^-n <= alpha: 5 seeds (1/32) are the
  fewest for alpha = 0.05; with fewer the result is "too few seeds", with the smallest p possible.
  ``test="t"`` uses the one-sample t-test instead (an option, for designs where normality holds; the
  simulations in ``tests/test_phase.py`` compare both).
* **Pooled over domains, resampled by seed.** The chains of one seed share theta_0 (derived from the
  seed alone) and the shared vocabulary across domains, so domains are not independent replicates:
  a seed that happens to start from a good theta_0 helps every domain at once. Instead of changing
  how theta_0 is drawn, the pooled test treats the seed as the unit: it flips the sign of a seed's
  differences in *all* domains together (a cluster sign-flip test on the seed sums), and its
  confidence intervals resample seeds (cluster bootstrap). This is exact whatever the dependence
  across domains, keeps every existing chain valid, and ``tests/test_phase.py`` shows that the naive
  pooled test (domains as independent units) exceeds alpha when seeds are correlated, while this
  one does not.

**Effect-size transition.** The lowest sparsity from which the mean difference stays at least
``delta`` (default 2 points) at every later round, with a percentile bootstrap confidence interval
that resamples seeds (for pooled: seeds with all their domains). With 5 seeds there are only 126
distinct resamples, so the interval is coarse; it says so by its width.

**Minimal detectable effect.** Next to every "not detected": the difference that this design (its n
and its noise, the median over rounds of the standard deviation of the differences) would detect at a
round with 80% power at ``alpha``; infinite when the test cannot reach ``alpha`` at all.

**Instability** (replaces "random's std first exceeds 2 x reset's", which fired on noise): a paired
Brown-Forsythe permutation test per round (statistic: mean absolute deviation from the median of
``b`` minus that of ``a``; the pair's two labels swapped within each seed), run as the same fixed
sequence from the sparsest round down, so it cannot fire on noise more often than ``alpha``. And per
round, the chains at chance: test accuracy not significantly above 50% (one-sided exact binomial test
at ``alpha`` on the test split's size). At the collapse itself random's spread is 0 (every chain at
exactly 50%), so the count at chance, not the spread, shows it.
"""
from __future__ import annotations

import itertools
import math
import os
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import optimize, stats

from .config import PhaseSettings

ALPHA = PhaseSettings.alpha
DELTA = PhaseSettings.delta  # effect-size threshold: 2 points of test accuracy
N_BOOT = PhaseSettings.n_boot
POWER = 0.80  # for the minimal detectable effect
TESTS = ("signflip", "t")
EXACT_MAX_N = 16  # up to this many units the sign-flip test enumerates every pattern
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
    Comparison("transfer", "masks-reset", "masks-random", "gap", "masks-reset - masks-random"),
)

METHOD = (
    "Per comparison a - b (paired by seed): rounds tested from the sparsest down at the full alpha with an "
    "exact one-sided sign-flip permutation test of the mean difference, stopping at the first round not "
    "significant (fixed-sequence testing, family-wise error <= alpha); pooled over domains the seed is the "
    "unit (cluster sign-flip, cluster bootstrap). Effect-size transition: lowest sparsity from which the mean "
    "difference stays >= delta, with a seed-bootstrap percentile interval. Instability: paired Brown-Forsythe "
    "permutation test of b's spread over a's, same fixed sequence; chains at chance: exact binomial test."
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
    and the difference ``gap = a - b`` (test accuracy, fractions)."""
    cols = ["pair", "seed", "round", "sparsity", "test_acc"]
    left = rows.loc[rows["strategy"] == a, cols].rename(columns={"test_acc": "a"})
    right = rows.loc[rows["strategy"] == b, cols].rename(columns={"test_acc": "b", "sparsity": "sparsity_b"})
    both = left.merge(right, on=["pair", "seed", "round"], how="inner")
    both["sparsity"] = (both["sparsity"] + both["sparsity_b"]) / 2
    both["gap"] = both["a"] - both["b"]
    return both.drop(columns="sparsity_b").sort_values(["round", "pair", "seed"]).reset_index(drop=True)


def _check_alpha(alpha: float) -> None:
    if not (0 < float(alpha) < 1):
        raise ValueError(f"alpha (the significance level) must be between 0 and 1, got {alpha!r}")


def _check_test(test: str) -> None:
    if test not in TESTS:
        raise ValueError(f"test = {test!r}: expected one of {', '.join(TESTS)}")


# ------------------------------------------------------------------------------------ the tests

@lru_cache(maxsize=32)
def _signs(n: int) -> np.ndarray:
    return np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # [2^n, n], first row all +1


def signflip_p(x: np.ndarray, *, rng_seed: int = 0, resamples: int = 20000) -> np.ndarray:
    """One-sided (greater) sign-flip permutation p-values of the sum (equivalently the mean) of the
    last axis of ``x``; exact (all 2^n patterns) up to ``EXACT_MAX_N`` units, else Monte Carlo with
    the identity included, p = (1 + #{>= observed}) / (1 + resamples). Vectorised over leading axes."""
    x = np.asarray(x, dtype=float)
    n = x.shape[-1]
    if n == 0:
        return np.full(x.shape[:-1], np.nan)
    obs = x.sum(axis=-1)
    tol = 1e-9 * np.maximum(1.0, np.abs(x).sum(axis=-1))
    if n <= EXACT_MAX_N:
        null = x @ _signs(n).T  # [..., 2^n]
        return (null >= (obs - tol)[..., None]).mean(axis=-1)
    s = np.random.default_rng(rng_seed).choice((-1.0, 1.0), size=(resamples, n))
    null = x @ s.T
    return (1 + (null >= (obs - tol)[..., None]).sum(axis=-1)) / (1 + resamples)


def t_p(x: np.ndarray) -> np.ndarray:
    """One-sided (greater) one-sample t-test p-values over the last axis (NaN where the spread is 0)."""
    x = np.asarray(x, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = x.std(axis=-1, ddof=1)
        p = stats.ttest_1samp(x, 0.0, axis=-1, alternative="greater").pvalue
    return np.where(sd > 0, p, np.nan)


def pvalues(x: np.ndarray, test: str = "signflip") -> np.ndarray:
    """``signflip_p`` or ``t_p`` of ``x`` (units on the last axis)."""
    _check_test(test)
    return signflip_p(x) if test == "signflip" else t_p(x)


def smallest_p(n: int, test: str = "signflip") -> float:
    """The smallest p-value a test can give with ``n`` units (sign-flip: 2^-n; t: 0)."""
    return 2.0 ** -n if test == "signflip" else 0.0


def fixed_sequence(p: np.ndarray, alpha: float) -> np.ndarray:
    """Index of the first round of the run of significant rounds that ends at the last round, testing
    from the last round backwards and stopping at the first p >= alpha (NaN stops too). Vectorised
    over leading axes; ``p.shape[-1]`` (one past the end) where the last round is not significant."""
    sig = np.asarray(p) < alpha  # NaN compares False
    r = sig.shape[-1]
    tail = np.cumprod(sig[..., ::-1], axis=-1)[..., ::-1]  # tail[k] = all of sig[k:]
    return r - tail.sum(axis=-1)


def _brown_forsythe_p(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Paired permutation Brown-Forsythe p-values (greater: b spreads more than a), per round.
    ``a``, ``b``: [rounds, n]. Under H0 a seed's two values are exchangeable, so each pattern swaps
    them within a subset of seeds (all 2^n patterns up to ``EXACT_MAX_N`` seeds)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = a.shape[-1]
    if n <= EXACT_MAX_N:
        swap = _signs(n) < 0  # [P, n]
    else:
        swap = np.random.default_rng(0).random((20000, n)) < 0.5
        swap[0] = False
    A = np.where(swap, b[..., None, :], a[..., None, :])  # [rounds, P, n]
    B = np.where(swap, a[..., None, :], b[..., None, :])

    def spread(v):
        return np.abs(v - np.median(v, axis=-1, keepdims=True)).mean(axis=-1)

    stat = spread(B) - spread(A)  # [rounds, P]; pattern 0 is the observed labelling
    tol = 1e-12
    return (stat >= stat[..., :1] - tol).mean(axis=-1)


# ------------------------------------------------------------------------------------ the units

@dataclass(frozen=True)
class Units:
    """One selection's paired data as arrays: ``per_round`` (round, sparsity), the seeds, and per round,
    seed and domain/pair the two strategies' accuracies ``a``, ``b`` and the difference ``g = a - b``
    ([rounds, seeds, pairs], NaN where missing)."""
    per_round: pd.DataFrame
    seeds: list
    a: np.ndarray
    b: np.ndarray

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


def units(rows: pd.DataFrame, cmp: Comparison) -> Units:
    """The paired rounds >= 1 of ``rows`` for ``cmp`` as arrays (see ``Units``)."""
    p = paired(rows, cmp.a, cmp.b)
    p = p[p["round"] >= 1]
    rounds = sorted(p["round"].unique().tolist())
    seeds = sorted(p["seed"].unique().tolist())
    pairs = sorted(p["pair"].unique().tolist())
    shape = (len(rounds), len(seeds), len(pairs))
    a, b = np.full(shape, np.nan), np.full(shape, np.nan)
    idx = (p["round"].map({r: i for i, r in enumerate(rounds)}).to_numpy(),
           p["seed"].map({x: i for i, x in enumerate(seeds)}).to_numpy(),
           p["pair"].map({q: i for i, q in enumerate(pairs)}).to_numpy())
    a[idx], b[idx] = p["a"].to_numpy(), p["b"].to_numpy()
    per_round = p.groupby("round", sort=True)["sparsity"].mean().reset_index()
    return Units(per_round, seeds, a, b)


def _cluster_sums(g: np.ndarray) -> np.ndarray:
    """[rounds, seeds]: the sum over pairs of each seed's differences (the pooled test's unit)."""
    return np.nansum(g, axis=2)


# ------------------------------------------------------------------------------------ per round

GAP_COLUMNS = ["round", "sparsity", "n", "units", "mean_gap", "std_gap", "p", "ci_lo", "ci_hi", "significant",
               "in_sequence", "tested", "p_spread", "spread_in_sequence"]


def gap_table(rows: pd.DataFrame, cmp: Comparison | None = None, *, alpha: float = ALPHA,
              test: str = "signflip") -> pd.DataFrame:
    """Per round >= 1 of one selection (a domain, a pair, or pooled): the paired difference and its test.

    Columns: round, sparsity, n (seeds, the units of the test), units (domain-seed pairs), mean_gap,
    std_gap (over the test's units: seeds, or seed means when pooled), p (one-sided, per round),
    ci_lo/ci_hi (two-sided 1 - alpha t-interval of the mean over the test's units, per round, not a
    simultaneous band), significant (p < alpha), in_sequence (part of the fixed-sequence run of
    significant rounds that ends at the last round: the rounds the transition claims), tested (n >= 2),
    p_spread and spread_in_sequence (the instability test, the same way)."""
    _check_alpha(alpha)
    _check_test(test)
    return _gap_table(units(rows, cmp or _default_comparison(rows)), alpha, test)


def _gap_table(u: Units, alpha: float, test: str) -> pd.DataFrame:
    per_round, g, counts = u.per_round, u.g, u.counts
    if not len(per_round):
        return pd.DataFrame(columns=GAP_COLUMNS)
    x = _cluster_sums(g)  # [rounds, seeds]
    have = counts > 0
    out = []
    for i, r in enumerate(per_round["round"]):
        xi = x[i][have[i]]
        # the seed's mean difference (over its pairs) is the unit; the sum is the test statistic
        means = xi / counts[i][have[i]]
        n = len(xi)
        row = dict(round=int(r), sparsity=float(per_round["sparsity"].iloc[i]), n=n, units=int(counts[i].sum()),
                   mean_gap=float(np.nansum(g[i]) / max(counts[i].sum(), 1)),
                   std_gap=float(np.std(means, ddof=1)) if n > 1 else np.nan, tested=n >= 2)
        if n >= 2:
            row["p"] = float(pvalues(xi, test)) if test == "signflip" else float(t_p(means))
            sd = row["std_gap"]
            half = stats.t.ppf(1 - alpha / 2, n - 1) * sd / math.sqrt(n) if sd > 0 else 0.0
            row["ci_lo"], row["ci_hi"] = float(means.mean() - half), float(means.mean() + half)
        else:
            row.update(p=np.nan, ci_lo=np.nan, ci_hi=np.nan)
        out.append(row)
    t = pd.DataFrame(out)
    t["significant"] = t["p"] < alpha
    start = int(fixed_sequence(t["p"].to_numpy(), alpha))
    t["in_sequence"] = np.arange(len(t)) >= start
    t["p_spread"] = _spread_p(u)
    s_start = int(fixed_sequence(t["p_spread"].to_numpy(), alpha))
    t["spread_in_sequence"] = np.arange(len(t)) >= s_start
    return t[GAP_COLUMNS]


def _spread_p(u: Units) -> np.ndarray:
    """Per round: the instability test's p (b spreads more than a), on the seeds' values (pooled: the
    seed means over domains or pairs, so the unit stays the seed); NaN with fewer than 2 seeds."""
    a, b = u.seed_means(u.a), u.seed_means(u.b)
    out = np.full(len(a), np.nan)
    for i in range(len(a)):
        ok = ~np.isnan(a[i]) & ~np.isnan(b[i])
        if ok.sum() >= 2:
            out[i] = _brown_forsythe_p(a[i][ok][None], b[i][ok][None])[0]
    return out


def _default_comparison(rows: pd.DataFrame) -> Comparison:
    stages = sorted(set(rows["stage"]))
    if len(stages) != 1:
        raise ValueError(f"rows must come from exactly one stage; got stages {stages}")
    found = comparisons(stages[0], set(rows["strategy"]))
    if not found:
        raise ValueError(f"no comparison possible for stage {stages[0]} with strategies {sorted(set(rows['strategy']))}")
    return found[0]


def chance_table(rows: pd.DataFrame, *, alpha: float = ALPHA) -> pd.DataFrame:
    """Per (strategy, round): chains, and chains at chance (test accuracy not significantly above 50%:
    one-sided exact binomial test at ``alpha`` on ``test_n`` test texts; NaN where ``test_n`` is
    unknown, i.e. rows written before it was recorded)."""
    cols = ["strategy", "round", "sparsity", "chains", "at_chance"]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    r = rows.copy()
    n = pd.to_numeric(r.get("test_n"), errors="coerce") if "test_n" in r else pd.Series(np.nan, index=r.index)
    k = np.round(r["test_acc"].to_numpy(float) * n.to_numpy(float))
    with np.errstate(invalid="ignore"):
        p = stats.binom.sf(k - 1, n.to_numpy(float), 0.5)  # P(X >= k) under chance
    r["at_chance"] = np.where(np.isnan(n.to_numpy(float)), np.nan, (p >= alpha).astype(float))
    out = (r.groupby(["strategy", "round"], sort=True)
           .agg(sparsity=("sparsity", "mean"), chains=("seed", "size"), at_chance=("at_chance", "sum"))
           .reset_index())
    known = r.groupby(["strategy", "round"])["at_chance"].apply(lambda v: v.notna().all()).to_numpy()
    out.loc[~known, "at_chance"] = np.nan
    return out[cols]


# ------------------------------------------------------------------------------------ transitions

@lru_cache(maxsize=256)
def mde_factor(n: int, alpha: float, test: str = "signflip", power: float = POWER) -> float:
    """The minimal detectable effect in units of the noise's standard deviation: the mean difference
    k * sigma that a one-sided test at ``alpha`` with ``n`` units detects with probability ``power``
    (normal noise). ``inf`` when the test cannot reach ``alpha`` (sign-flip with 2^-n > alpha)."""
    _check_test(test)
    if n < 2 or smallest_p(n, test) >= alpha:
        return math.inf
    if test == "t":
        crit = stats.t.ppf(1 - alpha, n - 1)

        def t_power(lam):
            return stats.nct.sf(crit, n - 1, lam) - power

        return float(optimize.brentq(t_power, 0.0, 60.0) / math.sqrt(n))
    z = np.random.default_rng(12345).standard_normal((4000, n))

    def sf_power(k):
        return float((signflip_p(z + k) < alpha).mean()) - power

    lo, hi = 0.0, 1.0
    while sf_power(hi) < 0:
        lo, hi = hi, hi * 2
        if hi > 1e3:
            return math.inf
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sf_power(mid) < 0 else (lo, mid)
    return hi


def power(effect: float, sigma: float, n: int, *, alpha: float = ALPHA, test: str = "signflip",
          draws: int = 20000, seed: int = 0) -> float:
    """Probability that one round's test rejects when the true mean difference is ``effect`` and the
    units' differences are N(effect, sigma^2), n units (Monte Carlo for sign-flip, exact for t)."""
    _check_test(test)
    if n < 2:
        return 0.0
    if test == "t":
        crit = stats.t.ppf(1 - alpha, n - 1)
        return float(stats.nct.sf(crit, n - 1, effect / sigma * math.sqrt(n)))
    z = np.random.default_rng(seed).standard_normal((draws, n)) * sigma + effect
    return float((signflip_p(z) < alpha).mean())


@dataclass(frozen=True)
class Transition:
    """The measured transitions of one selection and comparison. Sparsities are None unless the
    corresponding status is "detected"."""
    stage: str
    pair: str
    settings_hash: str
    comparison: str
    a: str
    b: str
    seeds: int
    units: int
    rounds_tested: int
    alpha: float
    test: str
    status: str  # detected | not detected | too few seeds
    round: int | None
    sparsity: float | None
    message: str
    delta: float
    effect_status: str
    effect_round: int | None
    effect_sparsity: float | None
    effect_ci_lo: float | None  # sparsity (None: below the first round tested / not defined)
    effect_ci_hi: float | None
    effect_undefined_share: float
    mde: float  # in accuracy (fraction); inf where not detectable at all
    sigma: float
    instability_status: str
    instability_round: int | None
    instability_sparsity: float | None
    chance_last: str  # "reset 0/5, random 5/5" at the sparsest round

    @property
    def text(self) -> str:
        return _pct_text(self.sparsity) if self.status == "detected" else self.status

    @property
    def effect_text(self) -> str:
        if self.effect_status != "detected":
            return self.effect_status
        lo = "<=first" if self.effect_ci_lo is None else _pct_text(self.effect_ci_lo)
        hi = "none" if self.effect_ci_hi is None else _pct_text(self.effect_ci_hi)
        return f"{_pct_text(self.effect_sparsity)} [{lo}, {hi}]"

    @property
    def mde_text(self) -> str:
        return "not detectable" if not math.isfinite(self.mde) else f"{100 * self.mde:.1f} pp"

    @property
    def instability_text(self) -> str:
        return _pct_text(self.instability_sparsity) if self.instability_status == "detected" else self.instability_status


def _pct_text(s: float | None) -> str:
    from .plots import sparsity_label

    return f"{sparsity_label(s)}%"


def bootstrap_weights(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """[n_boot, n] multinomial counts: each row one bootstrap resample of n seeds (with replacement)."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)


def effect_index(means: np.ndarray, delta: float, weights: np.ndarray | None = None) -> np.ndarray:
    """The effect-size transition as a round index: the first round from which the mean difference stays
    >= ``delta`` (``rounds`` when it is not reached at the last round). ``means``: [rounds, seeds], a
    seed's mean difference per round (NaN where missing). With bootstrap ``weights`` [B, seeds], one
    index per resample; without, the point estimate."""
    filled = np.where(np.isnan(means), 0.0, means)
    present = (~np.isnan(means)).astype(float)
    if weights is None:
        weights = np.ones((1, means.shape[1]))
    with np.errstate(invalid="ignore", divide="ignore"):
        m = (weights @ filled.T) / (weights @ present.T)  # [B, rounds]
    return fixed_sequence(np.where(m >= delta, 0.0, 1.0), 0.5)


def seed_means(rows: pd.DataFrame, cmp: Comparison) -> tuple[pd.DataFrame, list[int], np.ndarray]:
    """(per-round round/sparsity table, seeds, [rounds, seeds] each seed's mean difference over its
    domains or pairs)."""
    u = units(rows, cmp)
    return u.per_round, u.seeds, u.seed_means()


def transition(rows: pd.DataFrame, cmp: Comparison | None = None, *, alpha: float = ALPHA, delta: float = DELTA,
               test: str = "signflip", n_boot: int = N_BOOT, boot_seed: int = 0) -> Transition:
    """Measure the transitions of one selection (one domain or pair, or pooled) for one comparison."""
    _check_alpha(alpha)
    _check_test(test)
    if rows.empty:
        raise ValueError("no result rows given (has the study's obtain/transfer stage run?)")
    for col in ("stage", "settings_hash"):
        if rows[col].nunique() > 1:
            raise ValueError(f"rows mix several values of column {col!r}; pass one selection (ltnb.phase.select)")
    cmp = cmp or _default_comparison(rows)
    stage, h = rows["stage"].iloc[0], str(rows["settings_hash"].iloc[0])
    pair = rows["pair"].iloc[0] if rows["pair"].nunique() == 1 else POOLED
    u = units(rows, cmp)
    gaps = _gap_table(u, alpha, test)
    tested = gaps[gaps["tested"]].reset_index(drop=True)
    per_round, seeds, counts = u.per_round, u.seeds, u.counts
    n = int(tested["n"].max()) if len(tested) else 0
    base = dict(stage=stage, pair=pair, settings_hash=h, comparison=cmp.name, a=cmp.a, b=cmp.b, seeds=len(seeds),
                units=int(counts.max(axis=0).sum()) if counts.size else 0, rounds_tested=len(tested),
                alpha=float(alpha), test=test, delta=float(delta))
    chance = chance_table(rows[rows["strategy"].isin([cmp.a, cmp.b])], alpha=alpha)
    last = chance[chance["round"] == chance["round"].max()] if len(chance) else chance
    base["chance_last"] = ", ".join(
        f"{s} {'?' if pd.isna(c) else int(c)}/{k}" for s, c, k in zip(last["strategy"], last["at_chance"], last["chains"]))

    means = u.seed_means()  # [rounds, seeds]
    sigma = float(np.nanmedian(tested["std_gap"])) if len(tested) else float("nan")
    base["sigma"] = sigma
    base["mde"] = mde_factor(n, float(alpha), test) * sigma if n >= 2 and np.isfinite(sigma) else math.inf

    # the effect-size transition, and its bootstrap interval
    if means.size:
        k = int(effect_index(means, delta)[0])
        boot = effect_index(means, delta, bootstrap_weights(means.shape[1], n_boot, boot_seed))
        rnd = per_round["round"].tolist()
        sp = per_round["sparsity"].tolist()
        lo = int(np.percentile(boot, 100 * alpha / 2, method="lower"))
        hi = int(np.percentile(boot, 100 * (1 - alpha / 2), method="higher"))
        base.update(effect_status="detected" if k < len(rnd) else "not reached",
                    effect_round=rnd[k] if k < len(rnd) else None, effect_sparsity=sp[k] if k < len(rnd) else None,
                    effect_ci_lo=sp[lo] if lo < len(rnd) else None, effect_ci_hi=sp[hi] if hi < len(rnd) else None,
                    effect_undefined_share=float((boot >= len(rnd)).mean()))
    else:
        base.update(effect_status="no data", effect_round=None, effect_sparsity=None, effect_ci_lo=None,
                    effect_ci_hi=None, effect_undefined_share=float("nan"))

    # instability
    if len(tested) and tested["spread_in_sequence"].any():
        first = tested[tested["spread_in_sequence"]].iloc[0]
        base.update(instability_status="detected", instability_round=int(first["round"]),
                    instability_sparsity=float(first["sparsity"]))
    else:
        base.update(instability_status="not detected" if len(tested) else "too few seeds", instability_round=None,
                    instability_sparsity=None)

    # the gap transition
    where = "pooled over domains or pairs (seed = unit)" if pair == POOLED else pair
    if tested.empty or smallest_p(n, test) >= alpha:
        msg = (f"{where}: too few seeds for the {test} test: {n} seed(s) with both {cmp.a} and {cmp.b}; its smallest "
               f"p-value is {smallest_p(n, test):.3g}, not below alpha = {alpha:g}. Run at least "
               f"{_seeds_needed(alpha, test)} seeds.")
        return Transition(**base, status="too few seeds", round=None, sparsity=None, message=msg)
    if tested["in_sequence"].any():
        first = tested[tested["in_sequence"]].iloc[0]
        msg = (f"{where}: {cmp.a} beats {cmp.b} at every round from round {int(first['round'])} "
               f"({_pct_text(float(first['sparsity']))} sparsity) to the last (difference {100 * first['mean_gap']:+.2f} pp "
               f"there, p = {first['p']:.3g} < alpha = {alpha:g}; fixed sequence over {len(tested)} rounds, {n} seeds)")
        if int(first["round"]) == int(tested["round"].iloc[0]):
            msg += "; already at the first pruned round, so no 'alike' regime was observed"
        return Transition(**base, status="detected", round=int(first["round"]), sparsity=float(first["sparsity"]),
                          message=msg)
    lastrow = tested.iloc[-1]
    msg = (f"{where}: not detected: the {cmp.a} - {cmp.b} difference is not significantly positive at the sparsest "
           f"round (round {int(lastrow['round'])}, {100 * lastrow['mean_gap']:+.2f} pp, p = {lastrow['p']:.3g} >= "
           f"alpha = {alpha:g}); with {n} seeds this design detects about {base['mde'] * 100:.1f} pp at a round "
           f"(80% power)")
    return Transition(**base, status="not detected", round=None, sparsity=None, message=msg)


def _seeds_needed(alpha: float, test: str) -> int:
    """The fewest units with which the test can give p < alpha (sign-flip: 2^-n < alpha)."""
    return max(2, math.floor(math.log2(1 / alpha)) + 1) if test == "signflip" else 2


SUMMARY_COLUMNS = ["stage", "pair", "settings_hash", "comparison", "a", "b", "seeds", "units", "rounds_tested",
                   "test", "alpha", "transition", "transition_round", "transition_sparsity", "delta",
                   "effect_transition", "effect_sparsity", "effect_ci_lo", "effect_ci_hi", "mde_pp",
                   "instability", "instability_sparsity", "chance_last", "message", "method"]


def summary(study_or_rows, alpha: float = ALPHA, delta: float = DELTA, test: str = "signflip",
            n_boot: int = N_BOOT) -> pd.DataFrame:
    """One row per (stage, domain or pair or pooled, settings hash, comparison) with the measured
    transitions. ``study_or_rows``: a study folder or result rows (``ltnb.results.load``)."""
    if isinstance(study_or_rows, pd.DataFrame):
        rows = study_or_rows
    elif isinstance(study_or_rows, (str, os.PathLike)):
        from . import paths, results

        rows = results.load(paths.resolve_study(study_or_rows))
    else:
        raise TypeError(f"study_or_rows must be a study folder or a DataFrame of result rows, "
                        f"got {type(study_or_rows).__name__}")
    out = []
    for sel in selections(rows, pooled=True):
        part = select(rows, sel)
        for cmp in comparisons(sel.stage, set(part["strategy"])):
            t = transition(part, cmp, alpha=alpha, delta=delta, test=test, n_boot=n_boot)
            d = asdict(t)
            out.append(dict(
                stage=t.stage, pair=sel.pair, settings_hash=t.settings_hash, comparison=t.comparison, a=t.a, b=t.b,
                seeds=t.seeds, units=t.units, rounds_tested=t.rounds_tested, test=t.test, alpha=t.alpha,
                transition=t.text, transition_round=d["round"], transition_sparsity=d["sparsity"], delta=t.delta,
                effect_transition=t.effect_text, effect_sparsity=t.effect_sparsity, effect_ci_lo=t.effect_ci_lo,
                effect_ci_hi=t.effect_ci_hi, mde_pp=100 * t.mde, instability=t.instability_text,
                instability_sparsity=t.instability_sparsity, chance_last=t.chance_last, message=t.message,
                method=METHOD))
    table = pd.DataFrame(out, columns=SUMMARY_COLUMNS)
    for c in ("transition_round", "transition_sparsity", "effect_sparsity", "effect_ci_lo", "effect_ci_hi",
              "instability_sparsity", "mde_pp"):
        table[c] = pd.to_numeric(table[c], errors="coerce").astype(float)
    return table


# ------------------------------------------------------------------------------------ simulation

def simulate_rows(*, domains: int = 5, seeds: int = 5, rounds: int = 15, effect: float = 0.0,
                  from_round: int | None = None, sigma: float = 0.04, seed_sd: float = 0.0,
                  rng: np.random.Generator | int = 0, prune_fraction: float = 0.35, test_n: int = 248) -> pd.DataFrame:
    """Result rows of a planted study: per domain, seed and round, reset's and random's test accuracy,
    with a reset - random difference of ``effect`` from round ``from_round`` on (0 before, or
    everywhere when None) plus noise: a per (seed, round) shock of sd ``seed_sd`` shared by every
    domain of that seed (correlated seeds) and an independent one of sd ``sigma``. For tests and
    power calculations."""
    rng = np.random.default_rng(rng)
    shared = rng.normal(0, seed_sd, (seeds, rounds + 1)) if seed_sd > 0 else np.zeros((seeds, rounds + 1))
    out = []
    for d in range(domains):
        for s in range(seeds):
            for r in range(rounds + 1):
                base = 0.65 + rng.normal(0, 0.02)
                planted = effect if r >= 1 and (from_round is None or r >= from_round) else 0.0
                diff = (planted + shared[s, r] + rng.normal(0, sigma)) if r >= 1 else 0.0
                sp = 1 - (1 - prune_fraction) ** r
                for strategy, acc in (("reset", base + diff / 2), ("random", base - diff / 2)):
                    out.append(dict(stage="obtain", source=f"d{d}", target=f"d{d}", domain=f"d{d}", pair=f"d{d}",
                                    seed=s, strategy=strategy, round=r, sparsity=sp, val_acc=acc, test_acc=acc,
                                    test_n=test_n, best_epoch=1, epochs_run=1, seconds=0.0, settings_hash="sim"))
    return pd.DataFrame(out)


def simulate_transitions(studies: int, *, domains: int = 5, seeds: int = 5, rounds: int = 15, effect: float = 0.0,
                         from_round: int | None = None, sigma: float = 0.04, seed_sd: float = 0.0,
                         alpha: float = ALPHA, test: str = "signflip", rng_seed: int = 0,
                         naive_pooled: bool = False) -> dict[str, np.ndarray]:
    """Vectorised planted studies (the same model as ``simulate_rows``, differences only): the gap
    transition's round index per study, per domain (``[studies, domains]``) and pooled
    (``[studies]``); ``rounds`` (one past the last index) means not detected. ``naive_pooled``
    treats every domain-seed pair as an independent unit (the wrong test when seeds are correlated)."""
    rng = np.random.default_rng(rng_seed)
    planted = np.array([effect if from_round is None or r >= from_round else 0.0 for r in range(1, rounds + 1)])
    shared = rng.normal(0, seed_sd, (studies, 1, rounds, seeds)) if seed_sd > 0 else 0.0
    g = planted[None, None, :, None] + shared + rng.normal(0, sigma, (studies, domains, rounds, seeds))
    per_domain = fixed_sequence(pvalues(g, test), alpha)  # [studies, domains]
    if naive_pooled:
        flat = g.transpose(0, 2, 1, 3).reshape(studies, rounds, domains * seeds)
        pooled = fixed_sequence(pvalues(flat, test), alpha)
    else:
        sums = g.sum(axis=1)  # [studies, rounds, seeds]: the seed is the unit
        pooled = fixed_sequence(pvalues(sums, test), alpha)
    return {"per_domain": per_domain, "pooled": pooled}
