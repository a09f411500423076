"""ltnb vs a plain reference IMP chain (benchmarks/reference.py), in one run, on the same data,
seed and rounds; plus the machine's matmul rate and ltnb's dense training GFLOP/s.

    python benchmarks/bench.py            # demo size: 498/248/248 sentences, rounds 0..11, 3 epochs
    python benchmarks/bench.py --quick    # a smoke run (< 30 s)
    python benchmarks/bench.py --study outputs/demo --domain products

Data: ``--study`` reads that study's encodings; otherwise a throw-away study of the built-in corpus
(``ltnb.text.data.build`` + ``ltnb.text.vocab.build``, 994 sentences per domain, vocabulary 8000) when the
corpus is in the cache, else ``ltnb.core.train.synthetic_data``. ``--quick`` uses synthetic data.
Only ratios measured in the same run are meaningful (the machine may be busy).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ltnb.core import lottery, sparse  # noqa: E402
from ltnb.base.config import DataSettings, LotterySettings, ModelSettings, TrainSettings, VocabSettings  # noqa: E402
from ltnb.core.train import EVAL_BATCH, fit, make_batches, synthetic_data  # noqa: E402

import reference  # noqa: E402


def matmul_rate(n=2048, repeat=3) -> float:
    """float32 GFLOP/s of an n^3 matmul (best of ``repeat``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def training_flops(data, settings: LotterySettings) -> float:
    """FLOPs of one epoch (train fwd+bwd = 3x forward, plus the validation forward pass) of the
    convolutions and the MLP (the matmul work; embedding lookups and Adam are memory-bound)."""
    m, t = settings.model, settings.train
    width = max(m.kernel_sizes)
    mlp = m.channels * len(m.kernel_sizes) * m.hidden + m.hidden * 2

    def fwd(batches):
        total = 0
        for b in batches:
            B, T = b.ids.shape[0], max(b.ids.shape[1], width)
            total += sum(2 * B * (T - h + 1) * m.embed_dim * h * m.channels for h in m.kernel_sizes) + 2 * B * mlp
        return total

    g = torch.Generator().manual_seed(0)
    train = make_batches(data["train"], t.batch_size, max_len=t.max_len, generator=g)
    val = make_batches(data["validation"], EVAL_BATCH, max_len=t.max_len)
    return 3 * fwd(train) + fwd(val)


def load_data(args, log):
    if args.study:
        from ltnb.text import vocab

        data, v = vocab.load_encoded(args.study, args.domain)
        return data, v, f"study {args.study} ({args.domain})"
    if not args.quick:
        try:
            from ltnb.text import data as ldata, vocab
            from ltnb.text.corpus import BUILTIN_DOMAINS

            tmp = Path(tempfile.mkdtemp(prefix="ltnb-bench-"))
            domains = [args.domain] + [d for d in BUILTIN_DOMAINS if d != args.domain][:1]
            ldata.build(tmp, DataSettings(domains=domains, per_domain=994, seed=0), log=lambda *_: None)
            vocab.build(tmp, VocabSettings(vocab_size=8000), log=lambda *_: None)
            data, v = vocab.load_encoded(tmp, args.domain)
            return data, v, f"built-in corpus, {args.domain}, 994 sentences (temporary study {tmp})"
        except Exception as e:  # corpus not fetched, etc.
            log(f"(built-in corpus unavailable: {e}; using synthetic data)")
    sizes, length = ((64, 32, 32), (3, 30)) if args.quick else ((498, 248, 248), (3, 40))
    return synthetic_data(8000, sizes=sizes, length=length, seed=0), 8000, f"synthetic {sizes}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: synthetic data, rounds 0..2, 1 epoch")
    p.add_argument("--study", help="read this study's encodings")
    p.add_argument("--domain", default="products")
    p.add_argument("--rounds", type=int, help="last round (default 11; --quick 2)")
    p.add_argument("--max-epochs", type=int, help="default 3; --quick 1")
    p.add_argument("--patience", default="2", help="epochs without improvement before stopping; none: every epoch "
                   "(the demo's converged regime: --max-epochs 15 --patience none --precision bfloat16)")
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16"],
                   help="ltnb's precision (the reference always trains in float32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 11)
    epochs = args.max_epochs or (1 if args.quick else 3)
    patience = None if str(args.patience).lower() in ("none", "null") else int(args.patience)
    settings = LotterySettings(rounds=rounds, model=ModelSettings(),
                               train=TrainSettings(max_epochs=epochs, patience=patience))
    ltnb_settings = replace(settings, train=replace(settings.train, precision=args.precision))
    data, vocab_size, source = load_data(args, log)
    threads = torch.get_num_threads()
    log(f"data: {source}; train/val/test {[len(data[s]) for s in ('train', 'validation', 'test')]}, "
        f"mean length {data['train'].lengths.float().mean():.1f}, max {max(int(data[s].lengths.max()) for s in data)}")
    log(f"torch {torch.__version__}, {threads} thread(s); rounds 0..{rounds}, max_epochs {epochs}, patience {patience}, "
        f"ltnb in {args.precision}")

    cross = sparse.crossover("cpu")
    packed_cross = sparse.packed_crossover("cpu")
    log(f"sparse crossover density {cross:.3f} (convs run sparse below it); packed product below {packed_cross:.4f}")

    # the two chains advance in turns, a round each, so both see the same machine load
    chain = reference.Chain(data, vocab_size, settings, seed=args.seed)
    ref, ref_total, ltnb_total = [], 0.0, 0.0
    with tempfile.TemporaryDirectory(prefix="ltnb-bench-") as tmp:
        for r in range(rounds + 1):
            ref.append(chain.round())
            ref_total += ref[-1]["seconds"]
            t = time.perf_counter()
            rows = lottery.obtain(tmp, "bench", seed=args.seed, strategy="reset", settings=replace(ltnb_settings, rounds=r),
                                  data=data, vocab_size=vocab_size, device="cpu", progress=False)
            ltnb_total += time.perf_counter() - t
            log(f"round {r}: reference {ref[-1]['seconds']:.2f} s, ltnb {float(rows['seconds'].iloc[-1]):.2f} s")

    # dense training throughput (round 0's training alone), between two matmul measurements
    from ltnb.core.model import KimCNN, initial_state
    from ltnb.base.config import derive_seed

    model = KimCNN.from_settings(vocab_size, settings.model, seed=None)
    model.load_state_dict(initial_state(vocab_size, settings.model, derive_seed(args.seed, "theta_0")))
    dense_settings = TrainSettings(max_epochs=epochs, patience=None, precision=args.precision)
    n = 1024 if args.quick else 2048
    rate_before = matmul_rate(n)
    res = fit(model, data, dense_settings, seed=1, device="cpu", progress=False)
    rate = max(rate_before, matmul_rate(n))
    train_s = sum(h["seconds"] for h in res.history)
    gflops = training_flops(data, settings) * res.epochs_run / train_s / 1e9
    # and at review-like lengths (the paper's Amazon reviews are ~100+ subwords), synthetic data
    long_len = (20, 40) if args.quick else (80, 120)
    long_data = synthetic_data(vocab_size, sizes=(64, 32, 32) if args.quick else (256, 64, 64), length=long_len, seed=1)
    model.load_state_dict(initial_state(vocab_size, settings.model, derive_seed(args.seed, "theta_0")))
    res_long = fit(model, long_data, TrainSettings(max_epochs=1, patience=None, precision=args.precision), seed=1, device="cpu", progress=False)
    rate = max(rate, matmul_rate(n))
    gflops_long = training_flops(long_data, settings) / res_long.history[0]["seconds"] / 1e9

    # a round's arithmetic floor: its surviving fraction of the dense FLOPs (conv + MLP, every epoch's
    # steps and validation, and the test) at the machine's float32 matmul rate
    dense_flops = training_flops(data, settings)
    test_flops = training_flops({"train": data["train"].__class__.from_lists([], []), "validation": data["test"]}, settings) \
        if len(data["test"]) else 0.0
    lines = ["| round | sparsity | reference s | ltnb s | speed-up | ltnb / ltnb round 0 | floor s | ltnb / floor "
             "| reference test acc | ltnb test acc |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    r0 = float(rows["seconds"].iloc[0])
    for a, (_, b) in zip(ref, rows.iterrows()):
        floor = (1 - b["sparsity"]) * (int(b["epochs_run"]) * dense_flops + test_flops) / (rate * 1e9)
        lines.append(f"| {a['round']} | {b['sparsity']:.4f} | {a['seconds']:.2f} | {b['seconds']:.2f} | "
                     f"{a['seconds'] / b['seconds']:.1f}x | {b['seconds'] / r0:.2f} | {floor:.3f} | {b['seconds'] / floor:.0f}x "
                     f"| {a['test_acc']:.3f} | {b['test_acc']:.3f} |")
    ref_acc = sum(a["test_acc"] for a in ref) / len(ref)
    ltnb_acc = float(rows["test_acc"].mean())
    lines.append(f"| all | | {ref_total:.1f} | {ltnb_total:.1f} | **{ref_total / ltnb_total:.1f}x** | | "
                 f"mean {ref_acc:.3f} | mean {ltnb_acc:.3f} |")
    log("")
    log("\n".join(lines))
    log("")
    log(f"whole chain: reference {ref_total:.1f} s, ltnb {ltnb_total:.1f} s -> {ref_total / ltnb_total:.1f}x faster "
        f"(reference pads every batch to {ref[0]['padded_length']} tokens)")
    sparse_rows = rows[rows["sparsity"] >= 0.99]
    if len(sparse_rows):
        rr = sparse_rows.iloc[0]
        log(f"round {int(rr['round'])} ({rr['sparsity']:.2%} sparse) costs {rr['seconds'] / r0:.2f}x ltnb's dense round 0")
    log(f"dense training: {gflops:.1f} GFLOP/s = {gflops / rate:.0%} of the float32 matmul rate ({rate:.1f} GFLOP/s, "
        f"{n}^3, best of before and after), "
        f"{threads} thread(s), demo data")
    log(f"dense training at lengths {long_len[0]}-{long_len[1]}: {gflops_long:.1f} GFLOP/s = {gflops_long / rate:.0%} of it")
    out = {"reference": ref, "ltnb": rows.to_dict("records"), "reference_s": ref_total, "ltnb_s": ltnb_total,
           "speedup": ref_total / ltnb_total, "matmul_gflops": rate, "dense_gflops": gflops, "dense_gflops_long": gflops_long, "crossover": cross, "packed_crossover": packed_cross,
           "threads": threads, "torch": torch.__version__, "data": source}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
    return out


if __name__ == "__main__":
    main()
