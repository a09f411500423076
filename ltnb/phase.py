"""The phase transition, measured: where reset's initial values start to matter.

The paper (Section 5.2) finds that TICKET-RESET and TICKET-RANDOM behave alike until about 96%
sparsity, after which random collapses and becomes unstable while reset holds. This module turns
that reading of a figure into two numbers per domain (and per transfer pair, with MASKS-RESET vs
MASKS-RANDOM), computed from the study's result rows (``ltnb.results.load``):

1. **Gap transition** - the lowest sparsity from which the reset - random gap in test accuracy is
   significantly positive at *every* later round.

   - The test is paired across seeds: the reset and random chains with the same seed share theta_0
     and the dense round 0, so per seed and round the gap ``reset - random`` is one observation.
     Per round r >= 1 we run the one-sided paired t-test ``scipy.stats.ttest_rel(reset, random,
     alternative="greater")`` over the seeds for which both chains finished that round.
   - Round 0 is the dense network, shared by both chains (its gap is 0 by construction); it is not
     tested.
   - The p-values of the m rounds tested are corrected with Holm's step-down method, which keeps
     the family-wise error rate at ``alpha``: under "no round has a positive gap", the chance of
     calling *any* round significant is at most ``alpha``. So the claim "significant at every round
     from k on" holds jointly for all those rounds.
   - The transition is the first round k such that every tested round >= k is significant (after
     Holm). If the last round tested is not significant, the gap does not stay positive: "not
     detected". Its sparsity is the mean sparsity of that round over the chains (all equal).
   - The per-round confidence interval that the charts draw is the two-sided ``1 - alpha`` t-interval
     of the mean paired gap (``ttest_1samp(gap).confidence_interval``), *not* corrected for the
     number of rounds; the significance marks are the corrected ones.
   - If every seed's gap is identical the t statistic is undefined (0/0 or x/0); we take its limit:
     p = 0 for an identical positive gap, p = 1 otherwise.

2. **Spread transition** - descriptive, not a test: the lowest sparsity (round >= 1) at which the
   standard deviation across seeds of random's test accuracy exceeds ``spread_factor`` times that of
   reset (reset's std of 0 is exceeded by any positive std).

With fewer than ``min_seeds`` seeds (default 3, the fewest for which a paired t-test has two
degrees of freedom) at every round, there is no estimate but a message that says how many seeds
there are and how many are needed. Rounds with fewer paired seeds than that (e.g. chains still
running) are left out of the test, and the message says so.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

MIN_SEEDS = 3
ALPHA = 0.05
SPREAD_FACTOR = 2.0

#: per stage, the two strategies compared: (initial values kept, fresh random values)
COMPARED = {"obtain": ("reset", "random"), "transfer": ("masks-reset", "masks-random")}

METHOD = (
    "gap: per round >= 1, one-sided paired t-test over seeds of reset - random test accuracy "
    "(scipy.stats.ttest_rel, alternative='greater'), Holm-corrected over the rounds tested; the "
    "transition is the lowest sparsity from which every later round is significant. "
    "spread: the lowest sparsity at which random's std across seeds exceeds spread_factor x reset's."
)


@dataclass(frozen=True)
class Selection:
    """One comparison the explorer and ``summary`` can show: a domain (obtain) or a pair (transfer)."""
    stage: str
    pair: str
    settings_hash: str
    label: str


def selections(rows: pd.DataFrame) -> list[Selection]:
    """Every (stage, domain or pair, settings hash) in ``rows``; obtain domains first, then pairs.

    The label is the domain or "source->target"; the settings hash is added only where one domain or
    pair holds runs with several settings (their numbers must not be mixed)."""
    if rows.empty:
        return []
    keys = rows[["stage", "pair", "settings_hash"]].drop_duplicates()
    keys = keys.assign(order=keys["stage"].map({"obtain": 0, "transfer": 1}).fillna(2))
    keys = keys.sort_values(["order", "pair", "settings_hash"])
    several = keys.groupby(["stage", "pair"])["settings_hash"].transform("nunique") > 1
    out = []
    for (_, k), many in zip(keys.iterrows(), several):
        label = f"{k.pair} [{k.settings_hash}]" if many else k.pair
        out.append(Selection(k.stage, k.pair, k.settings_hash, label))
    return out


def select(rows: pd.DataFrame, sel: Selection) -> pd.DataFrame:
    """The rows of one selection."""
    m = (rows["stage"] == sel.stage) & (rows["pair"] == sel.pair) & (rows["settings_hash"] == sel.settings_hash)
    return rows[m]


def compared(rows: pd.DataFrame) -> tuple[str, str]:
    """The (reset-like, random-like) strategy names for the stage of ``rows`` (one stage only)."""
    stages = sorted(set(rows["stage"]))
    if len(stages) != 1 or stages[0] not in COMPARED:
        raise ValueError(f"rows must come from exactly one stage of {sorted(COMPARED)}; got stages {stages}")
    return COMPARED[stages[0]]


def _check_one(rows: pd.DataFrame) -> None:
    for col in ("stage", "pair", "settings_hash"):
        values = sorted(set(rows[col].astype(str)))
        if len(values) > 1:
            raise ValueError(f"rows mix several values of column {col!r} ({values}); pass one domain or pair "
                             "(see ltnb.phase.selections / select)")


def paired(rows: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Per (seed, round) where both strategies finished: sparsity, accuracy of ``a`` and ``b`` and
    the gap ``a - b`` (test accuracy, fractions)."""
    cols = ["seed", "round", "sparsity", "test_acc"]
    left = rows.loc[rows["strategy"] == a, cols].rename(columns={"test_acc": "a"})
    right = rows.loc[rows["strategy"] == b, cols].rename(columns={"test_acc": "b", "sparsity": "sparsity_b"})
    both = left.merge(right, on=["seed", "round"], how="inner")
    both["sparsity"] = (both["sparsity"] + both["sparsity_b"]) / 2
    both["gap"] = both["a"] - both["b"]
    return both.drop(columns="sparsity_b").sort_values(["round", "seed"]).reset_index(drop=True)


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given; NaN stays NaN, not counted in m).

    Sorted ascending p_(1) <= ... <= p_(m): adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j));
    reject where adjusted p < alpha. Controls the family-wise error rate at alpha (Holm 1979)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adj)
    return out


def _one_round(gap: np.ndarray, a: np.ndarray, b: np.ndarray, alpha: float) -> dict:
    n = len(gap)
    mean = float(np.mean(gap))
    sd = float(np.std(gap, ddof=1))
    if np.allclose(gap, gap[0], rtol=0, atol=1e-12):  # identical gaps: t is x/0 or 0/0; take its limit
        p = 0.0 if mean > 0 else 1.0
        return dict(n=n, mean_gap=mean, std_gap=0.0, t=np.inf if mean > 0 else np.nan, df=n - 1, p=p,
                    ci_lo=mean, ci_hi=mean)
    res = stats.ttest_rel(a, b, alternative="greater")
    ci = stats.ttest_1samp(gap, 0.0).confidence_interval(confidence_level=1 - alpha)
    return dict(n=n, mean_gap=mean, std_gap=sd, t=float(res.statistic), df=int(res.df), p=float(res.pvalue),
                ci_lo=float(ci.low), ci_hi=float(ci.high))


GAP_COLUMNS = ["round", "sparsity", "n", "mean_gap", "std_gap", "t", "df", "p", "p_holm", "ci_lo", "ci_hi",
               "significant", "tested"]


def gap_table(rows: pd.DataFrame, *, alpha: float = ALPHA, min_seeds: int = MIN_SEEDS) -> pd.DataFrame:
    """Per round >= 1 of one domain or pair: the paired reset - random gap over seeds and its test.

    Columns: round, sparsity, n (paired seeds), mean_gap, std_gap, t, df, p (one-sided, unadjusted),
    p_holm (Holm over the rounds tested), ci_lo/ci_hi (two-sided 1 - alpha t-interval of the mean gap,
    unadjusted), significant (p_holm < alpha), tested (n >= min_seeds). Untested rounds have NaN
    statistics and are not counted by Holm."""
    _check_alpha(alpha)
    if rows.empty:
        return pd.DataFrame(columns=GAP_COLUMNS)
    _check_one(rows)
    a, b = compared(rows)
    pairs = paired(rows, a, b)
    pairs = pairs[pairs["round"] >= 1]
    out = []
    for r, g in pairs.groupby("round", sort=True):
        base = dict(round=int(r), sparsity=float(g["sparsity"].mean()), n=len(g))
        if len(g) >= max(int(min_seeds), 2):
            base.update(_one_round(g["gap"].to_numpy(), g["a"].to_numpy(), g["b"].to_numpy(), alpha))
            base["tested"] = True
        else:
            mean = float(g["gap"].mean())
            base.update(mean_gap=mean, std_gap=float(g["gap"].std(ddof=1)) if len(g) > 1 else np.nan,
                        t=np.nan, df=len(g) - 1, p=np.nan, ci_lo=np.nan, ci_hi=np.nan, tested=False)
        out.append(base)
    table = pd.DataFrame(out, columns=[c for c in GAP_COLUMNS if c not in ("p_holm", "significant")])
    if table.empty:
        return pd.DataFrame(columns=GAP_COLUMNS)
    table["p_holm"] = holm(table["p"].to_numpy())
    table["significant"] = table["p_holm"] < alpha
    table["tested"] = table["tested"].astype(bool)
    return table[GAP_COLUMNS]


def spread_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (strategy, round): mean sparsity, n seeds, mean and std (sample, ddof=1) of test accuracy."""
    if rows.empty:
        return pd.DataFrame(columns=["strategy", "round", "sparsity", "n", "mean", "std"])
    return (rows.groupby(["strategy", "round"], sort=True)
            .agg(sparsity=("sparsity", "mean"), n=("seed", "nunique"), mean=("test_acc", "mean"),
                 std=("test_acc", "std"))
            .reset_index())


def spread_ratio(rows: pd.DataFrame, *, min_seeds: int = MIN_SEEDS) -> pd.DataFrame:
    """Per round >= 1: std across seeds of reset and random, and random's / reset's (inf if reset's is 0).
    Rounds where either strategy has fewer than ``min_seeds`` seeds are left out."""
    cols = ["round", "sparsity", "std_reset", "std_random", "ratio"]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    _check_one(rows)
    a, b = compared(rows)
    s = spread_table(rows)
    s = s[(s["round"] >= 1) & (s["n"] >= max(int(min_seeds), 2))]
    left = s[s["strategy"] == a][["round", "sparsity", "std"]].rename(columns={"std": "std_reset"})
    right = s[s["strategy"] == b][["round", "std"]].rename(columns={"std": "std_random"})
    t = left.merge(right, on="round").sort_values("round").reset_index(drop=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        t["ratio"] = np.where(t["std_reset"] > 0, t["std_random"] / t["std_reset"],
                              np.where(t["std_random"] > 0, np.inf, np.nan))
    return t[cols]


@dataclass(frozen=True)
class Transition:
    """The measured transition of one domain or pair. ``round``/``sparsity`` are None unless
    ``status == "detected"``; likewise ``spread_round``/``spread_sparsity`` for ``spread_status``.
    ``status`` is one of "detected", "not detected", "too few seeds", "missing strategy"."""
    stage: str
    pair: str
    settings_hash: str
    reset: str
    random: str
    seeds: int
    rounds_tested: int
    alpha: float
    spread_factor: float
    status: str
    round: int | None
    sparsity: float | None
    message: str
    spread_status: str
    spread_round: int | None
    spread_sparsity: float | None
    spread_message: str

    @property
    def text(self) -> str:
        """"96.8%" or the status ("not detected", "too few seeds", ...)."""
        return _pct_text(self.sparsity) if self.status == "detected" else self.status

    @property
    def spread_text(self) -> str:
        return _pct_text(self.spread_sparsity) if self.spread_status == "detected" else self.spread_status


def _pct_text(s: float) -> str:
    from .report import sparsity_label

    return f"{sparsity_label(s)}%"


def _check_alpha(alpha: float) -> None:
    if not (0 < float(alpha) < 1):
        raise ValueError(f"alpha (the significance level) must be between 0 and 1, got {alpha!r}")


def _rounds_text(rounds) -> str:
    rounds = [int(r) for r in rounds]
    return ", ".join(map(str, rounds)) if len(rounds) <= 6 else f"{rounds[0]}..{rounds[-1]} ({len(rounds)} rounds)"


def transition(rows: pd.DataFrame, *, alpha: float = ALPHA, spread_factor: float = SPREAD_FACTOR,
               min_seeds: int = MIN_SEEDS) -> Transition:
    """Measure the gap and spread transitions of one domain or pair (see the module docstring)."""
    _check_alpha(alpha)
    if not float(spread_factor) > 0:
        raise ValueError(f"spread_factor must be > 0 (e.g. 2.0: random's std twice reset's), got {spread_factor!r}")
    if int(min_seeds) < 2:
        raise ValueError(f"min_seeds must be >= 2 (a paired t-test needs a spread of the gaps), got {min_seeds!r}")
    if rows.empty:
        raise ValueError("no result rows given (has the study's obtain/transfer stage run?)")
    _check_one(rows)
    a, b = compared(rows)
    stage, pair, h = rows["stage"].iloc[0], rows["pair"].iloc[0], str(rows["settings_hash"].iloc[0])
    base = dict(stage=stage, pair=pair, settings_hash=h, reset=a, random=b, alpha=float(alpha),
                spread_factor=float(spread_factor))
    have = set(rows["strategy"])
    missing = [s for s in (a, b) if s not in have]
    if missing:
        msg = f"{pair}: no {' and no '.join(missing)} chain in the results; the comparison needs both {a} and {b}"
        return Transition(**base, seeds=0, rounds_tested=0, status="missing strategy", round=None, sparsity=None,
                          message=msg, spread_status="missing strategy", spread_round=None, spread_sparsity=None,
                          spread_message=msg)
    pairs = paired(rows, a, b)
    seeds = int(pairs["seed"].nunique())
    gaps = gap_table(rows, alpha=alpha, min_seeds=min_seeds)
    tested = gaps[gaps["tested"]]
    notes = []
    skipped = gaps.loc[~gaps["tested"], "round"]
    if len(tested) and len(skipped):
        notes.append(f"rounds {_rounds_text(skipped)} left out (fewer than {min_seeds} paired seeds)")
    if tested.empty:
        most = int(gaps["n"].max()) if len(gaps) else 0
        msg = (f"{pair}: too few seeds for a test: at most {most} seed(s) with both {a} and {b} finished at a "
               f"pruned round (seeds {sorted(pairs['seed'].unique().tolist())}); the paired t-test needs at least "
               f"{min_seeds} (min_seeds). Run more seeds.")
        status, rnd, sp = "too few seeds", None, None
    else:
        sig = tested["significant"].to_numpy()
        # first index k with sig[k:] all True: scan from the end
        k = len(sig)
        while k > 0 and sig[k - 1]:
            k -= 1
        if k == len(sig):
            status, rnd, sp = "not detected", None, None
            last = tested.iloc[-1]
            msg = (f"{pair}: not detected: the {a} - {b} gap is not significantly positive at the last round tested "
                   f"(round {int(last['round'])}, gap {100 * last['mean_gap']:+.2f} pp, Holm p = {last['p_holm']:.3g} "
                   f">= alpha = {alpha:g}; {len(tested)} rounds, {seeds} seeds)")
        else:
            row = tested.iloc[k]
            status, rnd, sp = "detected", int(row["round"]), float(row["sparsity"])
            msg = (f"{pair}: {a} beats {b} significantly at every round from round {rnd} "
                   f"({_pct_text(sp)} sparsity) on (gap {100 * row['mean_gap']:+.2f} pp there, Holm p = "
                   f"{row['p_holm']:.3g} < alpha = {alpha:g}; {len(tested)} rounds tested, {seeds} seeds)")
            if k == 0:
                msg += "; already at the first pruned round, so no 'alike' regime was observed"
    if notes:
        msg += "; " + "; ".join(notes)

    ratio = spread_ratio(rows, min_seeds=min_seeds)
    if ratio.empty:
        s_status, s_round, s_sp = "too few seeds", None, None
        s_msg = f"{pair}: too few seeds for a spread (std across seeds needs at least {min_seeds}, min_seeds)"
    else:
        over = ratio[ratio["std_random"] > spread_factor * ratio["std_reset"]]
        if over.empty:
            s_status, s_round, s_sp = "not detected", None, None
            s_msg = (f"{pair}: {b}'s std across seeds never exceeds {spread_factor:g} x {a}'s "
                     f"(largest ratio {ratio['ratio'].max():.2f})")
        else:
            first = over.iloc[0]
            s_status, s_round, s_sp = "detected", int(first["round"]), float(first["sparsity"])
            s_msg = (f"{pair}: {b}'s std first exceeds {spread_factor:g} x {a}'s at round {s_round} "
                     f"({_pct_text(s_sp)} sparsity; {100 * first['std_random']:.2f} vs {100 * first['std_reset']:.2f} pp)")
    return Transition(**base, seeds=seeds, rounds_tested=len(tested), status=status, round=rnd, sparsity=sp,
                      message=msg, spread_status=s_status, spread_round=s_round, spread_sparsity=s_sp,
                      spread_message=s_msg)


SUMMARY_COLUMNS = ["stage", "pair", "settings_hash", "reset", "random", "seeds", "rounds_tested", "alpha",
                   "transition", "transition_round", "transition_sparsity", "spread_factor", "spread_transition",
                   "spread_round", "spread_sparsity", "message", "spread_message", "method"]


def summary(study_or_rows, alpha: float = ALPHA, spread_factor: float = SPREAD_FACTOR,
            min_seeds: int = MIN_SEEDS) -> pd.DataFrame:
    """One row per domain (obtain) and transfer pair (and settings hash) with the measured transition.

    ``study_or_rows``: a study folder or a result-rows DataFrame (``ltnb.results.load``). Columns:
    ``transition`` ("96.8%" or "not detected" / "too few seeds" / "missing strategy"),
    ``transition_round``/``transition_sparsity`` (NaN unless detected), the same for the spread,
    ``message`` and ``spread_message`` (one sentence each), ``method`` (how it was measured)."""
    if isinstance(study_or_rows, pd.DataFrame):
        rows = study_or_rows
    elif isinstance(study_or_rows, (str, os.PathLike)):
        from . import paths, results

        rows = results.load(paths.resolve_study(study_or_rows))
    else:
        raise TypeError(f"study_or_rows must be a study folder or a DataFrame of result rows, "
                        f"got {type(study_or_rows).__name__}")
    out = []
    for sel in selections(rows):
        if sel.stage not in COMPARED:
            continue
        t = transition(select(rows, sel), alpha=alpha, spread_factor=spread_factor, min_seeds=min_seeds)
        d = asdict(t)
        out.append(dict(
            stage=t.stage, pair=t.pair, settings_hash=t.settings_hash, reset=t.reset, random=t.random,
            seeds=t.seeds, rounds_tested=t.rounds_tested, alpha=t.alpha, transition=t.text,
            transition_round=d["round"], transition_sparsity=d["sparsity"], spread_factor=t.spread_factor,
            spread_transition=t.spread_text, spread_round=t.spread_round, spread_sparsity=t.spread_sparsity,
            message=t.message, spread_message=t.spread_message, method=METHOD))
    table = pd.DataFrame(out, columns=SUMMARY_COLUMNS)
    for c in ("transition_round", "transition_sparsity", "spread_round", "spread_sparsity"):
        table[c] = pd.to_numeric(table[c], errors="coerce").astype(float)
    return table
