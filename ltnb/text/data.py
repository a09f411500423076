"""The data stage's table: load a corpus, de-duplicate, balance, split 2:1:1, write ``study/data/``.

Choices (the paper gives only "20K / 10K / 10K per category, balanced"):

- **De-duplication** per ``(domain, normalized text)`` before anything is sampled, where the
  normalized text is casefolded with runs of whitespace collapsed (``normalize_text``), so a
  duplicate, even one differing in case or spacing, can never sit in two splits. A text that occurs
  with one label is kept once (its first row, so its first source and spelling). A text that occurs
  with both labels keeps its majority label; on a tie it is dropped. A text that occurs in more than
  one domain is dropped from all of them, so no test text is in another domain's training or
  validation split, nor in the vocabulary's training text. The counts removed are reported in
  ``summary.json``, and ``leaks`` counts what would still leak (0 by construction).
- **Balance**: every domain gives the same number of texts, ``per_domain``, half of each class.
  The default is the largest even number every domain can give (after de-duplication).
- **Split** within each class: validation and test each get ``floor(n * 1/4)`` of the ``n`` texts of a
  class, train gets the rest (so train absorbs the rounding, at most 2 extra per class for 2:1:1).
  Both classes have the same ``n``, so every split is exactly balanced and the same size in every domain.
- **Surplus to test** (``test_surplus``, on in the data stage): a domain that has more than ``n`` texts
  of each class gives its surplus, ``min(texts of class 0, texts of class 1) - n`` per class, to its own
  test split. Training and validation stay the same size in every domain (the smallest domain sets
  them, and they are exactly the texts they would be without the surplus); the test split stays
  balanced, de-duplicated and disjoint from every training and validation split, and a larger one gives
  tighter accuracies (each result row carries its own ``test_n``).
- **Sizes per split** (``DataSettings.sizes``, instead of ``per_domain``): the plan gives each split's
  size, ``{train: N or {domain: N}, validation: N, test: N}`` texts per domain, half of each class, so
  domains may train on unequal sizes. Within each (domain, class) the same seeded permutation is cut
  validation first, then test, then train: a domain's validation and test texts are the same whatever
  its training size, and a smaller training split is the first part of a larger one. No surplus is
  added (``test_surplus`` does not apply: the test size is given). De-duplication, the cross-domain
  rule and the leak count are the same as above.
- **Determinism**: within each (domain, class) the texts are sorted, then permuted by a generator
  seeded with ``(seed, hash(domain), class)``; the result depends only on the seed and the set of texts,
  not on the input row order (the domains present matter only through texts they share).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ltnb.base import integrity, paths
from ltnb.base._io import read_json, write_json, write_parquet
from ltnb.base.config import DataSettings

SPLITS = ("train", "validation", "test")
COLUMNS = ["text", "label", "domain", "source", "split"]
PAPER_PER_DOMAIN = 40_000  # 20K train + 10K validation + 10K test
LABEL_NAMES = {0: "negative", 1: "positive"}


class NotEnoughData(ValueError):
    """A domain cannot give the requested number of texts of a class."""


class SettingsMismatch(RuntimeError):
    """The study already holds a corpus built with different settings."""


# ------------------------------------------------------------------------------------- dedup + split


def normalize_text(text: str) -> str:
    """The form texts are compared in: casefolded, whitespace runs collapsed to one space, stripped."""
    return " ".join(str(text).casefold().split())


def deduplicate(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """One row per ``(domain, normalized text)``, and no normalized text in two domains; see the module
    docstring for the rule. Returns the table and ``{domain: {"duplicates_removed",
    "conflicts_resolved", "conflicts_dropped", "cross_domain_dropped", ...}}``."""
    df = df.reset_index(drop=True)
    df = df.assign(_norm=df["text"].map(normalize_text))
    g = df.groupby(["domain", "_norm"], sort=False)["label"]
    n = g.transform("size")
    pos = g.transform("sum")
    neg = n - pos
    majority = np.where(pos > neg, 1, 0)
    tie = (pos == neg) & (n > 1)
    conflict = (pos > 0) & (neg > 0)
    first = ~df.duplicated(["domain", "_norm"], keep="first")
    out = df[first & ~tie].copy()
    out["label"] = majority[(first & ~tie).to_numpy()].astype("int64")
    shared = out.groupby("_norm")["domain"].transform("nunique") > 1
    cross = out.loc[shared, "domain"].value_counts()
    out = out[~shared].drop(columns="_norm")
    stats = {}
    for d in pd.unique(df["domain"]):
        m = (df["domain"] == d).to_numpy()
        stats[str(d)] = {
            "rows_in": int(m.sum()),
            "duplicates_removed": int((m & ~first.to_numpy()).sum()),
            "conflicts_resolved": int((m & first.to_numpy() & conflict.to_numpy() & ~tie.to_numpy()).sum()),
            "conflicts_dropped": int((m & first.to_numpy() & tie.to_numpy()).sum()),
        }
        stats[str(d)]["cross_domain_dropped"] = int(cross.get(d, 0))
        stats[str(d)]["rows_out"] = (stats[str(d)]["rows_in"] - stats[str(d)]["duplicates_removed"]
                                     - stats[str(d)]["conflicts_dropped"] - stats[str(d)]["cross_domain_dropped"])
    return out.reset_index(drop=True), stats


def leaks(table: pd.DataFrame) -> dict:
    """Test texts that also occur (normalized) in a training or validation split of any domain, or in
    the vocabulary's training text (every domain's training split): ``{"test_texts", "in_train_or_validation",
    "in_vocab_training_text", "examples"}``. The data stage keeps these at 0."""
    norm = table["text"].map(normalize_text)
    test = set(norm[table["split"] == "test"])
    seen = set(norm[table["split"].isin(["train", "validation"])])
    vocab_text = set(norm[table["split"] == "train"])
    found = sorted(test & seen)
    return {"test_texts": int((table["split"] == "test").sum()), "in_train_or_validation": len(found),
            "in_vocab_training_text": len(test & vocab_text), "examples": found[:5]}


def available(df: pd.DataFrame, domains: Sequence[str] | None = None) -> pd.DataFrame:
    """Texts per domain and class (rows: ``domains``, default those of ``df`` in order of appearance;
    columns 0, 1)."""
    domains = list(pd.unique(df["domain"])) if domains is None else list(domains)
    return (df.groupby(["domain", "label"]).size().unstack("label")
            .reindex(index=domains, columns=[0, 1]).fillna(0).astype(int))


def largest_per_domain(df: pd.DataFrame) -> int:
    """The largest even ``per_domain`` every domain of ``df`` (already de-duplicated) can give."""
    avail = available(df)
    return 2 * int(avail.to_numpy().min()) if len(avail) else 0


def split_sizes(n: int, ratios: Sequence[int] = (2, 1, 1)) -> dict[str, int]:
    """Sizes of train / validation / test for ``n`` texts of one class: validation and test get
    ``floor(n * r / sum)``, train gets the rest."""
    total = sum(ratios)
    val = n * ratios[1] // total
    test = n * ratios[2] // total
    return {"train": n - val - test, "validation": val, "test": test}


def _check_ratios(ratios) -> tuple[int, int, int]:
    if (len(ratios) != 3 or any(not isinstance(r, (int, np.integer)) or isinstance(r, bool) or r < 1 for r in ratios)):
        raise ValueError(f"ratios={ratios!r}: must be three positive ints (train, validation, test), e.g. (2, 1, 1)")
    return tuple(int(r) for r in ratios)


def _domain_seed(domain: str) -> int:
    return int(hashlib.sha256(domain.encode()).hexdigest()[:8], 16)


def sample_and_split(df: pd.DataFrame, *, per_domain: int | None = None, seed: int = 0,
                     ratios: Sequence[int] = (2, 1, 1), test_surplus: bool = False) -> pd.DataFrame:
    """De-duplicate, take ``per_domain`` texts per domain (half per class) and add a ``split`` column;
    ``test_surplus``: each domain's balanced surplus beyond ``per_domain`` joins its test split.

    Raises ``NotEnoughData`` naming the domain, class and counts when a domain is short.
    The de-duplication counts are in ``result.attrs["dedup"]``.
    """
    out, stats = _sample_and_split(df, per_domain=per_domain, seed=seed, ratios=ratios, test_surplus=test_surplus)
    out.attrs["dedup"] = stats
    return out


def sample_sized(df: pd.DataFrame, sizes: dict, *, seed: int = 0) -> pd.DataFrame:
    """De-duplicate and split with the size of each split given (``DataSettings.sizes``): ``sizes =
    {"train": N or {domain: N}, "validation": N, "test": N}``, texts per domain, half of each class.

    Within each (domain, class) the texts are permuted as ``sample_and_split`` permutes them; the first
    ``validation / 2`` are validation, the next ``test / 2`` test, the next ``train / 2`` train. So the
    validation and test texts of a domain do not depend on its training size, and a smaller training
    split is the first part of a larger one (same seed). Raises ``NotEnoughData`` naming the domain,
    class and counts when a domain is short. The de-duplication counts are in ``result.attrs["dedup"]``.
    """
    out, stats = _sample_and_split(df, seed=seed, sizes=sizes)
    out.attrs["dedup"] = stats
    return out


def resolve_sizes(sizes: dict, domains) -> dict:
    """``sizes`` with ``train`` spelled out per domain ``{domain: N}`` (every domain named, no other)."""
    train = sizes["train"]
    if isinstance(train, dict):
        missing = [d for d in domains if d not in train]
        extra = [d for d in train if d not in domains]
        if missing or extra:
            raise ValueError(f"sizes.train: {'no size for domain(s) ' + str(missing) if missing else ''}"
                             f"{'; ' if missing and extra else ''}{'domain(s) ' + str(extra) + ' not in the data' if extra else ''}"
                             f" (the domains: {', '.join(map(str, domains))})")
        train = {str(d): int(train[d]) for d in domains}
    else:
        train = {str(d): int(train) for d in domains}
    return {"train": train, "validation": int(sizes["validation"]), "test": int(sizes["test"])}


def _sample_and_split(df, *, per_domain=None, seed=0, ratios=(2, 1, 1),
                      test_surplus=False, sizes=None) -> tuple[pd.DataFrame, dict]:
    ratios = _check_ratios(ratios)
    missing = [c for c in ("text", "label", "domain", "source") if c not in df.columns]
    if missing:
        raise ValueError(f"sample_and_split: table lacks column(s) {missing}; expected text, label, domain, source")
    bad = sorted(set(pd.unique(df["label"])) - {0, 1})
    if bad:
        raise ValueError(f"sample_and_split: labels must be 0 or 1, found {bad[:5]}")
    if len(df) == 0:
        raise NotEnoughData("sample_and_split: the table is empty")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"seed={seed!r}: must be an int")
    dedup, stats = deduplicate(df[["text", "label", "domain", "source"]])
    avail = available(dedup, pd.unique(df["domain"]))
    if sizes is not None:
        return _split_sized(dedup, stats, avail, resolve_sizes(sizes, list(avail.index)), int(seed))
    largest = 2 * int(avail.to_numpy().min())
    min_per_class = sum(ratios)  # so that every split gets at least one text of each class
    if per_domain is None:
        per_domain = largest
        if per_domain // 2 < min_per_class:
            d, y = _argmin(avail)
            raise NotEnoughData(
                f"domain {d!r} has only {avail.loc[d, y]} {LABEL_NAMES[y]} (label {y}) texts after de-duplication; "
                f"at least {min_per_class} per class are needed for non-empty splits"
            )
    if not isinstance(per_domain, (int, np.integer)) or isinstance(per_domain, bool) or per_domain < 2 * min_per_class \
            or per_domain % 2:
        raise ValueError(f"per_domain={per_domain!r}: must be an even int >= {2 * min_per_class} "
                         f"(half of it per class; largest possible here: {largest})")
    n = int(per_domain) // 2
    for d in avail.index:
        for y in (0, 1):
            if avail.loc[d, y] < n:
                raise NotEnoughData(
                    f"domain {d!r} has only {avail.loc[d, y]} {LABEL_NAMES[y]} (label {y}) texts after de-duplication "
                    f"({LABEL_NAMES[1 - y]}: {avail.loc[d, 1 - y]}), but per_domain={per_domain} needs {n} per class. "
                    f"The largest per_domain every domain can give is {largest}."
                )
    sizes = split_sizes(n, ratios)
    split_col = np.array([s for s in SPLITS for _ in range(sizes[s])], dtype=object)
    order = {s: i for i, s in enumerate(SPLITS)}
    parts = []
    for d in avail.index:
        per_class = []
        # the balanced surplus of this domain: the same number of extra texts of each class
        extra = int(min(avail.loc[d, 0], avail.loc[d, 1])) - n if test_surplus else 0
        for y in (0, 1):
            sub = dedup[(dedup["domain"] == d) & (dedup["label"] == y)].sort_values("text", kind="stable")
            rng = np.random.default_rng([int(seed), _domain_seed(str(d)), y])
            # the first n are exactly the texts taken without a surplus; the surplus follows, all test
            take = sub.iloc[rng.permutation(len(sub))[:n + extra]].copy()
            take["split"] = np.concatenate([split_col, np.array(["test"] * extra, dtype=object)])
            per_class.append(take)
        # Interleave the two classes in a seeded random order within each split, so the table reads naturally.
        dom = pd.concat(per_class, ignore_index=True)
        shuffle = np.random.default_rng([int(seed), _domain_seed(str(d)), 2]).permutation(len(dom))
        dom = dom.iloc[shuffle]
        dom = dom.iloc[np.argsort(dom["split"].map(order).to_numpy(), kind="stable")]
        parts.append(dom)
    out = pd.concat(parts, ignore_index=True)
    out["label"] = out["label"].astype("int64")
    for d in stats:
        stats[d]["available"] = {LABEL_NAMES[y]: int(avail.loc[d, y]) for y in (0, 1)} if d in avail.index else {}
    out = out[COLUMNS].copy()
    out.attrs["per_domain"] = 2 * n
    return out, stats


def _split_sized(dedup, stats, avail, sizes: dict, seed: int) -> tuple[pd.DataFrame, dict]:
    bad = {k: v for k, v in [*((f"train.{d}", n) for d, n in sizes["train"].items()),
                             ("validation", sizes["validation"]), ("test", sizes["test"])] if v < 2 or v % 2}
    if bad:
        raise ValueError(f"sizes: {bad}: each size must be an even int >= 2 (half of it per class)")
    v, t = sizes["validation"] // 2, sizes["test"] // 2
    order = {s: i for i, s in enumerate(SPLITS)}
    parts = []
    for d in avail.index:
        n_train = sizes["train"][str(d)] // 2
        need = v + t + n_train
        for y in (0, 1):
            if avail.loc[d, y] < need:
                raise NotEnoughData(
                    f"domain {d!r} has only {avail.loc[d, y]} {LABEL_NAMES[y]} (label {y}) texts after de-duplication "
                    f"({LABEL_NAMES[1 - y]}: {avail.loc[d, 1 - y]}), but sizes needs {need} per class (train {n_train}, "
                    f"validation {v}, test {t}). The most it can give per class: {int(avail.loc[d].min())}.")
        split_col = np.array(["validation"] * v + ["test"] * t + ["train"] * n_train, dtype=object)
        per_class = []
        for y in (0, 1):
            sub = dedup[(dedup["domain"] == d) & (dedup["label"] == y)].sort_values("text", kind="stable")
            rng = np.random.default_rng([seed, _domain_seed(str(d)), y])
            take = sub.iloc[rng.permutation(len(sub))[:need]].copy()
            take["split"] = split_col
            per_class.append(take)
        dom = pd.concat(per_class, ignore_index=True)
        dom = dom.iloc[np.random.default_rng([seed, _domain_seed(str(d)), 2]).permutation(len(dom))]
        parts.append(dom.iloc[np.argsort(dom["split"].map(order).to_numpy(), kind="stable")])
    out = pd.concat(parts, ignore_index=True)
    out["label"] = out["label"].astype("int64")
    for d in stats:
        stats[d]["available"] = {LABEL_NAMES[y]: int(avail.loc[d, y]) for y in (0, 1)} if d in avail.index else {}
    out = out[COLUMNS].copy()
    out.attrs["sizes"] = sizes
    return out, stats


def _argmin(avail: pd.DataFrame) -> tuple[str, int]:
    arr = avail.to_numpy()
    i, j = np.unravel_index(arr.argmin(), arr.shape)
    return avail.index[i], int(avail.columns[j])


def counts(df: pd.DataFrame) -> pd.DataFrame:
    """Texts per (domain, split) and class: columns ``negative, positive, total`` (for display)."""
    domains = list(pd.unique(df["domain"]))
    idx = pd.MultiIndex.from_product([domains, list(SPLITS)], names=["domain", "split"])
    c = (df.groupby(["domain", "split", "label"]).size().unstack("label")
         .reindex(index=idx, columns=[0, 1]).fillna(0).astype(int))
    c.columns = [LABEL_NAMES[y] for y in c.columns]
    c["total"] = c["negative"] + c["positive"]
    return c


# ------------------------------------------------------------------------------------------ the stage


def corpus_path(study_dir) -> Path:
    return paths.data_dir(study_dir) / "corpus.parquet"


def load_corpus(study_dir: str | os.PathLike) -> pd.DataFrame:
    """The study's corpus table ``text, label, domain, source, split``."""
    path = corpus_path(study_dir)
    if not path.exists():
        raise FileNotFoundError(
            f"no corpus at {path}: run the data stage first (notebooks/01_data.ipynb, or ltnb.text.data.build({str(study_dir)!r}))"
        )
    df = integrity.read_parquet(path)  # refused if changed since the data stage wrote it
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: lacks column(s) {missing}; rebuild the data stage")
    return df


def _resolve_domains(settings: DataSettings) -> tuple[list[str], dict | None]:
    """The domains to keep and, for a file corpus, ``{domain: resolved path}``. What a single setting
    allows (names, no repeats, the corpus) ``DataSettings`` has checked; here only what the corpus holds."""
    from ltnb.text.corpus import ALL_DOMAINS, BUILTIN_DOMAINS

    if settings.corpus == "builtin":
        allowed = list(ALL_DOMAINS)  # airlines only when named: null means the five of BUILTIN_DOMAINS
        files = None
    else:
        files = {str(d): str(Path(p).expanduser().resolve()) for d, p in settings.amazon_files.items()}
        allowed = list(files)
    if settings.domains is None:
        return (list(BUILTIN_DOMAINS) if files is None else allowed), files
    domains = [str(d) for d in settings.domains]
    unknown = [d for d in domains if d not in allowed]
    if unknown:
        raise ValueError(f"unknown domain(s) {unknown} for corpus={settings.corpus!r}; allowed: {', '.join(allowed)}")
    return domains, ({d: files[d] for d in domains} if files is not None else None)


def _check_settings(settings_path: Path, corpus_file: Path, settings: dict, keys=None) -> None:
    if not (settings_path.exists() and corpus_file.exists()):
        return
    old = read_json(settings_path)
    keys = keys or sorted(set(old) | set(settings))
    diff = [k for k in keys if old.get(k) != settings.get(k)]
    if diff:
        details = "; ".join(f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now" for k in diff)
        raise SettingsMismatch(
            f"{corpus_file.parent} already holds a corpus built with different settings ({details}). "
            "Use a new study_dir, or delete that data folder (and everything built from it) to rebuild."
        )


def _recorded(settings: DataSettings, domains, files, sizes) -> dict:
    """What ``settings.json`` records of the data stage's settings (the keys a rebuild must match)."""
    recorded = {"corpus": settings.corpus, "domains": domains, "seed": int(settings.seed), "ratios": [2, 1, 1]}
    if sizes is not None:  # every split's size given: no ratios, no surplus (absent otherwise, as before)
        recorded = {"corpus": settings.corpus, "domains": domains, "seed": int(settings.seed), "sizes": sizes}
    elif settings.test_surplus:  # (absent when off: studies built before this setting existed keep their settings)
        recorded["test_surplus"] = True
    if settings.corpus == "builtin":
        recorded.update(pos_threshold=float(settings.pos_threshold), neg_threshold=float(settings.neg_threshold))
    else:
        recorded["files"] = files
    return recorded


def _load_raw(settings: DataSettings, domains, files, cache_dir, log) -> tuple[pd.DataFrame, dict]:
    """Every labelled text of the domains (before de-duplication and balancing), and the load report."""
    from ltnb.text import amazon as amazon_mod
    from ltnb.text import corpus as corpus_mod

    if settings.corpus == "builtin":
        raw, src_report = corpus_mod._load_builtin(cache_dir, pos_threshold=settings.pos_threshold,
                                                   neg_threshold=settings.neg_threshold, domains=domains)
        return raw, {"sources": src_report}
    rep = amazon_mod.LoadReport()
    per_class = None
    if settings.corpus == "amazon":
        target = PAPER_PER_DOMAIN if settings.per_domain is None else int(settings.per_domain)
        per_class = target // 2 + max(100, target // 40)  # a margin for duplicates removed later
    raw = amazon_mod.load_files(files, kind=settings.corpus, per_class=per_class, seed=int(settings.seed),
                                strict=settings.strict, report=rep)
    log(rep.summary())
    return raw, {"files": rep.to_dict(), "skipped_total": rep.n_skipped}


def _summary(df: pd.DataFrame, recorded: dict, settings: DataSettings, domains, requested, sizes, dedup_stats,
             load_report) -> dict:
    """``summary.json``: the settings, sizes, counts per domain, split and class, sources, de-duplication,
    leaks, the load report and the corpus hash."""
    from ltnb.text import corpus as corpus_mod

    c = counts(df)
    summary = {
        "settings": recorded,
        "strict": bool(settings.strict),
        "per_domain": recorded.get("per_domain"),
        "per_domain_requested": requested,
        "rows": int(len(df)),
        "test_surplus": bool(settings.test_surplus) and sizes is None,
        "test_sizes": {d: int(((df["domain"] == d) & (df["split"] == "test")).sum()) for d in domains},
        "counts": {d: {s: {k: int(c.loc[(d, s), k]) for k in ("negative", "positive")} for s in SPLITS}
                   for d in domains},
        "sources": {d: {str(k): int(v) for k, v in df[df["domain"] == d]["source"].value_counts().sort_index().items()}
                    for d in domains},
        "dedup": dedup_stats,
        "leaks": leaks(df),
        "load": load_report,
        "corpus_hash": corpus_hash(df),
    }
    if settings.corpus == "builtin":
        summary["citations"] = list(corpus_mod.CITATIONS)
    return summary


def build(study_dir: str | os.PathLike, settings: DataSettings = DataSettings(), *,
          cache_dir: str | os.PathLike | None = None, log: Callable[[str], None] = print,
          reuse: bool = False) -> pd.DataFrame:
    """Run the data stage with ``settings``: load the corpus, restrict it to the domains, de-duplicate,
    balance and split, then write ``study/data/corpus.parquet``, ``summary.json`` and ``settings.json``.

    ``settings.corpus``: ``"builtin"`` (fetched with ``ltnb data fetch`` into ``cache_dir``), ``"amazon"``
    (``amazon_files`` = ``{domain: McAuley file}``) or ``"blitzer"`` (``{domain: folder}``). ``per_domain``
    defaults to the largest even size every domain can give (for ``"amazon"``: the paper's 40,000 when
    available). ``test_surplus``: each domain's balanced surplus beyond ``per_domain`` goes to its test
    split (training and validation stay equal across domains).
    Rebuilding a study with the same settings is allowed (the result is the same); with different
    settings it raises ``SettingsMismatch``. ``reuse``: a study whose data were built with these settings
    is read back (``load_corpus``, checked against its recorded hash), not rebuilt, so its files stay
    exactly as the cells built on them recorded them; one that fails that check is built again.
    """
    corpus, seed, per_domain = settings.corpus, int(settings.seed), settings.per_domain
    domains, files = _resolve_domains(settings)
    requested = per_domain
    sizes = resolve_sizes(settings.sizes, domains) if settings.sizes is not None else None
    recorded = _recorded(settings, domains, files, sizes)
    ddir = paths.data_dir(study_dir)
    settings_path, corpus_file = ddir / "settings.json", ddir / "corpus.parquet"
    _check_settings(settings_path, corpus_file, recorded, keys=sorted(recorded))  # fail fast, before loading
    if reuse and settings_path.exists() and corpus_file.exists() and (
            per_domain is None or read_json(settings_path).get("per_domain") == int(per_domain)):
        try:
            df = load_corpus(study_dir)
        except (integrity.IntegrityError, ValueError, OSError) as e:  # changed or damaged: built again below
            log(f"data stage: {corpus_file} fails its checks ({type(e).__name__}); building it again")
        else:
            log(f"data stage: {corpus_file} was built with these settings; read back ({len(df)} texts), not rebuilt")
            return df

    raw, load_report = _load_raw(settings, domains, files, cache_dir, log)
    if per_domain is None and corpus == "amazon" and sizes is None:
        dd, _ = deduplicate(raw)
        per_domain = min(PAPER_PER_DOMAIN, largest_per_domain(dd))
    if sizes is not None:
        df, dedup_stats = _sample_and_split(raw, seed=seed, sizes=sizes)
    else:
        df, dedup_stats = _sample_and_split(raw, per_domain=per_domain, seed=seed, test_surplus=settings.test_surplus)
        # the balanced size every domain gives (training, validation and the base test split); the test
        # surplus comes on top (summary.json: "test_sizes")
        recorded["per_domain"] = int(df.attrs["per_domain"])
    _check_settings(settings_path, corpus_file, recorded)

    summary = _summary(df, recorded, settings, domains, requested, sizes, dedup_stats, load_report)
    write_parquet(corpus_file, df)
    write_json(ddir / "summary.json", summary)
    write_json(settings_path, recorded)
    size_text = (f"{recorded['per_domain']} per domain" if sizes is None else
                 f"train {', '.join(f'{d} {n}' for d, n in sizes['train'].items())}; validation {sizes['validation']}, "
                 f"test {sizes['test']} per domain")
    log(f"data stage: {len(df)} texts, {size_text} ({', '.join(domains)}), written to {corpus_file}")
    return df


def corpus_hash(df: pd.DataFrame) -> str:
    """A content hash of the corpus table (independent of the Parquet writer's bytes)."""
    h = pd.util.hash_pandas_object(df[COLUMNS], index=False).to_numpy()
    return hashlib.sha256(h.tobytes()).hexdigest()[:16]


def load_summary(study_dir: str | os.PathLike) -> dict:
    path = paths.data_dir(study_dir) / "summary.json"
    if not path.exists():
        raise FileNotFoundError(f"no data summary at {path}: run the data stage first")
    return read_json(path)
