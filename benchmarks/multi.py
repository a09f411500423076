"""Several chains (seeds, strategies, masks) trained at once: ``fit_many``, one vectorised model.

On a GPU one small Kim CNN cannot fill the device; stacking K chains' parameters into ``[K, ...]``
tensors and running their forward and backward passes as one ``torch.func.vmap`` call (convolutions
become grouped convolutions) can. On a CPU it is slower than separate processes (measured 0.8-0.95x)
and is provided for correctness: it gives the same numbers as K separate ``ltnb.core.train.fit`` calls
up to float rounding (``tests/test_multi.py``), because every chain keeps its own:

* batches: the same seeded length-bucketed batches ``fit`` makes (``derive_seed(seed, "shuffle")``);
  at each step the K batches are padded to a common shape (extra rows get loss weight 0, extra
  time steps are invisible through ``lengths``);
* dropout: ``fit`` draws dropout with torch's generator seeded ``derive_seed(seed, "dropout")``,
  one ``bernoulli_`` of the embedded batch per step; here each chain draws the same noise from its
  own generator with the same seed (on CUDA torch's fused dropout draws differently, so there the
  chains are statistically, not bitwise, the same as separate runs);
* Adam: Adam is elementwise, so one Adam over the stacked tensors is K independent Adams;
* masks, best-epoch selection, early stopping (a stopped chain's best weights are kept; it keeps
  computing until every chain has stopped, and its later epochs are ignored).

Constraints: every model has the same shapes, every chain's training split has the same size (the
same number of steps per epoch), and the sparse conv path is not used.

The forward pass is ``ltnb.core.model.KimCNN.forward`` itself, called with each chain's parameters through
``torch.func.functional_call`` and vectorised with ``torch.func.vmap`` (its ``noise`` argument takes
the chain's own dropout draw); there is no second copy of the model here. This lives under
``benchmarks/`` because only the GPU check (``gpu_check.py``) uses it; the study's chains train one
per process with ``ltnb.core.train.fit``.
"""
from __future__ import annotations

import time
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ltnb.base.config import TrainSettings, derive_seed
from ltnb.core.model import PAD_ID, KimCNN
from ltnb.text.tokens import TokenSplit
from ltnb.core.train import EVAL_BATCH, EVAL_TOKENS, FitResult, default_device, evaluate, make_batches


def fit_many(
    models: Sequence[KimCNN],
    data: Mapping[str, TokenSplit] | Sequence[Mapping[str, TokenSplit]],
    settings: TrainSettings,
    *,
    seeds: Sequence[int],
    masks: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "train x{k}",
) -> list[FitResult]:
    """Train ``models[i]`` in place as ``fit(models[i], data[i], settings, masks=masks[i], seed=seeds[i])``
    would, all at once. ``data`` is one dict of splits for every chain or one per chain."""
    k = len(models)
    if k == 0:
        return []
    if len(seeds) != k:
        raise ValueError(f"fit_many: {len(seeds)} seeds for {k} models")
    datas = list(data) if isinstance(data, (list, tuple)) else [data] * k
    masks = list(masks) if masks is not None else [None] * k
    if len(datas) != k or len(masks) != k:
        raise ValueError(f"fit_many: need one data dict and one mask (or None) per model ({k})")
    for i, d in enumerate(datas):
        for split in ("train", "validation", "test"):
            if split not in d or len(d[split]) == 0:
                raise ValueError(f"fit_many: chain {i}: the {split!r} split is missing or empty")
    if len({len(d["train"]) for d in datas}) != 1:
        raise ValueError(f"fit_many: training splits differ in size {[len(d['train']) for d in datas]}; "
                         "every chain must take the same number of steps per epoch")
    shapes = [{n: tuple(p.shape) for n, p in m.named_parameters()} for m in models]
    if any(s != shapes[0] for s in shapes):
        raise ValueError("fit_many: the models' parameter shapes differ")
    device = torch.device(device or default_device())
    t_start = time.perf_counter()
    ref = models[0]
    kernel_sizes, p_drop = ref.kernel_sizes, float(ref.dropout.p)
    names = list(shapes[0])

    # stacked leaves [K, ...] and stacked float masks (ones where a chain has no mask)
    stacked = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).to(device).requires_grad_()
               for n in names}
    fmask = {}
    for n in names:
        if any(mk is not None and n in mk and not bool(mk[n].all()) for mk in masks):
            fmask[n] = torch.stack([
                (mk[n] if mk is not None and n in mk else torch.ones(shapes[0][n], dtype=torch.bool)).to(torch.float32)
                for mk in masks]).to(device=device, dtype=stacked[n].dtype)
    with torch.no_grad():
        for n, fm in fmask.items():
            stacked[n].mul_(fm)
    kw = dict(lr=settings.lr, weight_decay=settings.weight_decay)
    try:
        optimizer = torch.optim.Adam(list(stacked.values()), fused=True, **kw)
    except (RuntimeError, ValueError):
        optimizer = torch.optim.Adam(list(stacked.values()), **kw)

    shuffles = [torch.Generator().manual_seed(derive_seed(s, "shuffle")) for s in seeds]
    # CPU: the same generator stream fit's dropout uses; CUDA: noise drawn on the device (no copies)
    drops = [torch.Generator(device=device).manual_seed(derive_seed(s, "dropout")) for s in seeds]
    vals = [[b.to(device) for b in make_batches(d["validation"], EVAL_BATCH, max_len=settings.max_len, max_tokens=EVAL_TOKENS)] for d in datas]
    width = max(kernel_sizes)
    embed_dim = stacked["embedding.weight"].shape[-1]
    scratch = KimCNN(shapes[0]["embedding.weight"][0], embed_dim=embed_dim, kernel_sizes=kernel_sizes,
                     channels=shapes[0]["convs.0.weight"][0], hidden=shapes[0]["fc1.weight"][0],
                     classes=shapes[0]["fc2.weight"][0], dropout=p_drop, seed=None).to(device)
    call = torch.func.functional_call  # the model's own forward, with a chain's parameters
    batched = torch.func.vmap(lambda p, i, l_, z: call(scratch, p, (i, l_), {"noise": z}))
    batched_plain = torch.func.vmap(lambda p, i, l_: call(scratch, p, (i, l_)))

    def chain_state(i):
        return {n: stacked[n][i].detach().clone() for n in names}

    def load(model, state):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(state[n])

    best = [dict(acc=-1.0, epoch=0, state=None, since=0) for _ in range(k)]
    active = [True] * k
    steps, epochs_run, histories = [0] * k, [0] * k, [[] for _ in range(k)]
    use_bf16 = settings.precision == "bfloat16"
    bar = tqdm(range(1, settings.max_epochs + 1), desc=desc.format(k=k), disable=not progress, leave=False, unit="epoch")
    for epoch in bar:
        t_epoch = time.perf_counter()
        per_chain = [make_batches(d["train"], settings.batch_size, max_len=settings.max_len, generator=g)
                     for d, g in zip(datas, shuffles)]
        losses = torch.zeros(k, dtype=torch.float64, device=device)
        seen = [0] * k
        for step_batches in zip(*per_chain):
            bmax = max(b.ids.shape[0] for b in step_batches)
            tmax = max(max(b.ids.shape[1], width) for b in step_batches)
            ids = torch.full((k, bmax, tmax), PAD_ID, dtype=torch.int64)
            lengths = torch.ones(k, bmax, dtype=torch.int64)
            labels = torch.zeros(k, bmax, dtype=torch.int64)
            weight = torch.zeros(k, bmax)
            noise = torch.ones(k, bmax, tmax, embed_dim, device=device) if p_drop > 0 else None
            for i, b in enumerate(step_batches):
                n, t = b.ids.shape
                ids[i, :n, :t] = b.ids
                lengths[i, :n] = b.lengths
                labels[i, :n] = b.labels
                weight[i, :n] = 1.0 / n
                seen[i] += n
                if p_drop > 0:  # what nn.Dropout draws in fit: bernoulli_(1 - p) of [n, max(t, width), D], / (1 - p)
                    z = torch.empty(n, max(t, width), embed_dim, device=device).bernoulli_(1 - p_drop, generator=drops[i])
                    z.div_(1 - p_drop)
                    noise[i, :n, : z.shape[1]] = z
            ids, lengths, labels, weight = (x.to(device, non_blocking=True) for x in (ids, lengths, labels, weight))
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = batched_plain(stacked, ids, lengths) if noise is None else batched(stacked, ids, lengths, noise)
            ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none").view(k, bmax)
            per = (ce * weight).sum(dim=1)  # each chain's mean loss
            per.sum().backward()
            for n, fm in fmask.items():
                stacked[n].grad.mul_(fm)
            optimizer.step()
            with torch.no_grad():
                for n, fm in fmask.items():
                    stacked[n].mul_(fm)
            losses += per.detach().double() * torch.tensor([b.ids.shape[0] for b in step_batches], device=device)
            for i in range(k):
                steps[i] += active[i]
        secs = time.perf_counter() - t_epoch
        for i in range(k):
            if not active[i]:
                continue
            load(scratch, chain_state(i))
            val_acc = evaluate(scratch, vals[i], settings.precision)
            epochs_run[i] = epoch
            histories[i].append({"epoch": epoch, "loss": float(losses[i]) / max(seen[i], 1), "val_acc": val_acc, "seconds": secs})
            bi = best[i]
            if val_acc > bi["acc"]:
                bi.update(acc=val_acc, epoch=epoch, since=0, state=chain_state(i))
            else:
                bi["since"] += 1
                if settings.patience is not None and bi["since"] >= settings.patience:
                    active[i] = False
        if not any(active):
            break
    bar.close()
    results = []
    for i, m in enumerate(models):
        m.to(device)
        load(m, best[i]["state"])
        test = [b.to(device) for b in make_batches(datas[i]["test"], EVAL_BATCH, max_len=settings.max_len, max_tokens=EVAL_TOKENS)]
        results.append(FitResult(best[i]["acc"], evaluate(m, test, settings.precision), best[i]["epoch"], epochs_run[i], steps[i],
                                 time.perf_counter() - t_start, histories[i]))
    return results
