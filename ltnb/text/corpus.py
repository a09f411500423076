"""The built-in five-domain sentiment corpus, obtained from two registry packages.

Why these sources: the paper's Amazon reviews live on servers our machines (and CI) cannot reach; the
only things reachable are package registries. Two real, human-labelled, published data sets travel
inside registry packages (see docs/data-sources.md):

- UCI "Sentiment Labelled Sentences" (Kotzias et al., KDD 2015; CC BY 4.0), inside the npm package
  ``sentiment@5.0.2`` as ``package/test/fixtures/{amazon,imdb,yelp}.json``.
- The VADER ground truth (Hutto & Gilbert, ICWSM 2014; MIT), inside the PyPI source archive of
  ``vaderSentiment==3.3.2`` as ``additional_resources/hutto_ICWSM_2014.tar.gz``, which in turn holds
  ``{amazonReviewSnippets,movieReviewSnippets,nytEditorialSnippets,tweets}_GroundTruth.txt``.

``fetch`` obtains the two archives with the registries' own clients (``npm pack``, ``pip download``),
verifies their sha256 (and that of the inner tarball) *before* extracting anything, extracts only the
seven named files into ``<cache>/builtin/`` and writes ``<cache>/builtin/MANIFEST.json`` last.
``load_builtin`` turns those files into one table ``text, label, domain, source``.

Domains (a domain is a genre of text; the source of each row is kept in ``source``):

=============  ==========================================================
products       UCI amazon (cell phones) + VADER amazon review snippets
movies         UCI imdb + VADER movie review snippets (Rotten Tomatoes)
restaurants    UCI yelp
tweets         VADER tweets
news           VADER New York Times editorial snippets
=============  ==========================================================

VADER labels are mean human valences in [-4, 4]; a snippet is positive (1) when its valence is
``>= pos_threshold``, negative (0) when ``<= neg_threshold``; the middle is dropped.
"""
from __future__ import annotations

import hashlib
import html
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from ltnb.base import paths
from ltnb.base._io import atomic_path, read_json, sha256_file, write_json
from ltnb.base.config import DataSettings

BUILTIN_DOMAINS = ("products", "movies", "restaurants", "tweets", "news")
#: domains of the built-in corpus a plan must name to get (``domains: null`` still means the five above, so a
#: plan that does not name them builds exactly the data it built before they existed); ``ltnb.text.airlines``
EXTRA_DOMAINS = ("airlines",)
ALL_DOMAINS = BUILTIN_DOMAINS + EXTRA_DOMAINS

MANIFEST_NAME = "MANIFEST.json"
DOWNLOAD_TIMEOUT_S = 600
# The seven files are 77 KB to 1.4 MB; one over this is not one of them (it is read at most this far, so a
# file replaced by something endless never loads whole), whatever MANIFEST.json says.
MAX_FILE_BYTES = 16 << 20


@dataclass(frozen=True)
class Member:
    """One file to take out of an archive: its exact member name and where it goes under builtin/."""

    name: str
    dest: str  # relative to <cache>/builtin


@dataclass(frozen=True)
class Archive:
    filename: str
    sha256: str
    registry: str  # for messages
    url: str  # where a user can get it by hand


SENTIMENT = Archive(
    filename="sentiment-5.0.2.tgz",
    sha256="89302eb03d2005d03b214fe65814bb48adb7d3c42c8ca80bdee6a3ecb7e4480f",
    registry="npm (`npm pack sentiment@5.0.2`)",
    url="https://registry.npmjs.org/sentiment/-/sentiment-5.0.2.tgz",
)
VADER = Archive(
    filename="vaderSentiment-3.3.2.tar.gz",
    sha256="5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
    registry="PyPI (`pip download --no-deps --no-binary :all: vaderSentiment==3.3.2`)",
    url="https://pypi.org/project/vaderSentiment/3.3.2/#files",
)
VADER_INNER = Archive(
    filename="hutto_ICWSM_2014.tar.gz",
    sha256="d5bb07d87474b3eb8d30b4deccbc23f19d742a6c5718fbacc65485b70b95c5fa",
    registry="inside vaderSentiment-3.3.2.tar.gz",
    url="",
)
VADER_INNER_MEMBER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"

UCI_MEMBERS = tuple(
    Member(f"package/test/fixtures/{n}.json", f"uci/{n}.json") for n in ("amazon", "imdb", "yelp")
)
VADER_MEMBERS = tuple(
    Member(f"hutto_ICWSM_2014/{n}_GroundTruth.txt", f"vader/{n}_GroundTruth.txt")
    for n in ("amazonReviewSnippets", "movieReviewSnippets", "nytEditorialSnippets", "tweets")
)

# (domain, source, kind, file under builtin/)
SOURCES = (
    ("products", "uci-amazon", "uci", "uci/amazon.json"),
    ("products", "vader-amazon", "vader", "vader/amazonReviewSnippets_GroundTruth.txt"),
    ("movies", "uci-imdb", "uci", "uci/imdb.json"),
    ("movies", "vader-movies", "vader", "vader/movieReviewSnippets_GroundTruth.txt"),
    ("restaurants", "uci-yelp", "uci", "uci/yelp.json"),
    ("tweets", "vader-tweets", "vader", "vader/tweets_GroundTruth.txt"),
    ("news", "vader-nyt", "vader", "vader/nytEditorialSnippets_GroundTruth.txt"),
)

CITATIONS = (
    "Kotzias, Denil, de Freitas, Smyth. From Group to Individual Labels using Deep Features. KDD 2015 "
    "(UCI Sentiment Labelled Sentences, CC BY 4.0).",
    "Hutto, Gilbert. VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social Media Text. "
    "ICWSM 2014 (ground-truth data, MIT).",
    "Hu, Liu. Mining and Summarizing Customer Reviews. KDD 2004 (VADER amazon snippets).",
    "Pang, Lee. Seeing stars: Exploiting class relationships for sentiment categorization. ACL 2005 "
    "(VADER movie snippets).",
)


class CorpusError(RuntimeError):
    """The built-in corpus could not be obtained or read; the message says what to do."""


# --------------------------------------------------------------------------------------------- fetch


def fetch(cache_dir: str | os.PathLike | None = None, *, force: bool = False,
          log: Callable[[str], None] = print) -> dict:
    """Obtain, verify and extract the built-in corpus into ``<cache>/builtin/``; idempotent.

    Archives are kept in ``<cache>/downloads/``. An archive already there (for instance one a user
    placed by hand on an offline machine) is used instead of downloading it; either way its sha256 is
    checked before anything is extracted, and a mismatching archive is deleted and refused.
    When ``<cache>/builtin/MANIFEST.json`` exists and every file matches it, nothing is run
    (``force=True`` re-verifies the archives and re-extracts; delete ``downloads/`` to re-download).

    Returns ``{"status": "fetched" | "already fetched", "cache_dir", "builtin_dir", "downloaded",
    "reused", "files"}``.
    """
    root = paths.cache_dir(cache_dir)
    downloads = root / "downloads"
    builtin = root / "builtin"
    if not force and _manifest_ok(builtin):
        log(f"built-in corpus already fetched at {builtin}")
        return {"status": "already fetched", "cache_dir": str(root), "builtin_dir": str(builtin),
                "downloaded": [], "reused": [], "files": read_json(builtin / MANIFEST_NAME)["files"]}

    downloads.mkdir(parents=True, exist_ok=True)
    downloaded, reused = [], []
    archives = {}
    for archive, getter in ((SENTIMENT, _npm_pack), (VADER, _pip_download)):
        path = downloads / archive.filename
        if path.exists():
            reused.append(archive.filename)
            log(f"using {path} (already in downloads)")
        else:
            log(f"downloading {archive.filename} from {archive.registry} ...")
            getter(downloads, path)
            downloaded.append(archive.filename)
        _verify(path, archive, remove=True, hint=_by_hand_hint(archive, path))
        archives[archive.filename] = path

    # From here on the manifest is absent until every file is written, so a half-done fetch is never "ok".
    (builtin / MANIFEST_NAME).unlink(missing_ok=True)
    files: dict[str, str] = {}
    # UCI json files straight out of the npm archive.
    with _open_tar(archives[SENTIMENT.filename]) as tar:
        for m in UCI_MEMBERS:
            files[m.dest] = _write_member(tar, m, builtin, archives[SENTIMENT.filename])
    # VADER: the inner tarball is read into memory (about 1.4 MB), verified, then opened.
    with _open_tar(archives[VADER.filename]) as tar:
        inner = _read_member(tar, VADER_INNER_MEMBER, archives[VADER.filename])
    actual = _sha256_bytes(inner)
    if actual != VADER_INNER.sha256:
        raise CorpusError(
            f"{VADER_INNER_MEMBER} inside {archives[VADER.filename]} has sha256 {actual}, expected "
            f"{VADER_INNER.sha256}; nothing from it was extracted. The outer archive passed its checksum, "
            "so this should not happen: please report it."
        )
    with tarfile.open(fileobj=io.BytesIO(inner), mode="r:gz") as tar:
        for m in VADER_MEMBERS:
            files[m.dest] = _write_member(tar, m, builtin, f"{archives[VADER.filename]}!{VADER_INNER_MEMBER}")

    write_json(builtin / MANIFEST_NAME, {
        "files": files,
        "archives": {SENTIMENT.filename: SENTIMENT.sha256, VADER.filename: VADER.sha256,
                     VADER_INNER_MEMBER: VADER_INNER.sha256},
        "citations": list(CITATIONS),
    })
    log(f"built-in corpus fetched into {builtin} ({len(files)} files)")
    return {"status": "fetched", "cache_dir": str(root), "builtin_dir": str(builtin),
            "downloaded": downloaded, "reused": reused, "files": files}


def _by_hand_hint(archive: Archive, path: Path) -> str:
    return (f"download {archive.filename} yourself ({archive.url}) and place it at {path}, "
            "then rerun `ltnb data fetch --force`")


def _manifest_ok(builtin: Path) -> bool:
    manifest = builtin / MANIFEST_NAME
    if not manifest.exists():
        return False
    try:
        files = read_json(manifest)["files"]
    except (ValueError, KeyError, TypeError):
        return False
    expected = {m.dest for m in UCI_MEMBERS + VADER_MEMBERS}
    if set(files) != expected:
        return False
    return all((builtin / rel).is_file() and sha256_file(builtin / rel) == digest for rel, digest in files.items())


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _verify(path: Path, archive: Archive, *, remove: bool, hint: str) -> None:
    actual = sha256_file(path)
    if actual != archive.sha256:
        if remove:
            path.unlink()
        raise CorpusError(
            f"{archive.filename}: sha256 mismatch: expected {archive.sha256}, got {actual} (file {path}). "
            f"The archive was refused{' and removed' if remove else ''}; nothing was extracted. "
            f"Rerun `ltnb data fetch --force` to download it again, or {hint}."
        )


def _run(cmd: list[str], cwd: Path, what: str, hint: str) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise CorpusError(f"{what}: `{' '.join(cmd)}` took longer than {DOWNLOAD_TIMEOUT_S} s; {hint}.") from None
    except OSError as e:
        raise CorpusError(f"{what}: could not run `{' '.join(cmd)}` ({e}); {hint}.") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-15:])
        raise CorpusError(
            f"{what}: `{' '.join(cmd)}` failed with exit status {proc.returncode}:\n{tail}\n"
            f"Check the network or registry access, or {hint}."
        )


def _move_single(tmp: Path, filename: str, dest: Path, what: str, hint: str) -> None:
    got = tmp / filename
    if not got.is_file():
        found = sorted(p.name for p in tmp.iterdir())
        raise CorpusError(f"{what}: the command succeeded but did not produce {filename} (found: {found}); {hint}.")
    os.replace(got, dest)


def _npm_pack(downloads: Path, dest: Path) -> None:
    hint = _by_hand_hint(SENTIMENT, dest)
    npm = shutil.which("npm")
    if npm is None:
        raise CorpusError(
            "npm not found on PATH: it is needed to obtain sentiment-5.0.2.tgz from the npm registry. "
            f"Install Node.js and npm (e.g. `apt-get install npm`), or {hint}."
        )
    # Download into a private temporary folder so a half-written file never looks like a user-supplied one.
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".npm-") as tmp:
        _run([npm, "pack", "sentiment@5.0.2", "--pack-destination", tmp], Path(tmp),
             "downloading sentiment-5.0.2.tgz", hint)
        _move_single(Path(tmp), SENTIMENT.filename, dest, "npm pack sentiment@5.0.2", hint)


def _pip_download(downloads: Path, dest: Path) -> None:
    hint = _by_hand_hint(VADER, dest)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".pip-") as tmp:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
              "vaderSentiment==3.3.2", "-d", tmp], Path(tmp), "downloading vaderSentiment-3.3.2.tar.gz", hint)
        _move_single(Path(tmp), VADER.filename, dest, "pip download vaderSentiment==3.3.2", hint)


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:gz")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CorpusError(f"{path}: not a readable .tar.gz ({e}); delete it and rerun `ltnb data fetch --force`.") from None


def _read_member(tar: tarfile.TarFile, name: str, where) -> bytes:
    """Read one regular file by its exact member name (never by a name taken from the archive)."""
    try:
        info = tar.getmember(name)
    except KeyError:
        raise CorpusError(f"{where}: has no member {name}") from None
    if not info.isfile():
        raise CorpusError(f"{where}: member {name} is not a regular file")
    f = tar.extractfile(info)
    if f is None:
        raise CorpusError(f"{where}: member {name} cannot be read")
    return f.read()


def _write_member(tar: tarfile.TarFile, member: Member, builtin: Path, where) -> str:
    data = _read_member(tar, member.name, where)
    dest = builtin / member.dest  # destination chosen by us, so no path from the archive is ever used
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return _sha256_bytes(data)


# ---------------------------------------------------------------------------------------------- load


def clean_text(text: str) -> str:
    """The only clean-up applied: HTML entities decoded, CRLF / all whitespace runs collapsed to one
    space, ends stripped. Case, punctuation and emoticons are kept."""
    return " ".join(html.unescape(text).split())


def _read_bounded(path: Path) -> bytes:
    """The bytes of a built-in corpus file, refused past ``MAX_FILE_BYTES`` (read no further)."""
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise CorpusError(f"{path}: over {MAX_FILE_BYTES} bytes, far more than a built-in corpus file (at most "
                          "1.4 MB); rerun `ltnb data fetch --force`.")
    return data


def read_uci_json(path: str | os.PathLike) -> list[tuple[str, int]]:
    """``[(text, label)]`` from a UCI json file (a list of ``{"text", "class"}``).

    Records whose text is empty after clean-up or whose class is not 0/1 (the files end with one
    ``{"text": "", "class": null}``) are dropped.
    """
    path = Path(path)
    try:
        records = json.loads(_read_bounded(path).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorpusError(f"{path}: not valid UTF-8 JSON ({e}); rerun `ltnb data fetch --force`.") from None
    if not isinstance(records, list):
        raise CorpusError(f"{path}: expected a JSON list of {{text, class}} records")
    out = []
    for rec in records:
        if not isinstance(rec, dict):
            continue
        text = clean_text(str(rec.get("text") or ""))
        label = rec.get("class")
        if text and label in (0, 1) and not isinstance(label, bool):
            out.append((text, int(label)))
    return out


def read_vader_txt(path: str | os.PathLike) -> list[tuple[str, float]]:
    """``[(text, valence)]`` from a VADER ``*_GroundTruth.txt`` (tab-separated id, valence, text).

    Blank lines and texts empty after clean-up are dropped; a line without three fields or with a
    valence that is not a number is an error naming the file and line.
    """
    path = Path(path)
    try:
        raw = _read_bounded(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: not valid UTF-8 ({e}); rerun `ltnb data fetch --force`.") from None
    out = []
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise CorpusError(f"{path}:{lineno}: expected 3 tab-separated fields (id, valence, text), got {len(parts)}")
        try:
            valence = float(parts[1])
        except ValueError:
            raise CorpusError(f"{path}:{lineno}: valence {parts[1]!r} is not a number") from None
        text = clean_text(parts[2])
        if text:
            out.append((text, valence))
    return out


def check_thresholds(pos_threshold: float, neg_threshold: float) -> None:
    """The valence thresholds, by ``DataSettings``' rule (each a number in VADER's range [-4, 4],
    ``neg_threshold`` below ``pos_threshold``); a ``ValueError`` names the one that breaks it."""
    DataSettings(pos_threshold=pos_threshold, neg_threshold=neg_threshold)


def binarize_valence(rows: list[tuple[str, float]], pos_threshold: float, neg_threshold: float) -> list[tuple[str, int]]:
    return [(t, 1 if v >= pos_threshold else 0) for t, v in rows if v >= pos_threshold or v <= neg_threshold]


def builtin_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    return paths.cache_dir(cache_dir) / "builtin"


def load_builtin(cache_dir: str | os.PathLike | None = None, *, pos_threshold: float = 1.0,
                 neg_threshold: float = -1.0, domains=None) -> pd.DataFrame:
    """The built-in corpus as one table ``text, label, domain, source`` (labels 0 = negative, 1 = positive).

    Rows come in file order, domains in ``ALL_DOMAINS`` order. ``domains``: those to load (default the
    five of ``BUILTIN_DOMAINS``; ``airlines`` only when named). Nothing is balanced or de-duplicated here;
    ``ltnb.text.data.sample_and_split`` does that.
    """
    return _load_builtin(cache_dir, pos_threshold=pos_threshold, neg_threshold=neg_threshold, domains=domains)[0]


def _load_builtin(cache_dir=None, *, pos_threshold=1.0, neg_threshold=-1.0,
                  domains=None) -> tuple[pd.DataFrame, dict]:
    """``load_builtin`` plus a report ``{source: {"read", "kept", "dropped_middle"}}`` (for airlines the
    report of ``ltnb.text.airlines.read_airlines_csv``)."""
    check_thresholds(pos_threshold, neg_threshold)
    wanted = list(BUILTIN_DOMAINS) if domains is None else [str(d) for d in domains]
    unknown = [d for d in wanted if d not in ALL_DOMAINS]
    if unknown:
        raise ValueError(f"unknown built-in domain(s) {unknown}; allowed: {', '.join(ALL_DOMAINS)}")
    frames, report = [], {}
    if any(d in BUILTIN_DOMAINS for d in wanted):
        frames.append(_load_five(cache_dir, pos_threshold, neg_threshold, report))
    if "airlines" in wanted:
        from ltnb.text import airlines

        rows, report[airlines.SOURCE] = airlines.load_airlines(cache_dir)
        frames.append(pd.DataFrame({"text": [t for t, _ in rows],
                                    "label": pd.array([y for _, y in rows], dtype="int64"),
                                    "domain": airlines.DOMAIN, "source": airlines.SOURCE}))
    df = pd.concat(frames, ignore_index=True)
    df = df[df["domain"].isin(wanted)].reset_index(drop=True)
    df["label"] = df["label"].astype("int64")
    return df, report


def _load_five(cache_dir, pos_threshold, neg_threshold, report) -> pd.DataFrame:
    builtin = builtin_dir(cache_dir)
    if not (builtin / MANIFEST_NAME).exists():
        raise CorpusError(
            f"the built-in corpus is not fetched (no {builtin / MANIFEST_NAME}): run `ltnb data fetch` "
            "(or `ltnb.text.corpus.fetch()`) first"
        )
    if not _manifest_ok(builtin):
        raise CorpusError(
            f"the built-in corpus at {builtin} does not match its MANIFEST.json (files missing or changed): "
            "run `ltnb data fetch --force`"
        )
    frames = []
    for domain, source, kind, rel in SOURCES:
        if kind == "uci":
            rows = read_uci_json(builtin / rel)
            report[source] = {"read": len(rows), "kept": len(rows), "dropped_middle": 0}
        else:
            scored = read_vader_txt(builtin / rel)
            rows = binarize_valence(scored, pos_threshold, neg_threshold)
            report[source] = {"read": len(scored), "kept": len(rows), "dropped_middle": len(scored) - len(rows)}
        frames.append(pd.DataFrame({
            "text": [t for t, _ in rows],
            "label": pd.array([y for _, y in rows], dtype="int64"),
            "domain": domain,
            "source": source,
        }))
    return pd.concat(frames, ignore_index=True)
