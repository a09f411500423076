"""The shared subword vocabulary and the encoded token ids of every domain.

One SentencePiece BPE model is trained on the concatenated *training* splits of all domains
(the paper: 8K pieces, character coverage 0.9995, 100K training sentences). Every domain and split
is then encoded once, truncated to ``max_len`` subwords, and cached next to the model::

    <study>/data/vocab/<key>/spm.model, spm.vocab   the SentencePiece model
    <study>/data/vocab/<key>/tokens/<domain>.safetensors   TokenSplit per split
    <study>/data/vocab/<key>/info.json              settings, sizes, length statistics
    <study>/data/vocab/CURRENT.json                 which key the study uses now

``key`` hashes everything that produced the encodings (the corpus table's checksum and the
vocabulary settings), so a changed setting gets a new folder and later notebooks never re-tokenize.

Integrity: ``info.json`` records the SHA-256 of the corpus table the encodings were made from and of
every file in the folder. ``load_encoded`` refuses encodings whose corpus table has changed since (new
chains never train on stale encodings) or whose files changed (``ltnb.base.integrity.IntegrityError``, naming
the file, the expected and the found hash); ``build`` rebuilds a folder that fails these checks.

Id 0 is the padding piece (``<pad>``) and id 1 the unknown piece (``<unk>``); no BOS/EOS pieces
are added. The model's padding uses id 0.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from ltnb.base import integrity, paths
from ltnb.base._io import _UMASK, read_json, sha256_file, stable_hash, write_json
from ltnb.base.config import VocabSettings
from ltnb.text.tokens import SPLITS, TokenSplit, load_splits, save_splits

PAD_ID = 0
UNK_ID = 1


class VocabError(ValueError):
    """The vocabulary cannot be built with the settings asked for."""


def vocab_root(study_dir: str | os.PathLike) -> Path:
    return paths.data_dir(study_dir) / "vocab"


def _corpus_path(study_dir) -> Path:
    p = paths.data_dir(study_dir) / "corpus.parquet"
    if not p.exists():
        raise FileNotFoundError(f"no corpus table at {p}: run the data stage (notebooks/01_data.ipynb or `ltnb data build`) first")
    return p


def _train_spm(sentences: list[str], settings: VocabSettings, prefix: Path) -> None:
    import sentencepiece as spm

    # SentencePiece silently skips training sentences longer than max_sentence_length bytes (default
    # 4192); set it to the longest one, so every training sentence is used.
    longest = max((len(s.encode("utf-8")) for s in sentences), default=1)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_prefix=str(prefix),
            vocab_size=int(settings.vocab_size),
            character_coverage=float(settings.character_coverage),
            model_type=settings.model_type,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=-1,
            eos_id=-1,
            num_threads=1,  # deterministic, and the corpus is small
            max_sentence_length=max(longest, 4192),
            minloglevel=2,
        )
    except RuntimeError as e:
        m = re.search(r"<=\s*(\d+)", str(e))
        if "Vocabulary size is too high" in str(e) or m:
            largest = m.group(1) if m else "a smaller value"
            raise VocabError(
                f"vocab_size={settings.vocab_size} is too large for this corpus ({len(sentences)} training sentences): "
                f"SentencePiece can build at most {largest} pieces here. Pass vocab_size={largest} (or less) "
                f"to the data stage (parameter `vocab_size`)."
            ) from None
        raise VocabError(f"SentencePiece training failed: {e}") from None


def build(study_dir: str | os.PathLike, settings: VocabSettings = VocabSettings(), *, log=print) -> dict:
    """Train (or reuse) the shared vocabulary with ``settings`` and encode every domain; returns ``info``."""
    import sentencepiece as spm

    corpus_file = _corpus_path(study_dir)
    key = stable_hash({"corpus": integrity.file_sha256(corpus_file), **asdict(settings)})
    root = vocab_root(study_dir)
    folder = root / key
    if (folder / "info.json").exists():
        problem = _folder_problem(study_dir, folder)
        if problem is None:
            info = read_json(folder / "info.json")
            write_json(root / "CURRENT.json", {"key": key})
            log(f"vocabulary {key} already built ({info['vocab_size']} pieces); reusing {folder}")
            return info
        log(f"vocabulary {key} at {folder} fails its checks ({problem}); building it again")
        shutil.rmtree(folder)

    corpus = integrity.read_parquet(corpus_file)
    train_text = corpus.loc[corpus["split"] == "train", "text"].tolist()
    log(f"training SentencePiece {settings.model_type} ({settings.vocab_size} pieces, coverage "
        f"{settings.character_coverage}) on {len(train_text)} training sentences of {corpus['domain'].nunique()} domains")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        _train_spm(train_text, settings, tmp / "spm")
        sp = spm.SentencePieceProcessor(model_file=str(tmp / "spm.model"))
        lengths = {}
        truncated = 0
        for domain, rows in corpus.groupby("domain", sort=True):
            integrity.check_name(domain, "domain")  # it names a file below
            splits = {}
            for split in SPLITS:
                part = rows[rows["split"] == split]
                ids = sp.encode(part["text"].tolist())
                truncated += sum(len(s) > settings.max_len for s in ids)
                ids = [s[: settings.max_len] for s in ids]
                splits[split] = TokenSplit.from_lists(ids, part["label"].astype(int).tolist())
                lengths[f"{domain}/{split}"] = {
                    "n": len(ids),
                    "mean_len": float(sum(map(len, ids)) / max(1, len(ids))),
                    "max_len": max(map(len, ids), default=0),
                }
            save_splits(tmp / "tokens" / f"{domain}.safetensors", splits)
        info = {
            "key": key,
            "vocab_size": sp.get_piece_size(),
            "settings": asdict(settings),
            "corpus_sha256": integrity.file_sha256(corpus_file),
            "domains": sorted(corpus["domain"].unique().tolist()),
            "train_sentences": len(train_text),
            "truncated_sequences": truncated,
            "lengths": lengths,
            "files": {p.relative_to(tmp).as_posix(): sha256_file(p)
                      for p in sorted([tmp / "spm.model", *(tmp / "tokens").glob("*.safetensors")])},
        }
        write_json(tmp / "info.json", info)
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp made it private; the folder is published as is
        try:
            os.replace(tmp, folder)  # atomic publish of the whole folder
        except OSError:
            if not (folder / "info.json").exists():  # another process published it first otherwise
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    write_json(root / "CURRENT.json", {"key": key})
    log(f"vocabulary {key}: {info['vocab_size']} pieces; encoded {len(info['domains'])} domains into {folder}")
    return info


def current(study_dir: str | os.PathLike) -> Path:
    """The folder of the vocabulary the study uses now."""
    marker = vocab_root(study_dir) / "CURRENT.json"
    if not marker.exists():
        raise FileNotFoundError(
            f"no vocabulary in {vocab_root(study_dir)}: run the data stage (notebooks/01_data.ipynb) first")
    key = read_json(marker).get("key")
    problem = integrity.name_problem(key, "vocabulary key")
    if problem:
        raise ValueError(f"{marker}: {problem}; rerun the data stage")
    folder = vocab_root(study_dir) / key
    if not (folder / "info.json").exists():
        raise FileNotFoundError(f"{marker} points to {folder}, which is incomplete: rerun the data stage")
    return folder


def info(study_dir: str | os.PathLike) -> dict:
    return read_json(current(study_dir) / "info.json")


def data_key(study_dir: str | os.PathLike) -> str:
    """Hash of everything that produced the encodings (names the data in run settings)."""
    return current(study_dir).name


def processor(study_dir: str | os.PathLike):
    import sentencepiece as spm

    folder = current(study_dir)
    _check_recorded(folder, read_json(folder / "info.json"), "spm.model")
    return spm.SentencePieceProcessor(model_file=str(folder / "spm.model"))


def _check_recorded(folder: Path, meta: dict, rel: str) -> None:
    """Refuse a file of the folder whose SHA-256 is not the one ``info.json`` recorded."""
    files = meta.get("files")
    if not isinstance(files, dict) or rel not in files:
        raise integrity.IntegrityError(folder / rel, None, integrity.file_sha256(folder / rel), "file")
    integrity.check_file(folder / rel, files[rel], "file")


def _check_corpus(study_dir, folder: Path, meta: dict) -> None:
    """Refuse encodings made from another corpus table than the study's current one."""
    corpus_file = _corpus_path(study_dir)
    found = integrity.file_sha256(corpus_file)
    if found != meta.get("corpus_sha256"):
        raise integrity.IntegrityError(corpus_file, meta.get("corpus_sha256"), found, "corpus table",
                                       f"when the encodings in {folder} were made from it")


def _folder_problem(study_dir, folder: Path) -> str | None:
    """Why a built vocabulary folder cannot be reused as it is (None when it can)."""
    try:
        meta = read_json(folder / "info.json")
        _check_corpus(study_dir, folder, meta)
        for rel in ["spm.model", *(f"tokens/{d}.safetensors" for d in meta["domains"])]:
            _check_recorded(folder, meta, rel)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return str(e)
    return None


def load_encoded(study_dir: str | os.PathLike, domain: str) -> tuple[dict[str, TokenSplit], int]:
    """The encoded splits of one domain and the vocabulary size, refused (``IntegrityError``) when the
    corpus table changed since they were made or their file changed."""
    integrity.check_name(domain, "domain")
    folder = current(study_dir)
    meta = read_json(folder / "info.json")
    if domain not in meta["domains"]:
        raise ValueError(f"domain {domain!r} is not in this study's data; it has: {', '.join(meta['domains'])}")
    _check_corpus(study_dir, folder, meta)
    rel = f"tokens/{domain}.safetensors"
    _check_recorded(folder, meta, rel)
    return load_splits(folder / rel), int(meta["vocab_size"])
