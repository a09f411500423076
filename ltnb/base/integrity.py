"""Integrity: what a later stage reads is what an earlier stage wrote, and data never names paths.

Small helpers the other modules call (no framework):

- **Content hashes recorded when a file is written, checked when it is read.** Tensor files
  (tickets, theta_0, encoded tokens) carry a SHA-256 of all their tensors and their metadata in the
  safetensors header (``content_sha256``); Parquet tables written by ``ltnb.base._io.write_parquet``
  carry a SHA-256 of their rows in the Parquet schema metadata (``ltnb.content_sha256``). A file
  whose content no longer matches, or that has no hash (written by another tool, or by an ltnb older
  than these checks), is refused with an ``IntegrityError`` naming the file, the expected and the
  found hash.
- **Hash once per file per run**: ``file_sha256`` caches by (path, device, inode, size, mtime), so a
  resume that checks every recorded input hashes each file once per process.
- **Cell records** (``ltnb.base.stages.cell_outputs``): the files of a batch cell that later cells read, with their
  SHA-256. ``ltnb.study.batch`` stores them (and those of the cell's inputs) in the cell's completeness
  marker; a cell is complete only while those files still have those hashes.
- **Paths from data stay in their place**: ``resolve_inside`` refuses absolute paths, paths that leave
  their root (``..``, symlinks) and anything that is not a regular file (``/dev/zero``, FIFOs), before
  reading a byte. ``check_name`` checks domain names like study names wherever they become file names.
- **Leftover temporary files** of killed atomic writes (``.<name>.<random>.tmp``; the vocabulary's
  ``.<key>.<random>`` folders) are found and removed by ``clean_temp_files``.
- **Cell locks** (``CellLock``): ``fcntl.flock`` on ``<cell folder>/.ltnb-lock``, held by the worker
  running the cell, so two batches on one study never run the same cell at the same time.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ltnb.base._io import PARQUET_KEY, frame_digest  # noqa: E402,F401  (tables are sealed by ltnb.base._io.write_parquet)
from ltnb.base.config import NAME_PATTERN  # noqa: E402  (the one rule for names: ltnb.base.config)

LOCK_NAME = ".ltnb-lock"

_NAME = re.compile(NAME_PATTERN)
# ``tempfile.mkstemp(prefix=".<name>.", suffix=".tmp")`` (ltnb.base._io.atomic_path) and
# ``tempfile.mkdtemp(prefix=".<key>.")`` (ltnb.text.vocab): 8 random characters from [a-z0-9_].
_TEMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
_TEMP_DIR = re.compile(r"^\.[0-9a-f]+\.[a-z0-9_]{8}$")


class IntegrityError(ValueError):
    """A file's content does not match the hash recorded when it was written."""

    def __init__(self, file, expected: str | None, found: str | None, what: str = "content",
                 recorded: str = "when it was written", advice: str = "Rerun the stage that writes it."):
        self.file, self.expected, self.found = str(file), expected, found
        if expected is None:
            msg = (f"{file}: no recorded {what} hash (written by another tool, or by an ltnb older than its "
                   f"integrity checks), so it cannot be verified; found sha256 {found}. {advice}")
        else:
            msg = (f"{file}: {what} does not match the hash recorded {recorded} "
                   f"(expected sha256 {expected}, found {found}); the file was changed or corrupted. {advice}")
        super().__init__(msg)


# ------------------------------------------------------------------------------ files: hash once per run
_CACHE: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a regular file, computed once per (path, inode, size, mtime) in this process."""
    path = Path(path)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: not a regular file")
    key = (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    digest = _CACHE.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = _CACHE[key] = h.hexdigest()
    return digest


def check_file(path: str | os.PathLike, expected: str, what: str = "content") -> None:
    """Raise ``IntegrityError`` unless the file's SHA-256 is ``expected``."""
    found = file_sha256(path)
    if found != expected:
        raise IntegrityError(path, expected, found, what)


# ------------------------------------------------------------------------------ tables (Parquet)
def read_parquet(path):
    """Read a table written by ``write_parquet``; refuse it (``IntegrityError``) if its rows no longer
    match the digest recorded when it was written, or if it has none."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for damaged files
        raise IntegrityError(path, "(unreadable)", f"not a readable Parquet file: {e}", "table") from None
    df = table.to_pandas()
    expected = (table.schema.metadata or {}).get(PARQUET_KEY)
    found = frame_digest(df)
    if expected is None or expected.decode() != found:
        raise IntegrityError(path, None if expected is None else expected.decode(), found, "table")
    return df


# ------------------------------------------------------------------------------ names and paths
def name_problem(value: Any, what: str = "domain") -> str | None:
    """Why ``value`` cannot name a folder or file (``None`` when it can): letters, digits, ``_ . -``,
    starting with a letter or digit, without ``..`` or ``__`` (``__`` joins source and target)."""
    if not isinstance(value, str) or not _NAME.match(value):
        if isinstance(value, str) and (".." in value or "__" in value):
            return f"{what} {value!r} is not a valid name: it must not contain '..' or '__'"
        return f"{what} {value!r} is not a valid name: use letters, digits, _ . - (starting with a letter or digit)"
    return None


def check_name(value: Any, what: str = "domain") -> str:
    problem = name_problem(value, what)
    if problem:
        raise ValueError(problem)
    return value


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolve_inside(root: str | os.PathLike, rel: str, *, base: str | os.PathLike | None = None,
                   what: str = "file") -> Path:
    """``base / rel`` as a real path, refused (``ValueError``) unless ``rel`` is relative, the real path
    (symlinks followed) lies inside ``root`` and is a regular file. Nothing is opened or read."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise ValueError(f"{what} path {rel!r}: not a file name")
    if os.path.isabs(rel):
        raise ValueError(f"{what} path {rel!r}: absolute paths are refused (it must lie inside {root})")
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(base if base is not None else root, rel))
    if not _inside(real, real_root):
        raise ValueError(f"{what} path {rel!r} leads outside {root}; refused")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {real} is missing") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{what} {real} is not a regular file; refused")
    return Path(real)


# ------------------------------------------------------------------------------ what a batch cell wrote
def vocab_files(study: Path) -> list[Path]:
    """The current vocabulary's files (``CURRENT.json``, the model, its info and token files)."""
    root = study / "data" / "vocab"
    current = root / "CURRENT.json"
    if not current.is_file():
        return []
    out = [current]
    try:
        key = json.loads(current.read_text(encoding="utf-8"))["key"]
    except (ValueError, KeyError, TypeError, OSError):
        return out  # recorded as is; a damaged CURRENT.json changes its hash
    if name_problem(key, "vocabulary key"):
        return out
    folder = root / key
    out += [folder / "info.json", folder / "spm.model", *sorted((folder / "tokens").glob("*.safetensors"))]
    return out


def cell_folders(study_dir: str | os.PathLike, key: str) -> list[Path]:
    """The folders a batch cell writes: its own (``<study>/<key>``) and, for an obtain or transfer cell
    ``<stage>/<name>/seed<k>``, the chain folders ``<stage>/<name>/<strategy>/seed<k>/`` it runs."""
    study = Path(study_dir)
    folders = [study / key]
    if key.startswith(("obtain/", "transfer/")):
        stage, what, seed = key.split("/")[:3]
        folders += sorted(p for p in study.glob(f"{stage}/{what}/*/{seed}") if p.is_dir())
    return folders


def record_problem(study_dir: str | os.PathLike, recorded: Mapping[str, str]) -> str | None:
    """Why the files ``recorded`` (path relative to the study -> sha256) no longer are what a cell ran
    on, or ``None`` when every one still has its hash."""
    for rel, expected in sorted(recorded.items()):
        try:
            path = resolve_inside(study_dir, rel, what="recorded file")
        except FileNotFoundError:
            return f"{rel} is missing (it ran on sha256 {str(expected)[:16]})"
        except ValueError as e:
            return f"its marker names {rel!r}, which is refused ({e})"
        found = file_sha256(path)
        if found != expected:
            return f"{rel} changed since it ran (expected sha256 {str(expected)[:16]}, found {found[:16]})"
    return None


# ------------------------------------------------------------------------------ leftover temporary files
def clean_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove what killed atomic writes left under ``folder``; return what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in filenames:
            if _TEMP_FILE.match(name):
                p = Path(dirpath) / name
                try:
                    p.unlink()
                    removed.append(p)
                except OSError:  # gone, or in a folder we may not write (read-only, permissions)
                    pass
        for name in list(dirnames):
            if _TEMP_DIR.match(name) and Path(dirpath).name == "vocab":
                p = Path(dirpath) / name
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
                dirnames.remove(name)
    return removed


# ------------------------------------------------------------------------------ one batch per cell
class CellLock:
    """An exclusive ``flock`` on ``<cell folder>/.ltnb-lock``, released when the holder exits or dies.

    ``acquire(wait=False)`` returns False when another process holds it; ``acquire(wait=True)`` polls
    until it is free (``should_stop`` can end the wait: then False). ``holder()`` reads who holds it.
    """

    def __init__(self, cell_dir: str | os.PathLike):
        self.path = Path(cell_dir) / LOCK_NAME
        self.fd: int | None = None
        self.waited = False

    def acquire(self, wait: bool = True, *, should_stop: Callable[[], bool] | None = None, poll: float = 0.5) -> bool:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise
                if not wait or (should_stop is not None and should_stop()):
                    os.close(fd)
                    return False
                self.waited = True
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(), 0)
        self.fd = fd
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8", errors="replace").strip() or "another process"
        except OSError:
            return "another process"

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

    def __enter__(self) -> "CellLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
