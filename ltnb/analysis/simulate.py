"""Simulated studies at the real design, and what the findings' procedures call on them: false-positive
rates and power of every finding and of the onset, computed with the same functions the verdicts use
(``ltnb.analysis.findings``' verdict rules, ``ltnb.analysis.phase``'s max-T and informative rounds, the collapse points).

The design is the demo's: 3 domains x 5 seeds x rounds 0..20 (sparsity 1 - 0.65^r), accuracies whole counts
of ``test_n`` test texts. A scenario gives each strategy's expected accuracy per round (round 0 is the
dense network, one per seed and shared by every strategy of the seed) and the noise per chain and round;
each study adds a domain effect, a seed effect, a per (seed, round, strategy) shock shared by the seed's
domains (seeds are correlated across domains, as the real chains are) and the chains' own noise. A chain
whose expected margin over chance is under ``floor`` predicts one class (exactly 50%), as collapsed chains do.

``table()`` is what tests/test_simulations.py asserts and prints and docs/simulations.md shows
(``python -m ltnb.analysis.simulate --write docs/simulations.md`` regenerates it). Torch-free.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ltnb.analysis import findings, phase

ROUNDS = 20
DOMAINS = 3
SEEDS = 5
TEST_N = 500
STUDIES = 400
#: the chains' own noise per round, like the converged demo's (the sd of reset - random over its chains is
#: 1.2-2.4 pp at rounds 1-7 and 2.8-6.7 pp at rounds 8-15, i.e. 1.4 pp per chain up to 96%, growing past it)
DEMO_SD = np.concatenate([np.full(8, 0.014), np.linspace(0.014, 0.035, 13)])


def sparsity(rounds: int = ROUNDS) -> np.ndarray:
    return 1 - 0.65 ** np.arange(rounds + 1, dtype=float)


def logistic_collapse(centre: float, *, level: float = 0.70, width: float = 0.6, rounds: int = ROUNDS) -> np.ndarray:
    """Expected accuracy: ``level`` until it collapses to chance around round ``centre``."""
    r = np.arange(rounds + 1, dtype=float)
    return phase.CHANCE + (level - phase.CHANCE) / (1 + np.exp(-(centre - r) / width))


def slow_decline(*, level: float = 0.70, start: int = 8, drop: float = 0.08, rounds: int = ROUNDS) -> np.ndarray:
    """Expected accuracy: ``level`` until round ``start`` (96.8%), then a straight decline of ``drop`` by the last
    round: a curve that never reaches the collapse midpoint."""
    r = np.arange(rounds + 1, dtype=float)
    return level - drop * np.clip((r - start) / (rounds - start), 0, None)


def ramp(start: int, end_value: float, rounds: int = ROUNDS) -> np.ndarray:
    """0 up to round ``start``, then growing linearly to ``end_value`` at the last round."""
    r = np.arange(rounds + 1, dtype=float)
    return end_value * np.clip((r - start) / (rounds - start), 0, None)


def step(start: int, value: float, rounds: int = ROUNDS) -> np.ndarray:
    r = np.arange(rounds + 1)
    return np.where(r >= start, value, 0.0)


@dataclass
class Draw:
    """One scenario's simulated studies: accuracies ``a``, ``b`` [studies, domains, seeds, rounds + 1]."""
    a: np.ndarray
    b: np.ndarray
    test_n: int
    rounds: int = ROUNDS

    @property
    def sparsity(self) -> np.ndarray:
        return sparsity(self.rounds)


def draw(a_curve, b_curve, *, studies: int = STUDIES, domains: int = DOMAINS, seeds: int = SEEDS, sd=DEMO_SD,
         seed_sd: float = 0.005, domain_sd: float = 0.02, test_n: int = TEST_N, floor: float = 0.02,
         jitter_a: float = 0.0, jitter_b: float = 0.0, centre_a=None, centre_b=None, shared_round0: bool = True,
         rng: int | np.random.Generator = 0) -> Draw:
    """Simulated studies of two strategies whose expected accuracies per round are ``a_curve`` and ``b_curve``
    ([rounds + 1], or [domains, rounds + 1]). ``sd``: the chains' own noise, a number or one per round (a
    round with 8x the noise of the others, say). ``centre_a``/``centre_b`` with ``jitter_*``: collapse centres
    (a number or one per domain) redrawn per chain as ``logistic_collapse(centre + N(0, jitter))`` instead of
    the fixed curves (finding 4 needs chains whose collapse points scatter)."""
    rng = np.random.default_rng(rng)
    a_curve, b_curve = np.asarray(a_curve, float), np.asarray(b_curve, float)
    rounds = a_curve.shape[-1] - 1
    sd = np.broadcast_to(np.asarray(sd, float), (rounds + 1,))
    shape = (studies, domains, seeds, rounds + 1)
    offset = (rng.normal(0, domain_sd, (studies, domains, 1, 1)) + rng.normal(0, 0.01, (studies, 1, seeds, 1)))

    def expected(curve, centre, jitter):
        if centre is None:
            return np.broadcast_to(curve if curve.ndim == 1 else curve[:, None, :], shape[1:])[None] + 0 * offset
        c = np.broadcast_to(np.asarray(centre, float).reshape(-1, 1) if np.ndim(centre) else centre, (domains, 1))
        cen = c[None, :, :] + rng.normal(0, jitter, (studies, domains, seeds))
        r = np.arange(rounds + 1, dtype=float)
        level = curve[..., :1].mean()
        return phase.CHANCE + (level - phase.CHANCE) / (1 + np.exp(-(cen[..., None] - r) / 0.6))

    ta = expected(a_curve, centre_a, jitter_a) + offset
    tb = expected(b_curve, centre_b, jitter_b) + offset

    def observe(t):
        y = t + rng.normal(0, seed_sd, (studies, 1, seeds, rounds + 1)) + rng.normal(0, 1, shape) * sd
        y = np.where(t - phase.CHANCE < floor, phase.CHANCE, y)
        return np.clip(np.round(y * test_n), 0, test_n) / test_n

    a, b = observe(ta), observe(tb)
    if shared_round0:
        b[..., 0] = a[..., 0]  # the dense round 0 is one network per seed
    return Draw(a, b, test_n, rounds)


# ------------------------------------------------------------------------------------ the calls

def _seed_stats(per_seed: np.ndarray, alpha: float) -> list[findings.SeedStat]:
    """[studies, seeds] -> one SeedStat per study (``findings.seed_stat_of``)."""
    return [findings.seed_stat_of(v, alpha) for v in per_seed]


def window_calls(d: Draw, *, alpha: float = phase.ALPHA, margin: float = findings.MATCH,
                 edge: float = findings.TRANSITION) -> np.ndarray:
    """Findings 2 and 3b on each study: ``findings.match_then_gap`` of the a - b gap averaged over the rounds >= 1
    at or below ``edge`` and above it, per seed (mean over its domains)."""
    sp = d.sparsity
    r = np.arange(d.rounds + 1)
    g = d.a - d.b  # [S, D, seeds, R + 1]
    low = g[..., (r >= 1) & (sp <= edge + findings.EPS)].mean(axis=-1).mean(axis=1)  # [S, seeds]
    high = g[..., sp > edge + findings.EPS].mean(axis=-1).mean(axis=1)
    return np.array([findings.match_then_gap(lo, hi, margin)
                     for lo, hi in zip(_seed_stats(low, alpha), _seed_stats(high, alpha))])


def finding1_calls(d: Draw, *, alpha: float = phase.ALPHA, margin: float = findings.MATCH) -> np.ndarray:
    """Finding 1 on each study: ``findings.superior`` of a's mean over the rounds in (0, 90%] minus its dense round."""
    sp = d.sparsity
    r = np.arange(d.rounds + 1)
    v = (d.a[..., (r >= 1) & (sp <= findings.LOW_SPARSITY + findings.EPS)].mean(axis=-1) - d.a[..., 0]).mean(axis=1)
    return np.array([findings.superior(s, margin) for s in _seed_stats(v, alpha)])


def finding3a_calls(d: Draw, *, alpha: float = phase.ALPHA) -> np.ndarray:
    """Finding 3a on each study: ``findings.non_inferior`` of b (TICKET-TARGET) - a (MASKS-RESET) over (0, 90%]."""
    sp = d.sparsity
    r = np.arange(d.rounds + 1)
    v = (d.b - d.a)[..., (r >= 1) & (sp <= findings.LOW_SPARSITY + findings.EPS)].mean(axis=-1).mean(axis=1)
    return np.array([findings.non_inferior(s, findings.TRANSFER_DROP) for s in _seed_stats(v, alpha)])


def onset_calls(d: Draw, *, alpha: float = phase.ALPHA, studentize: bool = True) -> np.ndarray:
    """[studies, domains]: the onset round per domain (rounds 1..R; R + 1 where none is called), by the
    studentized step-down max-T over the informative rounds (``phase.maxt_stepdown``, ``informative_rounds``)."""
    x = (d.a - d.b)[..., 1:]  # [S, D, seeds, R]
    n = np.full(d.a[..., 1:].shape, float(d.test_n))
    A, B, N = (np.moveaxis(v, -1, -2)[..., None] for v in (d.a[..., 1:], d.b[..., 1:], n))  # [S, D, R, seeds, 1]
    info = phase.informative_rounds(A, B, N, N, alpha)
    p = phase.maxt_stepdown(np.moveaxis(x, -1, -2), info, studentize=studentize, floor=1.0 / d.test_n)
    return phase.first_significant(p, alpha) + 1


def collapse_rounds(acc: np.ndarray, test_n: int, alpha: float = phase.ALPHA) -> np.ndarray:
    """[..., rounds + 1] -> [...]: each chain's collapse point (``phase.collapse_round``; censored chains at
    their last round)."""
    out = np.empty(acc.shape[:-1])
    for idx in np.ndindex(out.shape):
        out[idx] = phase.collapse_round(acc[idx], n=test_n, alpha=alpha)[0]
    return out


def finding4_calls(d: Draw, *, alpha: float = phase.ALPHA) -> np.ndarray:
    """Finding 4 on each study, on strategy b's (TICKET-RANDOM's) chains: held if the permutation test of
    the between-domain spread of collapse points gives p < alpha, not held if every pair of domains is
    equivalent within +-SAME_ROUND, else inconclusive (the rule of ``findings.finding4``)."""
    c = collapse_rounds(d.b, d.test_n, alpha)  # [S, D, seeds]
    out = []
    for t in np.moveaxis(c, 1, 2):  # [seeds, domains]
        t = t[~np.isnan(t).any(axis=1)]
        if len(t) < 2:
            out.append("no data")
            continue
        if findings.domain_permutation_p(t) < alpha:
            out.append("held")
            continue
        eq = all(-findings.SAME_ROUND < lo and hi < findings.SAME_ROUND for lo, hi in
                 (phase.signflip_interval(t[:, i] - t[:, j], alpha) for i in range(t.shape[1])
                  for j in range(i + 1, t.shape[1])))
        out.append("not held" if eq else "inconclusive")
    return np.array(out)


def rows_of(d: Draw, study: int, *, stage: str = "obtain", strategies: tuple[str, str] = ("reset", "random"),
            only: str | None = None) -> pd.DataFrame:
    """One simulated study as schema-true result rows: obtain chains d0, d1, ... (rounds 0..R), or transfer
    pairs s0->d0, ... (rounds 1..R); ``strategies`` name ``a`` and ``b`` (``only``: keep one of them)."""
    out = []
    first = 0 if stage == "obtain" else 1
    sp = d.sparsity
    for k in range(d.a.shape[1]):
        src, tgt = (f"d{k}", f"d{k}") if stage == "obtain" else (f"s{k}", f"d{k}")
        pair = tgt if stage == "obtain" else f"{src}->{tgt}"
        for s in range(d.a.shape[2]):
            for r in range(first, d.rounds + 1):
                for strategy, acc in zip(strategies, (d.a[study, k, s, r], d.b[study, k, s, r])):
                    if only is not None and strategy != only:
                        continue
                    out.append(dict(stage=stage, source=src, target=tgt, domain=tgt, pair=pair, seed=s,
                                    strategy=strategy, round=r, sparsity=float(sp[r]), val_acc=acc, test_acc=acc,
                                    test_n=d.test_n, best_epoch=1, epochs_run=2, seconds=0.0, settings_hash="sim"))
    return pd.DataFrame(out)


# ------------------------------------------------------------------------------------ the scenarios

@dataclass
class Check:
    """One row of the simulation table: a scenario, what is counted, and the target."""
    finding: str
    scenario: str
    counted: str  # e.g. 'held', 'not held', 'onset called'
    target: str  # "<= 0.05" or ">= 0.80"
    rate: float = float("nan")
    studies: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        op, value = self.target.split()
        return self.rate <= float(value) + 1e-12 if op == "<=" else self.rate >= float(value) - 1e-12


def _rate(calls: np.ndarray, what: str) -> float:
    return float((np.asarray(calls) == what).mean())


def noisy_rounds(base: float = 0.01, factor: float = 8.0, rounds=(9, 13, 17), n: int = ROUNDS) -> np.ndarray:
    sd = np.full(n + 1, base)
    sd[list(rounds)] = base * factor
    return sd


def checks(studies: int = STUDIES, alpha: float = phase.ALPHA) -> list[Check]:
    """Every scenario of the table, run."""
    out = []
    flat = np.full(ROUNDS + 1, 0.70)
    alike = logistic_collapse(15.0)
    late = slow_decline()

    def run(check, calls):
        check.rate, check.studies = _rate(calls, check.counted), len(calls)
        out.append(check)

    # finding 2: match at or below 96%, random drops faster beyond
    null = draw(alike, alike, studies=studies, rng=1)
    run(Check("2", "alike: both collapse at round 15", "held", "<= 0.05"), window_calls(null, alpha=alpha))
    noisy = draw(alike, alike, studies=studies, sd=noisy_rounds(0.01), rng=2)
    run(Check("2", "alike, 1 pp noise but 3 rounds at 8 pp", "held", "<= 0.05"), window_calls(noisy, alpha=alpha))
    gap = draw(late, late - ramp(8, 0.06), studies=studies, rng=3)
    run(Check("2", "late gap: both decline slowly past 96%, random's extra decline grows to 6 pp by round 20 "
                   "(never at the collapse midpoint)", "held", ">= 0.80"), window_calls(gap, alpha=alpha))
    gap_noisy = draw(late, late - ramp(8, 0.06), studies=studies, sd=noisy_rounds(0.01), rng=4)
    run(Check("2", "the late gap, 1 pp noise but 3 rounds at 8 pp", "held", ">= 0.80"), window_calls(gap_noisy, alpha=alpha))
    early = draw(flat, flat - step(1, 0.05) + step(8, 0.05), studies=studies, rng=5)
    run(Check("2", "opposite: random 5 pp below reset at or below 96%", "not held", ">= 0.80"),
        window_calls(early, alpha=alpha))
    reverse = draw(late - ramp(8, 0.06), late, studies=studies, rng=6)
    run(Check("2", "opposite: reset's extra decline past 96% (random ahead)", "not held", ">= 0.80"),
        window_calls(reverse, alpha=alpha))
    none = draw(late, late, studies=studies, rng=7)
    run(Check("2", "opposite: alike everywhere (both decline slowly past 96%)", "not held", ">= 0.80"), window_calls(none, alpha=alpha))

    # the onset (secondary): studentized max-T, per domain
    onset_sd = noisy_rounds(0.01)
    g3 = draw(flat, flat - step(10, 0.03), studies=studies, sd=onset_sd, seed_sd=0.0, rng=8)
    o = onset_calls(g3, alpha=alpha)
    c = Check("onset", "3-pp gap from round 10, 1 pp noise, 3 rounds at 8 pp: called per domain", "called",
              ">= 0.80")
    c.rate, c.studies = float((o <= ROUNDS).mean()), o.size
    c.extra = {"raw-mean max-T (before)": float((onset_calls(g3, alpha=alpha, studentize=False) <= ROUNDS).mean()),
               "called before round 10": float((o < 10).mean())}
    out.append(c)
    n0 = draw(flat, flat, studies=studies, sd=onset_sd, seed_sd=0.0, rng=9)
    o0 = onset_calls(n0, alpha=alpha)
    c = Check("onset", "no gap, 1 pp noise, 3 rounds at 8 pp: called per domain", "called", "<= 0.05")
    c.rate, c.studies = float((o0 <= ROUNDS).mean()), o0.size
    out.append(c)
    nc = draw(alike, alike, studies=studies, rng=10)
    o1 = onset_calls(nc, alpha=alpha)
    c = Check("onset", "alike: both collapse at round 15: called per domain", "called", "<= 0.05")
    c.rate, c.studies = float((o1 <= ROUNDS).mean()), o1.size
    out.append(c)

    # finding 1: reset vs its dense round, (0, 90%]
    run(Check("1", "no advantage over the dense network", "held", "<= 0.05"),
        finding1_calls(draw(flat, flat, studies=studies, rng=11), alpha=alpha))
    run(Check("1", "reset 3 pp above the dense network up to 90%", "held", ">= 0.80"),
        finding1_calls(draw(flat + step(1, 0.03), flat, studies=studies, rng=12), alpha=alpha))
    run(Check("1", "opposite: no advantage", "not held", ">= 0.80"),
        finding1_calls(draw(flat, flat, studies=studies, rng=13), alpha=alpha))

    # finding 3a: TICKET-TARGET - MASKS-RESET <= 5 pp (non-inferiority)
    def transfer(drop, rng):
        return draw(flat - step(0, drop), flat, studies=studies, shared_round0=False, rng=rng)
    run(Check("3a", "a drop of exactly 5 pp (the margin)", "held", "<= 0.05"), finding3a_calls(transfer(0.05, 14), alpha=alpha))
    run(Check("3a", "a drop of 3 pp", "held", ">= 0.80"), finding3a_calls(transfer(0.03, 15), alpha=alpha))
    run(Check("3a", "opposite: a drop of 8 pp", "not held", ">= 0.80"), finding3a_calls(transfer(0.08, 16), alpha=alpha))

    # finding 3b: the windows of finding 2 on the transfer's masks-reset - masks-random
    run(Check("3b", "alike: both collapse at round 15", "held", "<= 0.05"),
        window_calls(draw(alike, alike, studies=studies, shared_round0=False, rng=17), alpha=alpha))
    run(Check("3b", "late gap growing to 6 pp by round 20", "held", ">= 0.80"),
        window_calls(draw(late, late - ramp(8, 0.06), studies=studies, shared_round0=False, rng=18), alpha=alpha))

    # finding 4: random's collapse point per domain
    f4 = dict(studies=max(studies // 2, 50), jitter_b=0.5, domain_sd=0.0)  # chains' collapse points scatter 0.5 rounds
    run(Check("4", "every domain collapses at round 13", "held", "<= 0.05"),
        finding4_calls(draw(alike, alike, centre_b=13.0, rng=19, **f4), alpha=alpha))
    run(Check("4", "one domain collapses 2 rounds later", "held", ">= 0.80"),
        finding4_calls(draw(alike, alike, centre_b=[13.0, 13.0, 15.0], rng=20, **f4), alpha=alpha))
    run(Check("4", "opposite: every domain at round 13, chains scatter 0.1 rounds, 0.5 pp noise", "not held", ">= 0.80"),
        finding4_calls(draw(alike, alike, centre_b=13.0, rng=21, **{**f4, "jitter_b": 0.1, "sd": 0.005, "seed_sd": 0.0}),
                       alpha=alpha))
    return out


def table(studies: int = STUDIES, alpha: float = phase.ALPHA) -> pd.DataFrame:
    rows = []
    for c in checks(studies, alpha):
        rows.append(dict(finding=c.finding, scenario=c.scenario, counted=c.counted, target=c.target,
                         rate=round(c.rate, 3), studies=c.studies, ok=c.ok,
                         note="; ".join(f"{k} {v:.3f}" for k, v in c.extra.items())))
    return pd.DataFrame(rows)


def markdown(t: pd.DataFrame) -> str:
    lines = ["| finding | scenario (3 domains x 5 seeds x rounds 0..20) | counted | target | rate | studies | note |",
             "|---|---|---|---|---:|---:|---|"]
    for _, r in t.iterrows():
        lines.append(f"| {r['finding']} | {r['scenario']} | {r['counted']} | {r['target']} | {r['rate']:.3f}"
                     f"{'' if r['ok'] else ' (missed)'} | {r['studies']} | {r['note'] or ''} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ collapse-shaped curves
# (the secondary estimands: collapse points and the onset, at any number of rounds; tests/test_phase.py)


def simulate_curves(studies: int, *, domains: int = 3, seeds: int = 5, rounds: int = 15, collapse_a: float = 12.0,
                    collapse_b: float = 8.0, width: float = 0.5, dense: float = 0.68, sd: float = 0.03,
                    seed_sd: float = 0.01, jitter: float = 0.4, test_n: int = 248, floor: float = 0.03,
                    rng: np.random.Generator | int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Planted studies shaped like the real curves: ``a``, ``b`` [studies, domains, seeds, rounds + 1]
    test accuracies and the expected difference ``a - b`` (same shape, no noise).

    Each chain holds its start level (``dense`` + a domain and a seed effect; round 0 is shared by a
    seed's two chains) and collapses to chance along a logistic in rounds centred at its collapse round
    (``collapse_a`` or ``collapse_b`` + N(0, ``jitter``) per chain; ``width`` in rounds); a chain whose
    expected margin over chance is below ``floor`` predicts one class (exactly 50%, as collapsed chains
    do). Noise: N(0, ``sd``) per chain and round, plus a per (seed, round, strategy) shock of sd
    ``seed_sd`` shared by every domain of that seed (seeds correlated across domains); accuracies are
    whole counts of ``test_n`` texts."""
    rng = np.random.default_rng(rng)
    shape = (studies, domains, seeds)
    start = (dense + rng.normal(0, 0.02, (studies, domains, 1)) + rng.normal(0, 0.01, (studies, 1, seeds)))
    start = np.broadcast_to(start, shape)
    r = np.arange(rounds + 1, dtype=float)

    def expected(centre):
        c = centre + rng.normal(0, jitter, shape)
        return phase.CHANCE + (start[..., None] - phase.CHANCE) / (1 + np.exp(-(c[..., None] - r) / width))

    ta, tb = expected(collapse_a), expected(collapse_b)

    def observe(t):
        shock = rng.normal(0, seed_sd, (studies, 1, seeds, rounds + 1)) if seed_sd > 0 else 0.0
        y = t + shock + rng.normal(0, sd, t.shape)
        y = np.where(t - phase.CHANCE < floor, phase.CHANCE, y)
        return np.clip(np.round(y * test_n), 0, test_n) / test_n

    a, b = observe(ta), observe(tb)
    b[..., 0] = a[..., 0]  # the dense round 0 is one network
    return a, b, ta - tb


def planted_onset(expected_gap: np.ndarray, delta: float = 0.02) -> np.ndarray:
    """[studies, domains]: the first round >= 1 where the domain's expected gap (mean over its chains)
    reaches ``delta``, as an index into rounds 1..R (R where never)."""
    g = expected_gap[..., 1:].mean(axis=-2) >= delta
    return np.where(g.any(axis=-1), g.argmax(axis=-1), g.shape[-1])


def simulate_calls(a: np.ndarray, b: np.ndarray, *, alpha: float = phase.ALPHA, test_n: int = 248,
                   stage: str = "obtain") -> dict[str, np.ndarray]:
    """The calls ``transition`` makes, on arrays from ``simulate_curves`` (rounds 1..R take part in the
    onset; round indices are into 1..R, R meaning none): per domain and pooled (seed = unit) the onset,
    and the collapse-point comparison's p and exact interval (rounds). ``stage="transfer"``: chains
    have no round 0 (their start level is their round 1)."""
    studies, domains, seeds, _ = a.shape
    first = 0 if stage == "obtain" else 1
    x = (a - b)[..., 1:]  # [S, D, seeds, R]
    n = np.full(a[..., 1:].shape, float(test_n))
    # arrays as Units holds them: [..., rounds, seeds, pairs]
    A = np.moveaxis(a[..., 1:], -1, -2)[..., None]  # per domain: [S, D, R, seeds, 1]
    B = np.moveaxis(b[..., 1:], -1, -2)[..., None]
    N = np.moveaxis(n, -1, -2)[..., None]
    info_d = phase.informative_rounds(A, B, N, N, alpha)  # [S, D, R]
    onset_d = phase.first_significant(phase.maxt_stepdown(np.moveaxis(x, -1, -2), info_d, floor=1.0 / test_n), alpha)
    Ap, Bp, Np = (np.moveaxis(v[..., 0], 1, -1) for v in (A, B, N))  # pooled: [S, R, seeds, D]
    info_p = phase.informative_rounds(Ap, Bp, Np, Np, alpha)
    onset_p = phase.first_significant(phase.maxt_stepdown(np.moveaxis(x.mean(axis=1), -1, -2), info_p, floor=1.0 / test_n), alpha)
    ca = np.empty((studies, domains, seeds))
    cb = np.empty_like(ca)
    for idx in np.ndindex(ca.shape):
        ca[idx] = phase.collapse_round(a[idx][first:], n=test_n, alpha=alpha)[0] + first
        cb[idx] = phase.collapse_round(b[idx][first:], n=test_n, alpha=alpha)[0] + first
    d = ca - cb  # censored chains at the last round, as collapse_test uses them
    out = dict(onset_domain=onset_d, onset_pooled=onset_p, collapse_a=ca, collapse_b=cb,
               collapse_p_domain=phase.signflip_p(np.nan_to_num(d)), collapse_p_pooled=phase.signflip_p(np.nan_to_num(np.nanmean(d, axis=1))))
    lo_d, hi_d = np.empty((studies, domains)), np.empty((studies, domains))
    lo_p, hi_p = np.empty(studies), np.empty(studies)
    for s in range(studies):
        for k in range(domains):
            lo_d[s, k], hi_d[s, k] = phase.signflip_interval(d[s, k], alpha)
        lo_p[s], hi_p[s] = phase.signflip_interval(np.nanmean(d[s], axis=0), alpha)
    out.update(collapse_lo_domain=lo_d, collapse_hi_domain=hi_d, collapse_lo_pooled=lo_p, collapse_hi_pooled=hi_p)
    return out


def simulate_rows(*, domains: int = 3, seeds: int = 5, rounds: int = 15, stage: str = "obtain",
                  strategies: tuple[str, str] | None = None, test_n: int = 248, rng: int = 0, **shape) -> pd.DataFrame:
    """One planted study of ``simulate_curves`` as schema-true result rows (obtain: rounds 0..R;
    transfer: pairs d0->t0 ... , rounds 1..R)."""
    a, b, _ = simulate_curves(1, domains=domains, seeds=seeds, rounds=rounds, test_n=test_n, rng=rng, **shape)
    strategies = strategies or (("reset", "random") if stage == "obtain" else ("masks-reset", "masks-random"))
    out = []
    for d in range(domains):
        src, tgt = (f"d{d}", f"d{d}") if stage == "obtain" else (f"s{d}", f"d{d}")
        pair = tgt if stage == "obtain" else f"{src}->{tgt}"
        for s in range(seeds):
            for r in range(0 if stage == "obtain" else 1, rounds + 1):
                for strategy, acc in zip(strategies, (a[0, d, s, r], b[0, d, s, r])):
                    out.append(dict(stage=stage, source=src, target=tgt, domain=tgt, pair=pair, seed=s, strategy=strategy,
                                    round=r, sparsity=1 - 0.65 ** r, val_acc=acc, test_acc=acc, test_n=test_n,
                                    best_epoch=1, epochs_run=2, seconds=0.0, settings_hash="sim"))
    return pd.DataFrame(out)

BEGIN, END = "<!-- simulation table: begin -->", "<!-- simulation table: end -->"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="the findings' simulation table (false positives and power)")
    ap.add_argument("--write", help="a Markdown file whose table (between the markers) to replace")
    ap.add_argument("--studies", type=int, default=STUDIES)
    args = ap.parse_args(argv)
    md = markdown(table(args.studies))
    if not args.write:
        print(md)
        return 0
    from pathlib import Path

    path = Path(args.write)
    text = path.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path}: no {BEGIN} ... {END} markers to put the table between")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{BEGIN}\n{md}\n{END}{tail}", encoding="utf-8")
    print(f"wrote the table to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
