"""Training one (possibly pruned) network: length-bucketed batches, Adam, best-epoch selection.

* Batches: sequences are truncated to ``max_len`` and grouped by length (a seeded random permutation,
  then a stable sort by length, cut into batches of ``batch_size``, batch order shuffled), each batch
  padded only to its own longest sequence with id 0. The model is told each sequence's length, so
  padding never changes a sequence's logits.
* Optimizer: ``torch.optim.Adam(lr, weight_decay)`` (L2 added to the gradient, as the paper's "L2
  weight"; not AdamW). A fresh optimizer for every call, so no Adam state crosses rounds.
* Pruned weights stay exactly 0: gradients of pruned entries are zeroed before each step and the
  mask is multiplied in again after each step. (With a zero gradient and a zero weight Adam's update
  of that entry is already 0; the re-application makes it a guarantee.)
* Epochs: at most ``max_epochs``; after each, validation accuracy; the best epoch's weights (first
  best on ties) are restored at the end. ``patience`` stops early after that many epochs without
  improvement; ``None`` runs every epoch.
* Sparse kernels (``ltnb.core.sparse``): with ``sparse="auto"`` (default) a pruned embedding trains as its
  surviving entries only (on the CPU), and the convolutions run through CSR kernels once their
  surviving fraction is below the machine's measured crossover; below a second measured crossover
  (``ltnb.core.sparse.packed_crossover``, about 1% surviving on the demo's machine) the embedding and the
  convs run as one packed sparse product whose conv weights train as their survivors only
  (``ltnb.core.sparse.PackedConvs``), validations and the test included. Same semantics as the dense masked
  path; the numbers agree up to float rounding (``tests/test_sparse.py``). ``sparse="off"`` is the
  plain dense path.
* Evaluation batches are sorted by length and capped at ``EVAL_TOKENS`` padded tokens.
* ``TrainSettings.precision``: ``"bfloat16"`` runs every forward pass (training, validation, test) under
  bf16 autocast: convolutions and matrix products in bf16 (AMX / AVX-512 BF16 on this CPU, tensor cores
  on GPUs), accumulated in float32; parameters, gradients and Adam stay float32, and the sparse kernels
  run in float32 (``ltnb.core.sparse``). ``"float32"`` is plain float32.
* Randomness: shuffling uses its own ``torch.Generator``; dropout uses torch's global generator,
  seeded inside ``torch.random.fork_rng`` so the caller's random state is untouched. Both are derived
  from ``seed``; on the CPU the same seed gives the same numbers.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ltnb.base.config import TrainSettings, derive_seed
from ltnb.core import sparse as _sparse
from ltnb.core.model import PAD_ID
from ltnb.text.tokens import TokenSplit

EVAL_BATCH = 256
# evaluation batches also hold at most this many padded tokens (batch x longest sequence): sorted by
# length, short sequences go 256 at a time and long ones in smaller groups, so a few long reviews do
# not pad a whole 256-sequence batch (that padding was ~45% of a dense demo round's time). Logits do
# not depend on the batch a sequence is in (lengths are passed), so accuracies are unchanged.
EVAL_TOKENS = 4096
# the pruned embedding trains packed (ltnb.core.sparse.PackedEmbedding) once at most this fraction of it
# survives: above it, gathering and scattering the survivors costs more than the dense table saves
# (measured on the demo: 7-19% slower at 65% and 42% surviving, 25% faster at 27%)
PACKED_BELOW = 0.35


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Batch:
    ids: torch.Tensor  # int64 [batch, time], padded with PAD_ID
    lengths: torch.Tensor  # int64 [batch]
    labels: torch.Tensor  # int64 [batch]

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in (self.ids, self.lengths, self.labels)))


def make_batches(
    split: TokenSplit, batch_size: int, *, max_len: int, generator: torch.Generator | None = None,
    max_tokens: int | None = None,
) -> list[Batch]:
    """Length-bucketed batches (see module doc). ``generator=None``: no shuffling (evaluation).
    ``max_tokens`` (evaluation only): also cap batch x longest length (sequences sorted by length)."""
    n = len(split)
    if n == 0:
        return []
    lengths = split.lengths.clamp(max=max_len)
    if generator is not None:
        perm = torch.randperm(n, generator=generator)
        order = perm[torch.sort(lengths[perm], stable=True).indices]
    else:
        order = torch.sort(lengths, stable=True).indices
    if max_tokens is not None and generator is None:
        chunks, start, sorted_lens = [], 0, lengths[order].tolist()
        for i in range(1, n + 1):  # greedy cut: the longest of [start, i) is the last (sorted)
            if i == n or i - start >= batch_size or (i + 1 - start) * max(sorted_lens[i], 1) > max_tokens:
                chunks.append(order[start:i])
                start = i
    else:
        chunks = list(torch.split(order, batch_size))
    if generator is not None:
        chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]
    flat = torch.cat([split.ids, torch.tensor([PAD_ID], dtype=split.ids.dtype)]).long()  # pad at position len
    batches = []
    for idx in chunks:  # one gather per batch: position j of row r is token offsets[r] + j, or the pad
        lens = lengths[idx]
        cols = torch.arange(max(int(lens.max()), 1))
        src = split.offsets[idx].unsqueeze(1) + cols
        ids = flat[torch.where(cols < lens.unsqueeze(1), src, flat.numel() - 1)]
        batches.append(Batch(ids, lens.clone(), split.labels[idx].clone()))
    return batches


def autocast(device: torch.device | str, precision: str = "float32"):
    """The autocast context of ``precision`` (``TrainSettings.precision``) on ``device``."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[Batch], precision: str = "float32") -> float:
    """Accuracy over ``batches`` (already on the model's device); eval mode, no dropout; the forward
    passes in ``precision`` (as training's)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    device = next(model.parameters()).device
    for b in batches:
        with autocast(device, precision):
            logits = model(b.ids, b.lengths)
        pred = logits.float().argmax(dim=1)
        correct += int((pred == b.labels).sum())
        total += b.labels.numel()
    model.train(was_training)
    return correct / total if total else float("nan")


def make_optimizer(model: torch.nn.Module, settings: TrainSettings, params=None) -> torch.optim.Optimizer:
    """Adam with L2 as ``weight_decay``. The fused implementation (CPU and CUDA) is ~4x faster per
    step than the default loop at the paper's size (the 3.3M-entry embedding dominates); it falls
    back to the default where fused kernels are unavailable."""
    kw = dict(lr=settings.lr, weight_decay=settings.weight_decay)
    params = list(model.parameters() if params is None else params)
    try:
        return torch.optim.Adam(params, fused=True, **kw)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, **kw)


@dataclass
class FitResult:
    val_acc: float  # best epoch's validation accuracy
    test_acc: float  # test accuracy of the best epoch's weights
    best_epoch: int  # 1-based
    epochs_run: int
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, loss, val_acc, seconds


def _masked_parameters(model, params, masks, device, sparse) -> tuple[list, object]:
    """Check the masks, zero the pruned entries, and choose the sparse kernels: returns the (parameter,
    float mask) pairs to re-mask after every step and the packed embedding (or None). A pruned
    embedding table trains as its survivors only (``ltnb.core.sparse.PackedEmbedding``; on the CPU, where
    Adam and the masking over 3.3M entries cost as much as the convolutions at 99% sparsity); the
    convolutions run sparse below the measured crossover (``model.sparse_plan``)."""
    fmasks: dict[str, torch.Tensor] = {}  # float masks, only for tensors that are actually pruned
    for name, m in (masks or {}).items():
        if name not in params:
            raise ValueError(f"fit: mask for unknown parameter {name!r}; parameters: {sorted(params)}")
        if tuple(m.shape) != tuple(params[name].shape):
            raise ValueError(f"fit: mask {name} has shape {tuple(m.shape)}, parameter has {tuple(params[name].shape)}")
        if not bool(m.all()):
            fmasks[name] = m.to(device=device, dtype=params[name].dtype)
    with torch.no_grad():
        for n, fm in fmasks.items():
            params[n].mul_(fm)
    mode = _sparse.resolve_mode(sparse)
    model.sparse_plan = _sparse.plan_for(model, masks, mode=mode, device=device)
    packed = None
    emb_name = getattr(model, "EMBEDDING", None)  # a model with the packed path names its embedding (KimCNN)
    emb = fmasks.get(emb_name) if emb_name else None
    dense_enough = emb is not None and mode == "auto" and float(emb.mean()) > PACKED_BELOW
    if (mode != "off" and emb is not None and not dense_enough and (device.type == "cpu" or mode == "on")
            and hasattr(model, "embedding")):
        packed = _sparse.PackedEmbedding(params[emb_name], fmasks.pop(emb_name).bool())
        packed.packed_convs = None
        if _sparse.use_packed_convs(model.sparse_plan, float(emb.mean()), mode=mode, device=device):
            names = model.conv_weights()
            packed.packed_convs = _sparse.PackedConvs([params[n] for n in names], [fmasks.pop(n).bool() for n in names])
            model.sparse_plan = None  # the packed product replaces the CSR kernels
    model.packed_embedding = packed
    return [(params[n], fm) for n, fm in fmasks.items()], packed


def _trained_parameters(model, params: dict, packed) -> list | None:
    """What the optimizer updates: the model's parameters, with the packed ones' survivors in place of
    their dense tensors (None: all parameters as they are)."""
    if packed is None:
        return None
    out = [packed.values]
    skip = {model.EMBEDDING}
    if packed.packed_convs is not None:
        out.append(packed.packed_convs.values)
        skip |= set(model.conv_weights())
    return [p for n, p in params.items() if n not in skip] + out


def _write_back(model, packed) -> None:
    """The dense parameters mirror the packed survivors (for callbacks and saved states)."""
    if packed is not None:
        packed.write_back(model.embedding.weight)
        if packed.packed_convs is not None:
            packed.packed_convs.write_back([c.weight for c in model.convs])


def _check_splits(data: Mapping[str, TokenSplit]) -> None:
    for split in ("train", "validation", "test"):
        if split not in data:
            raise ValueError(f"fit: data has no {split!r} split (has {sorted(data)})")
        if len(data[split]) == 0:
            raise ValueError(f"fit: the {split!r} split is empty")


def _masked_step(model, b: Batch, optimizer, masked, device, precision) -> torch.Tensor:
    """One optimizer step on batch ``b`` under the masks: pruned gradients zeroed before the step and the
    masks multiplied in again after it. Returns the batch's loss (a tensor: no device sync)."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, precision):
        loss = F.cross_entropy(model(b.ids, b.lengths).float(), b.labels)
    loss.backward()
    for p, fm in masked:
        if p.grad is not None:
            p.grad.mul_(fm)
    optimizer.step()
    with torch.no_grad():
        for p, fm in masked:
            p.mul_(fm)
    return loss


def _test_accuracy(model, params, packed, data, settings: TrainSettings, device) -> float:
    """The best epoch's weights (already loaded) on the test split, on the path the validations took: a
    pruned model packed again as it trained."""
    if packed is not None:
        model.packed_embedding = _sparse.PackedEmbedding(params[model.EMBEDDING], packed.mask())
        model.packed_embedding.packed_convs = None if packed.packed_convs is None else _sparse.PackedConvs(
            [c.weight for c in model.convs], packed.packed_convs.masks([c.weight for c in model.convs]))
    test = [b.to(device) for b in make_batches(data["test"], EVAL_BATCH, max_len=settings.max_len, max_tokens=EVAL_TOKENS)]
    try:
        return evaluate(model, test, settings.precision)
    finally:
        model.packed_embedding = None
        model.sparse_plan = None  # the trained model is an ordinary dense module again


def fit(
    model: torch.nn.Module,
    data: Mapping[str, TokenSplit],
    settings: TrainSettings,
    *,
    masks: Mapping[str, torch.Tensor] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "train",
    on_step: Callable[[int, torch.nn.Module], None] | None = None,
    sparse: str | None = None,
) -> FitResult:
    """Train ``model`` in place on ``data["train"]``; keep the best validation epoch; test it.

    ``masks``: name -> bool tensor for (some of) ``model.named_parameters()``; masked entries are
    set to 0 first and stay 0. ``on_step(step, model)`` is called after every optimizer step
    (1-based), e.g. to capture rewind weights.

    ``sparse``: ``"auto"`` (default, or ``$LTNB_SPARSE``) runs the convolutions through CSR kernels
    when their surviving fraction is below this machine's measured crossover (``ltnb.core.sparse``);
    ``"on"`` / ``"off"`` force it. The numbers equal the dense path's up to float rounding.
    """
    _check_splits(data)
    device = torch.device(device or default_device())
    t_start = time.perf_counter()
    model.to(device)
    params = dict(model.named_parameters())
    masked, packed = _masked_parameters(model, params, masks, device, sparse)
    precision = settings.precision
    optimizer = make_optimizer(model, settings, _trained_parameters(model, params, packed))
    shuffle = torch.Generator().manual_seed(derive_seed(seed, "shuffle"))
    val = [b.to(device) for b in make_batches(data["validation"], EVAL_BATCH, max_len=settings.max_len, max_tokens=EVAL_TOKENS)]

    best_acc, best_epoch, best_state, since_best = -1.0, 0, None, 0
    history, step, epochs_run = [], 0, 0
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(seed, "dropout"))
        bar = tqdm(range(1, settings.max_epochs + 1), desc=desc, disable=not progress, leave=False, unit="epoch")
        for epoch in bar:
            t_epoch = time.perf_counter()
            model.train()
            total_loss, n_seen = torch.zeros((), dtype=torch.float64, device=device), 0
            for b in make_batches(data["train"], settings.batch_size, max_len=settings.max_len, generator=shuffle):
                b = b.to(device, non_blocking=True)
                loss = _masked_step(model, b, optimizer, masked, device, precision)
                step += 1
                total_loss += loss.detach().double() * b.labels.numel()  # no per-step device sync
                n_seen += b.labels.numel()
                if on_step is not None:
                    _write_back(model, packed)  # the dense tables mirror the packed survivors for the callback
                    on_step(step, model)
            epochs_run = epoch
            _write_back(model, packed)
            val_acc = evaluate(model, val, precision)
            history.append(
                {"epoch": epoch, "loss": float(total_loss) / max(n_seen, 1), "val_acc": val_acc, "seconds": time.perf_counter() - t_epoch}
            )
            bar.set_postfix(val_acc=f"{val_acc:.3f}")
            if val_acc > best_acc:
                best_acc, best_epoch, since_best = val_acc, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
                if settings.patience is not None and since_best >= settings.patience:
                    break
        bar.close()
    model.packed_embedding = None
    model.load_state_dict(best_state)
    test_acc = _test_accuracy(model, params, packed, data, settings, device)
    return FitResult(best_acc, test_acc, best_epoch, epochs_run, step, time.perf_counter() - t_start, history)


def synthetic_data(
    vocab_size: int = 50,
    *,
    sizes: tuple[int, int, int] = (200, 100, 100),
    length: tuple[int, int] = (3, 20),
    signal: float = 0.3,
    seed: int = 0,
) -> dict[str, TokenSplit]:
    """Separable synthetic token data (tests, timing): each token is, with probability ``signal``,
    drawn from the label's own block of ids (label 0: ids 2..9, label 1: ids 10..17), else from the
    whole vocabulary; lengths uniform in ``length``; classes balanced. Needs ``vocab_size >= 18``."""
    if vocab_size < 18:
        raise ValueError(f"synthetic_data: vocab_size = {vocab_size}: expected >= 18")
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, n in zip(("train", "validation", "test"), sizes):
        labels = (torch.arange(n) % 2)[torch.randperm(n, generator=g)]
        seqs = []
        for y in labels.tolist():
            k = int(torch.randint(length[0], length[1] + 1, (1,), generator=g))
            noise = torch.randint(1, vocab_size, (k,), generator=g)
            cue = torch.randint(2 + 8 * y, 10 + 8 * y, (k,), generator=g)
            pick = torch.rand(k, generator=g) < signal
            seqs.append(torch.where(pick, cue, noise).tolist())
        out[name] = TokenSplit.from_lists(seqs, labels.tolist())
    return out
