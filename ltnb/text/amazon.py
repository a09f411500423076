"""The paper's own data: Amazon review files a user already has (McAuley 2014 / 2018 / 2023, Blitzer 2007).

Nothing here downloads anything (except ``load_hf_amazon2023``, which a user calls on purpose on an
online machine). Files are read line by line (gzip or plain, detected by the magic bytes, not the file
name), and each class is sampled with a seeded reservoir, so a many-GB file (Books) never sits in memory.

Label rule (the paper's): ratings 1-2 -> 0 (negative), 4-5 -> 1 (positive), 3 dropped. A rating strictly
between 2 and 4 (e.g. 2.5, 3.0) counts as neutral and is dropped too.

Bad records are never dropped silently: each is counted in a ``LoadReport`` per file and reason, or, with
``strict=True``, raises ``DataFormatError`` naming the file and line. That includes hostile ones: nesting too
deep to parse (``[[[[...``), integers too long to convert, undecodable bytes and texts that are not valid
Unicode, and records too big: a line (McAuley) or a review from ``<review>`` to ``</review>`` (Blitzer)
longer than ``MAX_RECORD_BYTES`` is refused before it is parsed, read with a bounded reader so an endless
line never sits in memory whole (a Blitzer review whose closing tag never comes is cut at the limit), and a
line that is not JSON is read as a Python literal only with at most ``MAX_LITERAL_ITEMS`` items (the
literal parser needs about 500 bytes of memory per item). Every file read is listed in the report, also one
that yields no record at all.

Formats:

- 2014 ``reviews_<Category>_5.json.gz``: one record a line, ``overall`` (1.0-5.0), ``reviewText``,
  ``summary``. Some 2014 dumps are Python literals (``{'overall': 5.0, ...}``), read with
  ``ast.literal_eval`` when ``json`` fails (literal_eval evaluates literals only, never code).
- 2018 ``<Category>_5.json.gz``: same fields; ``reviewText`` sometimes missing (counted as "missing text").
- 2023 ``<Category>.jsonl(.gz)``: ``rating``, ``title``, ``text``.
  The generation is recognised per record by its fields (``overall`` or ``rating``), so one loader reads all.
- Blitzer et al. (2007) multi-domain data: a folder with ``positive.review`` and ``negative.review``,
  pseudo-XML ``<review> ... <rating>5.0</rating> ... <review_text>...</review_text> ... </review>``;
  the label comes from the file name; bytes are read as UTF-8, falling back to Latin-1 per line.

The text used is the review body (``reviewText`` / ``text`` / ``<review_text>``); ``include_title=True``
prepends the summary / title.
"""
from __future__ import annotations

import ast
import gzip
import html
import json
import math
import os
import random
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pandas as pd
from tqdm.auto import tqdm

PER_CLASS_DEFAULT = 20_000  # the paper: 20K train + 10K validation + 10K test per category, balanced
GZIP_MAGIC = b"\x1f\x8b"
# A record's size is bounded before it is parsed. Real reviews are a few KB (a whole 2014/2018 record with
# a long review some tens of KB); 1 MiB is far beyond any, and what parsing it can cost is bounded: a
# 1 MiB line of JSON takes a few MB, a Blitzer review of 1 MiB of short lines about 30 MB.
MAX_RECORD_BYTES = 1 << 20
# The Python-literal parser (ast.literal_eval, for the 2014 dumps) costs about 500 bytes per item: a 14.7 MB
# line of 7M items took 7.1 GB and 53-71 s, a 1 MiB one of 0.5M items 0.5 GB. A real 2014 record has a
# dozen fields, and its texts' own punctuation counts here too (a 30 KB review: some hundreds); a line
# with more separators (, : [ ( {) than this is refused unread (at most about 10 MB and 0.1 s).
MAX_LITERAL_ITEMS = 20_000


class DataFormatError(ValueError):
    """A record that cannot be read, raised in strict mode; the message names the file and line."""


@dataclass
class LoadReport:
    """What the loaders read, kept and skipped, per file.

    ``skipped[file][reason]`` counts bad records (missing text, missing rating, rating outside 1-5,
    invalid json, undecodable bytes, truncated gzip, ...); ``neutral[file]`` counts rating-3 records
    dropped by the label rule (not errors); ``kept[file]`` counts records that had a label (before
    sampling); ``sampled[file]`` counts rows returned.
    """

    read: Counter = field(default_factory=Counter)
    kept: Counter = field(default_factory=Counter)
    neutral: Counter = field(default_factory=Counter)
    sampled: Counter = field(default_factory=Counter)
    skipped: dict = field(default_factory=dict)  # file -> Counter(reason -> n)
    first_error: dict = field(default_factory=dict)  # file -> "line N: reason"

    def touch(self, file: str) -> None:
        """List ``file`` in the report (with zero counts) even if it yields no record at all."""
        self.read[file] += 0

    def skip(self, file: str, line: int, reason: str, strict: bool) -> None:
        if strict:
            raise DataFormatError(f"{file}:{line}: {reason}")
        self.skipped.setdefault(file, Counter())[reason] += 1
        self.first_error.setdefault(file, f"line {line}: {reason}")

    @property
    def n_skipped(self) -> int:
        return sum(sum(c.values()) for c in self.skipped.values())

    def to_dict(self) -> dict:
        files = sorted(set(self.read) | set(self.skipped))
        return {
            f: {
                "read": self.read[f], "kept": self.kept[f], "neutral_dropped": self.neutral[f],
                "sampled": self.sampled[f], "skipped": dict(self.skipped.get(f, {})),
                "first_error": self.first_error.get(f),
            }
            for f in files
        }

    def summary(self) -> str:
        lines = []
        for f, d in self.to_dict().items():
            line = (f"{f}: {d['read']} records read, {d['kept']} labelled, {d['neutral_dropped']} neutral dropped, "
                    f"{d['sampled']} sampled")
            if d["skipped"]:
                reasons = ", ".join(f"{n} {r}" for r, n in sorted(d["skipped"].items()))
                line += f"; skipped {sum(d['skipped'].values())} bad records ({reasons}; first at {d['first_error']})"
            lines.append(line)
        return "\n".join(lines) if lines else "no files read"


# ------------------------------------------------------------------------------------------ reading


def open_maybe_gzip(path: str | os.PathLike):
    """A binary file object: gzip-decompressed if the file starts with the gzip magic bytes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == GZIP_MAGIC else open(path, "rb")


def iter_lines(path: str | os.PathLike, report: LoadReport, strict: bool) -> Iterator[tuple[int, bytes]]:
    """``(line number, raw bytes)`` for each line; a line longer than ``MAX_RECORD_BYTES`` is skipped
    ("line too long") having been read in blocks of that size, never whole; a truncated or corrupt gzip
    stream is recorded at the line where it broke and ends the file."""
    name = str(path)
    report.touch(name)
    lineno = 0
    with open_maybe_gzip(path) as f:
        try:
            while True:
                limit = MAX_RECORD_BYTES
                raw = f.readline(limit + 1)
                if not raw:
                    break
                lineno += 1
                if len(raw) > limit and not raw.endswith(b"\n"):
                    del raw
                    while True:  # drop the rest of the line, a block at a time
                        rest = f.readline(1 << 20)
                        if not rest or rest.endswith(b"\n"):
                            break
                    report.skip(name, lineno, f"line too long (over {limit} bytes)", strict)
                    continue
                yield lineno, raw
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
            report.skip(name, lineno + 1, f"truncated gzip ({type(e).__name__}: {e}); rest of file unreadable", strict)


def _decode_record(raw: bytes) -> tuple[dict | None, str | None]:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "undecodable bytes (not UTF-8)"
    line = line.strip()
    try:
        rec = json.loads(line)
    except (RecursionError, MemoryError):
        return None, "invalid json (nested too deeply)"
    except ValueError:  # JSONDecodeError; also integers too long to convert
        items = sum(line.count(c) for c in ",:[({")
        if items > MAX_LITERAL_ITEMS:
            return None, f"invalid json (and over {MAX_LITERAL_ITEMS} items, too many to read as a Python literal)"
        try:
            rec = ast.literal_eval(line)  # 2014 Python-literal dumps
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            return None, "invalid json"
    if not isinstance(rec, dict):
        return None, "invalid json (not an object)"
    return rec, None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # JSON "\\ud800": a lone surrogate cannot be written to Parquet
        return False
    return True


def label_of_rating(value) -> tuple[int | None, str | None]:
    """``(label, None)``, ``(None, "neutral")`` or ``(None, reason)`` for a bad rating."""
    if value is None:
        return None, "missing rating"
    if isinstance(value, bool):
        return None, f"rating {value!r} is not a number"
    try:
        r = float(value)
    except (TypeError, ValueError, OverflowError):
        return None, f"rating {str(value)[:40]!r} is not a number"
    if not math.isfinite(r) or not 1.0 <= r <= 5.0:
        return None, "rating outside 1-5"
    if r <= 2.0:
        return 0, None
    if r >= 4.0:
        return 1, None
    return None, "neutral"


def clean_text(text: str) -> str:
    return " ".join(html.unescape(text).split())


def record_text_rating(rec: dict, include_title: bool = False) -> tuple[str | None, object]:
    """The text and raw rating of a McAuley record of any generation (2014/2018: overall, reviewText,
    summary; 2023: rating, text, title)."""
    if "overall" in rec:
        body, title, rating = rec.get("reviewText"), rec.get("summary"), rec.get("overall")
    else:
        body, title, rating = rec.get("text"), rec.get("title"), rec.get("rating")
    body = clean_text(body) if isinstance(body, str) else ""
    if include_title and isinstance(title, str) and clean_text(title) and body:
        body = f"{clean_text(title)}. {body}"
    return (body or None), rating


class _Reservoirs:
    """Per-class reservoir sampling (Algorithm R), one seeded RNG per class so each class's sample
    depends only on the seed and that class's stream."""

    def __init__(self, per_class: int | None, seed: int):
        if per_class is not None and (not isinstance(per_class, int) or per_class < 1):
            raise ValueError(f"per_class={per_class!r}: must be a positive int or None (keep all)")
        self.k = per_class
        self.rngs = {y: random.Random(int(seed) * 2 + y) for y in (0, 1)}
        self.seen = {0: 0, 1: 0}
        self.items: dict[int, list] = {0: [], 1: []}

    def add(self, label: int, item) -> None:
        self.seen[label] += 1
        bucket = self.items[label]
        if self.k is None or len(bucket) < self.k:
            bucket.append(item)
        else:
            j = self.rngs[label].randrange(self.seen[label])
            if j < self.k:
                bucket[j] = item

    def rows(self) -> list:
        return sorted(self.items[0] + self.items[1])  # back into stream order


def _frame(rows: list, domain: str) -> pd.DataFrame:
    return pd.DataFrame({
        "text": [r[2] for r in rows],
        "label": pd.Series([r[3] for r in rows], dtype="int64"),
        "domain": domain,
        "source": [r[4] for r in rows],
    })


def category_of(path: str | os.PathLike) -> str:
    """``reviews_Books_5.json.gz`` / ``Books_5.json.gz`` / ``Books.jsonl`` -> ``Books``."""
    name = Path(path).name
    name = re.sub(r"(\.gz|\.jsonl|\.json)+$", "", name)
    name = re.sub(r"^reviews_", "", name)
    return re.sub(r"_5$", "", name)


def load_mcauley(path: str | os.PathLike, *, domain: str | None = None, per_class: int | None = PER_CLASS_DEFAULT,
                 seed: int = 0, strict: bool = False, include_title: bool = False,
                 report: LoadReport | None = None, progress: bool = True) -> pd.DataFrame:
    """Read one McAuley Amazon file (2014, 2018 or 2023 format, gzip or plain) into
    ``text, label, domain, source``, keeping a seeded random ``per_class`` records of each class
    (all if ``None``; fewer if the file has fewer).

    ``domain`` defaults to the category in the file name; ``source`` is ``amazon:<file name>``.
    Skipped records are counted in ``report`` (pass one in to read it afterwards).
    """
    report = LoadReport() if report is None else report
    path = Path(path)
    name, source = str(path), f"amazon:{path.name}"
    domain = domain or category_of(path)
    res = _Reservoirs(per_class, seed)
    for lineno, raw in tqdm(iter_lines(path, report, strict), desc=path.name, unit=" lines", disable=not progress):
        if not raw.strip():
            continue
        report.read[name] += 1
        rec, err = _decode_record(raw)
        if err:
            report.skip(name, lineno, err, strict)
            continue
        text, rating = record_text_rating(rec, include_title)
        label, err = label_of_rating(rating)
        if err == "neutral":
            report.neutral[name] += 1
            continue
        if err:
            report.skip(name, lineno, err, strict)
            continue
        if text is None:
            report.skip(name, lineno, "missing text", strict)
            continue
        if not _encodable(text):
            report.skip(name, lineno, "text is not valid Unicode (lone surrogate)", strict)
            continue
        report.kept[name] += 1
        res.add(label, (lineno, 0, text, label, source))
    rows = res.rows()
    report.sampled[name] += len(rows)
    return _frame(rows, domain)


# -------------------------------------------------------------------------------------------- Blitzer

_TAG = re.compile(r"^\s*<(/?)([a-z_]+)>\s*$")


def _iter_blitzer(path: Path, report: LoadReport, strict: bool) -> Iterator[tuple[int, dict]]:
    """``(line of <review>, {tag: text})`` for each review of a Blitzer ``*.review`` file. A review longer
    than ``MAX_RECORD_BYTES`` (its closing tag missing, or hostile) is cut there: skipped, and the lines up to
    the next ``<review>`` or ``</review>`` with it."""
    name = str(path)
    rec, tag, buf, start, size, cut = None, None, [], 0, 0, False
    for lineno, raw in iter_lines(path, report, strict):
        if cut and b"review>" not in raw:  # the rest of a review cut at the limit (quickly)
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line = raw.decode("latin-1")  # the original files mix encodings; latin-1 never fails
        m = _TAG.match(line)
        if m and m.group(2) == "review":
            if m.group(1) == "":
                if rec is not None:
                    report.skip(name, start, "unterminated <review> (no </review> before the next <review>)", strict)
                rec, tag, buf, start, size, cut = {}, None, [], lineno, len(raw), False
            else:
                if rec is not None:
                    yield start, rec
                rec, tag, cut = None, None, False
            continue
        if cut:  # the rest of a review cut at the limit
            continue
        if rec is not None:
            size += len(raw)
            if size > MAX_RECORD_BYTES:
                report.skip(name, start, f"review too long (over {MAX_RECORD_BYTES} bytes without </review>)", strict)
                rec, tag, buf, cut = None, None, [], True
                continue
        if rec is None:
            if line.strip():
                report.skip(name, lineno, "text outside <review>", strict)
            continue
        if m and m.group(1) == "" and tag is None:
            tag, buf = m.group(2), []
        elif m and m.group(1) == "/" and m.group(2) == tag:
            rec[tag] = "".join(buf)
            tag = None
        elif tag is not None:
            buf.append(line)
        else:
            # one-line form: <tag>value</tag>
            m1 = re.match(r"^\s*<([a-z_]+)>(.*)</\1>\s*$", line, re.S)
            if m1:
                rec[m1.group(1)] = m1.group(2)
    if rec is not None:
        report.skip(name, start, "unterminated <review> at end of file", strict)


def load_blitzer(folder: str | os.PathLike, *, domain: str | None = None, per_class: int | None = None,
                 seed: int = 0, strict: bool = False, report: LoadReport | None = None) -> pd.DataFrame:
    """Read a Blitzer et al. (2007) domain folder (``positive.review``, ``negative.review``) into
    ``text, label, domain, source``; the label comes from the file name, the text from ``<review_text>``.
    ``domain`` defaults to the folder name; ``source`` is ``blitzer:<folder>/<file>``."""
    report = LoadReport() if report is None else report
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder} (expected a Blitzer domain folder with "
                                "positive.review and negative.review)")
    domain = domain or folder.name
    res = _Reservoirs(per_class, seed)
    for order, (fname, label) in enumerate((("negative.review", 0), ("positive.review", 1))):
        path = folder / fname
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: missing {fname} (a Blitzer domain folder has positive.review and "
                                    "negative.review)")
        name = str(path)
        for start, rec in _iter_blitzer(path, report, strict):
            report.read[name] += 1
            text = clean_text(rec.get("review_text", ""))
            if not text:
                report.skip(name, start, "missing text", strict)
                continue
            report.kept[name] += 1
            res.add(label, (order, start, text, label, f"blitzer:{folder.name}/{fname}"))
    rows = res.rows()
    for fname, label in (("negative.review", 0), ("positive.review", 1)):
        report.sampled[str(folder / fname)] += sum(1 for r in rows if r[3] == label)
    return _frame(rows, domain)


# ---------------------------------------------------------------------------------- Hugging Face hub


def load_hf_amazon2023(category: str, *, domain: str | None = None, per_class: int | None = PER_CLASS_DEFAULT,
                       seed: int = 0, strict: bool = False, include_title: bool = False,
                       report: LoadReport | None = None, max_records: int | None = None,
                       progress: bool = True) -> pd.DataFrame:
    """Stream ``McAuley-Lab/Amazon-Reviews-2023`` (config ``raw_review_<category>``) from the Hugging Face
    hub with the ``datasets`` library (needs network; ``pip install datasets``) and sample it like
    ``load_mcauley``. ``max_records`` stops early (for a quick look)."""
    try:
        import datasets  # imported here only: most users never need it
    except ImportError:
        raise ImportError(
            "load_hf_amazon2023 needs the `datasets` library: `pip install datasets` (or `pip install ltnb[hf]`); "
            "or download the category's .jsonl.gz yourself and use load_mcauley(path)"
        ) from None
    report = LoadReport() if report is None else report
    name = f"hf:McAuley-Lab/Amazon-Reviews-2023/raw_review_{category}"
    stream = datasets.load_dataset("McAuley-Lab/Amazon-Reviews-2023", f"raw_review_{category}", split="full",
                                   streaming=True, trust_remote_code=True)
    res = _Reservoirs(per_class, seed)
    for i, rec in enumerate(tqdm(stream, desc=category, unit=" records", disable=not progress), start=1):
        if max_records is not None and i > max_records:
            break
        report.read[name] += 1
        text, rating = record_text_rating(dict(rec), include_title)
        label, err = label_of_rating(rating)
        if err == "neutral":
            report.neutral[name] += 1
            continue
        if err or text is None:
            report.skip(name, i, err or "missing text", strict)
            continue
        report.kept[name] += 1
        res.add(label, (i, 0, text, label, f"hf-amazon2023:{category}"))
    rows = res.rows()
    report.sampled[name] += len(rows)
    return _frame(rows, domain or category)


def load_files(files: dict[str, str | os.PathLike], *, kind: str = "amazon", per_class: int | None = PER_CLASS_DEFAULT,
               seed: int = 0, strict: bool = False, report: LoadReport | None = None,
               progress: bool = True) -> pd.DataFrame:
    """``{domain: path}`` -> one table; ``kind`` is ``"amazon"`` (McAuley files) or ``"blitzer"`` (folders)."""
    if kind not in ("amazon", "blitzer"):
        raise ValueError(f"kind={kind!r}: allowed values are 'amazon', 'blitzer'")
    report = LoadReport() if report is None else report
    frames = []
    for domain, p in files.items():
        if kind == "amazon":
            frames.append(load_mcauley(p, domain=domain, per_class=per_class, seed=seed, strict=strict,
                                       report=report, progress=progress))
        else:
            frames.append(load_blitzer(p, domain=domain, per_class=per_class, seed=seed, strict=strict, report=report))
    return pd.concat(frames, ignore_index=True) if frames else _frame([], "")
