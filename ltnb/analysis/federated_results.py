"""The federated stage's results, read and summarised without torch or Flower (the report's side of
``ltnb.study.federated``): every run's rows, mean and spread over seeds, the table of bytes, rounds and
megabytes to reach the target accuracy, the ratio ticket / dense with an interval over seeds, and
the savings in one sentence each. The chart is ``ltnb.analysis.plots.federated_chart``.

The target is fixed before the runs: ``target_share`` (a setting, default 0.95) times the fair dense
baseline's final global accuracy, mean over seeds. Per seed, a run's megabytes to target are the
cumulative megabytes of its first federated round at or above the target. The ratio of a run to the
fair dense baseline is taken per seed (the two share the seed's theta_0, shards and client draws), and
summarised as the geometric mean with a Student-t interval on the mean log ratio over seeds
(``ratio_interval``). A seed whose run never reaches the target is censored, not dropped: its
megabytes are at least everything it sent, so its ratio is at least (sent / dense's); the row says how
many seeds were censored, and the estimate and interval are then lower bounds ("at least"). A seed
whose dense baseline misses the target gives an upper bound likewise; a seed where both miss says
nothing and is counted apart.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ltnb.base import integrity
from ltnb.base import paths
from ltnb.base.labels import sparsity_label
from ltnb.analysis.results import over_seeds

from ltnb.base.config import FEDERATED_DENSE as DENSE
from ltnb.base.config import FEDERATED_NAIVE as NAIVE

RESULTS = "results.parquet"
MESSAGES = "messages.parquet"
MB = 1e6  # megabytes are decimal (10^6 bytes) throughout


def load_messages(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Every message of every finished run of a cell folder."""
    files = sorted((Path(run_dir) / "runs").glob(f"*/{MESSAGES}"))
    return pd.concat([integrity.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()



def load(study_dir) -> pd.DataFrame:
    """Every federated row of a study (all cells, all settings hashes)."""
    study = paths.resolve_study(study_dir)
    files = sorted((study / "federated").glob(f"*/seed*/*/{RESULTS}"))
    frames = []
    for f in files:
        rows = integrity.read_parquet(f)
        info = f.parent / "settings.json"
        share = json.loads(info.read_text()).get("target_share", 0.95) if info.exists() else 0.95
        if not rows.empty:
            frames.append(rows.assign(target_share=float(share)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def label(strategy: str, sparsity: float) -> str:
    """The name of a run's curve: ``DENSE (FedAvg)`` or ``95.1% MASKS-RESET``."""
    if strategy == DENSE:
        return "DENSE (FedAvg, changed rows)"
    if strategy == NAIVE:
        return "DENSE-NAIVE (FedAvg, every value)"
    return f"{sparsity_label(sparsity)}% {strategy.upper()}"


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of global accuracy, and mean bytes, per (source, strategy, ticket
    round, federated round)."""
    if rows.empty:
        return rows
    keys = ["settings_hash", "source", "strategy", "ticket_round", "fl_round"]
    out = over_seeds(rows, keys, means={"sparsity": "sparsity", "acc_mean": "global_acc", "source_acc": "source_acc",
                                        "bytes_round": "bytes_round", "payload_round": "payload_round",
                                        "bytes_cumulative": "bytes_cumulative"}, stds={"acc_std": "global_acc"})
    out["acc_std"] = out["acc_std"].fillna(0.0)
    out["series"] = [label(s, sp) for s, sp in zip(out["strategy"], out["sparsity"])]
    out["mb_cumulative"] = out["bytes_cumulative"] / MB
    return out


def ratio_interval(ratios, *, bound: str = "", level: float = 0.95) -> dict:
    """Geometric mean of per-seed ratios and the Student-t interval of the mean log ratio.

    ``ratios``: one positive ratio per seed (censored seeds at their bound). ``bound``: "" (every seed
    observed), "at least" or "at most" (some seeds are bounds, so the summary is one too). Returns
    ``ratio``, ``lo``, ``hi`` (NaN interval for fewer than 2 seeds), ``n``, ``bound``. Worked example
    (tests): ratios 0.1, 0.2, 0.4: logs -2.3026, -1.6094, -0.9163, mean -1.6094 (ratio 0.2), sd ln 2,
    se 0.4002, t(0.975; 2) = 4.3027, interval exp(-1.6094 -+ 1.7219) = 0.0357 .. 1.1190.
    """
    logs = np.log(np.asarray(list(ratios), dtype=float))
    n = len(logs)
    if n == 0:
        return {"ratio": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0, "bound": bound}
    mean = float(logs.mean())
    if n < 2:
        return {"ratio": math.exp(mean), "lo": float("nan"), "hi": float("nan"), "n": 1, "bound": bound}
    se = float(logs.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        lo = hi = mean
    else:
        lo, hi = stats.t.interval(level, n - 1, loc=mean, scale=se)
    return {"ratio": math.exp(mean), "lo": math.exp(lo), "hi": math.exp(hi), "n": n, "bound": bound}


def to_target(rows: pd.DataFrame, *, target_share: float | None = None) -> pd.DataFrame:
    """Per (settings, source, run, seed): the target, whether the run reached it, its rounds and MB to
    it (NaN when not reached), and everything it sent (MB_total). The target is ``target_share``
    (default: the rows' own ``target_share``, else 0.95) times the fair dense run's final accuracy,
    mean over seeds."""
    out = []
    for (h, source), part in rows.groupby(["settings_hash", "source"], sort=False):
        share = target_share if target_share is not None else (
            float(part["target_share"].iloc[0]) if "target_share" in part else 0.95)
        dense = part[part["strategy"] == DENSE]
        dense = dense[dense["fl_round"] == dense["fl_round"].max()]
        goal = share * float(dense["global_acc"].mean()) if len(dense) else float("nan")
        for (strategy, tr, seed), run in part.groupby(["strategy", "ticket_round", "seed"], sort=False):
            run = run.sort_values("fl_round")
            trained = run[run["fl_round"] >= 1]
            hit = trained[trained["global_acc"] >= goal]
            out.append({"settings_hash": h, "source": source, "strategy": strategy, "ticket_round": int(tr),
                        "seed": int(seed), "sparsity": float(run["sparsity"].iloc[0]), "target_share": share,
                        "target_acc": goal, "reached": bool(len(hit)),
                        "rounds_to_target": int(hit["fl_round"].iloc[0]) if len(hit) else float("nan"),
                        "MB_to_target": float(hit["bytes_cumulative"].iloc[0]) / MB if len(hit) else float("nan"),
                        "MB_total": float(run["bytes_cumulative"].iloc[-1]) / MB,
                        "final_acc": float(run["global_acc"].iloc[-1])})
    return pd.DataFrame(out)


def versus_dense(per_seed: pd.DataFrame, *, level: float = 0.95) -> pd.DataFrame:
    """Per run: MB-to-target ratio run / fair dense baseline over seeds (``ratio_interval``), with
    censored seeds at their bounds (see the module doc)."""
    out = []
    for (h, source), part in per_seed.groupby(["settings_hash", "source"], sort=False):
        dense = part[part["strategy"] == DENSE].set_index("seed")
        for (strategy, tr), run in part.groupby(["strategy", "ticket_round"], sort=False):
            ratios, lower, upper, neither = [], 0, 0, 0
            for _, r in run.iterrows():
                if r["seed"] not in dense.index:
                    continue
                d = dense.loc[r["seed"]]
                if r["reached"] and d["reached"]:
                    ratios.append(r["MB_to_target"] / d["MB_to_target"])
                elif d["reached"]:  # the run needs more than everything it sent
                    ratios.append(r["MB_total"] / d["MB_to_target"])
                    lower += 1
                elif r["reached"]:  # dense needs more than everything it sent
                    ratios.append(r["MB_to_target"] / d["MB_total"])
                    upper += 1
                else:
                    neither += 1
            bound = "mixed" if lower and upper else "at least" if lower else "at most" if upper else ""
            if ratios and lower == len(ratios):  # never reached in any seed: no saving to summarise
                ratios = []
            ci = ratio_interval(ratios, bound=bound, level=level)
            out.append({"settings_hash": h, "source": source, "strategy": strategy, "ticket_round": int(tr),
                        "ratio": ci["ratio"], "ratio_lo": ci["lo"], "ratio_hi": ci["hi"], "ratio_seeds": ci["n"],
                        "ratio_bound": bound, "censored_seeds": lower + upper, "both_missed_seeds": neither})
    return pd.DataFrame(out)


def table(rows: pd.DataFrame, *, target_share: float | None = None, level: float = 0.95) -> pd.DataFrame:
    """Per source and run: bytes of round 1 (with the mask) and of a later round, split into mask,
    values and row indices; the target; seeds that reached it; rounds and MB to it (mean over the
    seeds that did); the ratio run / fair dense with its ``level`` interval over seeds and the saving
    (1 / ratio); final accuracy (mean and std over seeds)."""
    if rows.empty:
        return pd.DataFrame()
    per_seed = to_target(rows, target_share=target_share)
    ratio = versus_dense(per_seed, level=level).set_index(["settings_hash", "source", "strategy", "ticket_round"])
    out = []
    keys = ["settings_hash", "source", "strategy", "ticket_round"]
    for (h, source, strategy, tr), run in rows.groupby(keys, sort=False):
        seeds = per_seed[(per_seed.settings_hash == h) & (per_seed.source == source) & (per_seed.strategy == strategy)
                         & (per_seed.ticket_round == tr)]
        first, later = run[run["fl_round"] == 1], run[run["fl_round"] >= 2]
        last = run[run["fl_round"] == run["fl_round"].max()]
        reached = seeds[seeds["reached"]]
        r = ratio.loc[(h, source, strategy, int(tr))]

        def mb(frame, col):
            return float(frame[col].mean()) / MB if len(frame) and col in frame else float("nan")

        out.append({
            "source": source, "run": label(strategy, float(run["sparsity"].iloc[0])), "strategy": strategy,
            "ticket_round": int(tr), "sparsity_%": 100 * float(run["sparsity"].iloc[0]),
            "protocol": str(run["protocol"].iloc[0]) if "protocol" in run else "full",
            "MB_round_1": mb(first, "bytes_round"), "mask_MB_round_1": mb(first, "mask_bytes_round"),
            "values_MB_round_1": mb(first, "values_bytes_round"),
            "MB_per_later_round": mb(later, "bytes_round"), "values_MB_per_later_round": mb(later, "values_bytes_round"),
            "indices_MB_per_later_round": mb(later, "indices_bytes_round"),
            "rows_up_per_client_round": float((later["rows_up"] / later["clients"]).mean()) if "rows_up" in later and len(later) else float("nan"),
            "target_acc_%": 100 * float(seeds["target_acc"].iloc[0]),
            "reached": f"{len(reached)}/{len(seeds)}",
            "rounds_to_target": float(reached["rounds_to_target"].mean()) if len(reached) else float("nan"),
            "MB_to_target": float(reached["MB_to_target"].mean()) if len(reached) else float("nan"),
            "MB_to_target_per_seed": ", ".join("not reached" if not s.reached else f"{s.MB_to_target:.3g}"
                                              for s in seeds.sort_values("seed").itertuples()),
            "ratio_vs_dense": r["ratio"], "ratio_lo": r["ratio_lo"], "ratio_hi": r["ratio_hi"],
            "ratio_bound": r["ratio_bound"], "censored_seeds": int(r["censored_seeds"]),
            "both_missed_seeds": int(r["both_missed_seeds"]),
            "final_acc_%": 100 * float(last["global_acc"].mean()),
            "final_acc_std": 100 * float(last["global_acc"].std(ddof=1)) if len(last) > 1 else 0.0,
            "MB_total": mb(last, "bytes_cumulative"), "fl_rounds": int(run["fl_round"].max()),
            "seeds": int(run["seed"].nunique()), "settings_hash": h,
        })
    order = {DENSE: 0, NAIVE: 1}
    tab = pd.DataFrame(out)
    tab["_o"] = [order.get(s, 2) for s in tab["strategy"]]
    return tab.sort_values(["settings_hash", "source", "_o", "strategy", "ticket_round"], kind="stable").drop(
        columns="_o").reset_index(drop=True)


def _interval(r, more: bool) -> str:
    if pd.isna(r["ratio_lo"]):
        return ""
    lo, hi = (r["ratio_lo"], r["ratio_hi"]) if more else (1 / r["ratio_hi"], 1 / r["ratio_lo"])
    return f", 95% interval {lo:.2g}x-{hi:.2g}x"


def savings(tab: pd.DataFrame) -> list[str]:
    """One sentence per (source, run other than the fair dense baseline): MB to target against the
    fair dense baseline's, per seed summarised as a saving (dense / run) with its interval."""
    lines = []
    for source, part in tab.groupby("source", sort=False):
        dense = part[part["strategy"] == DENSE]
        if dense.empty:
            continue
        d = dense.iloc[0]
        for _, r in part[part["strategy"] != DENSE].iterrows():
            head = f"{source}: {r['run']} reaches {r['target_acc_%']:.1f}% in {r['reached']} seeds"
            if pd.isna(r["ratio_vs_dense"]):
                lines.append(f"{head}: it never reaches the target within its {r['fl_rounds']} rounds "
                             f"({r['MB_total']:.3g} MB sent, final {r['final_acc_%']:.1f}%), so there is no saving to "
                             f"report; dense needs {d['MB_to_target']:.3g} MB (mean of {d['reached']} seeds)")
                continue
            more = r["ratio_vs_dense"] > 1
            factor = r["ratio_vs_dense"] if more else 1 / r["ratio_vs_dense"]
            flip = {"at least": "at most ", "at most": "at least "} if not more else {"at least": "at least ", "at most": "at most "}
            bound = {**flip, "mixed": "(censored both ways) "}.get(r["ratio_bound"], "")
            censored = (f"; {r['censored_seeds']} seed(s) censored (not reached: counted at everything sent, so the "
                        f"factor is a bound)") if r["censored_seeds"] else ""
            lines.append(f"{head}; MB to target {bound}{factor:.1f}x {'more' if more else 'less'} than the fair dense "
                         f"baseline's (geometric mean over {r['seeds']} seeds{_interval(r, more)}){censored}; "
                         f"dense needs {d['MB_to_target']:.3g} MB (mean of {d['reached']} seeds)")
    return lines
