"""Where the seconds of one converged training go: ``ltnb.core.train.fit`` under ``torch.profiler``.

    python benchmarks/profile_fit.py --study outputs/demo --domain products [--rounds 0,8,12] [--epochs 15]
                                 [--precision float32,bfloat16] [--top 12]

For each round it trains the study's reset chain's mask of that round (seed 0; round 0 is dense) from the
chain's theta_0, as the study's obtain cell does (15 epochs, no patience, one thread: a batch worker),
once per precision, and prints the wall time and the operators that took the most time (self CPU),
with their share. Round 0 shows the dense path (convolutions, Adam over 4M weights, dropout over the
embedded batch), the sparse rounds the CSR kernels and the packed embedding.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from ltnb.core import tickets  # noqa: E402
from ltnb.text import vocab  # noqa: E402
from ltnb.base.config import LotterySettings, TrainSettings  # noqa: E402
from ltnb.core.model import KimCNN  # noqa: E402
from ltnb.core.train import fit  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", required=True, help="a study folder with a finished obtain chain (reset, seed 0)")
    ap.add_argument("--domain", default="products")
    ap.add_argument("--rounds", default="0,8,12")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--precision", default="float32,bfloat16")
    ap.add_argument("--top", type=int, default=12)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    study = Path(a.study)
    data, vocab_size = vocab.load_encoded(study, a.domain)
    runs = sorted((study / "obtain" / a.domain / "reset" / "seed0").glob("*/round_00.safetensors"))
    if not runs:
        raise SystemExit(f"{study}: no finished reset chain of {a.domain}, seed 0 (run the study's obtain stage first)")
    chain = runs[-1].parent
    print(f"chain {chain}; {torch.get_num_threads()} thread(s); {a.epochs} epochs; train/val/test "
          f"{len(data['train'])}/{len(data['validation'])}/{len(data['test'])}")
    for rnd in (int(r) for r in a.rounds.split(",")):
        t = tickets.load(chain / f"round_{rnd:02d}.safetensors")
        settings = LotterySettings.from_dict(t.settings.to_dict())
        for precision in a.precision.split(","):
            ts = TrainSettings(**{**settings.train.__dict__, "max_epochs": a.epochs, "patience": None,
                                  "precision": precision})
            model = KimCNN.from_settings(vocab_size, settings.model, seed=None)
            model.load_state_dict(t.init)
            start = time.perf_counter()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                r = fit(model, data, ts, masks=dict(t.masks) if rnd else None, seed=0, device="cpu", progress=False)
            wall = time.perf_counter() - start
            events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
            total = sum(e.self_cpu_time_total for e in events)
            print(f"\nround {rnd} (sparsity {t.sparsity:.4f}), {precision}: {wall:.2f} s wall under the profiler, "
                  f"{r.steps} steps, test acc {r.test_acc:.3f}")
            for e in events[: a.top]:
                print(f"  {e.key[:38]:<38} {e.self_cpu_time_total / 1e6:7.2f} s {100 * e.self_cpu_time_total / total:5.1f}%"
                      f"  {e.count:>6} calls")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
