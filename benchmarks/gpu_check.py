"""GPU check: rounds/second for one chain and for several chains at once (benchmarks/multi.py).

Run by benchmarks/gpu_check.sh on a machine with a CUDA GPU (works on the CPU too, slowly; pass
--device cpu --quick). Demo-size data (498/248/248 sentences of ~20 subwords; synthetic unless
--study is given), the paper's model, 3 epochs per round.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from ltnb.core import lottery  # noqa: E402
from ltnb.base.config import LotterySettings, TrainSettings, derive_seed  # noqa: E402
from ltnb.core.model import KimCNN, initial_state  # noqa: E402
from multi import fit_many  # noqa: E402  (benchmarks/multi.py)
from ltnb.core.train import default_device, fit, synthetic_data  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default=default_device())
    p.add_argument("--study")
    p.add_argument("--domain", default="products")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--chains", default="4,16")
    args = p.parse_args()
    dev = torch.device(args.device)
    print(f"torch {torch.__version__}, device {dev}" + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""), flush=True)
    if args.study:
        from ltnb.text import vocab

        data, v = vocab.load_encoded(args.study, args.domain)
    else:
        sizes = (96, 48, 48) if args.quick else (498, 248, 248)
        data, v = synthetic_data(8000, sizes=sizes, length=(5, 35), seed=0), 8000
    epochs = 1 if args.quick else 3
    rounds = 2 if args.quick else 5
    ts = TrainSettings(max_epochs=epochs, patience=2)
    settings = LotterySettings(rounds=rounds, train=ts)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    # warm-up (kernels, cuBLAS/cuDNN heuristics)
    m = KimCNN(v, seed=0)
    fit(m, data, TrainSettings(max_epochs=1), device=dev, progress=False)
    sync()

    for precision in ("float32", "bfloat16"):
        bf16 = precision == "bfloat16"
        s = LotterySettings(rounds=rounds, train=TrainSettings(max_epochs=epochs, patience=2, precision=precision))
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            rows = lottery.obtain(tmp, "gpu", seed=0, settings=s, data=data, vocab_size=v, device=str(dev), progress=False)
            sync()
            dt = time.perf_counter() - t
        print(f"one chain{' bf16' if bf16 else ''}: rounds 0..{rounds} in {dt:.1f} s = {(rounds + 1) / dt:.2f} rounds/s; "
              f"test acc {[round(a, 3) for a in rows['test_acc']]}", flush=True)

    for k in [int(x) for x in args.chains.split(",")]:
        models = []
        for i in range(k):
            mm = KimCNN.from_settings(v, settings.model, seed=None)
            mm.load_state_dict(initial_state(v, settings.model, derive_seed(i, "theta_0")))
            models.append(mm)
        sync()
        t = time.perf_counter()
        res = fit_many(models, data, ts, seeds=list(range(k)), device=dev, progress=False)
        sync()
        dt = time.perf_counter() - t
        print(f"{k} chains at once (fit_many, dense round): {dt:.1f} s = {k / dt:.2f} rounds/s; "
              f"mean test acc {sum(r.test_acc for r in res) / k:.3f}", flush=True)


if __name__ == "__main__":
    main()
