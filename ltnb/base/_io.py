"""Atomic file writes and stable hashing: shared by every module that writes to disk.

Every file the project writes goes through ``atomic_path`` (temp file in the same folder, then
``os.replace``), so a crash leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give them the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # writers that recreate the file (safetensors) make it 0600 again
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None


PARQUET_KEY = b"ltnb.content_sha256"  # Parquet schema metadata: the digest of the table's rows


def frame_digest(df) -> str:
    """SHA-256 of a DataFrame's columns and values (not its index), stable across a Parquet round trip."""
    import numpy as np

    h = hashlib.sha256()
    h.update(json.dumps([[str(c) for c in df.columns], len(df)]).encode())
    for c in df.columns:
        s = df[c]
        arr = s.to_numpy() if not hasattr(s.dtype, "na_value") else None  # numpy dtypes only
        if arr is not None and arr.dtype.kind in "biufcmM":
            h.update(f"|{arr.dtype.kind}{arr.dtype.itemsize}|".encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        else:  # text, objects, pandas extension types: their values as JSON, missing values as null
            obj = s.astype(object)
            values = obj.where(obj.notna(), None).tolist()
            h.update(b"|o|" + json.dumps(values, default=str, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def write_parquet(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame (without its index) as Parquet, atomically, with a digest of its rows
    in the file's metadata (``ltnb.base.integrity.read_parquet`` checks it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq


    table = pa.Table.from_pandas(frame, preserve_index=False)
    digest = frame_digest(table.to_pandas())  # what a reader will see
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), PARQUET_KEY: digest.encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)





def stable_hash(obj: Any, length: int = 10) -> str:
    """A short hash of a JSON-able object that does not depend on key order or the Python run."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def os_error(e: OSError, path: str | os.PathLike | None = None) -> str:
    """An OS error in one line, naming the path (``path`` when the error names none):
    ``/x/y: Read-only file system``."""
    where = e.filename if e.filename is not None else path
    return f"{where}: {e.strerror or e}" if where is not None else str(e)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
