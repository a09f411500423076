"""Workers x threads on this machine: throughput of independent chains (what ltnb batch runs).

    python benchmarks/threads.py [--study DIR --domain D] [--epochs 2] [--sparsity-rounds 0,11]

For each setting "W workers x T threads" (W * T <= cores) it starts W processes at once, each
training one demo-size round (fit, T torch threads) at the given pruning rounds, and reports rounds
per minute for the whole machine. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import sys, time, json, torch
torch.set_num_threads(int(sys.argv[1]))
sys.path.insert(0, sys.argv[6])
from ltnb.base.config import TrainSettings, ModelSettings
from ltnb.core.model import KimCNN
from ltnb.core.pruning import Mask, prune_step
from ltnb.core.train import fit, synthetic_data
study, domain, epochs, rnd = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
if study:
    from ltnb.text import vocab
    data, v = vocab.load_encoded(study, domain)
else:
    data, v = synthetic_data(8000, sizes=(498, 248, 248), length=(3, 40)), 8000
m = KimCNN(v, seed=0)
w = {n: p.detach().clone() for n, p in m.named_parameters()}
mask = Mask.ones_like(w)
for _ in range(rnd):
    mask = prune_step(w, mask, 0.35)
t = time.perf_counter()
fit(m, data, TrainSettings(max_epochs=epochs), masks=mask, progress=False)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def run(workers, threads, args, rnd):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-c", CHILD, str(threads), args.study or "", args.domain, str(args.epochs), str(rnd), str(ROOT)]
    t = time.perf_counter()
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(workers)]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    wall = time.perf_counter() - t
    per = sum(o["seconds"] for o in outs) / workers
    return workers / max(o["seconds"] for o in outs) * 60, per, wall


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--study")
    p.add_argument("--domain", default="products")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", default="0,11", help="pruning rounds to test (0 = dense, 11 = 99.1%% sparse)")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    settings = sorted({(cores // t, t) for t in (1, 2, 4, 8, 16) if t <= cores} | {(1, 1)})
    print(f"{cores} cores; fit() of one demo-size round, {args.epochs} epochs", flush=True)
    print("| round | workers x threads | seconds per round (each worker) | rounds per minute (machine) |")
    print("|---:|---|---:|---:|")
    for rnd in [int(r) for r in args.rounds.split(",")]:
        for w, t in settings:
            rpm, per, _ = run(w, t, args, rnd)
            print(f"| {rnd} | {w} x {t} | {per:.2f} | {rpm:.1f} |", flush=True)


if __name__ == "__main__":
    main()
