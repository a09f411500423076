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

The sparsest rounds (about 1% surviving and less) go one step further: the packed embedding's few
surviving entries per token and the convs' survivors meet in one sparse product
(``PackedEmbedding.convs``, ``PackedConvs``) that never forms the dense embedded batch or the stacked
``[sum(h) C, B T]`` product, and whose conv weights train as their survivors only. Its crossover
against the CSR kernels is measured too (``calibrate_packed``, stored under ``"packed"`` in the same
entry); ``LTNB_PACKED_CONVS=on|off|auto`` overrides it.
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
PACKED_ENV = "LTNB_PACKED_CONVS"
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
    names = model.conv_weights() if hasattr(model, "conv_weights") else [f"convs.{i}.weight" for i in range(len(model.convs))]
    if masks is None or any(n not in masks for n in names):
        return None
    conv_masks = [masks[n].to("cpu", torch.bool) for n in names]
    density = sum(int(m.sum()) for m in conv_masks) / sum(m.numel() for m in conv_masks)
    if mode == "auto":
        if density > NEVER_ABOVE or density >= crossover(device):
            return None
    return build_plan(conv_masks, device)


def use_packed_convs(plan: ConvPlan | None, embed_density: float, *, mode: str | None = "auto", device="cpu") -> bool:
    """Whether the packed product of embedding and convs (``PackedEmbedding.convs``) replaces the CSR
    kernels: only where the convs run sparse (``plan``) and the embedding is packed, and under
    ``auto`` when the convs' density is below this machine's measured crossover of the packed path
    (``crossover(...)["packed"]``); ``LTNB_PACKED_CONVS=on|off`` overrides."""
    if plan is None:
        return False
    choice = os.environ.get(PACKED_ENV) or ("on" if mode == "on" else "auto")
    if choice not in MODES:
        raise ValueError(f"${PACKED_ENV} = {choice!r}: expected one of {list(MODES)}")
    if choice != "auto":
        return choice == "on"
    return max(plan.density, embed_density) < packed_crossover(device)


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

    def mask(self) -> torch.Tensor:
        """The bool mask of the table."""
        m = torch.zeros(self.shape[0] * self.shape[1], dtype=torch.bool, device=self.flat.device)
        m[self.flat] = True
        return m.view(self.shape)

    # ------------------------------------------------------------------------------------------
    # the embedding and the convolutions in one sparse product (the packed path of the sparsest rounds)

    def lookup(self, ids: torch.Tensor, dropout: float = 0.0):
        """The embedded batch as a sparse matrix ``X [B*T, D]`` in CSR by token position: ``(crow,
        col, val)`` with ``val`` differentiable in ``values``. Dropout is drawn as in ``_with_dropout``
        (the same draws, in the same order)."""
        flat = ids.reshape(-1)
        starts = self.crow[flat]
        counts = self.crow[flat + 1] - starts
        crow = torch.zeros(flat.numel() + 1, dtype=torch.int64, device=ids.device)
        torch.cumsum(counts, 0, out=crow[1:])
        sel = _ranges(starts, counts, crow)
        val = self.values[sel]
        if dropout > 0:
            keep = torch.empty(sel.numel(), dtype=self.values.dtype, device=ids.device).bernoulli_(1 - dropout)
            val = val * keep.div_(1 - dropout)
        return crow, self.col[sel], val

    def convs(self, ids: torch.Tensor, convs: "PackedConvs", biases: list, dropout: float = 0.0) -> torch.Tensor:
        """Every conv's output before the bias, stacked: ``[B, T, n C]`` (conv ``i`` in columns ``i C ..
        (i + 1) C``; its windows ``t > T - h_i`` are not its outputs), without ever forming the dense
        ``[B, T, D]`` block: with a sparse embedded batch ``X`` (a few surviving entries per token), all
        convs are ``unfold(X) @ W'`` where ``unfold(X)`` (row ``(b, t)``: the rows ``t .. t + h - 1`` of
        ``X`` side by side, ``h`` the widest window) is sparse too and ``W' [h D, n C]`` holds every conv's
        weight by (offset, input) x (conv, channel), built from the packed survivors (``convs``).
        Arithmetic ``O(nnz(X) h n C)``, memory the outputs' size (``_PackedConvs``)."""
        B, T = ids.shape
        crow, col, val = self.lookup(ids, dropout)
        with torch.autocast(ids.device.type, enabled=False):  # torch.sparse's kernels are float32 only
            out = _PackedConvs.apply(val.float(), convs.values, crow, col, B, T, convs)
            return (out + torch.cat(biases).float()).view(B, T, -1)


class PackedConvs:
    """Pruned conv weights ``[C, D, h_i]`` stored as their survivors (``values``, one Parameter for all
    convs, what the optimizer updates), for ``PackedEmbedding.convs``: Adam and the masks touch
    ``nnz`` entries, and no dense weight, gradient or mask multiply is formed per step. ``flat`` and
    ``flat_t`` index each survivor in the stacked layout ``W' [h D, n C]`` (row ``k D + d``, column
    ``i C + c``; rows ``k >= h_i`` of conv ``i`` are 0) and in its transpose, ``src`` in the conv's own
    weight (``parts``: how many survivors each conv has). Same semantics as the dense masked path (a
    pruned entry's weight, gradient and Adam moments are 0 there)."""

    def __init__(self, weights: list, masks: list):
        C, D = weights[0].shape[:2]
        self.width, self.channels, self.dim = max(w.shape[2] for w in weights), C, D
        n = len(weights)
        flats, self.src, self.parts, vals = [], [], [], []
        for i, (w, m) in enumerate(zip(weights, masks)):
            o, d, k = m.to(w.device, torch.bool).nonzero().unbind(1)  # row-major over [C, D, h]
            row, column = k * D + d, i * C + o
            flats.append(row * (n * C) + column)
            src = (o * D + d) * w.shape[2] + k
            self.src.append(src)
            self.parts.append(src.numel())
            vals.append(w.detach().reshape(-1)[src])
        flat = torch.cat(flats)
        # only the rows of W' that hold a survivor take part: U's entries at other columns meet zeros
        # (their products and their gradients are 0), so they are dropped before the product, and the
        # inputs (dimensions d) no conv reads are dropped from X before it is unfolded
        rows = flat // (n * C)
        active = torch.unique(rows)
        self.colmap = torch.full((self.width * D,), -1, dtype=torch.int64, device=flat.device)
        self.colmap[active] = torch.arange(active.numel(), device=flat.device)
        self.dims = torch.zeros(D, dtype=torch.bool, device=flat.device)
        self.dims[active % D] = True
        self.shape = (active.numel(), n * C)  # the compact W': its active rows only
        self.flat = self.colmap[rows] * (n * C) + flat % (n * C)
        self.flat_t = (flat % (n * C)) * active.numel() + self.colmap[rows]
        self.values = torch.nn.Parameter(torch.cat(vals).clone())

    @torch.no_grad()
    def write_back(self, weights: list) -> None:
        """Copy the survivors into the dense weights (their pruned entries are already 0)."""
        for w, src, v in zip(weights, self.src, self.values.detach().split(self.parts)):
            w.view(-1)[src] = v

    def masks(self, weights: list) -> list:
        """The bool masks of the weights."""
        out = []
        for w, src in zip(weights, self.src):
            m = torch.zeros(w.numel(), dtype=torch.bool, device=src.device)
            m[src] = True
            out.append(m.view(w.shape))
        return out


def _ranges(starts: torch.Tensor, counts: torch.Tensor, crow: torch.Tensor | None = None) -> torch.Tensor:
    """``cat([arange(s, s + c) for s, c in zip(starts, counts)])`` without a Python loop (``crow``:
    the cumulative counts with a leading 0, when the caller has them)."""
    if crow is None:
        crow = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=counts.device)
        torch.cumsum(counts, 0, out=crow[1:])
    n = int(crow[-1])
    owner = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts, output_size=n)
    return (starts - crow[:-1])[owner] + torch.arange(n, device=counts.device)


_WINDOWS: dict = {}  # (B, T, width, device) -> (token position of each window entry [B T, width], in range)


def _windows(B: int, T: int, width: int, device) -> tuple:
    key = (B, T, width, str(device))
    if key not in _WINDOWS:
        if len(_WINDOWS) > 4096:
            _WINDOWS.clear()
        t = torch.arange(T, device=device).unsqueeze(1) + torch.arange(width, device=device)  # [T, width]
        inside = (t < T).repeat(B, 1)
        pos = (torch.arange(B, device=device).view(B, 1, 1) * T + t.clamp(max=T - 1)).reshape(B * T, width)
        _WINDOWS[key] = (pos, inside)
    return _WINDOWS[key]


class _PackedConvs(torch.autograd.Function):
    """Every conv's output ``[B T, n C]`` (no bias) from the sparse embedded batch ``X`` (CSR over token
    positions ``b T + s``: ``crow``, ``col``, values ``val``) and the packed conv survivors ``wv``.

    Row ``r = (b, t)`` of ``U = unfold(X)`` holds the entries of X's rows ``bT + t + k``, ``k = 0 .. h - 1``
    (those inside the sequence row), at columns ``k D + d``: contiguous ranges of X's CSR, so U is CSR by
    construction (no sort). Forward ``U @ W'``; backward ``dW' = U^T @ dY`` read at the survivors, and the
    values' gradient only at U's entries, ``sampled_addmm(U, dY, W'^T)`` (SDDMM), summed back onto X's
    entries.
    """

    @staticmethod
    def forward(ctx, val, wv, crow, col, B, T, convs):
        dev, h, D = val.device, convs.width, convs.dim
        xi = convs.dims[col].nonzero().squeeze(1)  # X's entries at dimensions some conv reads
        kept = torch.zeros(col.numel() + 1, dtype=torch.int64, device=dev)
        torch.cumsum(convs.dims[col].long(), 0, out=kept[1:])
        xcrow = kept[crow]
        pos, inside = _windows(B, T, h, dev)
        c = torch.where(inside, xcrow[1:][pos] - xcrow[:-1][pos], 0).view(-1)  # entries of X's row per (r, k)
        idx = xi[_ranges(xcrow[:-1][pos].view(-1), c)]  # U's entries -> X's entries
        offset = torch.arange(h, device=dev).repeat(B * T).mul_(D)
        ucol = convs.colmap[col[idx] + torch.repeat_interleave(offset, c, output_size=idx.numel())]
        keep = ucol >= 0  # entries that meet a surviving weight
        r = torch.repeat_interleave(torch.arange(B * T, device=dev), c.view(-1, h).sum(1), output_size=idx.numel())[keep]
        idx, ucol = idx[keep], ucol[keep]
        ucrow = torch.zeros(B * T + 1, dtype=torch.int64, device=dev)
        torch.cumsum(torch.bincount(r, minlength=B * T), 0, out=ucrow[1:])
        u = torch.sparse_csr_tensor(ucrow, ucol, val[idx], (B * T, convs.shape[0]), check_invariants=False)
        wp = wv.new_zeros(convs.shape[0] * convs.shape[1]).index_put_((convs.flat,), wv).view(convs.shape)
        ctx.save_for_backward(val, wv)
        ctx.u, ctx.r, ctx.idx, ctx.convs = u, r, idx, convs
        return torch.sparse.mm(u, wp)

    @staticmethod
    def backward(ctx, g):
        val, wv = ctx.saved_tensors
        u, r, idx, convs = ctx.u, ctx.r, ctx.idx, ctx.convs
        g = g.contiguous()
        gval = gwv = None
        if ctx.needs_input_grad[1]:  # U^T as CSR (its entries sorted by column), then U^T @ dY at the survivors
            ucol = u.col_indices()
            order = torch.argsort(ucol, stable=True)
            tcrow = torch.zeros(convs.shape[0] + 1, dtype=torch.int64, device=g.device)
            torch.cumsum(torch.bincount(ucol, minlength=convs.shape[0]), 0, out=tcrow[1:])
            ut = torch.sparse_csr_tensor(tcrow, r[order], u.values()[order], (convs.shape[0], g.shape[0]),
                                         check_invariants=False)
            gwv = torch.sparse.mm(ut, g).view(-1)[convs.flat]
        if ctx.needs_input_grad[0]:
            gval = torch.zeros_like(val)
            if idx.numel():
                wpt = wv.new_zeros(convs.shape[0] * convs.shape[1]).index_put_((convs.flat_t,), wv).view(convs.shape[::-1])
                pattern = torch.sparse_csr_tensor(u.crow_indices(), u.col_indices(), val.new_zeros(idx.numel()), u.shape,
                                                  check_invariants=False)
                gval.index_add_(0, idx, torch.sparse.sampled_addmm(pattern, g, wpt, beta=0.0).values())
        return gval, gwv, None, None, None, None, None


def calibrate_packed(device="cpu", *, vocab=8000, embed_dim=417, channels=127, kernel_sizes=(3, 4, 5), batch=32,
                     length=24, densities=(0.05, 0.02, 0.01, 0.005, 0.002), seed=0) -> dict:
    """Time a training step of the embedding and the convs (forward + every gradient, dropout on, plus
    the evaluation forward a step brings with it in a demo training: 3/4 of its tokens) on the
    packed product (``PackedEmbedding.convs``) against the packed embedding with the CSR conv kernels
    (``sparse_convs``), at ``densities`` (the fraction of the embedding and of the convs that survives:
    IMP prunes every layer alike), random masks, batches of ``batch`` x ``length`` tokens.

    Returns ``{"density": crossover, "csr_ms": {density: ms}, "packed_ms": {density: ms}}``: the largest
    density at which the packed product is faster (log-interpolated; 0.0 when it never is)."""
    import math

    g = torch.Generator().manual_seed(seed)
    dev = torch.device(device)
    ids = torch.randint(0, vocab, (batch, length), generator=g).to(dev)
    # evaluation: a demo training's validations and test forward about 3/4 as many tokens as its steps
    eval_ids = torch.randint(0, vocab, (batch * 3 // 4, length), generator=g).to(dev)
    table = torch.randn(vocab, embed_dim, generator=g).to(dev)
    ws = [torch.randn(channels, embed_dim, h, generator=g).to(dev) for h in kernel_sizes]
    bs = [torch.zeros(channels, device=dev, requires_grad=True) for _ in kernel_sizes]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    csr_s, packed_s = {}, {}
    for d in densities:
        emb = PackedEmbedding(table, torch.rand(table.shape, generator=g) < d)
        masks = [torch.rand(w.shape, generator=g) < d for w in ws]
        plan = build_plan(masks, dev)
        wd = [(w * m.to(dev)).requires_grad_() for w, m in zip(ws, masks)]
        pc = PackedConvs(ws, masks)

        def csr():
            sum(y.sum() for y in sparse_convs(plan, emb(ids, dropout=0.285), wd, bs)).backward()
            with torch.no_grad():
                sparse_convs(plan, emb(eval_ids), wd, bs)
            sync()

        def packed():
            emb.convs(ids, pc, bs, dropout=0.285).sum().backward()
            with torch.no_grad():
                emb.convs(eval_ids, pc, bs)
            sync()

        csr_s[d], packed_s[d] = _bench(csr), _bench(packed)
    faster = [d for d in densities if packed_s[d] < csr_s[d]]
    cross = 0.0
    if faster:
        d_hi = max(faster)
        above = [d for d in densities if d > d_hi]
        cross = d_hi
        if above:
            d_lo = min(above)
            r1, r2 = csr_s[d_hi] / packed_s[d_hi], csr_s[d_lo] / packed_s[d_lo]
            frac = math.log(r1) / (math.log(r1) - math.log(r2)) if r1 != r2 else 0.0
            cross = math.exp(math.log(d_hi) + frac * (math.log(d_lo) - math.log(d_hi)))
    return {"density": cross, "csr_ms": {str(k): v * 1e3 for k, v in csr_s.items()},
            "packed_ms": {str(k): v * 1e3 for k, v in packed_s.items()}, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def packed_crossover(device="cpu", *, cache_dir=None, recalibrate=False) -> float:
    """The measured density below which the packed product beats the CSR kernels on this machine
    (``calibrate_packed``, about 2 s; stored beside the dense/CSR crossover in ``<cache>/crossover.json``,
    under ``"packed"`` of this machine's entry)."""
    crossover(device, cache_dir=cache_dir)  # this machine's entry exists
    f = paths.cache_dir(cache_dir) / CROSSOVER_FILE
    key = machine_key(device)
    try:
        table = json.loads(f.read_text())
    except (OSError, ValueError):
        table = {}
    entry = table.setdefault(key, {"density": 0.0})
    if "packed" not in entry or recalibrate:
        entry["packed"] = calibrate_packed(device)
        try:
            write_json(f, table)
        except OSError:
            pass
    return float(entry["packed"]["density"])
