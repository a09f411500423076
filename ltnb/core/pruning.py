"""Masks and the layer-wise magnitude pruning step (the L0 projection of PyText's
``L0_projection_sparsifier``, applied to every parameter tensor on its own, embedding included).

One step, for each tensor with ``n`` surviving (unmasked) entries:

* keep ``ceil((1 - p) * n)`` of them, those with the largest ``|w|``; the others are pruned. The
  count is computed exactly (``p`` is read as the decimal it prints as, ``0.35 -> 7/20``), so a
  float artefact such as ``0.65 * 100 = 65.00000000000001`` never keeps an extra weight.
  Keeping the ceiling means a tensor never loses its last weight (``ceil(0.65 * 1) = 1``).
  (``torch.nn.utils.prune.l1_unstructured(amount=p)`` instead prunes ``round(p * n)``; the two differ
  when the fractional part of ``p * n`` is >= 0.5. The tests compare with explicit counts.)
* ties in ``|w|`` are broken by position: among equal magnitudes the entry with the smaller flat
  index (row-major) is kept. Already-pruned entries are never candidates, so a pruned weight never
  comes back.
* ``prune_biases=False`` leaves every tensor whose name ends in ``bias`` unpruned.

Sparsity is the fraction of parameters that are pruned (mask False), which equals the fraction of
weights that are exactly zero because training keeps pruned weights at exactly 0
(``ltnb.core.train.fit``). After round r it is ``1 - 0.65^r`` up to the per-tensor ceiling.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Mapping

import torch


class Mask(dict):
    """A dict ``name -> bool tensor`` (True = the weight survives), with sparsity accounting."""

    def __init__(self, masks: Mapping[str, torch.Tensor] = ()):
        super().__init__()
        for name, m in dict(masks).items():
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
                raise ValueError(f"Mask[{name!r}]: expected a bool tensor, got {getattr(m, 'dtype', type(m).__name__)}")
            self[name] = m

    @classmethod
    def ones_like(cls, weights: Mapping[str, torch.Tensor]) -> "Mask":
        return cls({n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()})

    def kept(self) -> int:
        return sum(int(m.sum()) for m in self.values())

    def total(self) -> int:
        return sum(m.numel() for m in self.values())

    def sparsity(self) -> float:
        """Fraction of all entries that are pruned."""
        total = self.total()
        return 1.0 - self.kept() / total if total else 0.0

    def report(self) -> dict[str, dict[str, float]]:
        """Per-tensor and overall ``{"kept", "total", "sparsity"}``."""
        out = {}
        for n, m in self.items():
            k, t = int(m.sum()), m.numel()
            out[n] = {"kept": k, "total": t, "sparsity": 1.0 - k / t}
        out["overall"] = {"kept": self.kept(), "total": self.total(), "sparsity": self.sparsity()}
        return out

    def apply(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``weights * mask`` for every tensor (a new dict; pruned entries exactly 0)."""
        return {n: torch.where(self[n].to(w.device), w, torch.zeros((), dtype=w.dtype, device=w.device)) for n, w in weights.items()}


def keep_count(survivors: int, fraction: float) -> int:
    """``ceil((1 - fraction) * survivors)``, computed exactly."""
    p = Fraction(repr(float(fraction)))
    return math.ceil((1 - p) * survivors)


def kept_after(total: int, rounds: int, fraction: float) -> int:
    """How many of a tensor's ``total`` entries survive ``rounds`` prune steps of ``fraction`` (the
    count ``prune_step`` keeps, exactly: ``keep_count`` applied ``rounds`` times)."""
    kept = total
    for _ in range(int(rounds)):
        kept = keep_count(kept, fraction)
    return kept


def prune_step(
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    fraction: float,
    *,
    prune_biases: bool = True,
) -> Mask:
    """New masks after pruning ``fraction`` of each tensor's survivors by magnitude (see module doc)."""
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"prune_step: fraction = {fraction!r}: expected a number in (0, 1)")
    if set(weights) != set(masks):
        raise ValueError(f"prune_step: weights and masks name different tensors: {sorted(set(weights) ^ set(masks))}")
    new = {}
    for name, w in weights.items():
        m = masks[name]
        if m.shape != w.shape:
            raise ValueError(f"prune_step: {name}: mask shape {tuple(m.shape)} != weight shape {tuple(w.shape)}")
        if not prune_biases and name.endswith("bias"):
            new[name] = m.clone()
            continue
        flat_m = m.reshape(-1).to(w.device)
        alive = flat_m.nonzero().squeeze(1)  # ascending flat index
        keep = keep_count(alive.numel(), fraction)
        magnitude = w.detach().reshape(-1)[alive].abs()
        out = torch.zeros_like(flat_m)
        out[alive[_top_indices(magnitude, keep)]] = True
        new[name] = out.reshape(m.shape).to(m.device)
    return Mask(new)


def _top_indices(values: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the ``k`` largest ``values``; among equal values the lower positions win.

    Same result as a stable descending sort cut at ``k``, in O(n): find the k-th largest value t
    (``kthvalue``), keep everything above t and the first ``k - #above`` positions equal to t.
    """
    n = values.numel()
    if k >= n:
        return torch.arange(n, device=values.device)
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=values.device)
    t = torch.kthvalue(values, n - k + 1).values
    above = (values > t).nonzero().squeeze(1)
    ties = (values == t).nonzero().squeeze(1)[: k - above.numel()]
    return torch.cat([above, ties])


def zero_fraction(weights: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Fraction of entries exactly zero, per tensor and ``"overall"``."""
    out, zeros, total = {}, 0, 0
    for n, w in weights.items():
        z = int((w == 0).sum())
        out[n] = z / w.numel()
        zeros, total = zeros + z, total + w.numel()
    out["overall"] = zeros / total if total else 0.0
    return out
