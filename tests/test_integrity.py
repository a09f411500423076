"""Issue 13: nothing tampered is carried on. One test (or a few) per numbered item of the issue and
for the cheap "also seen" items; the kill tests use real processes (the batch, a real `dask scheduler`
and `dask worker`). Item 3 end to end (a real study) is in test_study.py; item 5 in a real Voila server
below; the explorer's kernel-side checks in test_browser.py.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import save_file

from conftest import ROOT
from ltnb.analysis import explore
from ltnb.base import integrity, paths, stages
from ltnb.core import lottery, tickets
from ltnb.study import batch
from ltnb.text import amazon, corpus, data, tokens, vocab
from ltnb.base._io import write_parquet
from ltnb.base.config import DataSettings, LotterySettings, ModelSettings, TrainSettings, VocabSettings
from ltnb.study.plan import PlanError, load_plan
from ltnb.core.train import synthetic_data
from test_batch import plan_text
from test_tickets import _write as write_ticket
from test_vocab import _corpus as tiny_corpus

NOTEBOOKS = {"data": "01_data.ipynb", "divergence": "02_divergence.ipynb", "obtain": "03_obtain.ipynb",
             "transfer": "04_transfer.ipynb", "report": "06_report.ipynb", "phase": "07_phase_transition.ipynb"}
SMALL = LotterySettings(rounds=1, model=ModelSettings(embed_dim=16, channels=8, hidden=16),
                        train=TrainSettings(max_epochs=1))
KEY = "synthetic-v1"


def _header(path: Path) -> tuple[int, dict]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return 8 + n, json.loads(raw[8:8 + n])


def flip(path: Path, tensor: str, at: int = 0, bit: int = 0x40) -> None:
    """Flip one bit of one byte of a tensor's data in a safetensors file. In a bit-packed mask, swap two
    neighbouring bits of different value instead (from byte ``at`` on), so the number of surviving weights,
    which the loader could count, stays the same: only the content hash can tell."""
    start, header = _header(path)
    begin, end = header[tensor]["data_offsets"]
    raw = bytearray(path.read_bytes())
    if tensor.startswith("mask/"):
        i = next(i for i in range(start + begin + at, start + end) if (raw[i] & 0x03) in (0x01, 0x02))
        raw[i] ^= 0x03
    else:
        raw[start + begin + min(at, end - begin - 1)] ^= bit
    path.write_bytes(bytes(raw))


def _state(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


# ---------------------------------------------------------------- item 2: tickets hashed as a whole

@pytest.mark.parametrize("tensor,at", [("trained/embedding.weight", 3), ("mask/embedding.weight", 0),
                                       ("mask/fc1.weight", 0), ("trained/convs.0.weight", 7)])
def test_item2_a_flipped_byte_in_tensor_data_or_mask_is_refused(tmp_path, tensor, at):
    path, *_ = write_ticket(tmp_path)
    tickets.load(path)  # intact: loads
    flip(path, tensor, at)
    with pytest.raises(integrity.IntegrityError) as e:
        tickets.load(path)
    msg = str(e.value)
    assert str(path) in msg and "expected sha256" in msg and "found" in msg
    assert e.value.expected and e.value.found and e.value.expected != e.value.found


def test_item2_an_edited_sparsity_or_round_in_the_metadata_is_refused(tmp_path):
    path, *_ = write_ticket(tmp_path)
    tensors, meta = _state(path)
    for key, value in (("sparsity", "0.99"), ("round", "7")):
        save_file(tensors, str(path), metadata={**meta, key: value})  # the recorded hash is kept as it was
        with pytest.raises(integrity.IntegrityError, match=f"{path.name}.*expected sha256"):
            tickets.load(path)
    save_file(tensors, str(path), metadata=meta)
    assert tickets.load(path).round == 1


def test_item2_a_flipped_byte_in_theta_0_is_refused(tmp_path):
    path, *_ = write_ticket(tmp_path)
    flip(tmp_path / "theta_0.safetensors", "embedding.weight", 5)
    with pytest.raises(ValueError, match="theta_0"):
        tickets.load(path)
    with pytest.raises(integrity.IntegrityError):
        tickets.load_state(tmp_path / "theta_0.safetensors")


def test_item2_a_corrupted_mask_is_not_carried_into_a_transfer(tmp_path):
    a, b = synthetic_data(40, seed=0), synthetic_data(40, seed=1)
    kw = dict(settings=SMALL, vocab_size=50, data_key=KEY, device="cpu", progress=False)
    lottery.obtain(tmp_path, "a", data=a, **kw)
    src = lottery.chain_dir(tmp_path, "a", "reset", 0, SMALL, KEY, 50)
    flip(src / "round_01.safetensors", "mask/convs.1.weight", 2)
    with pytest.raises(integrity.IntegrityError, match="round_01.safetensors"):
        lottery.transfer(tmp_path, "a", "b", data=b, **kw)
    assert not list((tmp_path / "transfer").rglob("results.parquet"))  # nothing trained on it


def test_item2_a_changed_ticket_makes_its_obtain_cell_rerun_and_the_chain_stop(tmp_path):
    """The obtain cell records the reset chain's tickets and theta_0 (what transfer and federated cells
    read), so a flipped byte makes the batch rerun the cell, naming the file; the rerun stops the chain
    (its later rounds were trained from that ticket) instead of recording the changed file as good."""
    a = synthetic_data(40, seed=0)
    two = LotterySettings(rounds=2, model=SMALL.model, train=SMALL.train)
    kw = dict(settings=two, vocab_size=50, data_key=KEY, device="cpu", progress=False)
    lottery.obtain(tmp_path, "a", data=a, **kw)
    src = lottery.chain_dir(tmp_path, "a", "reset", 0, two, KEY, 50)
    outputs = stages.cell_outputs(tmp_path, "obtain/a/seed0")
    rel = (src / "round_01.safetensors").relative_to(tmp_path).as_posix()
    assert rel in outputs and (src / "theta_0.safetensors").relative_to(tmp_path).as_posix() in outputs
    flip(src / "round_01.safetensors", "trained/fc1.weight", 3)
    why = integrity.record_problem(tmp_path, outputs)
    assert why is not None and why.startswith(f"{rel} changed since it ran")
    with pytest.raises(integrity.IntegrityError, match=r"round_01.safetensors.*delete the chain folder"):
        lottery.obtain(tmp_path, "a", data=a, **kw)


# ---------------------------------------------------------------- item 3: inputs verified by content

def test_item3_stale_encodings_and_edited_tables_are_refused(tmp_path):
    study, _ = tiny_corpus(tmp_path)
    vocab.build(study, VocabSettings(vocab_size=60), log=lambda *_: None)
    vocab.load_encoded(study, "alpha")
    corpus_file = study / "data" / "corpus.parquet"
    table = pd.read_parquet(corpus_file)
    table.loc[0, "text"] = "an edited sentence"
    write_parquet(corpus_file, table)  # even a well-formed new table: the encodings were made from the old one
    with pytest.raises(integrity.IntegrityError, match="corpus.parquet.*expected sha256"):
        vocab.load_encoded(study, "alpha")
    # a data stage run on the changed table makes new encodings for it
    vocab.build(study, VocabSettings(vocab_size=60), log=lambda *_: None)
    vocab.load_encoded(study, "alpha")
    # an encodings file changed in place is refused, and rebuilt by the data stage
    tok = vocab.current(study) / "tokens" / "beta.safetensors"
    flip(tok, "train.ids", 4)
    with pytest.raises(integrity.IntegrityError, match="beta.safetensors"):
        vocab.load_encoded(study, "beta")
    logs = []
    vocab.build(study, VocabSettings(vocab_size=60), log=logs.append)
    assert any("fails its checks" in line for line in logs)
    vocab.load_encoded(study, "beta")
    # result rows edited with another tool (pandas) lose their recorded hash: refused
    run = tmp_path / "chain"
    write_parquet(run / "results.parquet", pd.DataFrame({"round": [0, 1], "test_acc": [0.5, 0.6]}))
    integrity.read_parquet(run / "results.parquet")
    edited = pd.read_parquet(run / "results.parquet")
    edited.loc[1, "test_acc"] = 0.99
    edited.to_parquet(run / "results.parquet", index=False)
    with pytest.raises(integrity.IntegrityError, match="no recorded table hash"):
        integrity.read_parquet(run / "results.parquet")


def test_item3_a_cell_is_complete_only_while_its_recorded_files_are_unchanged(tmp_path):
    """The batch marker records its inputs' hashes; a changed input makes the cell rerun, naming the file,
    the expected and the found hash (end to end on a real study: test_study.py)."""
    study = tmp_path / "outputs" / "s"
    write_parquet(study / "data" / "corpus.parquet", pd.DataFrame({"text": ["a"], "label": [1]}))
    write_parquet(study / "obtain/d/reset/seed0/h/results.parquet", pd.DataFrame({"round": [0]}))
    marker = study / "obtain/d/seed0/_COMPLETE.json"  # the cell obtain/d/seed0 runs the chains obtain/d/*/seed0/
    marker.parent.mkdir(parents=True)
    record = {"params_hash": "p", "outputs": stages.cell_outputs(study, "obtain/d/seed0"),
              "inputs": stages.cell_inputs(study, ["data"])}
    assert set(record["inputs"]) == {"data/corpus.parquet"} and len(record["outputs"]) == 1
    marker.write_text(json.dumps(record))
    assert batch.marker_problem(marker, "p", study) is None
    assert batch.marker_problem(marker, "other", study) == "its parameters (or those of its inputs) changed"
    expected = record["inputs"]["data/corpus.parquet"]
    write_parquet(study / "data" / "corpus.parquet", pd.DataFrame({"text": ["b"], "label": [1]}))
    why = batch.marker_problem(marker, "p", study)
    found = integrity.file_sha256(study / "data" / "corpus.parquet")
    assert why == f"data/corpus.parquet changed since it ran (expected sha256 {expected[:16]}, found {found[:16]})"
    # a marker naming files outside the study is refused, never read
    marker.write_text(json.dumps({**record, "inputs": {"../../../../dev/zero": expected}}))
    assert "refused" in batch.marker_problem(marker, "p", study)
    marker.write_text(json.dumps({"params_hash": "p"}))  # an older ltnb's marker: rerun
    assert "no content hashes" in batch.marker_problem(marker, "p", study)


# ---------------------------------------------------------------- item 4: malformed records skipped and counted

HOSTILE = [
    b"[" * 2000,                                                                   # 1 deep nesting
    b'{"overall": 5.0, "reviewText": "x", "deep": ' + b"[" * 1900 + b"]" * 1900 + b"}",  # 2 deep, valid JSON
    b'{"overall": 5.0, "reviewText": "digits", "n": ' + b"1" * 4400 + b"}",          # 3 integer too long
    b'{"overall": ' + b"9" * 400 + b', "reviewText": "huge rating"}',               # 4 rating overflows float
    b'{"overall": 1.0, "reviewText": "lone \\ud800 surrogate"}',                   # 5 not valid Unicode
    b'{"overall": 4.0, "reviewText": "' + b"y" * 7000 + b'"}',                      # 6 longer than the limit
    b"\xff\xfe\x00 not utf-8",                                                       # 7 undecodable
    json.dumps({"overall": 5.0, "reviewText": "fine"}).encode(),                    # 8 kept
]


@pytest.mark.parametrize("gz", [False, True])
def test_item4_hostile_mcauley_lines_are_skipped_and_counted(tmp_path, monkeypatch, gz):
    monkeypatch.setattr(amazon, "MAX_RECORD_BYTES", 6000)
    data_ = b"".join(line + b"\n" for line in HOSTILE)
    path = tmp_path / ("x.json.gz" if gz else "x.json")
    path.write_bytes(gzip.compress(data_) if gz else data_)
    rep = amazon.LoadReport()
    df = amazon.load_mcauley(path, report=rep, progress=False)
    assert df["text"].tolist() == ["fine"]
    d = rep.to_dict()[str(path)]
    assert d["kept"] == 1 and d["read"] == 7, d  # the line too long is skipped before it is read as a record
    assert d["skipped"] == {"invalid json (nested too deeply)": 2, "invalid json": 1,
                            f"rating {'9' * 40!r} is not a number": 1,
                            "text is not valid Unicode (lone surrogate)": 1, "line too long (over 6000 bytes)": 1,
                            "undecodable bytes (not UTF-8)": 1}, d
    assert d["first_error"].startswith("line 1:")
    # strict: a clear error naming the file and line, never a RecursionError
    for lineno in range(1, 8):
        path.write_bytes(b"".join(line + b"\n" for line in [HOSTILE[-1]] * (lineno - 1) + [HOSTILE[lineno - 1]]))
        with pytest.raises(amazon.DataFormatError, match=f"{path.name}:{lineno}: "):
            amazon.load_mcauley(path, strict=True, progress=False)


# ---------------------------------------------------------------- item 7: theta_0 stays inside the study

def _ticket_with_theta(tmp_path: Path, theta: str) -> Path:
    """A well-formed ticket (its content hash recomputed) whose metadata names ``theta`` as theta_0."""
    path, *_ = write_ticket(tmp_path)
    tensors, meta = _state(path)
    tickets.save_state(path, tensors, {**meta, "theta_0": theta})
    return path


@pytest.mark.parametrize("theta", ["../../../../../../../../etc/passwd", "../" * 12 + "etc/hostname"])
def test_item7_theta_0_outside_the_study_is_refused(tmp_path, theta):
    path = _ticket_with_theta(tmp_path, theta)
    with pytest.raises(ValueError, match="leads outside"):
        tickets.load(path)


def test_item7_symlinked_theta_0_leading_out_is_refused(tmp_path):
    path, *_ = write_ticket(tmp_path)
    theta = tmp_path / "theta_0.safetensors"
    theta.unlink()
    theta.symlink_to("/etc/passwd")
    with pytest.raises(ValueError, match="leads outside"):
        tickets.load(path)


def test_item7_device_files_and_fifos_are_refused_without_reading_them(tmp_path):
    """/dev/zero hung tickets.load; a FIFO would hang it too. Run in a child so a hang fails the test."""
    absolute = _ticket_with_theta(tmp_path / "a", "/dev/zero")
    (tmp_path / "b").mkdir()
    os.mkfifo(tmp_path / "b" / "fifo")
    fifo = _ticket_with_theta(tmp_path / "b", "fifo")
    code = ("import sys\nfrom ltnb.core import tickets\nfor p in sys.argv[1:]:\n"
            "    try:\n        tickets.load(p)\n    except ValueError as e:\n        print('refused:', e)\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(absolute), str(fifo)], capture_output=True, text=True,
                              timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("tickets.load hung on a theta_0 that is a device file or a FIFO")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("refused:")]
    assert len(lines) == 2, proc.stdout + proc.stderr
    assert "absolute paths are refused" in lines[0] and "not a regular file" in lines[1]


# ---------------------------------------------------------------- item 8: domain names never leave their place

def _plan(tmp_path: Path, stages: list[dict]) -> Path:
    for st in stages:
        st["notebook"] = str(ROOT / "notebooks" / NOTEBOOKS[st["stage"]])
    p = tmp_path / "plan.yaml"
    p.write_text(yaml.safe_dump({"study": "s", "stages": stages}))
    return p


def test_item8_bad_domain_names_are_refused_in_plans(tmp_path):
    for bad in ("../../..", "..", "a/b", ".hidden", "x__y"):
        p = _plan(tmp_path, [{"stage": "data", "params": {"corpus": "amazon", "amazon_files": {bad: "reviews.json"}}}])
        with pytest.raises(PlanError, match="keys are each a name of letters, digits"):  # one rule: ltnb.base.config.NAME
            load_plan(p)
    p = _plan(tmp_path, [{"stage": "data", "params": {"corpus": "amazon", "amazon_files": {"..": "r.json", "b": "r.json"}}},
                         {"stage": "obtain", "params": {"strategies": ["reset"]}, "grid": {"domain": [".."], "seed": [0]}}])
    with pytest.raises(PlanError, match=r"stages\[1\].grid.domain\[0\].*domain = '..' is not allowed; must be a name"):
        load_plan(p)
    assert not (tmp_path / "outputs").exists()


def test_item8_bad_domain_names_never_become_file_names(tmp_path):
    reviews = tmp_path / "reviews.json"
    reviews.write_text("".join(json.dumps({"overall": 1.0 + 4 * (i % 2), "reviewText": f"review {i}"}) + "\n"
                               for i in range(40)))
    study = tmp_path / "deep" / "er" / "study"
    # refused by DataSettings itself (names are checked where the setting is defined)
    with pytest.raises(ValueError, match="amazon_files = .*each a name of letters"):
        data.build(study, DataSettings(corpus="amazon", amazon_files={"../../..": str(reviews)}, per_domain=20), log=lambda *_: None)
    with pytest.raises(ValueError, match="domains = .*each a name of letters"):
        data.build(study, DataSettings(corpus="amazon", amazon_files={"ok": str(reviews)}, domains=[".."]), log=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reviews.json"]  # nothing written anywhere
    for bad in ("..", ".", "../x"):
        with pytest.raises(ValueError, match="not a valid name"):
            paths.obtain_dir(study, bad, "reset", 0)
        with pytest.raises(ValueError, match="not a valid name"):
            lottery.obtain(study, bad, data=synthetic_data(20), vocab_size=50, data_key=KEY, settings=SMALL,
                           progress=False)
    assert not study.exists()


# ---------------------------------------------------------------- also seen: permissions, archive message, Blitzer

def test_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    want = 0o666 & ~umask
    t = tickets.save_state(tmp_path / "t.safetensors", {"w": torch.ones(3)})
    s = tokens.save_splits(tmp_path / "s.safetensors", {"train": tokens.TokenSplit.from_lists([[2, 3]], [1])})
    path, *_ = write_ticket(tmp_path / "ticket")
    for f in (t, s, path, tmp_path / "ticket" / "theta_0.safetensors"):
        assert stat.S_IMODE(f.stat().st_mode) == want, f
    study, _ = tiny_corpus(tmp_path)
    vocab.build(study, VocabSettings(vocab_size=60), log=lambda *_: None)
    folder = vocab.current(study)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((folder / "tokens" / "alpha.safetensors").stat().st_mode) == want


def test_a_corrupt_archive_tells_to_fetch_with_force(tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / corpus.SENTIMENT.filename).write_bytes(b"not a tarball")
    with pytest.raises(corpus.CorpusError) as e:
        corpus.fetch(tmp_path, force=True, log=lambda *_: None)
    assert "ltnb data fetch --force" in str(e.value)
    assert "`ltnb data fetch`" not in str(e.value)
    assert not (downloads / corpus.SENTIMENT.filename).exists()  # refused and removed


def test_a_blitzer_file_of_pure_garbage_is_in_the_load_report(tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "negative.review").write_bytes(os.urandom(3000).replace(b"<", b"(") + b"\nno review here\n")
    (folder / "positive.review").write_text("<review>\n<review_text>\nA fine book.\n</review_text>\n</review>\n")
    rep = amazon.LoadReport()
    df = amazon.load_blitzer(folder, report=rep)
    assert df["text"].tolist() == ["A fine book."]
    d = rep.to_dict()
    neg = d[str(folder / "negative.review")]
    assert neg["read"] == 0 and neg["kept"] == 0 and neg["sampled"] == 0
    assert neg["skipped"].get("text outside <review>", 0) >= 1
    assert str(folder / "negative.review") in rep.summary()


# ---------------------------------------------------------------- also seen: leftover temporary files, two batches

def test_leftover_temporary_files_are_removed_at_the_next_run(tmp_path):
    p = tmp_path / "plan.yaml"
    p.write_text(plan_text())
    study = load_plan(p).study_dir
    left = [study / "data" / ".corpus.parquet.k2x9_q1z.tmp",
            study / "obtain/products/reset/seed0/abc123/.results.parquet.abcdefgh.tmp",
            study / "obtain/products/reinit/seed0/abc123/.round_01.safetensors.0a1b2c3d.tmp"]
    for f in left:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"half a file")
    vocab_tmp = study / "data" / "vocab" / ".29552be85e.x1y2z3w4"
    (vocab_tmp / "tokens").mkdir(parents=True)
    kept = [study / "data" / "notes.tmp", study / "obtain/products/reset/seed0/abc123/results.parquet"]
    for f in kept:
        f.write_text("keep me")
    busy = study / "obtain/movies/random/seed0/abc123" / ".results.parquet.zzzzzzzz.tmp"  # another batch writes it
    busy.parent.mkdir(parents=True)
    busy.write_text("being written")
    (study / "obtain/movies/seed0").mkdir(parents=True)  # ... holding the lock of its cell, obtain/movies/seed0
    lock = integrity.CellLock(study / "obtain/movies/seed0")
    assert lock.acquire(wait=False)
    try:
        out = io.StringIO()
        code = batch.main(p, only="data", workers=1, out=out, estimate=False)
    finally:
        lock.release()
    assert code == 0, out.getvalue()
    assert "removed 4 leftover temporary file(s)" in out.getvalue()
    assert not any(f.exists() for f in left) and not vocab_tmp.exists()
    assert all(f.exists() for f in kept) and busy.exists()


def test_two_batches_on_one_study_run_each_cell_once(tmp_path):
    text = plan_text(obtain_params="rounds: 2, sleep: 2").split("  - stage: transfer")[0]
    p = tmp_path / "plan.yaml"
    p.write_text(text)
    study = load_plan(p).study_dir
    code = f"import sys; from ltnb.study import batch; sys.exit(batch.main({str(p)!r}, workers=2, estimate=False))"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              start_new_session=True) for _ in range(2)]
    outs = []
    try:
        for proc in procs:
            outs.append(proc.communicate(timeout=240)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert [proc.returncode for proc in procs] == [0, 0], outs
    runs = {f.parent.relative_to(study).as_posix(): len(f.read_text().splitlines()) for f in study.rglob("runs.log")}
    assert len(runs) == 4 and set(runs.values()) == {1}, runs  # every cell ran once, in one of the two batches
    both = "\n".join(outs)
    done = both.count("\ndone     ")
    waited = both.count("completed by another batch")
    assert done == 4 and waited >= 1, both
    for out in outs:
        assert "failed:  0" in out and "not run: 0" in out


# ---------------------------------------------------------------- item 6 and "killing the batch ends its kernels"

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dask() -> str:
    return str(Path(sys.executable).with_name("dask"))


@pytest.fixture(scope="module")
def dask_scheduler(tmp_path_factory):
    """A real `dask scheduler` process on 127.0.0.1."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("sched") / "scheduler.log", "w")
    proc = subprocess.Popen([_dask(), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"tcp://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


def _start_worker(address: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([_dask(), "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
                             "--host", "127.0.0.1"], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _start_batch(plan: Path, address: str, worker_timeout: float | None = None) -> subprocess.Popen:
    timeout = "" if worker_timeout is None else f", worker_timeout={worker_timeout}"
    code = (f"import sys; from ltnb.study import batch; "
            f"sys.exit(batch.main({str(plan)!r}, scheduler={address!r}, estimate=False{timeout}))")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)


def _kernel_pid(study: Path, timeout: float = 120) -> int:
    """The kernel of the first obtain cell that started (the fixture writes its pid into partial.txt)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for f in study.glob("obtain/*/seed0/partial.txt"):
            text = f.read_text().strip()
            if text.isdigit():
                return int(text)
        time.sleep(0.2)
    raise AssertionError("no obtain cell started")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return not _alive(pid)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_killing_the_batch_ends_its_kernels(tmp_path, dask_scheduler):
    worker = _start_worker(dask_scheduler, tmp_path / "worker.log")
    p = tmp_path / "plan.yaml"
    p.write_text(plan_text(obtain_params="rounds: 2, sleep: 120"))
    batch_proc = _start_batch(p, dask_scheduler)
    try:
        kernel = _kernel_pid(load_plan(p).study_dir)
        assert _alive(kernel)
        os.killpg(batch_proc.pid, signal.SIGTERM)  # `kill` of the batch's process group
        out, _ = batch_proc.communicate(timeout=60)
        assert _gone_within(kernel, 20), "the cell's kernel kept running after the batch was killed"
        assert batch_proc.returncode == 130 and "partial summary (interrupted)" in out, out
        assert worker.poll() is None  # the worker is not ours to kill; it is free again
    finally:
        _stop(batch_proc)
        _stop(worker)


def test_item6_the_batch_stops_when_no_worker_is_left(tmp_path, dask_scheduler):
    worker = _start_worker(dask_scheduler, tmp_path / "worker.log")
    p = tmp_path / "plan.yaml"
    p.write_text(plan_text(obtain_params="rounds: 2, sleep: 120"))
    batch_proc = _start_batch(p, dask_scheduler, worker_timeout=5)
    try:
        kernel = _kernel_pid(load_plan(p).study_dir)
        t0 = time.time()
        os.killpg(worker.pid, signal.SIGKILL)  # the last worker (nanny and worker process) dies
        try:
            out, _ = batch_proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the batch kept waiting with no worker left")
        took = time.time() - t0
        assert batch_proc.returncode == 1, out
        assert "no Dask worker is left at the scheduler" in out and "none for 5 s" in out
        assert "\nsummary: study t" in out and "not run:" in out and "no Dask worker left" in out
        assert "done     data" in out and "    data:" not in out.split("not run:")[1]  # finished before: kept
        assert took < 40, took
        assert _gone_within(kernel, 20)
    finally:
        _stop(batch_proc)
        _stop(worker)


def test_item6_the_batch_stops_when_no_worker_arrives(tmp_path, dask_scheduler):
    p = tmp_path / "plan.yaml"
    p.write_text(plan_text())
    batch_proc = _start_batch(p, dask_scheduler, worker_timeout=3)
    try:
        out, _ = batch_proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the batch kept waiting for a worker that never came")
    finally:
        _stop(batch_proc)
    assert batch_proc.returncode == 1 and "no Dask worker has connected" in out and "not run: 6" in out, out


# ---------------------------------------------------------------- item 5: the explorer serves its study only

def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=120) as r:
        return r.read().decode("utf-8", "replace")


def _kernels_of(pid: int) -> list[int]:
    import psutil

    try:
        return [k.pid for k in psutil.Process(pid).children(recursive=True) if "ipykernel" in " ".join(k.cmdline())]
    except psutil.NoSuchProcess:
        return []


def test_item5_the_explorer_serves_its_study_only_culls_idle_kernels_and_stops_on_sigterm(tmp_path):
    from test_phase import write_study

    study = write_study(tmp_path / "served" / "study")
    secret = tmp_path / "other" / "study"  # a readable study elsewhere on the machine
    write_study(secret)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("LTNB_STUDY", "LTNB_OUTPUTS", "QUERY_STRING")}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("ltnb")), "explore", str(study), "--port", str(port),
                             "--cull-idle", "3"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        explore.wait_for_http(url, proc=proc, timeout=90)
        asked = (str(secret), "/no/such/folder")  # more refusals (/etc, ../..): test_item5_page_gives_plain_messages
        with ThreadPoolExecutor(2) as pool:
            pages = list(pool.map(lambda a: _get(url + "?study=" + urllib.request.quote(a, safe="")), asked))
        for a, page in zip(asked, pages):
            assert "is not one of its studies" in page, a
            assert "Traceback" not in page and '"output_type": "error"' not in page and "There was an error" not in page
            assert str(study) not in page and "result rows" not in page, a  # no server path, nothing of the other study
        voila = [c for c in __import__("psutil").Process(proc.pid).children() if "voila" in " ".join(c.cmdline())]
        assert len(voila) == 1
        deadline = time.time() + 30  # the kernels of those page loads are idle and unconnected: culled
        while _kernels_of(voila[0].pid) and time.time() < deadline:
            time.sleep(0.5)
        assert not _kernels_of(voila[0].pid), "idle kernels of closed pages were not culled"
        page = _get(url)  # the served study itself
        assert "is not one of its studies" not in page and "Traceback" not in page
        assert '"output_type": "error"' not in page
        kernels = _kernels_of(voila[0].pid)
        assert kernels
        t0 = time.time()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        assert time.time() - t0 < 15, time.time() - t0
        assert all(_gone_within(pid, 5) for pid in [voila[0].pid, *kernels])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_item5_page_gives_plain_messages_in_the_app(tmp_path, monkeypatch):
    from test_phase import write_study

    outputs = tmp_path / "outputs"
    write_study(outputs / "alpha")
    write_study(outputs / "beta")
    monkeypatch.delenv(explore.STUDY_ENV, raising=False)
    monkeypatch.setenv(explore.OUTPUTS_ENV, str(outputs))
    for asked, want in (("beta", None), ("../outputs/beta", "not one of them"), ("/etc", "not one of them"),
                        ("../../", "not one of them"), (str(outputs / "beta"), "not one of them"),
                        ("gamma", "not one of them"), (None, "Choose a study: ?study=alpha, ?study=beta")):
        monkeypatch.setenv("QUERY_STRING", f"study={urllib.request.quote(asked, safe='')}" if asked else "")
        shown = explore.page("outputs/demo")
        if want is None:
            assert isinstance(shown, explore.Explorer) and shown.study == str(outputs / "beta")
        else:
            assert isinstance(shown, explore.Message) and want in shown.text
            assert str(tmp_path) not in shown.text.replace(repr(asked), "")  # no path but the one asked for
    # the served study gone, or its result table changed: a message, not a traceback
    monkeypatch.delenv(explore.OUTPUTS_ENV)
    monkeypatch.setenv(explore.STUDY_ENV, str(outputs / "gone"))
    monkeypatch.setenv("QUERY_STRING", "")
    assert "is not on this server" in explore.page("x").text
    monkeypatch.setenv(explore.STUDY_ENV, str(outputs / "alpha"))
    for asked in ("/etc", "../../", str(outputs / "beta"), "beta"):
        monkeypatch.setenv("QUERY_STRING", f"study={urllib.request.quote(asked, safe='')}")
        assert "is not one of its studies" in explore.page("x").text
    monkeypatch.setenv("QUERY_STRING", "study=alpha")
    assert isinstance(explore.page("x"), explore.Explorer)
    table = next((outputs / "alpha").rglob("results.parquet"))
    pd.read_parquet(table).to_parquet(table, index=False)
    assert "changed or damaged" in explore.page("x").text
