"""A verdict for each of the paper's four findings, computed from the result rows, never written by hand.

Each finding (PROTOCOL.md, "Reported findings") is turned into one statistic with an interval, a
test where the claim is directional, and a verdict: **held**, **not held** or **inconclusive**. The
criteria are fixed here, before any data is seen, and printed with the verdict:

1. *TICKET-RESET beats FULL-MODEL at 0-90% sparsity.* Per domain and seed, the mean over the rounds
   with sparsity in (0, 90%] of reset's test accuracy minus the dense round 0's. Held if it is
   significantly positive (exact one-sided sign-flip test, seed = unit, pooled over domains); not held
   if the interval lies at or below 0; else inconclusive.
2. *Reset and random match until ~96% sparsity; beyond it random drops and is unstable.* Held if the
   pooled reset - random gap transition (``ltnb.phase``, fixed-sequence) is detected at a sparsity
   >= 90% *and* below 90% the two are equivalent within +-delta (the 1 - 2 alpha interval of the
   mean gap over those rounds lies inside [-delta, delta], two one-sided tests). Not held if the gap
   is significant from a sparsity below 90% on, or below 90% the interval lies entirely outside
   [-delta, delta], or the gap at the sparsest round is not positive (interval at or below 0). Else
   inconclusive. Instability and the chains at chance are reported beside it.
3. *Transfer.* (a) Masks transfer with a drop of 3-5 points up to 90% sparsity: TICKET-TARGET minus
   MASKS-RESET, same seeds and settings, mean over the rounds with sparsity in (0, 90%]. Held if the
   interval's upper end is <= 5 points; not held if its lower end is > 5 points. (b) Initial values
   matter more at high sparsity: the MASKS-RESET - MASKS-RANDOM gap above 90% sparsity minus the gap
   at or below 90%. Held if significantly positive; not held if the interval lies at or below 0.
4. *The sparsity of the phase transition is dataset-dependent.* The range (max - min, in rounds) of
   the domains' effect-size transitions (the first round from which reset - random stays >= delta),
   with a bootstrap interval that resamples seeds jointly across domains (they share seeds). Held if
   the interval's lower end is >= 1 round; not held if its upper end is 0; else inconclusive.

Intervals are two-sided 1 - alpha: t-intervals over the seeds' means (the seed is the unit: the
domains of a seed share theta_0) for 1 and 3, percentile bootstrap for 2 and 4. ``n`` counts seeds
and domains or pairs. A finding whose strategies or stages are missing is "no data".
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from . import phase

LOW_SPARSITY = 0.90  # "up to 90% sparsity"
TRANSFER_DROP = 0.05  # "a 3-5% drop": at most 5 points

COLUMNS = ["finding", "claim", "criterion", "statistic", "estimate", "ci_lo", "ci_hi", "unit", "p", "n", "verdict",
           "detail"]


@dataclass
class Finding:
    finding: str
    claim: str
    criterion: str
    statistic: str
    estimate: float = float("nan")
    ci_lo: float = float("nan")
    ci_hi: float = float("nan")
    unit: str = "pp"
    p: float = float("nan")
    n: str = ""
    verdict: str = "no data"
    detail: str = ""


def _seed_stat(values: pd.DataFrame, alpha: float, *, greater: bool = True) -> dict:
    """``values``: columns seed, value (one per domain-seed or pair-seed unit). The seed's mean is the
    unit: estimate, a two-sided 1 - alpha t-interval over the seeds, and the exact one-sided sign-flip
    p (seed sums) of value > 0 (or < 0 with ``greater=False``)."""
    per_seed = values.groupby("seed")["value"].agg(["sum", "count", "mean"])
    n = len(per_seed)
    est = float(values["value"].mean())
    if n < 2:
        return dict(estimate=est, ci_lo=np.nan, ci_hi=np.nan, p=np.nan, seeds=n)
    m = per_seed["mean"].to_numpy()
    sd = m.std(ddof=1)
    half = stats.t.ppf(1 - alpha / 2, n - 1) * sd / math.sqrt(n) if sd > 0 else 0.0
    sums = per_seed["sum"].to_numpy() * (1 if greater else -1)
    return dict(estimate=est, ci_lo=float(m.mean() - half), ci_hi=float(m.mean() + half),
                p=float(phase.signflip_p(sums)), seeds=n)


def _n(values: pd.DataFrame, what: str) -> str:
    return f"{values['seed'].nunique()} seeds x {values['pair'].nunique()} {what}"


def _few(seeds: int, alpha: float) -> str:
    """A note when the exact test cannot reach alpha with this many seeds."""
    return (f"; with {seeds} seed(s) the sign-flip test cannot reach p < {alpha:g} (smallest p {2.0 ** -seeds:.3g})"
            if phase.smallest_p(seeds) >= alpha else "")


def finding1(rows: pd.DataFrame, alpha: float) -> Finding:
    f = Finding("1", "TICKET-RESET beats FULL-MODEL at 0-90% sparsity (paper: on Books, Electronics, Home)",
                "held if reset - dense > 0 significantly (sign-flip, seed = unit); not held if the interval is <= 0",
                "reset - FULL-MODEL, mean over rounds with sparsity in (0, 90%] (pp)")
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
    s = _seed_stat(values, alpha)
    f.estimate, f.ci_lo, f.ci_hi, f.p = 100 * s["estimate"], 100 * s["ci_lo"], 100 * s["ci_hi"], s["p"]
    f.n = _n(values, "domains")
    f.verdict = "held" if s["p"] < alpha else "not held" if s["ci_hi"] <= 0 else "inconclusive"
    per = values.groupby("pair")["value"].mean().mul(100).round(1)
    f.detail = "per domain (pp): " + ", ".join(f"{k} {v:+.1f}" for k, v in per.items()) + _few(s["seeds"], alpha)
    return f


def _equivalence(rows: pd.DataFrame, cmp: phase.Comparison, alpha: float, delta: float) -> tuple[float, float, float]:
    """Mean gap over rounds in (0, 90%) and its 1 - 2 alpha t-interval over seeds (two one-sided tests)."""
    p = phase.paired(rows, cmp.a, cmp.b)
    low = p[(p["round"] >= 1) & (p["sparsity"] < LOW_SPARSITY - 1e-9)]
    if low.empty:
        return np.nan, np.nan, np.nan
    values = low.groupby(["pair", "seed"])["gap"].mean().rename("value").reset_index()
    s = _seed_stat(values, 2 * alpha)
    return s["estimate"], s["ci_lo"], s["ci_hi"]


def finding2(rows: pd.DataFrame, alpha: float, delta: float, n_boot: int) -> Finding:
    f = Finding("2", "TICKET-RESET and TICKET-RANDOM match until ~96% sparsity; beyond it random drops faster and is "
                "unstable, reset stays stable",
                f"held if the pooled reset - random gap transition is detected at >= 90% sparsity and below 90% the gap is "
                f"within +-{100 * delta:g} pp (TOST); not held if it starts below 90%, or is outside +-{100 * delta:g} pp "
                f"below 90%, or is not positive at the sparsest round",
                "pooled reset - random gap transition (sparsity %); interval: effect-size transition "
                f"(gap >= {100 * delta:g} pp), seed bootstrap", unit="% sparsity")
    ob = rows[rows["stage"] == "obtain"]
    cmp = phase.COMPARISONS[0]
    if ob.empty or not {cmp.a, cmp.b} <= set(ob["strategy"]):
        return f
    t = phase.transition(ob, cmp, alpha=alpha, delta=delta, n_boot=n_boot)
    gaps = phase.gap_table(ob, cmp, alpha=alpha)
    tested = gaps[gaps["tested"]]
    eq, eq_lo, eq_hi = _equivalence(ob, cmp, alpha, delta)
    last = tested.iloc[-1] if len(tested) else None
    f.n = f"{t.seeds} seeds x {ob['pair'].nunique()} domains"
    f.estimate = 100 * t.sparsity if t.sparsity is not None else np.nan
    f.ci_lo = 100 * t.effect_ci_lo if t.effect_ci_lo is not None else np.nan
    f.ci_hi = 100 * t.effect_ci_hi if t.effect_ci_hi is not None else np.nan
    f.p = float(last["p"]) if last is not None else np.nan
    starts_low = t.status == "detected" and t.sparsity < LOW_SPARSITY
    equivalent = np.isfinite(eq_lo) and -delta <= eq_lo and eq_hi <= delta
    outside = np.isfinite(eq_lo) and (eq_lo > delta or eq_hi < -delta)
    not_positive = last is not None and last["ci_hi"] <= 0
    if t.status == "detected" and not starts_low and equivalent:
        f.verdict = "held"
    elif starts_low or outside or not_positive:
        f.verdict = "not held"
    else:
        f.verdict = "inconclusive"
    f.detail = (f"gap transition {t.text}; below 90%: gap {100 * eq:+.2f} pp, {100 * (1 - 2 * alpha):g}% CI "
                f"[{100 * eq_lo:+.2f}, {100 * eq_hi:+.2f}]; at the sparsest round: {100 * last['mean_gap']:+.2f} pp"
                if last is not None else f"gap transition {t.text}")
    f.detail += f"; instability (random spreads more) {t.instability_text}; chains at chance at the last round: {t.chance_last}"
    if t.status != "detected":
        f.detail += f"; minimal detectable effect {t.mde_text}" + _few(t.seeds, alpha)
    return f


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


def finding3(rows: pd.DataFrame, alpha: float) -> list[Finding]:
    a = Finding("3a", "Transfer: masks found in one domain lose 3-5% against the target's own tickets up to 90% sparsity",
                f"held if the interval's upper end is <= {100 * TRANSFER_DROP:g} pp; not held if its lower end is > "
                f"{100 * TRANSFER_DROP:g} pp", "TICKET-TARGET - MASKS-RESET, mean over rounds with sparsity in (0, 90%] (pp)")
    b = Finding("3b", "Transfer: initial values matter more at high sparsity (MASKS-RESET vs MASKS-RANDOM)",
                "held if the gap above 90% exceeds the gap at or below 90% significantly (sign-flip, seed = unit); "
                "not held if the interval is <= 0",
                "(masks-reset - masks-random) above 90% minus at or below 90% sparsity (pp)")
    if rows[rows["stage"] == "transfer"].empty:
        a.detail = b.detail = "no transfer rows in this study (the plan has no transfer stage)"
        return [a, b]
    w = _target_rows(rows)
    w = w[w["round"] >= 1]
    low = w[w["sparsity"] <= LOW_SPARSITY + 1e-9]
    if {"masks-reset", "ticket-target"} <= set(w.columns) and len(low.dropna(subset=["masks-reset", "ticket-target"])):
        d = low.assign(value=low["ticket-target"] - low["masks-reset"]).dropna(subset=["value"])
        values = d.groupby(["pair", "seed"])["value"].mean().reset_index()
        s = _seed_stat(values, alpha)
        a.estimate, a.ci_lo, a.ci_hi, a.p = 100 * s["estimate"], 100 * s["ci_lo"], 100 * s["ci_hi"], np.nan
        a.n = _n(values, "pairs")
        a.verdict = ("held" if s["ci_hi"] <= TRANSFER_DROP else "not held" if s["ci_lo"] > TRANSFER_DROP
                     else "inconclusive")
        per = values.groupby("pair")["value"].mean().mul(100)
        a.detail = "per pair (pp): " + ", ".join(f"{k} {v:+.1f}" for k, v in per.items())
    if a.verdict == "no data":
        a.detail = "needs the transfer's masks-reset rows and the target's own reset chain (ticket-target) at 0-90% sparsity"
    b.detail = "needs masks-reset and masks-random rows both above and at or below 90% sparsity"
    if len(w):
        b.detail += f" (this study's transfer rounds reach {100 * w['sparsity'].max():.1f}%)"
    if {"masks-reset", "masks-random"} <= set(w.columns):
        g = w.assign(gap=w["masks-reset"] - w["masks-random"], high=w["sparsity"] > LOW_SPARSITY + 1e-9)
        per = g.groupby(["pair", "seed", "high"])["gap"].mean().unstack("high")
        if True in per.columns and False in per.columns:
            values = (per[True] - per[False]).dropna().rename("value").reset_index()
            s = _seed_stat(values, alpha)
            b.estimate, b.ci_lo, b.ci_hi, b.p = 100 * s["estimate"], 100 * s["ci_lo"], 100 * s["ci_hi"], s["p"]
            b.n = _n(values, "pairs")
            b.verdict = "held" if s["p"] < alpha else "not held" if s["ci_hi"] <= 0 else "inconclusive"
            hi, lo = g[g["high"]]["gap"].mean(), g[~g["high"]]["gap"].mean()
            b.detail = f"gap above 90%: {100 * hi:+.2f} pp; at or below 90%: {100 * lo:+.2f} pp" + _few(s["seeds"], alpha)
    return [a, b]


def finding4(rows: pd.DataFrame, alpha: float, delta: float, n_boot: int) -> Finding:
    f = Finding("4", "The sparsity of the phase transition is dataset-dependent",
                "held if the interval of the range across domains is >= 1 round; not held if it is 0; else inconclusive",
                f"range (max - min) across domains of the effect-size transition round (reset - random >= "
                f"{100 * delta:g} pp from there on)", unit="rounds")
    ob = rows[rows["stage"] == "obtain"]
    cmp = phase.COMPARISONS[0]
    domains = sorted(ob["pair"].unique())
    if len(domains) < 2 or not {cmp.a, cmp.b} <= set(ob["strategy"]):
        f.detail = f"needs {cmp.a} and {cmp.b} chains in at least 2 domains (this study: {len(domains)})"
        return f
    per = {d: phase.seed_means(ob[ob["pair"] == d], cmp) for d in domains}
    seeds = sorted(set.intersection(*(set(v[1]) for v in per.values())))
    if len(seeds) < 2:
        f.detail = f"needs at least 2 seeds shared by every domain (this study: {len(seeds)})"
        return f
    weights = phase.bootstrap_weights(len(seeds), n_boot)
    point, boot, names = [], [], {}
    for d, (per_round, s, means) in per.items():
        m = means[:, [s.index(x) for x in seeds]]
        point.append(int(phase.effect_index(m, delta)[0]))
        boot.append(phase.effect_index(m, delta, weights))
        rounds = per_round["round"].tolist()
        names[d] = f"round {rounds[point[-1]]}" if point[-1] < len(rounds) else "not reached"
    rng_point = max(point) - min(point)
    rng_boot = np.max(boot, axis=0) - np.min(boot, axis=0)
    f.estimate = float(rng_point)
    f.ci_lo = float(np.percentile(rng_boot, 100 * alpha / 2, method="lower"))
    f.ci_hi = float(np.percentile(rng_boot, 100 * (1 - alpha / 2), method="higher"))
    f.n = f"{len(seeds)} seeds x {len(domains)} domains"
    f.verdict = "held" if f.ci_lo >= 1 else "not held" if f.ci_hi == 0 else "inconclusive"
    f.detail = "effect-size transition per domain: " + ", ".join(f"{d} {v}" for d, v in names.items())
    return f


def verdicts(rows: pd.DataFrame, *, alpha: float = phase.ALPHA, delta: float = phase.DELTA,
             n_boot: int = phase.N_BOOT) -> pd.DataFrame:
    """The four findings' verdicts for result rows of one settings hash (see the module doc)."""
    if rows["settings_hash"].nunique() > 1:
        raise ValueError("findings.verdicts: rows of several settings hashes; pass one (ltnb.report.settings_groups)")
    out = [finding1(rows, alpha), finding2(rows, alpha, delta, n_boot), *finding3(rows, alpha),
           finding4(rows, alpha, delta, n_boot)]
    return pd.DataFrame([asdict(f) for f in out], columns=COLUMNS)


def markdown(table: pd.DataFrame) -> str:
    """The verdict table as Markdown (README, notebooks)."""
    def num(v, unit):
        if pd.isna(v):
            return "-"
        return f"{v:.0f}" if unit == "rounds" else f"{v:.1f}" if unit == "% sparsity" else f"{v:+.1f}"

    lines = ["| finding | claim | statistic | estimate | interval | p | n | verdict |",
             "|---|---|---|---:|---|---:|---|---|"]
    for _, r in table.iterrows():
        ci = "-" if pd.isna(r["ci_lo"]) and pd.isna(r["ci_hi"]) else f"[{num(r['ci_lo'], r['unit'])}, {num(r['ci_hi'], r['unit'])}]"
        p = "-" if pd.isna(r["p"]) else f"{r['p']:.3g}"
        lines.append(f"| {r['finding']} | {r['claim']} | {r['statistic']} | {num(r['estimate'], r['unit'])} "
                     f"{'' if r['unit'] == 'pp' else r['unit']} | {ci} | {p} | {r['n']} | **{r['verdict']}** |")
    return "\n".join(lines)
