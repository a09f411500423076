"""The federated stage's results, read and summarised without torch or Flower (the report's side of
``ltnb.federated``): every run's rows, mean and spread over seeds, the table of bytes, rounds and
megabytes to reach 95% of the dense run's final accuracy, and the savings in one sentence each. The
chart is ``ltnb.plots.federated_chart``.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from . import paths
from .plots import sparsity_label
from .results import over_seeds

from .config import FEDERATED_DENSE as DENSE
from .config import TRANSFER_STRATEGIES as STRATEGIES

RESULTS = "results.parquet"
MESSAGES = "messages.parquet"
MB = 1e6  # megabytes are decimal (10^6 bytes) throughout


def load_messages(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Every message of every finished run of a cell folder."""
    files = sorted((Path(run_dir) / "runs").glob(f"*/{MESSAGES}"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()



def load(study_dir) -> pd.DataFrame:
    """Every federated row of a study (all cells, all settings hashes)."""
    study = paths.resolve_study(study_dir)
    files = sorted((study / "federated").glob(f"*/seed*/*/{RESULTS}"))
    frames = [pd.read_parquet(f) for f in files]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def label(strategy: str, sparsity: float) -> str:
    """The name of a run's curve: ``DENSE (FedAvg)`` or ``95.1% MASKS-RESET``."""
    return "DENSE (FedAvg)" if strategy == DENSE else f"{sparsity_label(sparsity)}% {strategy.upper()}"


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


def table(summary: pd.DataFrame, *, target: float = 0.95) -> pd.DataFrame:
    """Per source and run: bytes of round 1 (with the mask) and of a later round, rounds and MB to
    reach ``target`` x the dense run's final accuracy (mean curve over seeds), final accuracy."""
    out = []
    for (h, source), part in summary.groupby(["settings_hash", "source"], sort=False):
        last = part["fl_round"].max()
        dense = part[(part["strategy"] == DENSE) & (part["fl_round"] == last)]
        goal = target * float(dense["acc_mean"].iloc[0]) if len(dense) else float("nan")
        for (strategy, tr), run in part.groupby(["strategy", "ticket_round"], sort=False):
            run = run.sort_values("fl_round")
            trained = run[run["fl_round"] >= 1]
            hit = trained[trained["acc_mean"] >= goal]
            final = run[run["fl_round"] == last].iloc[0]
            later = trained[trained["fl_round"] >= 2]
            out.append({
                "source": source, "run": label(strategy, final["sparsity"]), "strategy": strategy,
                "ticket_round": int(tr), "sparsity_%": 100 * float(final["sparsity"]),
                "MB_round_1": float(trained["bytes_round"].iloc[0]) / MB if len(trained) else float("nan"),
                "MB_per_later_round": float(later["bytes_round"].mean()) / MB if len(later) else float("nan"),
                "target_acc_%": 100 * goal,
                "rounds_to_target": int(hit["fl_round"].iloc[0]) if len(hit) else None,
                "MB_to_target": float(hit["mb_cumulative"].iloc[0]) if len(hit) else None,
                "final_acc_%": 100 * float(final["acc_mean"]), "final_acc_std": 100 * float(final["acc_std"]),
                "MB_total": float(final["mb_cumulative"]), "fl_rounds": int(last), "seeds": int(final["n"]),
                "settings_hash": h,
            })
    return pd.DataFrame(out)


def savings(tab: pd.DataFrame) -> list[str]:
    """One sentence per (source, sparse run) that reaches the target: MB needed against dense's."""
    lines = []
    for source, part in tab.groupby("source", sort=False):
        dense = part[part["strategy"] == DENSE]
        if dense.empty or pd.isna(dense["MB_to_target"].iloc[0]):
            continue
        d = dense.iloc[0]
        for _, r in part[part["strategy"] != DENSE].iterrows():
            if pd.isna(r["MB_to_target"]):
                lines.append(f"{source}: the {r['run']} ticket does not reach {r['target_acc_%']:.1f}% within its "
                             f"{r['fl_rounds']} rounds ({r['MB_total']:.2f} MB, final {r['final_acc_%']:.1f}%); "
                             f"dense needs {d['MB_to_target']:.2f} MB")
            else:
                lines.append(f"{source}: the {r['run']} ticket needs {r['MB_to_target']:.2f} MB to reach "
                             f"{r['target_acc_%']:.1f}% where dense needs {d['MB_to_target']:.2f} MB "
                             f"({d['MB_to_target'] / r['MB_to_target']:.1f}x less)")
    return lines
