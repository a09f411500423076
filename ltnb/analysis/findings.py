"""A verdict for each of the paper's four findings, computed from the result rows, never written by hand.

Each finding (docs/protocol.md, "Reported findings") is one primary estimand taken from the paper's own
words, with its own test and its own interval, and a verdict that either side can reach: **held**, **not
held** or **inconclusive**. The criteria are the texts in ``CRITERIA`` and the margins below, fixed before
the run; every verdict carries ``criteria_hash``, a hash of those texts and margins and of this module's
and the statistics modules' code, so a verdict computed under other criteria or other code shows it.

**The windows** come from the paper's sentences: finding 2 "TICKET-RESET and TICKET-RANDOM have similar
test performance until about 96% sparsity ... [random] drops off much faster than TICKET-RESET after 96%
sparsity", finding 3b "relatively comparable to MASKS-RESET up to 96% ... the initial values play a much
bigger role ... in the deeper stages". So each is two estimands, the gap averaged over the rounds at or
below 96% (``TRANSITION``) and over the rounds above it, and their difference: "match" below is shown by
equivalence within ``MATCH``, "drops faster" above by superiority (the interval above 0). Findings 1 and
3a speak of "0-90% sparsity" (``LOW_SPARSITY``). The collapse point, the onset and the instability test
(``ltnb.analysis.phase``) are **secondary**: reported in finding 2's detail, never deciding it.

**Margins, once.** ``MATCH`` = 3 points: the smallest difference the paper itself names (its "3-5%
dropoff" is what it calls "without much loss"), so two curves within 3 points of each other "match" in
the paper's sense; it is the equivalence margin of findings 1, 2 and 3b. ``TRANSFER_DROP`` = 5 points: the
top of that "3-5% dropoff", the non-inferiority margin of finding 3a ("can be transferred across domains
without much loss in accuracy"). ``SAME_ROUND`` = 1 round (x0.65 density): collapse points closer than
that are the same at the design's resolution (finding 4).

**The unit** is the seed throughout (a seed's domains or pairs share its draws): per seed, the mean over
its domains or pairs; tests are exact one-sided sign-flip tests (``phase.signflip_p``) and intervals invert
them (``phase.signflip_interval``: the lower bound is above 0 exactly when the test of "> 0" is
significant), labelled with their exact coverage (5 seeds: 93.75%, the interval is [min, max] of the
seeds). "Equivalent within +-m" means the whole interval lies inside (-m, m) (two one-sided tests at alpha
each).

**Power, from the study's own noise** (``power_text``): for each finding the smallest effect its procedure
detects with 80% power (``phase.mde_factor`` x the seeds' spread), or the smallest margin within which it
shows equivalence with 80% power when the truth is 0; an "inconclusive" verdict says which effects its
interval excluded. "Not held" is said only where the interval shows the opposite (equivalence within the
margin, or the other sign).

**No knife-edge rule.** Until 2026-12 a verdict was also recomputed with every accuracy moved by 2 test
examples and called inconclusive if that changed it. It had no error-rate meaning (2 examples are 0.8
points of restaurants' 248 test texts and 0.09 of products' 2,110), and it did not stop verdicts flipping
between CPUs: another CPU moves every training like a new seed (1.8 pp on average at the same commit), so
what carries across machines is the procedure's error rates and power (tests/test_simulations.py prints
them), and estimands averaged over many rounds, not a perturbation of one set of rows.

A finding whose trainings mostly did not converge (``converged``: the rows' column, or ``best_epoch <
epochs_run`` for rows written before it) is **not assessable: not converged**, with the numbers.
"""
from __future__ import annotations

import hashlib
import inspect
import itertools
import math
from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import numpy as np
import pandas as pd

from ltnb.analysis import phase

TRANSITION = 0.96  # "until about 96% sparsity" / "after 96% sparsity" (findings 2 and 3b)
LOW_SPARSITY = 0.90  # "in early stages of sparsification (0-90%)", "(up to 90% sparsity)" (findings 1 and 3a)
MATCH = 0.03  # "similar", "comparable": within 3 points, the smallest difference the paper names
TRANSFER_DROP = 0.05  # "a 3-5% dropoff ... without much loss": a drop of at most 5 points
SAME_ROUND = 1.0  # collapse points within one IMP round of each other count as the same (the design's resolution)
CONVERGED_SHARE = 0.5  # below this share of converged trainings a finding is not assessable
NOT_CONVERGED = "not assessable: not converged"
EPS = 1e-9

CRITERIA = {
    "1": "held if the interval of reset - FULL-MODEL over the rounds in (0, 90%] lies above 0 (sign-flip, seed = "
         "unit); not held if it lies below 0 or inside (-MATCH, MATCH) (no advantage the paper would call one); "
         "else inconclusive",
    "2": "primary: reset - random averaged over the rounds at or below 96% sparsity (low) and over the rounds above "
         "96% (high), per seed. Held if low is equivalent within +-MATCH AND high's interval lies above 0; not held "
         "if low's interval lies outside +-MATCH, or high's lies below 0 or inside (-MATCH, MATCH) without being "
         "above 0; else inconclusive. Collapse points, onset and instability are secondary",
    "3a": "held if TICKET-TARGET - MASKS-RESET over the rounds in (0, 90%] has its interval's upper end at or below "
          "TRANSFER_DROP (the drop is at most 5 points: non-inferiority); not held if its lower end is above "
          "TRANSFER_DROP; else inconclusive",
    "3b": "the windows of finding 2 on masks-reset - masks-random: held if low is equivalent within +-MATCH AND "
          "high's interval lies above 0; not held if low's interval lies outside +-MATCH, or high's lies below 0 or "
          "inside (-MATCH, MATCH) without being above 0; else inconclusive",
    "4": "held if the collapse points of TICKET-RANDOM differ between domains (permutation test of the between-domain "
         "spread, domain labels permuted within each seed, p < alpha); not held if every pair of domains is "
         "equivalent within +-SAME_ROUND rounds (intersection-union); else inconclusive",
}

COLUMNS = ["finding", "claim", "criterion", "statistic", "estimate", "ci_lo", "ci_hi", "ci_level", "unit", "p", "n",
           "verdict", "power", "detail", "criteria_hash"]


def criteria_hash() -> str:
    """SHA-256 (16 hex digits) of the criteria texts, the margins and the code of this module and of the
    statistics modules (``ltnb.analysis.phase``, ``ltnb.analysis.signflip``, ``ltnb.analysis.collapse``): what a
    verdict was decided by."""
    from ltnb.analysis import collapse, signflip
    from ltnb.analysis import findings as me

    h = hashlib.sha256()
    for k in sorted(CRITERIA):
        h.update(f"{k}\0{CRITERIA[k]}\0".encode())
    h.update(repr((TRANSITION, LOW_SPARSITY, MATCH, TRANSFER_DROP, SAME_ROUND, CONVERGED_SHARE,
                   phase.AT_CHANCE_SHARE)).encode())
    for module in (me, phase, signflip, collapse):
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
    power: str = ""
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
    sd: float = float("nan")  # of the seeds' values (ddof 1)

    @property
    def ok(self) -> bool:
        return self.seeds >= 2 and np.isfinite(self.estimate)


NO_STAT = SeedStat(*(float("nan"),) * 5, 0)


def seed_stat_of(per_seed, alpha: float) -> SeedStat:
    """A ``SeedStat`` of one value per seed (NaN dropped): the mean, the exact sign-flip p of "> 0" and
    the exact interval."""
    x = np.asarray(per_seed, float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return NO_STAT
    if n < 2:
        return SeedStat(float(x.mean()), float("nan"), float("nan"), float("nan"), float("nan"), n)
    lo, hi = phase.signflip_interval(x, alpha)
    return SeedStat(float(x.mean()), lo, hi, phase.interval_level(n, alpha), float(phase.signflip_p(x)), n,
                    float(np.std(x, ddof=1)))


def seed_stat(values: pd.DataFrame, alpha: float) -> SeedStat:
    """``values``: columns seed, value (one per domain-seed or pair-seed unit). Per seed the mean over
    its units; then ``seed_stat_of``."""
    return seed_stat_of(values.groupby("seed")["value"].mean().to_numpy(float), alpha)


def superior(s: SeedStat, margin: float) -> str:
    """held (interval above 0), not held (below 0, or inside +-margin), or inconclusive."""
    if not s.ok:
        return "no data"
    if s.lo > 0:
        return "held"
    if s.hi < 0 or (-margin < s.lo and s.hi < margin):
        return "not held"
    return "inconclusive"


def equivalent(s: SeedStat, margin: float) -> bool:
    return s.ok and -margin < s.lo and s.hi < margin


def apart(s: SeedStat, margin: float) -> bool:
    return s.ok and (s.lo > margin or s.hi < -margin)


def match_then_gap(low: SeedStat, high: SeedStat, margin: float) -> str:
    """Findings 2 and 3b: "alike at or below 96%, a beats b above it"."""
    if not (low.ok and high.ok):
        return "no data"
    if equivalent(low, margin) and high.lo > 0:
        return "held"
    if apart(low, margin) or high.hi < 0 or (high.lo <= 0 and -margin < high.lo and high.hi < margin):
        return "not held"
    return "inconclusive"


def non_inferior(s: SeedStat, margin: float) -> str:
    """Finding 3a: held if the drop's upper bound is at most ``margin``, not held if its lower bound is above."""
    if not s.ok:
        return "no data"
    if s.hi <= margin + EPS:
        return "held"
    if s.lo > margin + EPS:
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


def interval_text(s: SeedStat, name: str = "") -> str:
    """"low +0.40 pp [-0.52, +1.31] (93.75%)"."""
    if not s.ok:
        return f"{name} -".strip()
    return f"{name} {_pp(s.estimate)} pp [{_pp(s.lo)}, {_pp(s.hi)}] ({100 * s.level:.2f}%)".strip()


# ---------------------------------------------------------------------------------- power

@lru_cache(maxsize=64)
def equivalence_factor(n: int, alpha: float, power: float = phase.POWER, draws: int = 20000) -> float:
    """The margin, in units of the seeds' standard deviation, within which the exact interval of ``n``
    seeds lies with probability ``power`` when the true difference is 0 (normal noise; Monte Carlo)."""
    if n < 2 or phase.smallest_p(n) >= alpha:
        return math.inf
    z = np.random.default_rng(54321).standard_normal((draws, n))
    k = math.ceil(alpha * 2 ** n - 1e-12) - 1 if n <= phase.EXACT_MAX_N else None
    if k is None or k <= 0:
        return math.inf
    member = phase.sign_patterns(n) < 0
    size = member.sum(axis=1)
    means = np.sort((z @ member[size > 0].T) / size[size > 0], axis=1)
    reach = np.maximum(-means[:, k - 1], means[:, -k])  # the interval lies inside (-m, m) iff m > reach
    return float(np.quantile(reach, power))


def power_text(kind: str, s: SeedStat, alpha: float, margin: float | None = None) -> str:
    """What this estimand's procedure detects with 80% power from these seeds' spread."""
    if not s.ok or not np.isfinite(s.sd) or s.sd <= 0:
        return "-"
    sup = phase.mde_factor(s.seeds, float(alpha)) * s.sd
    if kind == "superiority":
        return f"detects {100 * sup:.1f} pp with 80% power"
    if kind == "equivalence":
        return f"shows a match within +-{100 * equivalence_factor(s.seeds, float(alpha)) * s.sd:.1f} pp with 80% power"
    if kind == "non-inferiority":
        return (f"shows a drop <= {100 * margin:g} pp with 80% power when the true drop is <= "
                f"{100 * (margin - sup):.1f} pp")
    raise ValueError(f"power_text: unknown kind {kind!r}")


def _excluded(s: SeedStat) -> str:
    return f"; the interval excludes gaps below {_pp(s.lo)} and above {_pp(s.hi)} pp" if s.ok else ""


# ---------------------------------------------------------------------------------- windows

def window_values(paired_rows: pd.DataFrame, lo: float, hi: float, *, value: str = "gap",
                  include_lo: bool = False) -> pd.DataFrame:
    """Per (pair, seed): the mean of ``value`` over the rounds >= 1 with sparsity in (lo, hi] (``include_lo``:
    [lo, hi]). Columns pair, seed, value."""
    sp = paired_rows["sparsity"]
    m = (paired_rows["round"] >= 1) & (sp <= hi + EPS) & ((sp >= lo - EPS) if include_lo else (sp > lo + EPS))
    part = paired_rows[m]
    return part.groupby(["pair", "seed"])[value].mean().rename("value").reset_index()


def windows(paired_rows: pd.DataFrame, alpha: float, edge: float = TRANSITION) -> tuple[SeedStat, SeedStat, SeedStat]:
    """(low, high, high - low): the gap averaged over rounds with sparsity in (0, edge] and in (edge, 1),
    per seed (mean over its domains or pairs), and their difference per unit."""
    low = window_values(paired_rows, 0.0, edge)
    high = window_values(paired_rows, edge, 1.0)
    both = low.merge(high, on=["pair", "seed"], suffixes=("_low", "_high"))
    diff = both.assign(value=both["value_high"] - both["value_low"])[["pair", "seed", "value"]]
    return seed_stat(low, alpha), seed_stat(high, alpha), seed_stat(diff, alpha)


# ---------------------------------------------------------------------------------- the findings

def finding1(rows: pd.DataFrame, alpha: float, margin: float) -> Finding:
    f = Finding("1", "TICKET-RESET beats FULL-MODEL at 0-90% sparsity (paper: on Books, Electronics, Home)",
                CRITERIA["1"], "reset - FULL-MODEL, mean over rounds with sparsity in (0, 90%] (pp)")
    ob = rows[(rows["stage"] == "obtain") & (rows["strategy"] == "reset")]
    if ob.empty or not (ob["round"] == 0).any():
        f.detail = "needs reset chains with their dense round 0"
        return f
    dense = ob[ob["round"] == 0].set_index(["pair", "seed"])["test_acc"]
    low = ob[(ob["round"] >= 1) & (ob["sparsity"] <= LOW_SPARSITY + EPS)]
    if low.empty:
        f.detail = "needs reset rounds between 0 and 90% sparsity"
        return f
    v = low.groupby(["pair", "seed"])["test_acc"].mean() - dense
    values = v.dropna().rename("value").reset_index()
    s = seed_stat(values, alpha)
    _fill(f, s)
    f.n = _n(values, "domains")
    f.verdict = superior(s, margin)
    f.power = power_text("superiority", s, alpha) + "; " + power_text("equivalence", s, alpha)
    per = values.groupby("pair")["value"].mean().mul(100).round(1)
    f.detail = ("per domain (pp): " + ", ".join(f"{k} {v:+.1f}" for k, v in per.items())
                + (_excluded(s) if f.verdict == "inconclusive" else "") + _few(s.seeds, alpha))
    return f


def finding2(rows: pd.DataFrame, alpha: float, margin: float, *, detail: bool = True) -> Finding:
    f = Finding("2", "TICKET-RESET and TICKET-RANDOM match until ~96% sparsity; beyond it random drops faster and is "
                "unstable, reset stays stable", CRITERIA["2"],
                "reset - random, mean over the rounds above 96% sparsity (pp); at or below 96% in the detail")
    ob = rows[rows["stage"] == "obtain"]
    cmp = phase.COMPARISONS[0]
    if ob.empty or not {cmp.a, cmp.b} <= set(ob["strategy"]):
        f.detail = "needs reset and random chains"
        return f
    p = phase.paired(ob, cmp.a, cmp.b)
    low, high, diff = windows(p, alpha)
    _fill(f, high)
    f.n = f"{p['seed'].nunique()} seeds x {p['pair'].nunique()} domains"
    f.verdict = match_then_gap(low, high, margin)
    f.power = (f"low: {power_text('equivalence', low, alpha)}; high: {power_text('superiority', high, alpha)}")
    if not (low.ok and high.ok):
        f.detail = (f"needs paired rounds both at or below and above {100 * TRANSITION:g}% sparsity (this study's "
                    f"rounds reach {100 * p['sparsity'].max():.2f}%)" if len(p) else "no paired rounds")
        return f
    f.detail = (f"primary: {interval_text(low, 'at or below 96%:')} (a match if inside +-{100 * margin:g}), "
                f"{interval_text(high, 'above 96%:')}, {interval_text(diff, 'above minus below:')}"
                + (_excluded(high) if f.verdict == "inconclusive" else ""))
    if detail:
        both = ob[ob["strategy"].isin([cmp.a, cmp.b])]
        pts = phase.collapse_points(both, alpha=alpha)
        t = phase.transition(both, cmp, alpha=alpha, points=pts)
        c = t.collapse
        f.detail += (f"; secondary: collapse point reset - random {phase.collapse_text(c)} (reset "
                     f"{_sp(t.collapse_a_sparsity, c.a_censored)}, random {_sp(t.collapse_b_sparsity, c.b_censored)}); "
                     f"onset (studentized max-T) {t.text}; instability (random spreads more) {t.instability_text}; "
                     f"chains at chance at the last round: {t.chance_last}" + _few(t.seeds, alpha))
    return f


def _sp(s: float, censored: int) -> str:
    return ("-" if not np.isfinite(s) else f"{100 * s:.1f}%") + (f", {censored} chains never fell" if censored else "")


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


def _transfer_control(w: pd.DataFrame, alpha: float) -> str:
    """masks-reset - randmask-reset over (0, 90%]: do the transferred masks beat random masks of the same
    per-layer sparsity from the same values? (the control that tells "tickets transfer" from "masks do not
    matter here")."""
    if not {"masks-reset", "randmask-reset"} <= set(w.columns):
        return ("; control: no randmask-reset transfer rows (add randmask-reset to the transfer strategies to tell "
                "\"tickets transfer\" from \"masks do not matter\")")
    low = w[(w["sparsity"] <= LOW_SPARSITY + EPS)]
    d = low.assign(value=low["masks-reset"] - low["randmask-reset"]).dropna(subset=["value"])
    s = seed_stat(d.groupby(["pair", "seed"])["value"].mean().reset_index(), alpha)
    hi = w[w["sparsity"] > TRANSITION + EPS]
    dh = hi.assign(value=hi["masks-reset"] - hi["randmask-reset"]).dropna(subset=["value"])
    sh = seed_stat(dh.groupby(["pair", "seed"])["value"].mean().reset_index(), alpha)
    return (f"; control, masks-reset - randmask-reset (the source's masks vs random masks of the same per-layer "
            f"sparsity, same values): {interval_text(s, 'up to 90%:')}, {interval_text(sh, 'above 96%:')}")


def finding3(rows: pd.DataFrame, alpha: float, margin: float) -> list[Finding]:
    a = Finding("3a", "Transfer: masks found in one domain lose at most 3-5% against the target's own tickets up to "
                "90% sparsity", CRITERIA["3a"], "TICKET-TARGET - MASKS-RESET, mean over rounds with sparsity in (0, 90%] (pp)")
    b = Finding("3b", "Transfer: MASKS-RESET and MASKS-RANDOM are comparable up to 96%; beyond it the initial values "
                "matter (masks-reset ahead)", CRITERIA["3b"],
                "masks-reset - masks-random, mean over the rounds above 96% sparsity (pp); at or below 96% in the detail")
    if rows[rows["stage"] == "transfer"].empty:
        a.detail = b.detail = "no transfer rows in this study (the plan has no transfer stage)"
        return [a, b]
    w = _target_rows(rows)
    w = w[w["round"] >= 1]
    low = w[w["sparsity"] <= LOW_SPARSITY + EPS]
    a.detail = "needs the transfer's masks-reset rows and the target's own reset chain (ticket-target) at 0-90% sparsity"
    if {"masks-reset", "ticket-target"} <= set(w.columns) and len(low.dropna(subset=["masks-reset", "ticket-target"])):
        d = low.assign(value=low["ticket-target"] - low["masks-reset"]).dropna(subset=["value"])
        values = d.groupby(["pair", "seed"])["value"].mean().reset_index()
        s = seed_stat(values, alpha)
        _fill(a, s)
        a.n = _n(values, "pairs")
        a.verdict = non_inferior(s, TRANSFER_DROP)
        a.power = power_text("non-inferiority", s, alpha, TRANSFER_DROP)
        per = values.groupby("pair")["value"].mean().mul(100)
        drop = ("a drop (interval above 0)" if s.lo > 0 else "no drop shown (interval reaches 0)" if s.ok else "")
        a.detail = ("per pair (pp): " + ", ".join(f"{k} {v:+.1f}" for k, v in per.items()) + f"; {drop}"
                    + (_excluded(s) if a.verdict == "inconclusive" else "") + _transfer_control(w, alpha)
                    + _few(s.seeds, alpha))
    b.detail = "needs masks-reset and masks-random rows both at or below and above 96% sparsity"
    if len(w):
        b.detail += f" (this study's transfer rounds reach {100 * w['sparsity'].max():.2f}%)"
    if {"masks-reset", "masks-random"} <= set(w.columns):
        g = w.assign(gap=w["masks-reset"] - w["masks-random"]).dropna(subset=["gap"])
        low_s, high_s, diff_s = windows(g, alpha)
        if low_s.ok and high_s.ok:
            _fill(b, high_s)
            b.n = _n(g, "pairs")
            b.verdict = match_then_gap(low_s, high_s, margin)
            b.power = f"low: {power_text('equivalence', low_s, alpha)}; high: {power_text('superiority', high_s, alpha)}"
            b.detail = (f"{interval_text(low_s, 'at or below 96%:')} (comparable if inside +-{100 * margin:g}), "
                        f"{interval_text(high_s, 'above 96%:')}, {interval_text(diff_s, 'above minus below:')}"
                        + (_excluded(high_s) if b.verdict == "inconclusive" else "") + _few(high_s.seeds, alpha))
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


@lru_cache(maxsize=64)
def domain_shift_factor(seeds: int, domains: int, alpha: float, *, draws: int = 300, relabellings: int = 2000) -> float:
    """The shift of one domain's collapse points, the others alike, in units of a chain's noise sd, that
    finding 4's permutation test detects with 80% power (Monte Carlo: normal noise, ``relabellings``
    random within-seed relabellings with the identity, bisection on the shift). The test is scale-free,
    so the shift in rounds is this factor times the noise."""
    if seeds < 2 or domains < 2:
        return math.inf
    rng = np.random.default_rng(777)
    perms = np.array(list(itertools.permutations(range(domains))))
    idx = perms[rng.integers(0, len(perms), size=(relabellings, seeds))]  # [P, seeds, domains]
    idx[0] = perms[0]
    z = rng.standard_normal((draws, seeds, domains))

    def stat(v):
        m = v.mean(axis=-2)
        return ((m - m.mean(axis=-1, keepdims=True)) ** 2).sum(axis=-1)

    def rate(shift):
        x = z.copy()
        x[..., 0] += shift
        rel = np.take_along_axis(x[:, None], np.broadcast_to(idx, (draws,) + idx.shape), axis=-1)
        null = stat(rel)  # [draws, P]
        p = (null >= stat(x)[:, None] - 1e-12).mean(axis=1)
        return float((p < alpha).mean())

    lo, hi = 0.0, 8.0
    if rate(hi) < phase.POWER:
        return math.inf
    for _ in range(7):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rate(mid) < phase.POWER else (lo, mid)
    return hi


def finding4(rows: pd.DataFrame, alpha: float, margin: float) -> Finding:
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
    equivalent_all = True
    for i, j in itertools.combinations(range(x.shape[1]), 2):
        lo, hi = phase.signflip_interval(x[:, i] - x[:, j], alpha)
        pairs.append(f"{wide.columns[i]} - {wide.columns[j]} {x[:, i].mean() - x[:, j].mean():+.2f} [{lo:+.2f}, {hi:+.2f}]")
        equivalent_all &= -SAME_ROUND < lo and hi < SAME_ROUND
    f.verdict = "held" if f.p < alpha else "not held" if equivalent_all else "inconclusive"
    resid = x - x.mean(axis=0) - x.mean(axis=1, keepdims=True) + x.mean()
    dof = (x.shape[0] - 1) * (x.shape[1] - 1)
    sigma = float(np.sqrt((resid ** 2).sum() / dof)) if dof > 0 else float("nan")
    mde = domain_shift_factor(x.shape[0], x.shape[1], float(alpha)) * sigma
    f.power = (f"detects one domain shifted by {mde:.1f} rounds with 80% power (chain noise {sigma:.2f} rounds)"
               if np.isfinite(mde) else "-")
    censored = int((pts["status"] == "censored").sum())
    f.detail = ("random's mean collapse point per domain (round): "
                + ", ".join(f"{d} {m:.2f}" for d, m in zip(wide.columns, means))
                + f"; pairwise differences (rounds, {100 * phase.interval_level(len(wide), alpha):.2f}% exact): "
                + "; ".join(pairs) + (f"; {censored} chains never fell (counted at their last round)" if censored else ""))
    return f


# ---------------------------------------------------------------------------------- gating

#: per finding: the function, and the rows it reads (for the convergence gate)
def _reads_1(rows):
    return ((rows["stage"] == "obtain") & (rows["strategy"] == "reset")).to_numpy()


def _reads_2(rows):
    return ((rows["stage"] == "obtain") & rows["strategy"].isin(["reset", "random"])).to_numpy()


def _reads_3(rows):
    return (((rows["stage"] == "obtain") & (rows["strategy"] == "reset")) | (rows["stage"] == "transfer")).to_numpy()


def _reads_4(rows):
    return ((rows["stage"] == "obtain") & (rows["strategy"] == "random")).to_numpy()


FINDINGS = [
    (lambda r, a, m: [finding1(r, a, m)], _reads_1),
    (lambda r, a, m: [finding2(r, a, m)], _reads_2),
    (lambda r, a, m: finding3(r, a, m), _reads_3),
    (lambda r, a, m: [finding4(r, a, m)], _reads_4),
]


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


def _gate(found: list[Finding], rows: pd.DataFrame, reads: np.ndarray) -> list[Finding]:
    """``not assessable: not converged`` where most of the trainings a finding reads did not converge."""
    c = converged(rows)[reads & (rows["round"] >= 1).to_numpy()].dropna()
    if c.empty:
        return found
    share = float(c.mean())
    if share >= CONVERGED_SHARE:
        return found
    return [replace(f, verdict=NOT_CONVERGED,
                    detail=f"{100 * share:.0f}% of the {len(c)} trainings it reads converged (validation stopped improving "
                           f"before the last epoch; needs >= {100 * CONVERGED_SHARE:.0f}%); as measured: {f.verdict}; "
                           + f.detail) if f.verdict != "no data" else f for f in found]


def verdicts(rows: pd.DataFrame, *, alpha: float = phase.ALPHA, delta: float = MATCH) -> pd.DataFrame:
    """The four findings' verdicts for result rows of one settings hash (see the module doc). ``delta``: the
    match margin (``MATCH``, 3 points, unless the study's phase settings say otherwise)."""
    if rows["settings_hash"].nunique() > 1:
        raise ValueError("findings.verdicts: rows of several settings hashes; pass one (ltnb.analysis.report.settings_groups)")
    rows = rows.reset_index(drop=True)
    out = []
    for make, reads in FINDINGS:
        out += _gate(make(rows, alpha, delta), rows, reads(rows))
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

    lines = ["| finding | claim | statistic | estimate | interval | p | n | verdict | power (80%) |",
             "|---|---|---|---:|---|---:|---|---|---|"]
    for _, r in table.iterrows():
        level = "" if pd.isna(r.get("ci_level", np.nan)) else f" ({100 * r['ci_level']:.1f}%)"
        ci = ("-" if pd.isna(r["ci_lo"]) and pd.isna(r["ci_hi"])
              else f"[{num(r['ci_lo'], r['unit'])}, {num(r['ci_hi'], r['unit'])}]{level}")
        p = "-" if pd.isna(r["p"]) else f"{r['p']:.3g}"
        lines.append(f"| {r['finding']} | {r['claim']} | {r['statistic']} | {num(r['estimate'], r['unit'])} "
                     f"{'' if r['unit'] == 'pp' else r['unit']} | {ci} | {p} | {r['n']} | **{r['verdict']}** | "
                     f"{r.get('power', '') or '-'} |")
    return "\n".join(lines)
