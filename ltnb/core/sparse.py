"""Sparse kernels for pruned convolutions, used when the weights are sparse enough to pay.

The three convolutions of the Kim CNN are one matrix product in disguise. Stack every conv's
weight ``[C, D, h]`` as ``h`` blocks of ``[C, D]`` (one per offset ``k`` in the window) into one
matrix ``W_all [sum(h) * C, D]`` and multiply it once with the embedded batch ``X^T [D, B*T]``:
``Z = W_all @ X^T``. Conv ``c``'s output at time ``t`` is then ``sum_k Z[block(c, k), t + k]`` plus
its bias. ``W_all`` is a CSR tensor holding only the surviving weights, so the product costs
``O(nnz * B * T)`` instead of ``O(numel * B * T)``. The backward pass is two more library kernels:
``dX^T = W_all^T @ dZ`` (CSR of the transpose) and the weights' gradient only at surviving entries,
``sampled_addmm(W_all, dZ, X)`` (torch's SDDMM). Nothing is hand-written: torch.sparse (MKL on the
CPU, cuSPARSE on CUDA) does the work.

The model's parameters stay ordinary dense ``nn.Parameter`` s (pruned entries exactly 0): the
sparse values are gathered from them at every forward pass, and their gradient flows back to the
dense ``.grad`` (0 at pruned entries). Adam, masks, tickets and checkpoints see no difference, and
the numbers equal the dense path's up to float rounding (``tests/test_sparse.py``).

When does it pay? The crossover density (fraction of surviving conv weights) below which the sparse
path is faster is *measured* on this machine by ``calibrate()`` (about 2 s, the paper's conv shapes,
fwd + both grads) and stored in ``<cache>/crossover.json`` keyed by torch version, thread count,
device and CPU model; ``crossover()`` reads it (or measures once). ``LTNB_SPARSE=on|off|auto`` or
``fit(sparse=...)`` overrides the choice; ``auto`` is the default.
"""
from __future__ import annotations

import json
import os
import platform
import time
import warnings
from dataclasses import dataclass

import torch

from ltnb.base import paths
from ltnb.base._io import write_json

# torch marks CSR tensors as beta on every construction; the kernels used here are tested against the
# dense path (tests/test_sparse.py), so the warning is noise in every notebook.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)

ENV = "LTNB_SPARSE"
MODES = ("auto", "on", "off")
CROSSOVER_FILE = "crossover.json"
NEVER_ABOVE = 0.5  # densities above this never run sparse (no calibration needed)

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


@dataclass(frozen=True)
class ConvPlan:
    """The fixed sparsity structure of the stacked conv matrix for one training run (masks are fixed)."""

    crow: torch.Tensor  # CSR of W_all [M, D]
    col: torch.Tensor
    gather: list  # per conv: positions in the CSR values -> flat index in that conv's weight
    counts: tuple  # per conv: nnz
    crow_t: torch.Tensor  # CSR of W_all^T [D, M]
    col_t: torch.Tensor
    perm_t: torch.Tensor  # values of W_all^T = values[perm_t]
    shape: tuple  # (M, D)
    kernel_sizes: tuple
    channels: int
    density: float

    def values(self, weights: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([w.reshape(-1)[g] for w, g in zip(weights, self.gather)])


def _conv_rows(weight_mask: torch.Tensor) -> torch.Tensor:
    """[C, D, h] -> [h*C, D] with row k*C + o = weight[o, :, k]."""
    C, D, h = weight_mask.shape
    return weight_mask.permute(2, 0, 1).reshape(h * C, D)


def build_plan(conv_masks: list[torch.Tensor], device=None) -> ConvPlan:
    """The CSR structure of the stacked conv weights given each conv's bool mask ``[C, D, h]``."""
    C, D = conv_masks[0].shape[:2]
    blocks, gathers, counts = [], [], []
    for m in conv_masks:
        m = m.to("cpu", torch.bool)
        _, _, h = m.shape
        rows = _conv_rows(m)
        blocks.append(rows)
        # flat index into weight [C, D, h] of each stacked entry, row-major over [h*C, D]
        idx = torch.arange(m.numel()).reshape(C, D, h).permute(2, 0, 1).reshape(h * C, D)
        gathers.append(idx[rows])
        counts.append(int(rows.sum()))
    full = torch.cat(blocks)
    M = full.shape[0]
    nz = full.nonzero()  # row-major: CSR order
    crow = torch.zeros(M + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(nz[:, 0], minlength=M), 0)
    col = nz[:, 1].contiguous()
    # transpose structure: sort entries by (column, row)
    key = nz[:, 1] * M + nz[:, 0]
    perm_t = torch.argsort(key, stable=True)
    crow_t = torch.zeros(D + 1, dtype=torch.int64)
    crow_t[1:] = torch.cumsum(torch.bincount(nz[:, 1], minlength=D), 0)
    col_t = nz[perm_t, 0].contiguous()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    density = full.sum().item() / full.numel()
    return ConvPlan(crow.to(dev), col.to(dev), [g.to(dev) for g in gathers], tuple(counts), crow_t.to(dev),
                    col_t.to(dev), perm_t.to(dev), (M, D), tuple(m.shape[2] for m in conv_masks), C, density)


class _SparseConvs(torch.autograd.Function):
    """Every conv's output (no bias) ``[C, B, T - h + 1]`` from ``Z = W_all @ X^T``, W_all in CSR.

    The shift-and-add over the window offsets is part of this function so that the backward pass
    builds ``dZ`` with one allocation (autograd's slice backward would fill a full ``dZ`` per slice).
    """

    @staticmethod
    def forward(ctx, values, x2d, plan, B, T):  # x2d [B*T, D] contiguous
        w = torch.sparse_csr_tensor(plan.crow, plan.col, values, plan.shape, check_invariants=False)
        z = torch.sparse.mm(w, x2d.t().contiguous()).view(plan.shape[0], B, T)  # [M, B, T]
        C, outs, row = plan.channels, [], 0
        for h in plan.kernel_sizes:
            tp = T - h + 1
            y = z[row : row + C, :, :tp].clone()
            for k in range(1, h):
                y += z[row + k * C : row + (k + 1) * C, :, k : k + tp]
            outs.append(y)
            row += h * C
        ctx.save_for_backward(values, x2d)
        ctx.plan, ctx.BT = plan, (B, T)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        values, x2d = ctx.saved_tensors
        plan, (B, T) = ctx.plan, ctx.BT
        C = plan.channels
        gz = x2d.new_zeros(plan.shape[0], B, T)
        row = 0
        for h, g in zip(plan.kernel_sizes, grads):
            if g is not None:
                tp = T - h + 1
                for k in range(h):
                    gz[row + k * C : row + (k + 1) * C, :, k : k + tp] = g
            row += h * C
        gz = gz.view(plan.shape[0], B * T)
        gv = gx = None
        if ctx.needs_input_grad[0]:
            pattern = torch.sparse_csr_tensor(plan.crow, plan.col, torch.zeros_like(values), plan.shape, check_invariants=False)
            gv = torch.sparse.sampled_addmm(pattern, gz, x2d, beta=0.0).values()
        if ctx.needs_input_grad[1]:
            wt = torch.sparse_csr_tensor(plan.crow_t, plan.col_t, values[plan.perm_t], plan.shape[::-1], check_invariants=False)
            gx = torch.sparse.mm(wt, gz).t()  # [B*T, D]
        return gv, gx, None, None, None


def sparse_convs(plan: ConvPlan, x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor]) -> list[torch.Tensor]:
    """Outputs of every conv, each ``[B, C, T - h + 1]`` (a permuted view), from ``x [B, T, D]``."""
    B, T, D = x.shape
    with torch.autocast(x.device.type, enabled=False):  # torch.sparse's kernels are float32 only
        ys = _SparseConvs.apply(plan.values(weights).float(), x.float().reshape(B * T, D).contiguous(), plan, B, T)
    return [(y + b.view(-1, 1, 1)).permute(1, 0, 2) for y, b in zip(ys, biases)]


# ----------------------------------------------------------------------------------------------
# crossover: measured, stored per machine


def machine_key(device: str | torch.device = "cpu") -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        where = torch.cuda.get_device_name(dev)
    else:
        where = _cpu_name()
    return f"torch={torch.__version__}|threads={torch.get_num_threads()}|{dev.type}|{where}"


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _bench(f, repeat=3):
    f()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def calibrate(device="cpu", *, embed_dim=417, channels=127, kernel_sizes=(3, 4, 5), batch=32, length=24,
              densities=(0.3, 0.2, 0.1, 0.05, 0.02, 0.01), seed=0) -> dict:
    """Time dense vs sparse conv training steps (forward + both gradients) at ``densities``.

    Returns ``{"density": crossover, "dense_ms": ..., "sparse_ms": {density: ms}}``: the largest
    density at which the sparse path is faster (log-interpolated between measured points; 0.0 when
    it never is). ``length`` is a typical per-batch padded length (ltnb pads each batch to its own
    longest sequence).
    """
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    dev = torch.device(device)
    x = torch.randn(batch, length, embed_dim, generator=g).to(dev).requires_grad_()
    ws = [torch.randn(channels, embed_dim, h, generator=g).to(dev).requires_grad_() for h in kernel_sizes]
    bs = [torch.zeros(channels, device=dev, requires_grad=True) for _ in kernel_sizes]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def dense():
        xt = x.transpose(1, 2)
        sum(F.conv1d(xt, w, b).sum() for w, b in zip(ws, bs)).backward()
        sync()

    dense_s = _bench(dense)
    sparse_s = {}
    for d in densities:
        masks = [torch.rand(w.shape, generator=g) < d for w in ws]
        plan = build_plan(masks, dev)
        sparse_s[d] = _bench(lambda: (sum(y.sum() for y in sparse_convs(plan, x, ws, bs)).backward(), sync()))
    faster = [d for d in densities if sparse_s[d] < dense_s]
    cross = 0.0
    if faster:
        d_hi = max(faster)
        above = [d for d in densities if d > d_hi]
        if above:  # interpolate (log density) between d_hi (sparse wins) and the next one up (loses)
            d_lo = min(above)
            import math

            r1, r2 = dense_s / sparse_s[d_hi], dense_s / sparse_s[d_lo]
            frac = math.log(r1) / (math.log(r1) - math.log(r2)) if r1 != r2 else 0.0
            cross = math.exp(math.log(d_hi) + frac * (math.log(d_lo) - math.log(d_hi)))
        else:
            cross = d_hi
    return {"density": cross, "dense_ms": dense_s * 1e3, "sparse_ms": {str(k): v * 1e3 for k, v in sparse_s.items()},
            "shape": {"batch": batch, "length": length, "embed_dim": embed_dim, "channels": channels,
                      "kernel_sizes": list(kernel_sizes)}, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def crossover(device="cpu", *, cache_dir=None, recalibrate=False) -> float:
    """The measured crossover density for this machine (read from ``<cache>/crossover.json`` or
    measured once and stored)."""
    key = machine_key(device)
    f = paths.cache_dir(cache_dir) / CROSSOVER_FILE
    table = {}
    if f.exists():
        try:
            table = json.loads(f.read_text())
        except (OSError, ValueError):
            table = {}
    if key not in table or recalibrate:
        table[key] = calibrate(device)
        try:
            f.parent.mkdir(parents=True, exist_ok=True)
            write_json(f, table)
        except OSError:
            pass
    return float(table[key]["density"])


def resolve_mode(mode: str | None) -> str:
    mode = mode or os.environ.get(ENV) or "auto"
    if mode not in MODES:
        raise ValueError(f"sparse = {mode!r} (or ${ENV}): expected one of {list(MODES)}")
    return mode


def plan_for(model, masks, *, mode: str | None = "auto", device="cpu") -> ConvPlan | None:
    """A ``ConvPlan`` when the conv layers should run sparse under ``mode``, else None.

    ``masks``: name -> bool tensor (as given to ``fit``); convs without a mask are dense (no plan).
    """
    mode = resolve_mode(mode)
    if mode == "off" or not hasattr(model, "convs"):
        return None
    names = [f"convs.{i}.weight" for i in range(len(model.convs))]
    if masks is None or any(n not in masks for n in names):
        return None
    conv_masks = [masks[n].to("cpu", torch.bool) for n in names]
    density = sum(int(m.sum()) for m in conv_masks) / sum(m.numel() for m in conv_masks)
    if mode == "auto":
        if density > NEVER_ABOVE or density >= crossover(device):
            return None
    return build_plan(conv_masks, device)


# ----------------------------------------------------------------------------------------------
# the embedding: Adam over the surviving entries only


class PackedEmbedding:
    """A pruned embedding table stored as its surviving entries only (CSR by vocabulary row).

    ``values`` (a Parameter, the survivors in row-major order) is what the optimizer updates, so
    Adam touches ``nnz`` entries instead of all ``V x D``, and no mask is multiplied in per step.
    This equals the dense masked path exactly in semantics: a pruned entry there has weight 0 and
    gradient 0, so Adam's moments stay 0 and its update (L2 term included: ``wd * 0``) is 0.
    A lookup gathers only the rows of the batch's distinct ids. (A plain object, not a Module, so
    that attaching it to a model adds nothing to its parameters or state dict.)

    Dropout (``dropout=p`` while training) is applied to the looked-up surviving entries only: a
    pruned entry is 0 before and after dropout whatever is drawn for it, so drawing a Bernoulli(1 - p)
    for each surviving entry of each token occurrence (scaled by 1 / (1 - p)) is the same
    distribution as ``nn.Dropout`` over the whole ``[batch, time, D]`` block, at a fraction of the
    random numbers (at 99% sparsity 1 in 100; ``nn.Dropout``'s draws were a fifth of such a round).
    The draws differ from the dense path's, so this is part of the engine version.
    """

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor):
        V, D = weight.shape
        m = mask.to(weight.device, torch.bool)
        self.shape = (V, D)
        self.flat = m.reshape(-1).nonzero().squeeze(1)
        self.crow = torch.zeros(V + 1, dtype=torch.int64, device=weight.device)
        self.crow[1:] = torch.cumsum(m.sum(dim=1), 0)
        self.col = (self.flat % D).contiguous()
        self.values = torch.nn.Parameter(weight.detach().reshape(-1)[self.flat].clone())

    def __call__(self, ids: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
        V, D = self.shape
        if dropout > 0:
            return self._with_dropout(ids, dropout)
        u, inv = torch.unique(ids.reshape(-1), return_inverse=True)
        starts = self.crow[u]
        counts = self.crow[u + 1] - starts
        row = torch.repeat_interleave(torch.arange(u.numel(), device=ids.device), counts)
        first = torch.cumsum(counts, 0) - counts
        sel = starts[row] + torch.arange(row.numel(), device=ids.device) - first[row]
        rows = self.values.new_zeros(u.numel(), D).index_put((row, self.col[sel]), self.values[sel])
        return rows[inv].view(*ids.shape, D)

    def _with_dropout(self, ids: torch.Tensor, p: float) -> torch.Tensor:
        """Every occurrence's surviving entries, each kept with probability 1 - p and scaled by 1/(1 - p)."""
        V, D = self.shape
        flat = ids.reshape(-1)
        starts = self.crow[flat]
        counts = self.crow[flat + 1] - starts
        row = torch.repeat_interleave(torch.arange(flat.numel(), device=ids.device), counts)
        first = torch.cumsum(counts, 0) - counts
        sel = starts[row] + torch.arange(row.numel(), device=ids.device) - first[row]
        keep = torch.empty(sel.numel(), dtype=self.values.dtype, device=ids.device).bernoulli_(1 - p).div_(1 - p)
        out = self.values.new_zeros(flat.numel(), D).index_put((row, self.col[sel]), self.values[sel] * keep)
        return out.view(*ids.shape, D)

    @torch.no_grad()
    def write_back(self, weight: torch.Tensor) -> None:
        """Copy the survivors into the dense table (its pruned entries are already 0)."""
        weight.view(-1)[self.flat] = self.values.detach()
