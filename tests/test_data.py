"""Sampling, splitting and the data stage's files."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from ltnb.text import corpus, data
from ltnb.base._io import read_json, sha256_file, write_json
from ltnb.base.config import DataSettings


def table(sizes: dict[str, tuple[int, int]], dup_every: int = 0) -> pd.DataFrame:
    """``{domain: (n_neg, n_pos)}`` distinct texts; with ``dup_every`` every k-th text is repeated."""
    rows = []
    for d, (n0, n1) in sizes.items():
        for y, n in ((0, n0), (1, n1)):
            for i in range(n):
                rows.append((f"{d} {y} text {i}", y, d, f"src-{d}"))
                if dup_every and i % dup_every == 0:
                    rows.append((f"{d} {y} text {i}", y, d, f"src2-{d}"))
    return pd.DataFrame(rows, columns=["text", "label", "domain", "source"])


def test_balance_and_ratio():
    df = table({"a": (60, 90), "b": (200, 45), "c": (300, 300)})
    out = data.sample_and_split(df, seed=1)
    assert list(out.columns) == data.COLUMNS
    assert data.largest_per_domain(df) == 90
    c = data.counts(out)
    for d in "abc":
        assert c.loc[(d, "train"), "negative"] == c.loc[(d, "train"), "positive"] == 23
        assert c.loc[(d, "validation"), "negative"] == c.loc[(d, "validation"), "positive"] == 11
        assert c.loc[(d, "test"), "negative"] == c.loc[(d, "test"), "positive"] == 11
        assert c.loc[d, "total"].sum() == 90
    out = data.sample_and_split(df, per_domain=80, seed=1)
    assert out.groupby(["domain", "split", "label"]).size().unstack("split")[["train", "validation", "test"]] \
        .drop_duplicates().values.tolist() == [[20, 10, 10]]


def test_surplus_goes_to_test_balanced_disjoint_and_train_validation_unchanged():
    df = table({"small": (50, 60), "big": (200, 170)})
    base = data.sample_and_split(df, seed=3)
    more = data.sample_and_split(df, seed=3, test_surplus=True)
    c = more.groupby(["domain", "split", "label"]).size()
    # train and validation: equal across domains and exactly the texts taken without the surplus
    for split in ("train", "validation"):
        for d in ("small", "big"):
            assert set(more[(more.domain == d) & (more.split == split)].text) == \
                set(base[(base.domain == d) & (base.split == split)].text)
        assert c[("small", split, 0)] == c[("big", split, 0)] == c[("small", split, 1)] == c[("big", split, 1)]
    # the small domain has no surplus; the big one gives min(200, 170) - 50 = 120 more texts per class to test
    assert c[("small", "test", 0)] == c[("small", "test", 1)] == 12
    assert c[("big", "test", 0)] == c[("big", "test", 1)] == 12 + 120
    assert set(base[base.split == "test"].text) <= set(more[more.split == "test"].text)
    # disjoint: no text in two splits, none repeated; nothing leaks
    assert more["text"].is_unique
    assert data.leaks(more)["in_train_or_validation"] == 0
    assert more.attrs["per_domain"] == base.attrs["per_domain"] == 100


def test_split_sizes_rounding():
    assert data.split_sizes(40) == {"train": 20, "validation": 10, "test": 10}
    assert data.split_sizes(497) == {"train": 249, "validation": 124, "test": 124}
    assert data.split_sizes(10, (3, 1, 1)) == {"train": 6, "validation": 2, "test": 2}


def test_deterministic_and_order_independent():
    df = table({"a": (100, 100), "b": (80, 120)})
    x = data.sample_and_split(df, per_domain=60, seed=5)
    y = data.sample_and_split(df.sample(frac=1, random_state=0), per_domain=60, seed=5)
    z = data.sample_and_split(df, per_domain=60, seed=6)
    assert x.equals(y)
    assert not x.equals(z)
    # A domain's sample does not depend on which other domains are present.
    only_a = data.sample_and_split(df[df.domain == "a"], per_domain=60, seed=5)
    assert only_a.reset_index(drop=True).equals(x[x.domain == "a"].reset_index(drop=True))


def test_duplicates_never_straddle_splits():
    df = table({"a": (100, 100)}, dup_every=3)
    # Conflicting labels: "x" twice positive, once negative -> kept positive; "t" tie -> dropped.
    extra = pd.DataFrame([("x", 1, "a", "s"), ("x", 1, "a", "s"), ("x", 0, "a", "s"), ("t", 0, "a", "s"),
                          ("t", 1, "a", "s")], columns=df.columns)
    df = pd.concat([df, extra], ignore_index=True)
    dedup, stats = data.deduplicate(df)
    assert stats["a"]["duplicates_removed"] == 34 * 2 + 2 + 1
    assert stats["a"]["conflicts_resolved"] == 1 and stats["a"]["conflicts_dropped"] == 1
    assert "t" not in set(dedup.text) and dedup.set_index("text").loc["x", "label"] == 1
    out = data.sample_and_split(df, seed=0)
    assert out["text"].is_unique
    assert out.groupby("text")["split"].nunique().max() == 1
    assert out.attrs["dedup"]["a"]["duplicates_removed"] == 71
    # A text in two domains is dropped from both: no test text may sit in another domain's training
    # split (nor in the shared vocabulary's training text); counted per domain.
    two = pd.DataFrame([("same", 1, "a", "s"), ("same", 1, "b", "s"), ("only a", 0, "a", "s")], columns=df.columns)
    kept, st = data.deduplicate(two)
    assert list(kept.text) == ["only a"] and st["a"]["cross_domain_dropped"] == 1 == st["b"]["cross_domain_dropped"]


def test_texts_differing_in_case_or_spacing_are_one_text_and_never_leak():
    rows = [("Great  Movie!", 1, "a", "s"), ("great movie!", 1, "a", "s"), ("GREAT movie! ", 1, "a", "s")]
    rows += [(f"text {i}", i % 2, "a", "s") for i in range(40)]
    df = pd.DataFrame(rows, columns=["text", "label", "domain", "source"])
    kept, st = data.deduplicate(df)
    assert st["a"]["duplicates_removed"] == 2 and (kept.text.map(data.normalize_text) == "great movie!").sum() == 1
    assert data.normalize_text("  A\tB \n c ") == "a b c"
    out = data.sample_and_split(df, seed=0)
    assert data.leaks(out)["in_train_or_validation"] == 0
    # leaks() itself finds a planted leak (compared after casefolding and collapsing whitespace)
    planted = out.copy()
    planted.loc[planted.split == "test", "text"] = planted.loc[planted.split == "train", "text"].iloc[0].upper() + "  "
    found = data.leaks(planted)
    assert found["in_train_or_validation"] == 1 and found["in_vocab_training_text"] == 1


def test_the_built_in_corpus_has_no_leaks(tmp_path, builtin_cache):
    """Measured on the demo's five domains: 5 of 1,240 test texts were in a training or validation split
    (4 in the vocabulary's training text) before normalized, cross-domain de-duplication; now 0."""
    df = data.build(tmp_path / "s", DataSettings(domains=list(corpus.BUILTIN_DOMAINS)), log=lambda *_: None)
    leaks = data.leaks(df)
    # 1,240 test texts without the surplus (248 per domain); the domains' surplus makes 12,982
    assert leaks["test_texts"] == 12982 and leaks["in_train_or_validation"] == 0 and leaks["in_vocab_training_text"] == 0
    assert (df[df.split != "test"].groupby("domain").size() == 746).all()
    base = data.sample_and_split(df.drop(columns="split"), test_surplus=False)
    assert (base.split == "test").sum() == 1240
    assert read_json(tmp_path / "s" / "data" / "summary.json")["leaks"]["in_train_or_validation"] == 0


def test_not_enough_data_message():
    df = table({"big": (500, 500), "news": (40, 70)})
    with pytest.raises(data.NotEnoughData) as e:
        data.sample_and_split(df, per_domain=100)
    msg = str(e.value)
    assert "'news'" in msg and "only 40 negative" in msg and "positive: 70" in msg and "needs 50 per class" in msg
    assert "largest per_domain every domain can give is 80" in msg
    assert isinstance(e.value, ValueError)
    with pytest.raises(data.NotEnoughData, match="'tiny'"):
        data.sample_and_split(table({"tiny": (2, 50)}))
    with pytest.raises(ValueError, match="even"):
        data.sample_and_split(df, per_domain=51)


def test_bad_inputs():
    df = table({"a": (20, 20)})
    with pytest.raises(ValueError, match="ratios"):
        data.sample_and_split(df, ratios=(2, 1))
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        data.sample_and_split(df.assign(label=df.label + 1))
    with pytest.raises(ValueError, match="column"):
        data.sample_and_split(df.drop(columns="source"))


# ---------------------------------------------------------------------------------------------- build


@pytest.fixture
def cache(tmp_path):
    """A fake fetched built-in corpus: 60 per class in every source (VADER middle values dropped)."""
    c = tmp_path / "cache"
    b = c / "builtin"
    files = {}
    for m in corpus.UCI_MEMBERS:
        p = b / m.dest
        p.parent.mkdir(parents=True, exist_ok=True)
        recs = [{"text": f"{m.dest} {y} {i}", "class": y} for y in (0, 1) for i in range(60)]
        p.write_text(json.dumps(recs + [{"text": "", "class": None}]))
        files[m.dest] = sha256_file(p)
    for m in corpus.VADER_MEMBERS:
        p = b / m.dest
        p.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"{i}\t{v}\t{m.dest} {v} {i} &amp;" for v in (-2.5, 0.0, 1.5) for i in range(60)]
        p.write_bytes("\r\n".join(lines).encode())
        files[m.dest] = sha256_file(p)
    write_json(b / corpus.MANIFEST_NAME, {"files": files})
    return c


def test_build_writes_parquet_summary_settings(tmp_path, cache):
    study = tmp_path / "study"
    logs = []
    df = data.build(study, DataSettings(seed=2), cache_dir=cache, log=logs.append)
    assert (study / "data" / "corpus.parquet").exists()
    back = data.load_corpus(study)
    assert back.equals(df) and list(back.columns) == data.COLUMNS
    assert set(back.split) == set(data.SPLITS) and list(dict.fromkeys(back.domain)) == list(corpus.BUILTIN_DOMAINS)
    summary = read_json(study / "data" / "summary.json")
    assert summary["per_domain"] == 120  # restaurants and tweets / news have 60 per class
    assert summary["counts"]["news"] == {"train": {"negative": 30, "positive": 30},
                                         "validation": {"negative": 15, "positive": 15},
                                         "test": {"negative": 15, "positive": 15}}
    assert summary["load"]["sources"]["vader-nyt"] == {"read": 180, "kept": 120, "dropped_middle": 60}
    assert summary["dedup"]["products"]["duplicates_removed"] == 0
    assert set(summary["sources"]["products"]) == {"uci-amazon", "vader-amazon"}
    assert read_json(study / "data" / "settings.json") == summary["settings"]
    assert any("120 per domain" in line for line in logs)
    # Same settings: rebuild is allowed and identical.
    assert data.build(study, DataSettings(seed=2, per_domain=120), cache_dir=cache, log=lambda s: None).equals(df)


def test_build_refuses_different_settings(tmp_path, cache):
    study = tmp_path / "study"
    data.build(study, DataSettings(domains=["movies", "news"]), cache_dir=cache, log=lambda s: None)
    before = sha256_file(study / "data" / "corpus.parquet")
    with pytest.raises(data.SettingsMismatch) as e:
        data.build(study, DataSettings(domains=["movies", "news"], seed=1), cache_dir=cache, log=lambda s: None)
    assert "seed: 0 there, 1 now" in str(e.value)
    with pytest.raises(data.SettingsMismatch, match="pos_threshold"):
        data.build(study, DataSettings(domains=["movies", "news"], pos_threshold=2.0), cache_dir=cache, log=lambda s: None)
    with pytest.raises(data.SettingsMismatch, match="per_domain: 120 there, 60 now"):
        data.build(study, DataSettings(domains=["movies", "news"], per_domain=60), cache_dir=cache, log=lambda s: None)
    assert sha256_file(study / "data" / "corpus.parquet") == before


def test_build_domain_errors(tmp_path, cache):
    with pytest.raises(ValueError, match="allowed: products, movies, restaurants, tweets, news"):
        data.build(tmp_path / "s", DataSettings(domains=["books"]), cache_dir=cache, log=lambda s: None)
    with pytest.raises(ValueError, match="corpus = 'csv'"):
        data.build(tmp_path / "s", DataSettings(corpus="csv"), log=lambda s: None)
    with pytest.raises(ValueError, match="amazon_files"):
        data.build(tmp_path / "s", DataSettings(corpus="amazon"), log=lambda s: None)
    with pytest.raises(corpus.CorpusError, match="ltnb data fetch"):
        data.build(tmp_path / "s", cache_dir=tmp_path / "empty", log=lambda s: None)


def test_load_corpus_absent(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the data stage"):
        data.load_corpus(tmp_path / "nowhere")


def test_build_amazon_and_blitzer(tmp_path):
    files = {}
    for cat in ("Books", "CDs"):
        p = tmp_path / f"reviews_{cat}_5.json"
        lines = [json.dumps({"overall": r, "reviewText": f"{cat} {r} {i}"}) for r in (1.0, 3.0, 5.0) for i in range(40)]
        p.write_text("\n".join(lines + ["{bad json"]) + "\n")
        files[cat] = str(p)
    study = tmp_path / "amz"
    df = data.build(study, DataSettings(corpus="amazon", amazon_files=files), log=lambda s: None)
    assert len(df) == 160 and set(df.domain) == {"Books", "CDs"}
    summary = read_json(study / "data" / "summary.json")
    assert summary["load"]["skipped_total"] == 2
    with pytest.raises(ValueError, match="allowed: Books, CDs"):
        data.build(tmp_path / "x", DataSettings(corpus="amazon", amazon_files=files, domains=["Home"]), log=lambda s: None)

    folders = {}
    for dom in ("kitchen", "dvd"):
        d = tmp_path / dom
        d.mkdir()
        for name in ("positive", "negative"):
            reviews = "".join(f"<review>\n<review_text>\n{dom} {name} {i}\n</review_text>\n</review>\n" for i in range(20))
            (d / f"{name}.review").write_text(reviews)
        folders[dom] = str(d)
    b = data.build(tmp_path / "blz", DataSettings(corpus="blitzer", amazon_files=folders), log=lambda s: None)
    assert len(b) == 80 and data.counts(b)["total"].sum() == 80
