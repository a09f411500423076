"""Tickets on disk: safetensors files with JSON metadata in the header (no pickle).

A ticket file ``round_RR.safetensors`` holds, for every parameter ``name``:

* ``mask/<name>``: the round's mask (True = survives), bit-packed with ``numpy.packbits`` into a
  uint8 vector (8x smaller than bool; the shape is in the metadata);
* ``trained/<name>``: the weights after the round's training, stored compactly as the 1-D vector
  of surviving entries in row-major order (pruned entries are exactly 0, so nothing is lost; at
  high sparsity this is a fraction of the dense size).

Its header metadata (strings) holds ``format``, ``round``, ``sparsity``, ``shapes``, ``settings``
(the chain's ``LotterySettings`` as JSON), ``vocab_size`` and a reference to theta_0: the file name
``theta_0`` (beside the ticket) and its SHA-256, checked on load. theta_0 is stored once per chain in
``theta_0.safetensors`` (a plain tensor file written by ``save_state``).

``load`` refuses, with the file name and what is wrong: unreadable or truncated files, a missing
or changed theta_0, missing tensors, shapes that do not match the recorded shapes, and (when asked
with ``model=`` or ``settings=``) a ticket made for another model.

Integrity: every file written by ``save_state`` (tickets, theta_0) carries a SHA-256 of all its
tensors and its metadata in its header (``ltnb.base.integrity``); ``load_state`` refuses a file whose
tensors or metadata (a flipped byte, an edited ``sparsity``) no longer match it, naming the file, the
expected and the found hash. theta_0's path comes from the ticket, so it is resolved inside the
study (the ticket's folder, or for a transfer ticket the source chain's folder of the same study)
and must be a regular file: absolute paths, ``..`` out of the study, symlinks leading out and device
files are refused before anything is read.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ltnb.base import integrity, tensorfiles
from ltnb.base.config import LotterySettings, ModelSettings
from ltnb.core.pruning import Mask, kept_after

FORMAT = "ltnb-ticket/2"  # /2: content hash of tensors and metadata in the header
OLD_FORMATS = ("ltnb-ticket/1",)


class ThetaChanged(ValueError):
    """The theta_0 file a ticket references is not the file it was written with (``load``)."""


@dataclass
class Ticket:
    masks: Mask
    init: dict[str, torch.Tensor]  # theta_0 of the chain (dense)
    trained: dict[str, torch.Tensor]  # dense, pruned entries 0
    round: int
    sparsity: float
    settings: LotterySettings
    vocab_size: int
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

    def check(self, model: torch.nn.Module) -> None:
        """Refuse (ValueError) if ``model``'s parameters do not have this ticket's names and shapes."""
        _check_shapes(self.path, {n: tuple(m.shape) for n, m in self.masks.items()}, model)


def _pack(mask: torch.Tensor) -> torch.Tensor:
    """bool tensor -> uint8 bit-packed 1-D tensor (numpy.packbits, big-endian bit order)."""
    return torch.from_numpy(np.packbits(mask.reshape(-1).numpy()))


def _unpack(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    n = math.prod(shape)
    return torch.from_numpy(np.unpackbits(packed.numpy())[:n].astype(bool)).reshape(shape)


def _check_shapes(path, shapes: Mapping[str, tuple], model: torch.nn.Module) -> None:
    want = {n: tuple(p.shape) for n, p in model.named_parameters()}
    if set(want) != set(shapes):
        raise ValueError(f"{path}: ticket parameters {sorted(shapes)} do not match the model's {sorted(want)}")
    bad = [f"{n}: ticket {shapes[n]} vs model {want[n]}" for n in want if tuple(shapes[n]) != want[n]]
    if bad:
        raise ValueError(f"{path}: ticket shapes do not match the model: " + "; ".join(bad))


def save_state(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Save a dict of tensors (CPU, contiguous) atomically, with the content hash in the header; the
    same tensors and metadata give the same bytes (``tensorfiles.write``)."""
    return tensorfiles.write(path, tensors, metadata)


def load_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a file written by ``save_state``, with a clear error for missing,
    corrupted or changed files (``ltnb.base.integrity.IntegrityError``: file, expected and found hash)."""
    path = Path(path)
    tensors, meta = tensorfiles.read(path, missing="no such file")
    if meta.get("format") in OLD_FORMATS:
        raise ValueError(f"{path}: a ticket of format {meta['format']!r}, written by an ltnb older than its integrity "
                         f"checks; it cannot be verified. Delete its chain folder {path.parent} to run the chain again.")
    tensorfiles.check_tensors(path, tensors, meta)
    return tensors, meta


def save(
    path: str | os.PathLike,
    *,
    masks: Mapping[str, torch.Tensor],
    trained: Mapping[str, torch.Tensor],
    round: int,
    settings: LotterySettings,
    vocab_size: int,
    theta_0: str | os.PathLike,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write one ticket atomically. ``theta_0`` is the path of the chain's theta_0 file."""
    path, theta_0 = Path(path), Path(theta_0)
    mask = Mask(masks)
    tensors = {}
    for name, m in mask.items():
        m = m.cpu()
        tensors[f"mask/{name}"] = _pack(m)
        tensors[f"trained/{name}"] = trained[name].detach().cpu().reshape(-1)[m.reshape(-1)]
    rel = os.path.relpath(theta_0, path.parent)
    meta = {
        "format": FORMAT,
        "round": str(int(round)),
        "sparsity": repr(mask.sparsity()),
        "shapes": json.dumps({n: list(m.shape) for n, m in mask.items()}),
        "settings": json.dumps(settings.to_dict(), sort_keys=True),
        "vocab_size": str(int(vocab_size)),
        "theta_0": rel,
        "theta_0_sha256": integrity.file_sha256(theta_0),
        "extra": json.dumps(dict(extra or {}), sort_keys=True, default=str),
    }
    return save_state(path, tensors, meta)


_THETA: dict[tuple[str, str], dict[str, torch.Tensor]] = {}


def _theta_0(path: Path, sha256: str) -> dict[str, torch.Tensor]:
    """theta_0's tensors (``load_state``: its digest checked), read once per file content per process:
    every ticket of a chain references the same file, and a resumed chain loads all of them. A copy is
    returned, so no caller can change what the next one gets."""
    key = (str(path), sha256)
    if key not in _THETA:
        if len(_THETA) >= 4:  # a few chains' worth (an obtain cell's, a transfer's source)
            _THETA.pop(next(iter(_THETA)))
        _THETA[key] = load_state(path)[0]
    return {n: t.clone() for n, t in _THETA[key].items()}


def _check_meaning(path: Path, masks: Mask, rnd: int, settings: LotterySettings) -> None:
    """A ticket is checked by what it means, whatever its digest says: a file named ``round_RR`` holds
    round RR, and each tensor keeps exactly the count ``rnd`` prune steps of the chain's
    ``prune_fraction`` leave (``ltnb.core.pruning.kept_after``; biases all, when ``prune_biases`` is off).
    A mask set to all ones and sealed again, or a round-2 ticket copied over round 1, is refused here
    with the file, the tensor and the numbers."""
    m = re.fullmatch(r"round_(\d+)\.safetensors", path.name)
    if m and int(m.group(1)) != rnd:
        raise ValueError(f"{path}: holds the ticket of round {rnd}, not of round {int(m.group(1))} as its name says "
                         f"(a ticket copied over another?); delete its chain folder {path.parent} to train it anew")
    for name, mask in masks.items():
        total = mask.numel()
        want = total if (not settings.prune_biases and name.endswith("bias")) else \
            kept_after(total, rnd, settings.prune_fraction)
        kept = int(mask.sum())
        if kept != want:
            raise ValueError(f"{path}: the mask of {name} keeps {kept:,} of {total:,} entries (sparsity "
                             f"{1 - kept / total:.4f}); round {rnd} of a chain pruning {settings.prune_fraction:g} per "
                             f"round keeps exactly {want:,} (sparsity {1 - want / total:.4f}): the mask was changed. "
                             f"Delete its chain folder {path.parent} to train it anew.")


def theta_root(path: str | os.PathLike) -> Path:
    """Where a ticket's theta_0 may lie: the study folder when the ticket sits in a chain folder
    ``<study>/(obtain|transfer)/<name>/<strategy>/seed<k>/<hash>/`` (a transfer ticket references the
    source chain's theta_0) or in a federated run ``<study>/federated/<source>/seed<k>/<hash>/runs/<run>/``,
    else the ticket's own folder."""
    run = Path(os.path.realpath(path)).parent
    up = run.parents
    if len(up) >= 5 and up[3].name in ("obtain", "transfer") and up[0].name.startswith("seed"):
        return up[4]
    if len(up) >= 6 and up[4].name == "federated" and up[2].name.startswith("seed") and up[0].name == "runs":
        return up[5]
    return run


def load(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module | None = None,
    settings: LotterySettings | ModelSettings | None = None,
) -> Ticket:
    """Read a ticket; with ``model`` or ``settings`` also refuse one made for a different model."""
    path = Path(path)
    tensors, meta = load_state(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an ltnb ticket (format {meta.get('format')!r}, expected {FORMAT!r})")
    try:
        shapes = {n: tuple(s) for n, s in json.loads(meta["shapes"]).items()}
        ticket_settings = LotterySettings.from_dict(json.loads(meta["settings"]))
        rnd, vocab_size = int(meta["round"]), int(meta["vocab_size"])
        extra = json.loads(meta.get("extra", "{}"))
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: ticket metadata is damaged ({type(e).__name__}: {e})") from None

    masks, trained = {}, {}
    for name, shape in shapes.items():
        m, t = tensors.get(f"mask/{name}"), tensors.get(f"trained/{name}")
        if m is None or t is None:
            raise ValueError(f"{path}: ticket lacks the mask or the trained values of {name}")
        n_bytes = -(-math.prod(shape) // 8)
        if m.dtype != torch.uint8 or tuple(m.shape) != (n_bytes,):
            raise ValueError(f"{path}: mask/{name} is {m.dtype} {tuple(m.shape)}, expected {n_bytes} packed bytes (uint8)")
        m = _unpack(m, shape)
        if t.ndim != 1 or t.numel() != int(m.sum()):
            raise ValueError(f"{path}: trained/{name} has {t.numel()} values for {int(m.sum())} surviving weights")
        dense = torch.zeros(shape, dtype=t.dtype)
        dense.reshape(-1)[m.reshape(-1)] = t
        masks[name], trained[name] = m, dense

    _check_meaning(path, Mask(masks), rnd, ticket_settings)

    try:
        theta_path = integrity.resolve_inside(theta_root(path), meta.get("theta_0"), base=path.parent, what="theta_0")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: its theta_0 file {(path.parent / meta['theta_0']).resolve()} is missing") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    found = integrity.file_sha256(theta_path)
    if found != meta.get("theta_0_sha256"):
        raise ThetaChanged(f"{path}: theta_0 file {theta_path} has changed since the ticket was written "
                           f"(expected sha256 {meta.get('theta_0_sha256')}, found {found})")
    init = _theta_0(theta_path, found)
    bad = [n for n in shapes if n not in init or tuple(init[n].shape) != shapes[n]]
    if bad:
        raise ValueError(f"{path}: theta_0 file {theta_path} does not match the ticket's shapes for {bad}")

    if settings is not None:
        want = settings.model if isinstance(settings, LotterySettings) else settings
        if want != ticket_settings.model:
            raise ValueError(f"{path}: ticket was made for model settings {ticket_settings.model}, not {want}")
    if model is not None:
        _check_shapes(path, shapes, model)
    return Ticket(
        masks=Mask(masks),
        init={n: init[n] for n in shapes},
        trained=trained,
        round=rnd,
        sparsity=float(meta["sparsity"]),
        settings=ticket_settings,
        vocab_size=vocab_size,
        path=path,
        meta=extra,
    )
