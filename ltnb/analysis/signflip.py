"""The exact tests of the phase analysis, with the seed as the unit: one-sided sign-flip p-values and
their inverted intervals, Westfall and Young's step-down max-T over rounds on a studentized statistic,
the binomial "at chance" test, and the power of these tests. Torch-free; ``ltnb.analysis.phase`` re-exports
every name.

**Studentized max-T** (``maxt_stepdown``). Per round the statistic is the sum of the units'
differences over the root of their sum of squares, ``S / sqrt(Q)``: under sign flips ``Q`` is the
same for every pattern, so per round this is a monotone function of the one-sample t statistic
(``t = sqrt(n - 1) u / sqrt(n - u^2)`` with ``u = S / sqrt(Q)``), and every round's null
distribution has the same bounded range ``[-sqrt(n), sqrt(n)]``. A round whose seeds scatter 8x as
much as the others' no longer sets the null maximum (with raw means it did: a 3-pp gap over quiet
rounds was called in 2% of simulated domains when three rounds were 8x noisier). Rounds whose
differences are all exactly 0 have no statistic and take no part. A floor of one test example per unit
(``Q + n floor^2``) keeps rounds that differ by one test example in every seed from looking perfectly
consistent.
"""
from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np
from scipy import optimize, stats

from ltnb.base.config import PhaseSettings

ALPHA = PhaseSettings.alpha
POWER = 0.80  # for the minimal detectable effect
TESTS = ("signflip", "t")
EXACT_MAX_N = 16  # up to this many units the sign-flip tests enumerate every pattern
MC_PATTERNS = 20000  # beyond it, this many random patterns (the identity included)
CHANCE = 0.5


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


def sign_patterns(n: int, *, rng_seed: int = 0) -> np.ndarray:
    """[P, n] sign patterns, the identity first: all 2^n up to ``EXACT_MAX_N`` units, else
    ``MC_PATTERNS`` random ones."""
    if n <= EXACT_MAX_N:
        return _signs(n)
    s = np.random.default_rng(rng_seed).choice((-1.0, 1.0), size=(MC_PATTERNS, n))
    s[0] = 1.0
    return s


def signflip_p(x: np.ndarray, *, rng_seed: int = 0) -> np.ndarray:
    """One-sided (greater) sign-flip permutation p-values of the sum (equivalently the mean) of the
    last axis of ``x``: the share of sign patterns whose sum is at least the observed one (exact up to
    ``EXACT_MAX_N`` units, else Monte Carlo with the identity included). Vectorised over leading axes."""
    x = np.asarray(x, dtype=float)
    n = x.shape[-1]
    if n == 0:
        return np.full(x.shape[:-1], np.nan)
    obs = x.sum(axis=-1)
    tol = 1e-9 * np.maximum(1.0, np.abs(x).sum(axis=-1))
    null = x @ sign_patterns(n, rng_seed=rng_seed).T  # [..., P]
    return (null >= (obs - tol)[..., None]).mean(axis=-1)


def t_p(x: np.ndarray) -> np.ndarray:
    """One-sided (greater) one-sample t-test p-values over the last axis (NaN where the spread is 0)."""
    x = np.asarray(x, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = x.std(axis=-1, ddof=1)
        p = stats.ttest_1samp(x, 0.0, axis=-1, alternative="greater").pvalue
    return np.where(sd > 0, p, np.nan)


def smallest_p(n: int, test: str = "signflip") -> float:
    """The smallest p-value a test can give with ``n`` units (sign-flip: 2^-n; t: 0)."""
    return 2.0 ** -n if test == "signflip" else 0.0


def interval_level(n: int, alpha: float) -> float:
    """The coverage of ``signflip_interval`` with ``n`` units: 1 - 2 (ceil(alpha 2^n) - 1) / 2^n for
    symmetric continuous differences (5 seeds at alpha 0.05: 0.9375; 1.0 when n is too small for any
    bound)."""
    if n < 1:
        return float("nan")
    if n > EXACT_MAX_N:
        return 1 - 2 * alpha
    return 1 - 2 * (math.ceil(alpha * 2 ** n - 1e-12) - 1) / 2 ** n


def signflip_interval(x, alpha: float = ALPHA) -> tuple[float, float]:
    """The exact interval for the centre of symmetry of ``x`` (its mean) by inverting the one-sided
    sign-flip test at ``alpha`` on each side: the lower bound is the k-th smallest, the upper the k-th
    largest of the 2^n - 1 means of non-empty subsets of ``x``, k = ceil(alpha 2^n) - 1 (a theta is
    kept when the test of mean = theta does not reject). So ``lo > 0`` exactly when ``signflip_p(x) <
    alpha``. Coverage: ``interval_level``. (-inf, inf) when k is 0 (too few units)."""
    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return float("nan"), float("nan")
    member = sign_patterns(n) < 0  # each pattern's flipped set
    size = member.sum(axis=1)
    keep = size > 0
    means = np.sort((member[keep] @ x) / size[keep])
    k = math.ceil(alpha * len(member) - 1e-12) - 1 if n <= EXACT_MAX_N else math.ceil(alpha * len(means))
    if k <= 0:
        return -math.inf, math.inf
    return float(means[k - 1]), float(means[-k])


def maxt_stepdown(x: np.ndarray, use: np.ndarray | None = None, *, studentize: bool = True,
                  floor: float | np.ndarray = 0.0) -> np.ndarray:
    """Westfall-Young step-down max-T adjusted p-values (one-sided, greater) per round.

    ``x``: [..., rounds, units], one value per unit (seed) and round (NaN: missing, counts as 0);
    ``use``: [..., rounds] which rounds take part (NaN p elsewhere). The statistic of a round is
    studentized, ``S / sqrt(Q + n floor^2)`` (``studentize=False``: the mean over units, as before 2026-12); a
    round whose values are all 0 takes no part. ``floor`` ([..., rounds] or a number): the smallest
    spread a unit's value is taken to have (``phase`` passes one test example, ``1 / test_n``), so that
    differences of one test example in every seed, at the test set's resolution, do not look perfectly
    consistent (without it such a round reaches ``sqrt(n)``, the most any round can). The null distribution flips each unit's signs jointly
    across every round (all 2^n patterns up to ``EXACT_MAX_N`` units), so the rounds' dependence is
    kept and the family-wise error over the rounds used is at most alpha (strong control by the
    step-down and subset pivotality of joint sign flips: each round's ``Q`` is fixed under the flips).
    Vectorised over leading axes."""
    x = np.nan_to_num(np.asarray(x, dtype=float))
    use = np.ones(x.shape[:-1], bool) if use is None else np.asarray(use, bool)
    n = x.shape[-1]
    if n == 0:
        return np.full(use.shape, np.nan)
    s = sign_patterns(n)
    null = np.einsum("...rn,pn->...pr", x, s)  # [..., P, rounds]; pattern 0 is the observed data
    if studentize:
        q = np.sqrt((x ** 2).sum(axis=-1) + n * np.broadcast_to(np.asarray(floor, float), x.shape[:-1]) ** 2)
        use = use & ((x ** 2).sum(axis=-1) > 0)  # q is the same for every pattern
        null = null / np.where(q > 0, q, 1.0)[..., None, :]
    else:
        null = null / n
    null = np.where(use[..., None, :], null, -np.inf)
    obs = null[..., 0, :]
    order = np.argsort(-obs, axis=-1, kind="stable")
    obs_sorted = np.take_along_axis(obs, order, axis=-1)
    null_sorted = np.take_along_axis(null, np.broadcast_to(order[..., None, :], null.shape), axis=-1)
    tail_max = np.maximum.accumulate(null_sorted[..., ::-1], axis=-1)[..., ::-1]  # max over this and later
    tol = 1e-9 * np.maximum(1.0, np.abs(obs_sorted))
    q_adj = (tail_max >= (obs_sorted - tol)[..., None, :]).mean(axis=-2)
    q_adj = np.maximum.accumulate(q_adj, axis=-1)  # step-down: never below an earlier (larger) round's p
    p = np.empty_like(q_adj)
    np.put_along_axis(p, order, q_adj, axis=-1)
    return np.where(use, p, np.nan)


def first_significant(p: np.ndarray, alpha: float) -> np.ndarray:
    """Index of the first round with p < alpha (NaN is not significant); ``rounds`` where none."""
    sig = np.asarray(p) < alpha
    r = sig.shape[-1]
    return np.where(sig.any(axis=-1), sig.argmax(axis=-1), r)


def at_chance(acc, n, alpha: float = ALPHA) -> np.ndarray:
    """Test accuracy not significantly above 50% (one-sided exact binomial test at ``alpha`` on ``n``
    test texts); NaN where ``n`` is unknown."""
    acc, n = np.asarray(acc, float), np.asarray(n, float)
    k = np.round(acc * n)
    with np.errstate(invalid="ignore"):
        p = stats.binom.sf(k - 1, n, CHANCE)  # P(X >= k) under chance
    return np.where(np.isnan(n) | np.isnan(acc), np.nan, (p >= alpha).astype(float))



# ------------------------------------------------------------------------------------ power

@lru_cache(maxsize=256)
def mde_factor(n: int, alpha: float, test: str = "signflip", power: float = POWER) -> float:
    """The minimal detectable effect in units of the noise's standard deviation: the mean difference
    k * sigma that a one-sided test at ``alpha`` with ``n`` units detects with probability ``power``
    (normal noise). ``inf`` when the test cannot reach ``alpha`` (sign-flip with 2^-n >= alpha)."""
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

