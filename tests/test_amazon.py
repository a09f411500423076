"""Loaders for Amazon review files a user has: every format, every quirk, never silent."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest

from ltnb.text import amazon


def _write(path, lines: list[bytes], gz: bool):
    data = b"".join(line + b"\n" for line in lines)
    if gz:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def j(obj) -> bytes:
    return json.dumps(obj).encode()


QUIRKY_2014 = [
    j({"overall": 5.0, "reviewText": "Loved it &amp; more", "summary": "Great"}),     # 1 pos
    j({"overall": 1.0, "reviewText": "Awful", "summary": "Bad"}),                     # 2 neg
    b"{'overall': 2.0, 'reviewText': 'Python literal line', 'summary': 'meh'}",       # 3 neg (literal)
    j({"overall": 3.0, "reviewText": "So so"}),                                       # 4 neutral
    j({"overall": 7.0, "reviewText": "Out of range"}),                                # 5 bad rating
    j({"overall": 4.0, "summary": "no body"}),                                        # 6 missing text
    b'{"overall": 5.0, "reviewText": "broken',                                        # 7 invalid json
    b'{"overall": 4.0, "reviewText": "bad \xff\xfe bytes"}',                          # 8 undecodable
    j({"reviewText": "no rating"}),                                                   # 9 missing rating
    b"",                                                                              # blank: ignored
    j({"overall": 4.0, "reviewText": "   Fine\r\n  product  "}),                      # 11 pos
]


@pytest.mark.parametrize("gz", [True, False])
def test_mcauley_2014_quirks_counted(tmp_path, gz):
    p = _write(tmp_path / ("reviews_Books_5.json.gz" if gz else "reviews_Books_5.json"), QUIRKY_2014, gz)
    rep = amazon.LoadReport()
    df = amazon.load_mcauley(p, report=rep, progress=False)
    assert list(df.columns) == ["text", "label", "domain", "source"]
    assert df["text"].tolist() == ["Loved it & more", "Awful", "Python literal line", "Fine product"]
    assert df["label"].tolist() == [1, 0, 0, 1]
    assert set(df["domain"]) == {"Books"} and str(df["label"].dtype) == "int64"
    d = rep.to_dict()[str(p)]
    assert d["read"] == 10 and d["kept"] == 4 and d["neutral_dropped"] == 1 and d["sampled"] == 4
    assert d["skipped"] == {"rating outside 1-5": 1, "missing text": 1, "invalid json": 1,
                            "undecodable bytes (not UTF-8)": 1, "missing rating": 1}
    assert d["first_error"] == "line 5: rating outside 1-5"
    s = rep.summary()
    assert str(p) in s and "skipped 5 bad records" in s and "1 invalid json" in s


@pytest.mark.parametrize("line,reason", [(5, "rating outside 1-5"), (6, "missing text"), (7, "invalid json"),
                                         (8, "undecodable bytes"), (9, "missing rating")])
def test_strict_names_file_and_line(tmp_path, line, reason):
    lines = QUIRKY_2014[:4] + [QUIRKY_2014[line - 1]]
    p = _write(tmp_path / "reviews_Books_5.json.gz", lines, gz=True)
    with pytest.raises(amazon.DataFormatError) as e:
        amazon.load_mcauley(p, strict=True, progress=False)
    assert f"{p}:5: {reason}" in str(e.value)


def test_mcauley_2018_missing_review_text(tmp_path):
    lines = [j({"overall": 5.0, "summary": "s", "asin": "x"}), j({"overall": 2.0, "reviewText": "meh bad"})]
    p = _write(tmp_path / "Electronics_5.json.gz", lines, gz=True)
    rep = amazon.LoadReport()
    df = amazon.load_mcauley(p, report=rep, progress=False)
    assert df["text"].tolist() == ["meh bad"] and set(df["domain"]) == {"Electronics"}
    assert rep.skipped[str(p)] == {"missing text": 1}


@pytest.mark.parametrize("name,gz", [("Home_and_Kitchen.jsonl", False), ("Home_and_Kitchen.jsonl.gz", True)])
def test_mcauley_2023(tmp_path, name, gz):
    lines = [j({"rating": 5.0, "title": "Nice", "text": "Works<br />well"}),
             j({"rating": 1, "title": "No", "text": "Broke"}),
             j({"rating": 3.0, "title": "ok", "text": "fine"}),
             j({"rating": 2.5, "title": "hm", "text": "middling"}),
             j({"rating": "five", "text": "what"})]
    p = _write(tmp_path / name, lines, gz)
    rep = amazon.LoadReport()
    df = amazon.load_mcauley(p, report=rep, progress=False, include_title=True)
    assert df["text"].tolist() == ["Nice. Works<br />well", "No. Broke"] and df["label"].tolist() == [1, 0]
    assert set(df["domain"]) == {"Home_and_Kitchen"} and set(df["source"]) == {f"amazon:{name}"}
    assert rep.neutral[str(p)] == 2 and sum(rep.skipped[str(p)].values()) == 1


def test_gzip_detected_by_magic_bytes_not_name(tmp_path):
    p = _write(tmp_path / "Books.jsonl", [j({"rating": 5, "text": "a"})], gz=True)  # gzip without .gz
    q = _write(tmp_path / "Books2.json.gz", [j({"rating": 5, "text": "b"})], gz=False)  # plain with .gz
    assert amazon.load_mcauley(p, progress=False)["text"].tolist() == ["a"]
    assert amazon.load_mcauley(q, progress=False)["text"].tolist() == ["b"]


def test_truncated_gzip_counted_or_strict(tmp_path):
    lines = [j({"overall": 5.0 if i % 2 else 1.0, "reviewText": f"review number {i} " + "x" * 50}) for i in range(2000)]
    data = gzip.compress(b"".join(line + b"\n" for line in lines))
    p = tmp_path / "reviews_CDs_5.json.gz"
    p.write_bytes(data[: len(data) // 2])
    rep = amazon.LoadReport()
    df = amazon.load_mcauley(p, report=rep, per_class=None, progress=False)
    assert 0 < len(df) < 2000
    (reason, n), = rep.skipped[str(p)].items()
    assert reason.startswith("truncated gzip") and n == 1
    with pytest.raises(amazon.DataFormatError, match=r"reviews_CDs_5\.json\.gz:\d+: truncated gzip"):
        amazon.load_mcauley(p, strict=True, per_class=None, progress=False)


def _many(tmp_path, n_pos, n_neg, name="reviews_Books_5.json"):
    lines = [j({"overall": 5.0, "reviewText": f"pos {i}"}) for i in range(n_pos)]
    lines += [j({"overall": 1.0, "reviewText": f"neg {i}"}) for i in range(n_neg)]
    return _write(tmp_path / name, lines, gz=False)


def test_reservoir_sampling_deterministic_and_balanced(tmp_path):
    p = _many(tmp_path, 500, 300)
    a = amazon.load_mcauley(p, per_class=50, seed=3, progress=False)
    b = amazon.load_mcauley(p, per_class=50, seed=3, progress=False)
    c = amazon.load_mcauley(p, per_class=50, seed=4, progress=False)
    assert a.equals(b) and not a.equals(c)
    assert a["label"].value_counts().to_dict() == {1: 50, 0: 50}
    assert a["text"].is_unique
    # The sample is spread over the file, not its head.
    assert max(int(t.split()[1]) for t in a[a.label == 1]["text"]) > 100
    # Fewer than per_class available: all of them.
    small = amazon.load_mcauley(p, per_class=400, seed=0, progress=False)
    assert small["label"].value_counts().to_dict() == {1: 400, 0: 300}
    with pytest.raises(ValueError, match="per_class"):
        amazon.load_mcauley(p, per_class=0, progress=False)


def _review(rating, text, extra=""):
    return (f"<review>\n<unique_id>\nid{rating}\n</unique_id>\n<rating>\n{rating}\n</rating>\n"
            f"<title>\nT\n</title>\n{extra}<review_text>\n{text}\n</review_text>\n</review>\n")


def test_blitzer(tmp_path):
    d = tmp_path / "kitchen"
    d.mkdir()
    (d / "positive.review").write_bytes(
        (_review("5.0", "Great pan, caf\u00e9 quality &amp; cheap") + _review("4.0", "Nice\nknife")).encode("utf-8"))
    (d / "negative.review").write_bytes(
        _review("1.0", "Rusty na\xefve junk").encode("latin-1")
        + _review("2.0", "").encode()
        + b"<review>\n<rating>\n1.0\n</rating>\n<review_text>\nunterminated\n")
    rep = amazon.LoadReport()
    df = amazon.load_blitzer(d, report=rep)
    assert sorted(df["text"]) == ["Great pan, caf\u00e9 quality & cheap", "Nice knife", "Rusty na\u00efve junk"]
    assert df.set_index("text").loc["Rusty na\u00efve junk", "label"] == 0
    assert set(df["domain"]) == {"kitchen"} and "blitzer:kitchen/positive.review" in set(df["source"])
    neg = rep.skipped[str(d / "negative.review")]
    assert neg == {"missing text": 1, "unterminated <review> at end of file": 1}
    with pytest.raises(amazon.DataFormatError, match=r"negative\.review:\d+: missing text"):
        amazon.load_blitzer(d, strict=True)
    with pytest.raises(FileNotFoundError, match="positive.review"):
        amazon.load_blitzer(tmp_path)


def test_import_does_not_import_datasets():
    code = "import sys, ltnb.text.amazon; print('datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_hf_loader_clear_error_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(ImportError, match="pip install datasets"):
        amazon.load_hf_amazon2023("Books")


def test_hf_loader_with_a_fake_datasets(monkeypatch):
    import types

    recs = [{"rating": 5.0, "title": "t", "text": "good"}, {"rating": 1.0, "title": "t", "text": "bad"},
            {"rating": 3.0, "title": "t", "text": "meh"}]
    fake = types.SimpleNamespace(load_dataset=lambda *a, **k: iter(recs))
    monkeypatch.setitem(sys.modules, "datasets", fake)
    df = amazon.load_hf_amazon2023("Books", progress=False)
    assert df["text"].tolist() == ["good", "bad"] and set(df["domain"]) == {"Books"}


def test_load_files(tmp_path):
    a = _many(tmp_path, 10, 10, "reviews_Books_5.json")
    b = _many(tmp_path, 10, 10, "Electronics_5.json")
    df = amazon.load_files({"B": a, "E": b}, per_class=5, progress=False)
    assert df.groupby(["domain", "label"]).size().tolist() == [5, 5, 5, 5]
    with pytest.raises(ValueError, match="kind"):
        amazon.load_files({"B": a}, kind="csv")


# ------------------------------------------------------------------ a record's size is bounded before parsing

@pytest.mark.parametrize("gz", [False, True])
def test_a_line_over_the_record_limit_is_refused_before_it_is_parsed(tmp_path, monkeypatch, gz):
    """A line longer than MAX_RECORD_BYTES (here lowered to 200) is skipped and counted, read in blocks,
    never handed to a parser; with strict, an error naming the file and line."""
    monkeypatch.setattr(amazon, "MAX_RECORD_BYTES", 200)
    parsed, decode = [], amazon._decode_record
    monkeypatch.setattr(amazon, "_decode_record", lambda raw: (parsed.append(len(raw)), decode(raw))[1])
    long_json = j({"overall": 5.0, "reviewText": "y" * 400})  # valid JSON: kept if it were not too long
    long_literal = b"{'overall': 1.0, 'reviewText': 'z', 'x': [" + b"1, " * 300 + b"]}"  # 14.7 MB in the wild
    p = _write(tmp_path / ("x.json.gz" if gz else "x.json"),
               [j({"overall": 5.0, "reviewText": "short"}), long_json, long_literal, b"x" * 5000,
                j({"overall": 1.0, "reviewText": "bad"})], gz)
    rep = amazon.LoadReport()
    df = amazon.load_mcauley(p, report=rep, progress=False)
    assert df["text"].tolist() == ["short", "bad"]
    d = rep.to_dict()[str(p)]
    assert d["skipped"] == {"line too long (over 200 bytes)": 3} and d["first_error"] == "line 2: line too long (over 200 bytes)"
    assert max(parsed) <= 201 and len(parsed) == 2  # only the two short lines reached a parser
    with pytest.raises(amazon.DataFormatError, match=rf"^{p}:2: line too long \(over 200 bytes\)$"):
        amazon.load_mcauley(p, strict=True, progress=False)


def test_a_python_literal_with_too_many_items_is_not_parsed(tmp_path, monkeypatch):
    """A line that is not JSON is read as a Python literal (the 2014 dumps) only with at most
    MAX_LITERAL_ITEMS separators: the literal parser costs about 500 bytes per item."""
    import ast

    monkeypatch.setattr(amazon, "MAX_LITERAL_ITEMS", 50)
    evaluated, literal_eval = [], ast.literal_eval
    monkeypatch.setattr(ast, "literal_eval", lambda s: (evaluated.append(len(s)), literal_eval(s))[1])
    many = b"{'overall': 5.0, 'reviewText': 'many', 'x': [" + b"1," * 60 + b"]}"
    few = b"{'overall': 2.0, 'reviewText': 'a real 2014 line, with its commas: fine', 'helpful': [0, 0]}"
    p = _write(tmp_path / "reviews_Books_5.json", [many, few], gz=False)
    rep = amazon.LoadReport()
    assert amazon.load_mcauley(p, report=rep, progress=False)["text"].tolist() == [
        "a real 2014 line, with its commas: fine"]
    reason = "invalid json (and over 50 items, too many to read as a Python literal)"
    assert rep.skipped[str(p)] == {reason: 1} and evaluated == [len(few)]
    with pytest.raises(amazon.DataFormatError, match=rf"reviews_Books_5\.json:1: invalid json \(and over 50 items"):
        amazon.load_mcauley(p, strict=True, progress=False)


def test_a_blitzer_review_without_its_closing_tag_is_cut_at_the_limit(tmp_path, monkeypatch):
    """A review longer than MAX_RECORD_BYTES (lowered to 300) from <review> on is cut there: skipped and
    counted once (the lines up to the next <review> go with it, none counted as "text outside"), the
    reviews around it kept; with strict, the file and the review's line."""
    monkeypatch.setattr(amazon, "MAX_RECORD_BYTES", 300)
    d = tmp_path / "kitchen"
    d.mkdir()
    endless = "<review>\n<rating>\n5.0\n</rating>\n<review_text>\n" + "a\n" * 400  # never closed (48 MB in the wild)
    closed_text = "<review>\n<rating>\n4.0\n</rating>\n<review_text>\n" + "b\n" * 400 + "</review_text>\n"
    (d / "positive.review").write_text(_review("5.0", "first good") + endless + _review("5.0", "second good")
                                       + closed_text + _review("4.0", "third good"))
    (d / "negative.review").write_text(_review("1.0", "bad one"))
    rep = amazon.LoadReport()
    df = amazon.load_blitzer(d, report=rep)
    assert sorted(df["text"]) == ["bad one", "first good", "second good", "third good"]
    pos = str(d / "positive.review")
    first_lines = _review("5.0", "first good").count("\n")
    assert rep.skipped[pos] == {"review too long (over 300 bytes without </review>)": 2}
    assert rep.first_error[pos] == f"line {first_lines + 1}: review too long (over 300 bytes without </review>)"
    with pytest.raises(amazon.DataFormatError,
                       match=rf"positive\.review:{first_lines + 1}: review too long \(over 300 bytes without </review>\)$"):
        amazon.load_blitzer(d, strict=True)
    monkeypatch.setattr(amazon, "MAX_RECORD_BYTES", 1 << 20)  # under the limit: the same file's long reviews read
    rep = amazon.LoadReport()
    amazon.load_blitzer(d, report=rep)
    assert rep.skipped[pos] == {"unterminated <review> (no </review> before the next <review>)": 2}
