"""Encoded token ids: one ``TokenSplit`` per (domain, split), stored flat with offsets.

This is the hand-off between the data side (vocabulary, encodings) and the training side
(length-bucketed batches). Saved with safetensors (no pickle), with a SHA-256 of the tensors in the
header that ``load_splits`` checks (``ltnb.base.integrity``).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from ltnb.base import tensorfiles

SPLITS = ("train", "validation", "test")


@dataclass
class TokenSplit:
    """``n`` sequences of token ids: sequence ``i`` is ``ids[offsets[i]:offsets[i+1]]``."""

    ids: torch.Tensor  # int64 [total]
    offsets: torch.Tensor  # int64 [n + 1], offsets[0] == 0
    labels: torch.Tensor  # int64 [n], 0 = negative, 1 = positive

    def __post_init__(self):
        if self.offsets.ndim != 1 or self.offsets.numel() != self.labels.numel() + 1:
            raise ValueError(
                f"TokenSplit: offsets has {self.offsets.numel()} entries, expected labels + 1 = {self.labels.numel() + 1}"
            )
        if int(self.offsets[-1]) != self.ids.numel():
            raise ValueError(f"TokenSplit: last offset {int(self.offsets[-1])} != number of ids {self.ids.numel()}")

    def __len__(self) -> int:
        return self.labels.numel()

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def sequence(self, i: int) -> torch.Tensor:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    @classmethod
    def from_lists(cls, sequences: list[list[int]], labels: list[int]) -> "TokenSplit":
        if len(sequences) != len(labels):
            raise ValueError(f"TokenSplit.from_lists: {len(sequences)} sequences but {len(labels)} labels")
        lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
        offsets = torch.zeros(len(sequences) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(lengths, 0)
        flat = [t for s in sequences for t in s]
        return cls(torch.tensor(flat, dtype=torch.int64), offsets, torch.tensor(labels, dtype=torch.int64))


def first_per_class(split: TokenSplit, n: int, *, what: str = "train") -> TokenSplit:
    """The first ``n / 2`` sequences of each class, in ``split``'s order (the data stage's seeded order, so
    a smaller ``n`` is part of a larger one); ``n`` even, at most what the split holds of each class."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2 or n % 2:
        raise ValueError(f"train_size = {n!r}: expected an even integer >= 2 (half of it per class)")
    half = n // 2
    have = [int((split.labels == y).sum()) for y in (0, 1)]
    if min(have) < half:
        raise ValueError(f"train_size = {n}: the {what} split holds {have[0]} negative and {have[1]} positive texts, "
                         f"fewer than {half} of each; the largest train_size it allows is {2 * min(have)}")
    keep = torch.zeros(len(split), dtype=torch.bool)
    for y in (0, 1):
        keep[torch.nonzero(split.labels == y).flatten()[:half]] = True
    idx = torch.nonzero(keep).flatten()
    seqs = [split.sequence(int(i)) for i in idx]
    lengths = torch.tensor([len(q) for q in seqs], dtype=torch.int64)
    offsets = torch.zeros(len(seqs) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    ids = torch.cat(seqs) if seqs else split.ids[:0]
    return TokenSplit(ids, offsets, split.labels[idx].clone())


def fingerprint(splits: Mapping[str, TokenSplit]) -> str:
    """SHA-256 (hex) of the token ids, offsets and labels of ``splits``, in split-name order. It names
    data passed directly to a chain (``ltnb.core.lottery``: ``data-`` and its first 16 digits, part of the
    chain's folder hash) and a federated client's shard (``ltnb.study.federated``: all 64 digits, in
    ``clients.json`` and in audited replies); both stored values are this digest."""
    h = hashlib.sha256()
    for name in sorted(splits):
        for t in (splits[name].ids, splits[name].offsets, splits[name].labels):
            h.update(name.encode())
            h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def save_splits(path: str | os.PathLike, splits: dict[str, TokenSplit]) -> Path:
    """Save ``{split: TokenSplit}`` to one safetensors file, atomically."""
    tensors = {}
    for name, s in splits.items():
        tensors[f"{name}.ids"] = s.ids.contiguous()
        tensors[f"{name}.offsets"] = s.offsets.contiguous()
        tensors[f"{name}.labels"] = s.labels.contiguous()
    return tensorfiles.write(path, tensors)


def load_splits(path: str | os.PathLike) -> dict[str, TokenSplit]:
    tensors, meta = tensorfiles.read(path, missing="no encoded tokens here: run the data stage (notebooks/01_data.ipynb) first")
    tensorfiles.check_tensors(path, tensors, meta)
    names = sorted({k.split(".")[0] for k in tensors})
    return {n: TokenSplit(tensors[f"{n}.ids"], tensors[f"{n}.offsets"], tensors[f"{n}.labels"]) for n in names}
