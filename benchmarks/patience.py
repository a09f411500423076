"""How many epochs does a round need, and which early-stopping patience keeps what 15 epochs find?

Trains one IMP chain pair (reset and random, one domain, one seed, the demo's model and data) for the
full ``max_epochs`` of every round (no early stopping), records each epoch's validation accuracy, and
then replays every patience p on those histories: a round with patience p stops after p epochs
without a better validation accuracy, so its epochs and selected epoch are exactly a prefix of the
full run (training draws do not depend on the patience). Later rounds would differ slightly (their
masks come from the selected epoch's weights), so this measures the choice, not a patience-p chain.

    LTNB_CACHE=... python benchmarks/patience.py outputs/patience --domain products --seed 0

Writes ``<study>/patience_histories.csv`` (strategy, round, epoch, val_acc) and prints the replay table.
"""
from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from ltnb.base import config, paths
from ltnb.core import lottery
from ltnb.text import data, vocab
from ltnb.core import train as _train


def replay(hist: pd.DataFrame, patience: int | None) -> pd.DataFrame:
    """Per (strategy, round): epochs run, selected epoch and its val_acc under ``patience``."""
    out = []
    for (strategy, r), h in hist.groupby(["strategy", "round"], sort=True):
        accs = h.sort_values("epoch")["val_acc"].tolist()
        best, best_e, since, run = -1.0, 0, 0, 0
        for e, a in enumerate(accs, 1):
            run = e
            if a > best:
                best, best_e, since = a, e, 0
            else:
                since += 1
                if patience is not None and since >= patience:
                    break
        out.append({"strategy": strategy, "round": r, "patience": patience or 0, "epochs_run": run,
                    "best_epoch": best_e, "val_acc": best, "full_val_acc": max(accs), "full_best_epoch":
                    accs.index(max(accs)) + 1, "converged": best_e < run})
    return pd.DataFrame(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("study")
    ap.add_argument("--domain", default="products")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--max-epochs", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)
    study = paths.resolve_study(args.study)
    if not (paths.data_dir(study) / "corpus.parquet").exists():
        data.build(study, config.DataSettings(domains=["products", "movies", "restaurants", "tweets", "news"]))
        vocab.build(study, config.VocabSettings(vocab_size=8000))
    settings = config.LotterySettings.from_params(rounds=args.rounds, max_epochs=args.max_epochs, patience=None)
    histories = []
    real_fit = _train.fit

    def fit(*a, **k):
        result = real_fit(*a, **k)
        histories.append(result.history)
        return result

    lottery._train.fit = fit
    frames = []
    for strategy in ("reset", "random"):
        t0 = time.perf_counter()
        histories.clear()
        rows = lottery.obtain(study, args.domain, seed=args.seed, strategy=strategy, settings=settings, progress=False)
        rounds = list(rows["round"])[-len(histories):] if histories else []
        for r, h in zip(rounds, histories):
            frames.append(pd.DataFrame(h).assign(strategy=strategy, round=r))
        print(f"{strategy}: {time.perf_counter() - t0:.0f} s")
        print(rows[["round", "sparsity", "val_acc", "test_acc", "test_n", "best_epoch", "epochs_run", "converged",
                    "wchange_embedding", "wchange_conv", "wchange_mlp", "emb_rows_seen", "seconds"]].round(4)
              .to_string(index=False))
    hist = pd.concat(frames, ignore_index=True)
    hist.to_csv(study / "patience_histories.csv", index=False)
    table = pd.concat([replay(hist, p) for p in (1, 2, 3, 4, 5, None)], ignore_index=True)
    table["lost_pp"] = 100 * (table["full_val_acc"] - table["val_acc"])
    print(table.groupby("patience").agg(epochs_run=("epochs_run", "mean"), best_epoch=("best_epoch", "mean"),
                                        converged=("converged", "mean"), rounds_worse=("lost_pp", lambda v: (v > 0).sum()),
                                        lost_pp_mean=("lost_pp", "mean"), lost_pp_max=("lost_pp", "max")).round(3))


if __name__ == "__main__":
    main()
