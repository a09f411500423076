"""The built-in corpus: checksums before extraction, clear errors, parsing quirks, the real fetch."""
from __future__ import annotations

import io
import json
import shutil
import tarfile

import pytest

from ltnb.text import corpus
from ltnb.base._io import sha256_file, write_json


def _tgz(path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _no_download(*a, **k):
    raise AssertionError("fetch must not download here")


def make_fake_builtin(cache, uci=None, vader=None):
    """A fetched-looking cache (files + matching manifest) with small files the test chooses."""
    b = cache / "builtin"
    files = {}
    uci = uci or {}
    vader = vader or {}
    for m in corpus.UCI_MEMBERS:
        p = b / m.dest
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(uci.get(m.dest, [{"text": "ok", "class": 1}, {"text": "", "class": None}])))
        files[m.dest] = sha256_file(p)
    for m in corpus.VADER_MEMBERS:
        p = b / m.dest
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(vader.get(m.dest, b"1\t2.0\tgood\r\n2\t-2.0\tbad\r\n"))
        files[m.dest] = sha256_file(p)
    write_json(b / corpus.MANIFEST_NAME, {"files": files})
    return b


# ------------------------------------------------------------------------------------------- fetch


def test_tampered_archive_is_refused_and_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "_npm_pack", _no_download)
    monkeypatch.setattr(corpus, "_pip_download", _no_download)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    fake = downloads / "sentiment-5.0.2.tgz"
    _tgz(fake, {m.name: b'[{"text": "evil", "class": 1}]' for m in corpus.UCI_MEMBERS})
    actual = sha256_file(fake)
    with pytest.raises(corpus.CorpusError) as e:
        corpus.fetch(tmp_path, log=lambda s: None)
    msg = str(e.value)
    assert "sentiment-5.0.2.tgz" in msg and corpus.SENTIMENT.sha256 in msg and actual in msg
    assert "ltnb data fetch" in msg
    assert not fake.exists()  # removed from downloads
    assert not (tmp_path / "builtin").exists()  # nothing extracted


def test_missing_npm_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus.shutil, "which", lambda name: None)
    monkeypatch.setattr(corpus, "_pip_download", _no_download)
    with pytest.raises(corpus.CorpusError) as e:
        corpus.fetch(tmp_path, log=lambda s: None)
    msg = str(e.value)
    assert "npm not found on PATH" in msg
    assert str(tmp_path / "downloads" / "sentiment-5.0.2.tgz") in msg
    assert not (tmp_path / "builtin").exists()


def test_failed_download_command_reports_stderr_tail(tmp_path):
    import sys

    cmd = [sys.executable, "-c", "import sys; sys.stderr.write('line1\\nregistry said no\\n'); sys.exit(3)"]
    with pytest.raises(corpus.CorpusError) as e:
        corpus._run(cmd, tmp_path, "downloading x", "place x at /somewhere")
    msg = str(e.value)
    assert "exit status 3" in msg and "registry said no" in msg and "place x at /somewhere" in msg


def test_default_cache_dir_is_outside_the_tree(tmp_path, monkeypatch):
    monkeypatch.setenv("LTNB_CACHE", str(tmp_path / "c"))
    assert corpus.builtin_dir() == (tmp_path / "c" / "builtin").resolve()


# ------------------------------------------------------------------------------------------- parsing


def test_read_uci_json_drops_empty_and_null(tmp_path):
    p = tmp_path / "u.json"
    p.write_text(json.dumps([
        {"text": "Great\r\nphone &amp; case.  ", "class": 1},
        {"text": "Bad.", "class": 0},
        {"text": "   ", "class": 1},
        {"text": "no class", "class": None},
        {"text": "", "class": None},
    ]))
    assert corpus.read_uci_json(p) == [("Great phone & case.", 1), ("Bad.", 0)]


def test_read_vader_txt_crlf_entities_blank(tmp_path):
    p = tmp_path / "v.txt"
    p.write_bytes("1_1\t1.5\tWe were 17 deep &amp; happy\r\n\r\n1_2\t-0.2\t caf\u00e9  ok \r\n2\t-3\t&lt;3 not\tsure\r\n"
                  "3\t0.5\t &nbsp; \r\n".encode())
    rows = corpus.read_vader_txt(p)
    assert rows == [("We were 17 deep & happy", 1.5), ("caf\u00e9 ok", -0.2), ("<3 not sure", -3.0)]


def test_a_built_in_file_over_its_size_bound_is_refused_unread(tmp_path, monkeypatch):
    """MAX_FILE_BYTES (lowered to 100 here): a larger file is read no further than the bound and refused,
    naming it; one at the bound is read."""
    monkeypatch.setattr(corpus, "MAX_FILE_BYTES", 100)
    uci, vader = tmp_path / "u.json", tmp_path / "v.txt"
    uci.write_text(json.dumps([{"text": "x" * 50, "class": 1}] * 3))
    vader.write_bytes(b"1\t1.0\tfine\r\n" * 20)
    for path, read in ((uci, corpus.read_uci_json), (vader, corpus.read_vader_txt)):
        with pytest.raises(corpus.CorpusError, match=rf"^{path}: over 100 bytes, far more than a built-in corpus file"):
            read(path)
    vader.write_bytes(b"1\t1.0\tfine\r\n" * 7)  # 98 bytes
    assert corpus.read_vader_txt(vader) == [("fine", 1.0)] * 7


def test_read_vader_txt_bad_line_names_file_and_line(tmp_path):
    p = tmp_path / "v.txt"
    p.write_bytes(b"1\t1.0\tfine\r\n2\tnot-a-number\ttext\r\n")
    with pytest.raises(corpus.CorpusError, match=r"v\.txt:2: valence 'not-a-number'"):
        corpus.read_vader_txt(p)


def test_thresholds(tmp_path):
    rows = [("a", 1.0), ("b", 0.99), ("c", -1.0), ("d", -0.5), ("e", 3.0)]
    assert corpus.binarize_valence(rows, 1.0, -1.0) == [("a", 1), ("c", 0), ("e", 1)]
    assert corpus.binarize_valence(rows, 2.0, 0.0) == [("c", 0), ("d", 0), ("e", 1)]
    for pos, neg in ((1.0, 1.0), (-1.0, 1.0), (5.0, -1.0), (float("nan"), -1.0)):
        with pytest.raises(ValueError):
            corpus.check_thresholds(pos, neg)
    make_fake_builtin(tmp_path)
    with pytest.raises(ValueError, match="neg_threshold"):
        corpus.load_builtin(tmp_path, pos_threshold=0.0, neg_threshold=0.5)


def test_load_builtin_domains_sources_and_thresholds(tmp_path):
    vader = {m.dest: b"1\t2.0\tgood &amp; fine\r\n2\t-2.0\tbad\r\n3\t0.3\tmeh\r\n" for m in corpus.VADER_MEMBERS}
    make_fake_builtin(tmp_path, vader=vader)
    df = corpus.load_builtin(tmp_path)
    assert list(df.columns) == ["text", "label", "domain", "source"]
    assert list(dict.fromkeys(df["domain"])) == list(corpus.BUILTIN_DOMAINS)
    assert set(df["source"]) == {"uci-amazon", "vader-amazon", "uci-imdb", "vader-movies", "uci-yelp",
                                 "vader-tweets", "vader-nyt"}
    assert set(df[df.domain == "products"]["source"]) == {"uci-amazon", "vader-amazon"}
    assert set(df[df.domain == "news"]["source"]) == {"vader-nyt"}
    assert "meh" not in set(df["text"]) and "good & fine" in set(df["text"])
    assert str(df["label"].dtype) == "int64"
    wide = corpus.load_builtin(tmp_path, pos_threshold=0.2, neg_threshold=-0.2)
    assert (wide["text"] == "meh").sum() == 4 and set(wide[wide.text == "meh"]["label"]) == {1}


def test_load_builtin_not_fetched_says_what_to_do(tmp_path):
    with pytest.raises(corpus.CorpusError, match="ltnb data fetch"):
        corpus.load_builtin(tmp_path)


def test_load_builtin_detects_changed_files(tmp_path):
    b = make_fake_builtin(tmp_path)
    (b / "uci" / "yelp.json").write_text("[]")
    with pytest.raises(corpus.CorpusError, match="does not match its MANIFEST"):
        corpus.load_builtin(tmp_path)


# ------------------------------------------------------------------------------- the real thing


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("ltnb-cache")
    logs = []
    result = corpus.fetch(cache, log=logs.append)
    return cache, result, logs


def test_real_fetch_sizes_and_idempotence(real_cache, monkeypatch):
    cache, result, _ = real_cache
    assert result["status"] == "fetched"
    assert sorted(result["files"]) == sorted(m.dest for m in corpus.UCI_MEMBERS + corpus.VADER_MEMBERS)
    assert sha256_file(cache / "downloads" / corpus.SENTIMENT.filename) == corpus.SENTIMENT.sha256
    # Only the named files were extracted (plus the manifest).
    extracted = sorted(str(p.relative_to(cache / "builtin")) for p in (cache / "builtin").rglob("*") if p.is_file())
    assert extracted == sorted([corpus.MANIFEST_NAME] + list(result["files"]))

    # Sizes from docs/data-sources.md: UCI 500 per class per file; VADER raw 3708 / 10605 / 5190 / 4200;
    # at +-1.0: amazon neg 941, movies neg 4575, nyt pos 558, tweets neg 837.
    df = corpus.load_builtin(cache)
    by = df.groupby(["source", "label"]).size()
    for s in ("uci-amazon", "uci-imdb", "uci-yelp"):
        assert by[(s, 0)] == 500 and by[(s, 1)] == 500
    assert by[("vader-amazon", 0)] == 941
    assert by[("vader-movies", 0)] == 4575
    assert by[("vader-nyt", 1)] == 558
    assert by[("vader-tweets", 0)] == 837
    raw = {m.dest: len(corpus.read_vader_txt(cache / "builtin" / m.dest)) for m in corpus.VADER_MEMBERS}
    assert sorted(raw.values()) == [3708, 4200, 5190, 10605]

    # A second fetch does nothing.
    monkeypatch.setattr(corpus, "_npm_pack", _no_download)
    monkeypatch.setattr(corpus, "_pip_download", _no_download)
    logs = []
    again = corpus.fetch(cache, log=logs.append)
    assert again["status"] == "already fetched"
    assert any("already fetched" in line for line in logs)


def test_hand_placed_archives_are_used(real_cache, tmp_path, monkeypatch):
    cache, _, _ = real_cache
    monkeypatch.setattr(corpus, "_npm_pack", _no_download)
    monkeypatch.setattr(corpus, "_pip_download", _no_download)
    (tmp_path / "downloads").mkdir()
    for a in (corpus.SENTIMENT, corpus.VADER):
        shutil.copy(cache / "downloads" / a.filename, tmp_path / "downloads" / a.filename)
    result = corpus.fetch(tmp_path, log=lambda s: None)
    assert result["status"] == "fetched" and sorted(result["reused"]) == sorted(
        [corpus.SENTIMENT.filename, corpus.VADER.filename])
    # A changed extracted file is noticed and re-extracted by the next fetch.
    (tmp_path / "builtin" / "uci" / "imdb.json").write_text("[]")
    assert corpus.fetch(tmp_path, log=lambda s: None)["status"] == "fetched"
    assert len(corpus.read_uci_json(tmp_path / "builtin" / "uci" / "imdb.json")) == 1000
