"""The federated stage (issue 11): a 2-client, 2-round run through the real Flower simulation.

One module fixture builds a tiny study (the built-in corpus, products and movies, 120 sentences each, a
smoke-size model, the products reset chain to IMP round 2) and executes notebook 07 on it through
papermill: Flower's simulation engine on a private Ray head, products the server, movies split into
2 clients, the dense baseline and the 57.6% ticket (round 2) with masks-reset, 2 federated rounds,
``audit`` on. The tests read what it wrote. The plan integration (``ltnb batch``) is checked with
``load_plan`` on the shipped plan, a test plan and a bad plan; the runner itself is the one
tests/test_study.py runs. The supervisor that ends a killed kernel's Ray is tested on a stand-in.
"""
import io
import json
import math
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import papermill as pm
import pytest
import torch
import yaml

from conftest import ROOT
from ltnb.analysis import federated_results
from ltnb.core import tickets
from ltnb.study import batch, federated, plan as planmod
from ltnb.text import tokens, vocab
from ltnb.base.config import DataSettings, FederatedSettings, LotterySettings, VocabSettings
from ltnb.core.lottery import chain_dir, ticket_name

DEFAULTS = {"seed": 0, "max_epochs": 1, "patience": 1, "rounds": 2, "embed_dim": 16, "channels": 8, "hidden": 8,
            "batch_size": 32, "progress": False}
FEDERATED = {"ticket_rounds": [2], "clients_per_domain": 2, "fl_rounds": 2, "local_epochs": 1, "audit": True}
# Flower's framing per message (header and object-tree protobufs, object headers with 64-hex ids,
# the npy header, record and config keys, the audit record of a reply): measured 1.5-2.2 KB here for a
# message of one array; a changed-rows reply (three arrays, more metrics, a longer audit record) 3.4 KB.
FRAMING_LIMIT = 4 * 1024


def _plan(outputs, **federated_params):
    Path(outputs).mkdir(parents=True, exist_ok=True)  # an absolute outputs folder must exist (ltnb.study.plan)
    nb = {"data": "01_data.ipynb", "obtain": "03_obtain.ipynb", "federated": "05_federated.ipynb"}
    return {
        "study": "fed", "outputs": str(outputs), "defaults": dict(DEFAULTS),
        "stages": [
            {"stage": "data", "notebook": str(ROOT / "notebooks" / nb["data"]),
             "params": {"corpus": "builtin", "domains": ["products", "movies"], "per_domain": 120, "vocab_size": 300,
                        "max_len": 100}},
            {"stage": "obtain", "notebook": str(ROOT / "notebooks" / nb["obtain"]),
             "params": {"strategies": ["reset"]}, "grid": {"domain": ["products"], "seed": [0]}},
            {"stage": "federated", "notebook": str(ROOT / "notebooks" / nb["federated"]),
             "params": {"strategies": ["masks-reset"], **FEDERATED, **federated_params},
             "grid": {"source": ["products"], "seed": [0]}},
        ],
    }


@pytest.fixture(scope="module")
def fed(tmp_path_factory, builtin_cache):
    """The study's data and the source's reset chain through the API (seconds), then notebook 05 (05_federated) through
    papermill: the real notebook, the real Flower simulation."""
    from ltnb.core import lottery
    from ltnb.text import data

    tmp = tmp_path_factory.mktemp("fed")
    study = tmp / "outputs" / "fed"
    quiet = lambda *_: None  # noqa: E731
    data.build(study, DataSettings(corpus="builtin", domains=["products", "movies"], per_domain=120, seed=0), log=quiet)
    vocab.build(study, VocabSettings(vocab_size=300, max_len=100), log=quiet)
    lottery.obtain(study, "products", seed=0, strategy="reset", settings=_settings(), progress=False)
    cell = study / "federated" / "products" / "seed0"
    cell.mkdir(parents=True)
    params = {"study_dir": str(study), "source": "products", "seed": 0, "strategies": ["masks-reset"],
              "progress": False, "settings": {**FEDERATED, **{k: v for k, v in DEFAULTS.items() if k not in ("seed", "progress")}}}
    error = None
    try:
        pm.execute_notebook(str(ROOT / "notebooks" / "05_federated.ipynb"), str(cell / "05_federated.ipynb"),
                            parameters=params, kernel_name="python3", progress_bar=False, cwd=str(ROOT))
    except Exception as e:  # noqa: BLE001 - reported by every test that needs the run
        error = f"{type(e).__name__}: {e}"
    run_dir = next((p.parent for p in cell.glob("*/settings.json")), None)
    path = tmp / "plan.yaml"
    path.write_text(yaml.safe_dump(_plan(tmp / "outputs")))
    return {"code": 0 if error is None else 1, "log": error, "study": study, "cell": cell, "run_dir": run_dir,
            "plan": path}


def _settings():
    return LotterySettings.from_params(**{k: DEFAULTS[k] for k in ("rounds", "max_epochs", "patience", "embed_dim",
                                                                     "channels", "hidden", "batch_size")})


def test_the_stage_runs_through_flower_and_keeps_its_record(fed):
    assert fed["code"] == 0, fed["log"]
    executed = fed["cell"] / "05_federated.ipynb"
    nb = nbformat.read(executed, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not any(o.get("output_type") == "error" for o in outputs)
    assert any("<svg" in json.dumps(o.get("data", {})) for o in outputs), "the chart is drawn"
    assert (fed["run_dir"] / "_COMPLETE.json").exists()
    rows = pd.read_parquet(fed["run_dir"] / "results.parquet")
    assert sorted(set(zip(rows.strategy, rows.ticket_round))) == [("dense", 0), ("dense-naive", 0), ("masks-reset", 2)]
    assert dict(zip(rows.strategy, rows.protocol)) == {"dense": "rows", "dense-naive": "full", "masks-reset": "rows"}
    assert sorted(rows.fl_round.unique()) == [0, 1, 2] and set(rows.clients) == {2}
    assert rows.global_acc.between(0, 1).all() and {"acc_products", "acc_movies"} <= set(rows.columns)
    # the hash folder name is the settings hash recorded in the rows and settings.json
    info = json.loads((fed["run_dir"] / "settings.json").read_text())
    assert info["settings_hash"] == fed["run_dir"].name == rows.settings_hash.iloc[0]
    assert info["client_domains"] == ["movies"] and info["clients_per_domain"] == 2


def test_pruned_entries_stay_exactly_zero_in_the_global_model(fed):
    assert fed["code"] == 0, fed["log"]
    chain = chain_dir(fed["study"], "products", "reset", 0, _settings(), vocab.data_key(fed["study"]))
    source = tickets.load(chain / ticket_name(2))
    final = tickets.load(fed["run_dir"] / "runs" / "masks-reset-r02" / federated.GLOBAL)
    assert 0.5 < final.sparsity < 0.65 and final.sparsity == pytest.approx(source.sparsity)
    for name, mask in source.masks.items():
        assert torch.equal(final.masks[name], mask), name  # the ticket's mask, unchanged
        assert (final.trained[name][~mask] == 0).all(), name  # pruned entries exactly zero
    # the survivors did train: the global model moved away from its initial values (theta_0 under the mask)
    moved = sum(float((final.trained[n] - source.init[n] * source.masks[n]).abs().sum()) for n in source.masks)
    assert moved > 0
    dense = tickets.load(fed["run_dir"] / "runs" / "dense-r00" / federated.GLOBAL)
    assert dense.sparsity == 0 and not all(torch.equal(dense.trained[n], dense.init[n]) for n in dense.trained)


def test_byte_counts_match_the_formula_within_flowers_framing(fed):
    assert fed["code"] == 0, fed["log"]
    msgs = federated_results.load_messages(fed["run_dir"])
    rows = pd.read_parquet(fed["run_dir"] / "results.parquet")
    chain = chain_dir(fed["study"], "products", "reset", 0, _settings(), vocab.data_key(fed["study"]))
    mask = tickets.load(chain / ticket_name(2)).masks
    n_all = mask.total()
    kept = {"dense-naive-r00": n_all, "dense-r00": n_all, "masks-reset-r02": mask.kept()}
    bits = sum(-(-m.numel() // 8) for m in mask.values() if not bool(m.all()))  # the pruned tensors' bits
    bits += len(mask)  # and the mask record's flag byte per tensor (pruned or not)
    assert msgs.groupby(["run", "fl_round"]).size().eq(4).all()  # 2 clients x (down + up)
    embed_dim = DEFAULTS["embed_dim"]
    n_embedding = vocab.info(fed["study"])["vocab_size"] * embed_dim
    framing = []
    for _, m in msgs.iterrows():
        full = m.run == "dense-naive-r00" or (m.direction == "down" and m.fl_round == 1)
        if full:  # every survivor (and the mask bits once)
            payload = 4 * kept[m.run] + (bits if m.has_mask else 0)
            assert m.values_bytes == 4 * kept[m.run] and m.indices_bytes == 0 and m.rows == 0
        else:  # changed rows: 4 bytes per value of the rows sent and of the other tensors, 2 per row index (uint16)
            assert m.indices_bytes == 2 * m.rows and m.mask_bytes == 0
            if m.run == "dense-r00":
                assert m.values_bytes == 4 * (n_all - n_embedding + m.rows * embed_dim)
            else:
                assert m.values_bytes <= 4 * kept[m.run]
            payload = m.values_bytes + m.indices_bytes
        assert m.mask_bytes == (bits if m.has_mask else 0)
        assert m.mask_bytes + m.values_bytes + m.indices_bytes == payload
        assert 0 < m.bytes - payload <= FRAMING_LIMIT, (m.run, m.fl_round, m.direction, m.bytes, payload)
        if full:
            framing.append((m.run, m.direction, m.has_mask, m.bytes - payload))
    # a client sends only rows its training looked up (lazy decay), and fewer than all of them here
    up = msgs[(msgs.direction == "up") & (msgs.run != "dense-naive-r00")]
    assert (up.rows <= up.rows_touched).all() and (up.rows > 0).all()
    assert (up[up.run == "dense-r00"].rows < vocab.info(fed["study"])["vocab_size"]).all()
    # the mask travels once: to each client in the first round of the ticket run, never to dense
    sent = msgs[msgs.has_mask]
    assert (sent.run == "masks-reset-r02").all() and (sent.fl_round == 1).all() and (sent.direction == "down").all()
    assert sorted(sent.partition) == [0, 1]
    # framing does not grow with the payload: the dense run's first messages (every value) and the ticket's
    # (its survivors and the mask) carry the same overhead up to the mask record's own
    f = pd.DataFrame(framing, columns=["run", "direction", "has_mask", "framing"])
    down = f[f.direction == "down"].groupby("run").framing
    assert (down.max() - down.min()).max() < 64
    assert abs(down.mean()["dense-r00"] - down.mean()["dense-naive-r00"]) < 64
    assert 0 <= down.mean()["masks-reset-r02"] - down.mean()["dense-r00"] < 2048  # measured 1.4 KB
    # the per-round totals in the results are the sums of the messages
    per_round = msgs.groupby(["run", "fl_round"]).bytes.sum()
    for _, r in rows[rows.fl_round > 0].iterrows():
        assert r.bytes_round == per_round[(federated.run_name(r.strategy, r.ticket_round), r.fl_round)]
    for col in ("mask", "values", "indices"):
        assert (rows[rows.fl_round > 0][f"{col}_bytes_round"] == rows[rows.fl_round > 0].apply(
            lambda r: msgs[(msgs.run == federated.run_name(r.strategy, r.ticket_round)) & (msgs.fl_round == r.fl_round)][
                f"{col}_bytes"].sum(), axis=1)).all()
    total = rows.groupby("strategy").bytes_cumulative.max()
    assert total["masks-reset"] < 0.75 * total["dense"] and total["dense"] < total["dense-naive"]


def test_wire_bytes_grow_by_exactly_the_values_added(monkeypatch):
    """Flower's serialization of a survivors vector: 1000 more float32 values are 4000 more bytes."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    for k, v in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):  # what a ServerApp process has
        monkeypatch.setattr(TaskIdentity, k, v)

    def size(n):
        content = RecordDict({"arrays": ArrayRecord({"survivors": Array(np.ones(n, dtype=np.float32))}),
                              "config": ConfigRecord({"run": "x", "server-round": 1})})
        return federated.wire_bytes(Message(content=content, message_type=MessageType.TRAIN, dst_node_id=7))

    small, large = size(10_000), size(11_000)
    assert abs((large - small) - 4000) <= 2  # only the digits of the lengths in the headers may differ
    assert 0 < small - 40_000 <= FRAMING_LIMIT


def test_the_same_message_counts_the_same_bytes_whatever_ids_flower_draws(monkeypatch):
    """Flower draws run, node and task ids at random (uint64 varints, 1-10 bytes); counted as drawn, the
    same message was 2-6 bytes longer or shorter in another run. ``wire_bytes`` counts them at their
    widest: the same content counts the same bytes under any ids, the message itself left untouched."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    def sizes(run_id, node_id, task_id):
        for k, v in (("_task_id", task_id), ("_run_id", run_id), ("_node_id", 1)):
            monkeypatch.setattr(TaskIdentity, k, v)
        content = RecordDict({"arrays": ArrayRecord({"survivors": Array(np.arange(500, dtype=np.float32))}),
                              "config": ConfigRecord({"run": "masks-reset-r02", "server-round": 3})})
        down = Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node_id)
        ids = (down.metadata.run_id, down.metadata.dst_node_id, down.object_id)
        up = Message(RecordDict({"metrics": MetricRecord({"num-examples": 60, "train-seconds": 0.123456789}),
                                 "client": ConfigRecord({"partition-id": 1})}), reply_to=down)
        failed = Message(Error(code=0, reason="x"), reply_to=down)
        out = federated.wire_bytes(down), federated.wire_bytes(up), federated.wire_bytes(failed)
        assert (down.metadata.run_id, down.metadata.dst_node_id, down.object_id) == ids  # not changed by counting
        return out

    narrow, wide = sizes(1, 1, 1), sizes(2 ** 64 - 1, 2 ** 64 - 1, 2 ** 63 - 1)
    import random

    draw = random.Random(0)  # ids as Flower draws them: 64 random bits (the task id 63)
    mixed = [sizes(draw.getrandbits(64) or 1, draw.getrandbits(64) or 1, draw.getrandbits(63) or 1) for _ in range(6)]
    assert narrow == wide and all(m == narrow for m in mixed), (narrow, wide, mixed)
    # (as drawn, these ids give different sizes: what the count no longer depends on)
    from flwr.app.message import remove_content_from_message
    from flwr.common.serde import message_to_proto

    def header(node):
        return message_to_proto(remove_content_from_message(Message(content=RecordDict(), message_type=MessageType.TRAIN,
                                                                    dst_node_id=node))).ByteSize()

    assert header(2 ** 64 - 1) - header(1) == 9


def test_every_client_is_sent_the_same_bytes_for_the_same_model(fed):
    """In a real run, the messages of one run and round down to the clients carry the same records (the
    global model, the config, the mask once): they count the same bytes, whatever node ids they go to."""
    assert fed["code"] == 0, fed["log"]
    msgs = federated_results.load_messages(fed["run_dir"])
    down = msgs[msgs.direction == "down"]
    assert down.node_id.nunique() == 2
    per = down.groupby(["run", "fl_round", "has_mask", "rows"]).bytes.nunique()
    assert (per == 1).all(), down[["run", "fl_round", "node_id", "bytes"]]


def test_clients_never_receive_another_clients_data(fed):
    assert fed["code"] == 0, fed["log"]
    msgs = federated_results.load_messages(fed["run_dir"])
    shards = json.loads((fed["run_dir"] / "clients" / "clients.json").read_text())
    assert [s["domain"] for s in shards] == ["movies", "movies"] and [s["partition"] for s in shards] == [0, 1]
    # what the server sent: survivor values (float32), mask bits (uint8) and config keys; never token ids
    for _, m in msgs[msgs.direction == "down"].iterrows():
        records = json.loads(m.records)
        assert set(records) == ({"arrays", "config", "mask"} if m.has_mask else {"arrays", "config"})
        assert {a[0] for r in records.values() if r["type"] == "ArrayRecord" for a in r["arrays"].values()} <= {
            "float32", "uint8", "uint16"}
        assert set(records["arrays"]["arrays"]) in ({"survivors"}, {"rows", "embedding", "rest"})
        assert set(records["config"]["keys"]) == {"run", "server-round", "masked-tensors", "local-epochs", "protocol"}
    # what each client says it received is what was sent, and it trained on its own shard only
    up = msgs[msgs.direction == "up"]
    for _, m in up.iterrows():
        assert m.data_sha256 == shards[m.partition]["sha256"]
        sent = msgs[(msgs.direction == "down") & (msgs.run == m.run) & (msgs.fl_round == m.fl_round)
                    & (msgs.partition == m.partition)]
        assert len(sent) == 1 and json.loads(m.received) == json.loads(sent.records.iloc[0])
    assert up.groupby("node_id").partition.nunique().eq(1).all()  # a node is always the same client
    # the shards on disk: disjoint, their union is the domain's training split, each matches its fingerprint
    train, _ = vocab.load_encoded(fed["study"], "movies")
    seen = []
    for s in shards:
        data = tokens.load_splits(fed["run_dir"] / s["path"])
        assert tokens.fingerprint(data) == s["sha256"]
        seen += [tuple(data["train"].sequence(i).tolist()) + (int(data["train"].labels[i]),) for i in range(len(data["train"]))]
    everything = [tuple(train["train"].sequence(i).tolist()) + (int(train["train"].labels[i]),) for i in range(len(train["train"]))]
    assert sorted(seen) == sorted(everything)  # a partition: nothing lost, nothing shared


def test_bad_parameters_are_refused_before_anything_starts(fed, monkeypatch):
    assert fed["code"] == 0, fed["log"]

    def no_ray(*a, **k):
        raise AssertionError("Ray must not start for bad parameters")

    monkeypatch.setattr(federated.RayHead, "__enter__", no_ray)
    before = sorted(p.relative_to(fed["study"]) for p in fed["study"].rglob("*"))
    base = dict(seed=0, strategies=["masks-reset"], settings=_settings())
    fl = dict(ticket_rounds=[2], fl_rounds=2)
    with pytest.raises(ValueError, match=r"source = 'books': unknown domain; this study's domains: movies, products"):
        federated.prepare(fed["study"], "books", **base, fed_settings=FederatedSettings(**fl))
    with pytest.raises(ValueError, match=r"ticket_rounds = \[3\]: round 3 is beyond the chain.*allowed: 1\.\.2"):
        federated.prepare(fed["study"], "products", **base, fed_settings=FederatedSettings(**{**fl, "ticket_rounds": [3]}))
    with pytest.raises(ValueError, match=r"clients_per_domain = 0: expected an integer >= 1"):
        federated.prepare(fed["study"], "products", **base, fed_settings=FederatedSettings(**{**fl, "clients_per_domain": 0}))
    with pytest.raises(ValueError, match=r"client_domains: 'products' is the source"):
        federated.prepare(fed["study"], "products", **base,
                          fed_settings=FederatedSettings(**{**fl, "client_domains": ["products"]}))
    assert sorted(p.relative_to(fed["study"]) for p in fed["study"].rglob("*")) == before  # nothing created

    # the same mistakes in a plan: all reported at once by `ltnb batch`, nothing run
    bad = _plan(fed["study"].parent, ticket_rounds=[5], clients_per_domain=0)
    bad["stages"][2]["grid"]["source"] = ["books"]
    path = fed["plan"].parent / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(planmod.PlanError) as e:
        planmod.load_plan(path)
    text = str(e.value)
    assert "clients_per_domain = 0 is not allowed" in text and "unknown domain 'books'" in text
    bad = _plan(fed["study"].parent, ticket_rounds=[5])
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(planmod.PlanError, match=r"ticket_rounds = \[5\]: round 5 is beyond the source chain .* rounds 0\.\.2"):
        planmod.load_plan(path)
    code = batch.main(path, workers=1, out=io.StringIO(), estimate=False)
    assert code == 2
    assert sorted(p.relative_to(fed["study"]) for p in fed["study"].rglob("*")) == before


def test_the_ray_supervisor_ends_the_whole_group_when_its_parent_dies(tmp_path):
    """RayHead runs `ray start --block` under ``federated.simulation._SUPERVISOR``. Here the supervised command is
    a stand-in with Ray's shape (a leader that starts a child in its process group); the child ignores
    SIGTERM, as a hung Ray process would. Killing the supervisor's parent and its whole process group
    with SIGKILL (how `ltnb batch` kills a cancelled cell's kernel: no cleanup code runs) must still
    end the leader and the child: the supervisor has a session of its own (``federated.supervise``). (With real Ray: the head
    is gone about 5 s after its kernel is killed; checked by hand, too slow to start here.)"""
    import os
    import signal
    import subprocess
    import sys
    import time

    leader = tmp_path / "leader.py"
    leader.write_text(
        "import signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(600)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n")
    parent = tmp_path / "parent.py"  # plays the notebook kernel
    parent.write_text(
        "import subprocess, sys, time\n"
        "from ltnb.study.federated import supervise\n"
        f"sup = supervise([sys.executable, {str(leader)!r}], grace=2)\n"
        "print(sup.pid, flush=True)\n"
        "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, str(parent)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    supervisor = int(proc.stdout.readline())
    deadline = time.time() + 30
    group = None
    while time.time() < deadline and group is None:  # the leader: the supervisor's child, leading its own group
        kids = subprocess.run(["pgrep", "-P", str(supervisor)], capture_output=True, text=True).stdout.split()
        group = int(kids[0]) if kids else None
        time.sleep(0.1)
    assert group is not None and os.getpgid(group) == group

    def alive():  # processes of the group that still run (zombies only wait for init to reap them)
        ps = subprocess.run(["ps", "-eo", "pgid=,stat=,args="], capture_output=True, text=True).stdout
        return [ln for ln in ps.splitlines() if ln.split()[0] == str(group) and not ln.split()[1].startswith("Z")]

    while time.time() < deadline and len(alive()) < 2:  # leader and child are up
        time.sleep(0.1)
    assert len(alive()) == 2
    os.killpg(proc.pid, signal.SIGKILL)  # the "kernel" and everything in its process group
    proc.wait()
    while time.time() < deadline and alive():
        time.sleep(0.2)
    assert not alive(), f"survived: {alive()}"
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(supervisor)], capture_output=True, text=True).stdout.strip()
    assert state == "" or state.startswith("Z")  # gone, or a zombie (a session leader: "Zs") until init reaps it


def test_the_plan_places_the_stage_after_transfer_with_its_inputs(fed):
    p = planmod.load_plan(fed["plan"])
    assert planmod.STAGES.index("federated") == planmod.STAGES.index("transfer") + 1
    assert planmod.STAGES.index("federated") < planmod.STAGES.index("report")
    (cell,) = [c for c in p.cells if c.stage == "federated"]
    assert cell.key == "federated/products/seed0"
    assert set(cell.deps) == {"data", "obtain/products/seed0"}
    assert cell.parameters["settings"]["ticket_rounds"] == [2] and cell.parameters["strategies"] == ["masks-reset"]
    missing = _plan(fed["study"].parent)
    missing["stages"][1]["grid"]["domain"] = ["movies"]
    path = fed["plan"].parent / "missing.yaml"
    path.write_text(yaml.safe_dump(missing))
    with pytest.raises(planmod.PlanError, match="needs the obtain cell obtain/products/seed0"):
        planmod.load_plan(path)


def test_the_shipped_federated_plan_is_valid():
    p = planmod.load_plan(ROOT / "params" / "federated.yaml")
    assert p.study == "federated" and p.stages == ("data", "obtain", "federated", "report")
    cells = [c for c in p.cells if c.stage == "federated"]
    assert len(cells) == 15 and len([c for c in p.cells if c.stage == "obtain"]) == 15 and len(p.cells) == 32
    assert all(set(c.deps) == {"data", f"obtain/{c.params['source']}/seed{c.params['seed']}"} for c in cells)
    assert all(c.params["ticket_rounds"] == [3, 5, 7, 10] and max(c.params["ticket_rounds"]) <= c.params["rounds"]
               for c in cells)


def test_a_rerun_reads_back_and_a_killed_run_restarts_alone(fed, monkeypatch, tmp_path):
    assert fed["code"] == 0, fed["log"]
    study = tmp_path / "fed"
    shutil.copytree(fed["study"], study)  # a copy: this test deletes a finished run's file
    run_dir = study / fed["run_dir"].relative_to(fed["study"])
    calls = []
    monkeypatch.setattr(federated, "simulate", lambda plan, spec, runs, **kw: calls.append(list(runs)))
    cell = dict(seed=0, strategies=["masks-reset"], settings=_settings(),
                fed_settings=FederatedSettings(ticket_rounds=[2], clients_per_domain=2, fl_rounds=2, audit=True))
    quiet = dict(progress=False, log=lambda *_: None)
    first = pd.read_parquet(run_dir / "results.parquet")
    again = federated.run(federated.prepare(study, "products", **cell), **quiet)
    assert calls == []  # everything finished: read back, no simulation
    pd.testing.assert_frame_equal(again.reset_index(drop=True), first.reset_index(drop=True))
    # a run killed mid-way has no rounds.parquet (written last): only it runs again, from its round 0
    (run_dir / "runs" / "masks-reset-r02" / federated.ROUNDS).unlink()
    (run_dir / "_COMPLETE.json").unlink()
    rows = federated.run(federated.prepare(study, "products", **cell), **quiet)
    assert calls == [[("masks-reset", 2)]]
    assert set(rows.strategy) == {"dense", "dense-naive"} and not (run_dir / "_COMPLETE.json").exists()  # incomplete until it reruns


def test_the_report_shows_the_figure_table_and_savings(fed):
    assert fed["code"] == 0, fed["log"]
    from ltnb.analysis import report

    report.build(fed["study"], log=lambda *_: None)
    out = fed["study"] / "report"
    page = (out / "index.html").read_text()
    assert "Federated learning with a ticket" in page and page.count("<svg") >= 1
    assert (out / "federated.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tab = pd.read_csv(out / "federated_table.csv")
    assert set(tab.strategy) == {"dense", "dense-naive", "masks-reset"}
    assert (tab.MB_round_1 > 0).all() and tab.set_index("strategy").MB_round_1["masks-reset"] < tab.set_index("strategy").MB_round_1["dense"]


def _curves(runs, seeds=(0, 1, 2)):
    rows = []
    for strategy, tr, sp, per_seed, mb in runs:
        for seed in seeds:
            for r, a in enumerate(per_seed[seed]):
                rows.append({"settings_hash": "h", "source": "products", "seed": seed, "strategy": strategy,
                             "ticket_round": tr, "sparsity": sp, "fl_round": r, "global_acc": a, "source_acc": a,
                             "bytes_round": mb * 1e6 * (r > 0), "payload_round": 0, "clients": 4,
                             "bytes_cumulative": mb * 1e6 * r})
    return pd.DataFrame(rows)


def test_the_ratio_interval_matches_a_hand_worked_example():
    """Ratios 0.1, 0.2, 0.4: logs -2.302585, -1.609438, -0.916291; mean -1.609438 (geometric mean 0.2);
    sd ln 2 = 0.693147; se 0.400189; t(0.975; 2) = 4.302653; half-width 1.721873; interval
    exp(-3.331311) = 0.035746 .. exp(0.112435) = 1.119000."""
    ci = federated_results.ratio_interval([0.1, 0.2, 0.4])
    assert ci["ratio"] == pytest.approx(0.2) and ci["n"] == 3
    assert ci["lo"] == pytest.approx(0.035746, abs=1e-6) and ci["hi"] == pytest.approx(1.119000, abs=1e-6)
    one = federated_results.ratio_interval([0.5])
    assert one["ratio"] == pytest.approx(0.5) and math.isnan(one["lo"])
    same = federated_results.ratio_interval([0.25, 0.25, 0.25])
    assert same["lo"] == pytest.approx(0.25) and same["hi"] == pytest.approx(0.25)


def test_the_table_finds_the_target_per_seed_and_censors_what_misses_it():
    """Dense ends at 0.79, 0.80, 0.81 (mean 0.80; target 0.95 x 0.80 = 76%) and reaches it in round 2 of
    every seed (20 MB); the ticket in rounds 1, 2, 4 (0.5 MB a round: 0.5, 1.0, 2.0 MB: ratios 0.025,
    0.05, 0.1); the random ticket reaches it only in seed 0 (round 3, 1.5 MB)."""
    dense = {0: [0.5, 0.70, 0.78, 0.79], 1: [0.5, 0.70, 0.78, 0.80], 2: [0.5, 0.70, 0.79, 0.81]}
    ticket = {0: [0.5, 0.77, 0.78, 0.79, 0.80], 1: [0.5, 0.70, 0.77, 0.77, 0.78], 2: [0.5, 0.6, 0.7, 0.75, 0.765]}
    rnd = {0: [0.5, 0.6, 0.7, 0.765], 1: [0.5, 0.6, 0.7, 0.7], 2: [0.5, 0.6, 0.7, 0.7]}
    rows = _curves([("dense", 0, 0.0, dense, 10.0), ("dense-naive", 0, 0.0, dense, 40.0),
                    ("masks-reset", 7, 0.951, ticket, 0.5), ("masks-random", 7, 0.951, rnd, 0.5)])
    tab = federated_results.table(rows, target_share=0.95).set_index("strategy")
    assert list(tab.index[:2]) == ["dense", "dense-naive"]
    assert tab.loc["dense", "target_acc_%"] == pytest.approx(76.0)
    assert tab.loc["dense", "reached"] == "3/3" and tab.loc["dense", "MB_to_target"] == pytest.approx(20.0)
    assert tab.loc["dense", "ratio_vs_dense"] == pytest.approx(1.0)
    assert tab.loc["dense-naive", "ratio_vs_dense"] == pytest.approx(4.0)  # every value: 4x the changed rows here
    t = tab.loc["masks-reset"]
    assert t["reached"] == "3/3" and t["MB_to_target_per_seed"] == "0.5, 1, 2" and t["censored_seeds"] == 0
    ci = federated_results.ratio_interval([0.025, 0.05, 0.1])
    assert t["ratio_vs_dense"] == pytest.approx(0.05) and t["ratio_lo"] == pytest.approx(ci["lo"])
    assert t["ratio_hi"] == pytest.approx(ci["hi"]) and t["ratio_bound"] == ""
    r = tab.loc["masks-random"]  # seeds 1, 2 censored at everything they sent (1.5 MB): ratios 0.075 each
    assert r["reached"] == "1/3" and r["MB_to_target_per_seed"] == "1.5, not reached, not reached"
    assert r["censored_seeds"] == 2 and r["ratio_bound"] == "at least"
    assert r["ratio_vs_dense"] == pytest.approx(0.075)
    lines = federated_results.savings(tab.reset_index())
    assert any(line.startswith("products: 95.1% MASKS-RESET reaches 76.0% in 3/3 seeds; MB to target 20.0x less than the fair dense baseline")
               for line in lines), lines
    assert any("MASKS-RANDOM" in line and "at most 13.3x less" in line and "2 seed(s) censored" in line for line in lines)
    # a run that never reaches the target in any seed has no ratio, only its censored count
    never = {k: [0.5, 0.6, 0.7, 0.7] for k in (0, 1, 2)}
    tab = federated_results.table(_curves([("dense", 0, 0.0, dense, 10.0), ("masks-random", 5, 0.884, never, 1.0)]),
                                  target_share=0.95).set_index("strategy")
    assert pd.isna(tab.loc["masks-random", "ratio_vs_dense"]) and tab.loc["masks-random", "censored_seeds"] == 3
    assert any("never reaches the target within its 3 rounds" in line
               for line in federated_results.savings(tab.reset_index()))


def test_a_row_message_carries_exactly_the_rows_and_flowers_framing(monkeypatch):
    """``RowLayout``: the survivors of the chosen rows and of every other tensor, row indices as uint16;
    Flower's serialization adds only its framing to 4 bytes per value and 2 per index."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    for k, v in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, k, v)
    shapes = {"embedding.weight": (6, 3), "fc.weight": (2, 4)}
    masks = {"embedding.weight": torch.tensor([[1, 1, 1], [0, 1, 0], [0, 0, 0], [1, 0, 1], [1, 1, 1], [0, 0, 1]]).bool()}
    layout = federated.RowLayout.of(masks, shapes)
    assert layout.total == 10 + 8 and list(layout.counts) == [3, 1, 0, 2, 3, 1]
    old = np.arange(18, dtype=np.float32)
    new = old.copy()
    new[[3, 5]] += 1  # row 1 (position 3) and row 3 (its second survivor, position 5) change
    rows = layout.changed_rows(new, old)
    assert rows.dtype == np.uint16 and list(rows) == [1, 3]
    packed = layout.pack(new, rows)
    assert list(packed["embedding"]) == [4.0, 4.0, 6.0] and list(packed["rest"]) == list(new[10:])
    np.testing.assert_array_equal(layout.apply(old, rows, packed["embedding"], packed["rest"]), new)
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in packed.items()}),
                          "config": ConfigRecord({"run": "x", "server-round": 2})})
    msg = Message(content=content, message_type=MessageType.TRAIN, dst_node_id=7)
    split = federated.content_bytes(content)
    assert split == {"mask": 0, "indices": 2 * 2, "values": 4 * (3 + 8)}
    assert 0 < federated.wire_bytes(msg) - sum(split.values()) <= FRAMING_LIMIT


@pytest.mark.parametrize("sparse", [False, True])
def test_lazy_decay_leaves_rows_no_text_looks_up_exactly_equal(sparse):
    """Training with ``lazy_decay`` equals the engine's training on every row the texts look up and on
    every other tensor, bit for bit, and leaves every other row exactly as received (the engine's Adam
    L2 term moves them all). ``sparse``: a 90%-pruned embedding that trains packed."""
    from ltnb.core import train
    from ltnb.base.config import ModelSettings, TrainSettings
    from ltnb.core.model import KimCNN

    V = 50
    texts = [[1, 2, 3, 4, 5, 6], [2, 3, 7, 8, 9], [10, 11, 12, 2, 3, 4, 5]] * 4
    split = tokens.TokenSplit.from_lists(texts, [0, 1, 1] * 4)
    data = {"train": split, "validation": split, "test": split}
    settings = TrainSettings(max_epochs=1, patience=None, batch_size=4)
    ms = ModelSettings(embed_dim=8, channels=4, hidden=4)
    masks = {}
    if sparse:
        masks = {"embedding.weight": torch.rand(V, 8, generator=torch.Generator().manual_seed(0)) < 0.1}
    touched = federated.looked_up_rows(split, settings.max_len)
    assert list(touched) == [0, *range(1, 13)]
    out = []
    for lazy in (False, True):
        model = KimCNN.from_settings(V, ms, seed=3)
        start = {n: p.detach().clone() * (masks[n] if n in masks else 1) for n, p in model.named_parameters()}
        hook = federated.lazy_decay(start["embedding.weight"], touched) if lazy else None
        train.fit(model, data, settings, masks=masks, seed=1, device="cpu", progress=False, on_step=hook,
                  sparse="on" if sparse else "off")
        out.append({n: p.detach().clone() for n, p in model.named_parameters()})
    engine, lazy = out
    other = torch.ones(V, dtype=torch.bool)
    other[torch.from_numpy(touched)] = False
    assert torch.equal(lazy["embedding.weight"][other], start["embedding.weight"][other])
    assert not torch.equal(engine["embedding.weight"][other], start["embedding.weight"][other])
    assert torch.equal(lazy["embedding.weight"][~other], engine["embedding.weight"][~other])
    for n in engine:
        if n != "embedding.weight":
            assert torch.equal(lazy[n], engine[n]), n


def test_the_federated_demo_plan_is_valid():
    """The plan `make federated` runs: data, one source's reset chains for 3 seeds, a federated cell per
    seed (both dense baselines, 2 sparsities x 2 initial values), the report."""
    p = planmod.load_plan(ROOT / "params" / "federated-demo.yaml")
    assert p.study == "federated-demo" and p.stages == ("data", "obtain", "federated", "report")
    fed_cells = [c for c in p.cells if c.stage == "federated"]
    assert sorted(c.params["seed"] for c in fed_cells) == [0, 1, 2] and {c.params["source"] for c in fed_cells} == {"products"}
    assert len([c for c in p.cells if c.stage == "obtain"]) == 3
    for c in fed_cells:
        assert set(c.deps) == {"data", f"obtain/products/seed{c.params['seed']}"}
        assert len(c.params["ticket_rounds"]) == 2 and set(c.params["strategies"]) == {"masks-reset", "masks-random"}
        assert 0 < c.params["target_share"] <= 1
    assert "federated:" in (ROOT / "Makefile").read_text()
