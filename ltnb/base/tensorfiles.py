"""Tensor files with a content digest: what ``ltnb.core.tickets`` and ``ltnb.text.tokens`` write and check.

Every safetensors file the study writes carries a SHA-256 of all its tensors (name, dtype, shape,
bytes) and of its metadata in its header (``content_sha256``); a file whose tensors or metadata no
longer match is refused with an ``ltnb.base.integrity.IntegrityError`` naming the file, the expected and
the found digest.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ltnb.base.integrity import IntegrityError

DIGEST_KEY = "content_sha256"  # safetensors header metadata


def tensors_digest(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> str:
    """SHA-256 of every tensor (name, dtype, shape, bytes) and of the metadata (without the digest)."""
    h = hashlib.sha256()
    meta = {k: v for k, v in (metadata or {}).items() if k != DIGEST_KEY}
    h.update(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def seal(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> dict[str, str]:
    """The metadata with the content digest added (what a tensor file is written with)."""
    meta = {k: v for k, v in (metadata or {}).items() if k != DIGEST_KEY}
    meta[DIGEST_KEY] = tensors_digest(tensors, meta)
    return meta


def write(path: str | os.PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> Path:
    """Write a sealed safetensors file (``seal``) atomically, byte for byte the same for the same
    tensors and metadata: safetensors writes its metadata in the order of a Rust hash map, which
    changes from process to process, so the header is rewritten with the metadata's keys sorted.
    (A theta_0 drawn again after its file was deleted is then the same file, with the same SHA-256 that
    every ticket of its chain records, instead of wedging the chain.)"""
    from safetensors.torch import save

    from ltnb.base._io import atomic_path

    tensors = {n: t.detach().cpu().contiguous() for n, t in tensors.items()}
    blob = save(tensors, metadata=seal(tensors, metadata))
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the header is padded with spaces to 8 bytes (the format allows it)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(len(text).to_bytes(8, "little"))
            f.write(text)
            f.write(blob[8 + n:])
    return Path(path)


def check_tensors(path, tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> None:
    """Refuse (``IntegrityError``) a tensor file whose tensors or metadata do not match its digest."""
    found = tensors_digest(tensors, metadata)
    expected = (metadata or {}).get(DIGEST_KEY)
    if expected != found:
        raise IntegrityError(path, expected, found, "tensor data or metadata")


def read(path: str | os.PathLike, *, missing: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, not yet checked against its digest (``check_tensors``).
    A missing file raises ``FileNotFoundError`` with ``missing`` (what to run to make it); a folder, or a
    file safetensors cannot read (corrupted, truncated), a ``ValueError`` naming the file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: {missing}")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for bad headers / truncation
        raise ValueError(f"{path}: not a readable safetensors file, probably corrupted or truncated ({e})") from None
    return tensors, meta
