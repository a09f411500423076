"""Issue 31: tickets checked by meaning as well as by digest, and reruns that refuse instead of bless.

Each test tampers as a hostile user would, with the library's own sealing tools where a digest would
otherwise catch it (``ltnb.base.tensorfiles.seal``, ``ltnb.base._io.write_parquet``), and checks that the chain
stops with the file and the number, whatever the digest says.
"""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from ltnb.base import integrity, paths, tensorfiles
from ltnb.core import lottery, tickets
from ltnb.base._io import write_parquet
from ltnb.base.config import LotterySettings, ModelSettings, TrainSettings
from ltnb.core.train import synthetic_data

TWO = LotterySettings(rounds=2, model=ModelSettings(embed_dim=16, channels=8, hidden=16),
                      train=TrainSettings(max_epochs=1))
KEY = "synthetic-v1"
KW = dict(settings=TWO, vocab_size=50, data_key=KEY, device="cpu", progress=False)


@pytest.fixture
def chain(tmp_path):
    a = synthetic_data(40, seed=0)
    rows = lottery.obtain(tmp_path, "a", data=a, **KW)
    run = lottery.chain_dir(tmp_path, "a", "reset", 0, TWO, KEY, 50)
    return tmp_path, a, run, rows


def _reseal(path, edit):
    """Rewrite a tensor file with ``edit(tensors, meta)`` applied and a fresh, valid digest."""
    tensors, meta = tensorfiles.read(path, missing="-")
    edit(tensors, meta)
    save_file(tensors, str(path), metadata=tensorfiles.seal(tensors, meta))
    tickets.load_state(path)  # the digest now agrees: only meaning can tell


def test_an_all_ones_mask_sealed_again_is_refused_with_the_numbers(chain):
    study, a, run, _ = chain
    f = run / "round_02.safetensors"
    t = tickets.load(f)

    def ones(tensors, meta):
        for n, m in t.masks.items():
            tensors[f"mask/{n}"] = tickets._pack(torch.ones_like(m))
            tensors[f"trained/{n}"] = t.trained[n].reshape(-1).clone()

    _reseal(f, ones)
    with pytest.raises(ValueError, match=r"round_02.safetensors: the mask of \S+ keeps [\d,]+ of [\d,]+ entries "
                                         r"\(sparsity 0.0000\); round 2 .* keeps exactly [\d,]+ \(sparsity 0.57"):
        tickets.load(f)
    with pytest.raises(ValueError, match="the mask was changed"):
        lottery.obtain(study, "a", data=a, **KW)


def test_a_genuine_ticket_copied_over_another_round_is_refused(chain):
    study, a, run, _ = chain
    (run / "round_01.safetensors").write_bytes((run / "round_02.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"round_01.safetensors: holds the ticket of round 2, not of round 1"):
        lottery.obtain(study, "a", data=a, **KW)
    with pytest.raises(ValueError, match="holds the ticket of round 2"):
        lottery.transfer(study, "a", "b", data=synthetic_data(40, seed=1), **KW)


def test_a_mask_that_revives_pruned_weights_is_refused_though_its_count_is_right(chain):
    study, a, run, _ = chain
    r1, f2 = tickets.load(run / "round_01.safetensors"), run / "round_02.safetensors"
    t2 = tickets.load(f2)
    name = "fc1.weight"
    m = t2.masks[name].clone().reshape(-1)
    dead = (~r1.masks[name].reshape(-1)).nonzero()[0, 0]  # pruned in round 1
    alive = m.nonzero()[0, 0]
    m[dead], m[alive] = True, False  # same count, one weight back from the dead

    def revive(tensors, meta):
        tensors[f"mask/{name}"] = tickets._pack(m.reshape(t2.masks[name].shape))
        tensors[f"trained/{name}"] = torch.ones(int(m.sum()))

    _reseal(f2, revive)
    with pytest.raises(ValueError, match=r"round_02.safetensors: its mask revives weights that round 1 pruned "
                                         r"\(in fc1.weight\)"):
        lottery.obtain(study, "a", data=a, **KW)


def test_result_rows_edited_and_sealed_again_are_refused_by_the_ledger(chain):
    study, a, run, rows = chain
    assert sorted(map(int, lottery._ledger(run))) == [0, 1, 2]
    table = integrity.read_parquet(run / paths.RESULTS)
    table.loc[table["round"] == 2, "test_acc"] = 0.99
    write_parquet(run / paths.RESULTS, table)  # a valid digest: the table alone cannot tell
    with pytest.raises(ValueError, match=r"results.parquet: round 2's row is not the row the chain wrote .*ledger"):
        lottery.obtain(study, "a", data=a, **KW)
    # a row's sparsity that disagrees with its ticket is refused by meaning, before the ledger
    table.loc[table["round"] == 2, ["test_acc", "sparsity"]] = [rows["test_acc"].iloc[2], 0.0]
    write_parquet(run / paths.RESULTS, table)
    with pytest.raises(ValueError, match=r"round 2's row says sparsity 0.000000, its ticket round_02.safetensors has 0.57"):
        lottery.obtain(study, "a", data=a, **KW)


def test_a_ticket_sealed_again_with_other_trained_values_is_refused_by_the_ledger(chain):
    study, a, run, _ = chain

    def nudge(tensors, meta):
        tensors["trained/fc2.bias"] = tensors["trained/fc2.bias"] + 1.0

    _reseal(run / "round_01.safetensors", nudge)
    with pytest.raises(integrity.IntegrityError, match=r"round_01.safetensors: ticket does not match the hash recorded "
                                                       r"in .*ledger.json when round 1 was trained"):
        lottery.obtain(study, "a", data=a, **KW)


def test_theta_0_replaced_by_another_draw_is_refused_whatever_its_digest(chain):
    study, a, run, _ = chain
    other = lottery.initial_state(50, TWO.model, seed=12345)
    tensors, meta = tensorfiles.read(run / paths.THETA_0, missing="-")
    tickets.save_state(run / paths.THETA_0, other, meta)  # a sealed, readable theta_0 of another seed
    with pytest.raises(ValueError, match=r"theta_0.safetensors: does not hold the theta_0 drawn for seed 0, domain a"):
        lottery.obtain(study, "a", data=a, **KW)
    with pytest.raises(ValueError, match=r"does not hold the theta_0 drawn for seed 0, domain a"):
        lottery.transfer(study, "a", "b", data=synthetic_data(40, seed=1), **KW)  # nothing trains from it


def test_a_deleted_theta_0_is_drawn_again_byte_for_byte_and_nothing_wedges(chain):
    study, a, run, rows = chain
    b = synthetic_data(40, seed=1)
    before = (run / paths.THETA_0).read_bytes()
    tr = lottery.transfer(study, "a", "b", data=b, **KW)
    (run / paths.THETA_0).unlink()
    again = lottery.obtain(study, "a", data=a, **KW)
    assert (run / paths.THETA_0).read_bytes() == before  # same file: every ticket still verifies
    pd.testing.assert_frame_equal(again, rows)
    pd.testing.assert_frame_equal(lottery.transfer(study, "a", "b", data=b, **KW), tr)  # not wedged
    assert not (study / paths.STALE).exists()


def test_a_theta_0_that_cannot_be_drawn_byte_identical_sets_the_chain_aside(chain, capsys):
    """A chain whose tickets record another theta_0 file (one written before tensor files were byte-stable)
    cannot be verified once that file is gone: it is set aside under stale/ and trained anew, and so is a
    transfer run trained from it, instead of every later transfer failing."""
    study, a, run, rows = chain
    b = synthetic_data(40, seed=1)
    tr = lottery.transfer(study, "a", "b", data=b, **KW)
    tr_run = next((study / "transfer").rglob("round_02.safetensors")).parent
    for folder, frame, rounds in ((run, rows, (0, 1, 2)), (tr_run, tr, (1, 2))):
        for i, r in enumerate(rounds):  # as an older ltnb's theta_0 file: another SHA-256 recorded
            _reseal(folder / paths.ticket_name(r), lambda t, m: m.update(theta_0_sha256="0" * 64))
        lottery._record(folder, {r: (integrity.file_sha256(folder / paths.ticket_name(r)),
                                     lottery.row_digest(frame.iloc[i])) for i, r in enumerate(rounds)})
    (run / paths.THETA_0).unlink()
    again = lottery.obtain(study, "a", data=a, **KW)
    assert "set aside as" in capsys.readouterr().out
    stale = list((study / paths.STALE).rglob("round_02.safetensors"))
    assert len(stale) == 1 and run.name in str(stale[0])
    pd.testing.assert_frame_equal(again.drop(columns=["seconds", "cpu_seconds"]),
                                  rows.drop(columns=["seconds", "cpu_seconds"]))  # trained anew: same numbers
    lottery.transfer(study, "a", "b", data=b, **KW)  # its old transfer is set aside too, then runs anew
    assert len(list((study / paths.STALE).rglob("round_02.safetensors"))) == 2


def test_federated_tables_are_read_with_their_digest_checked(tmp_path):
    from ltnb.analysis import federated_results
    from ltnb.study.federated import protocol

    run = tmp_path / "runs" / "masks-reset-r02"
    run.mkdir(parents=True)
    rows = pd.DataFrame({"strategy": ["masks-reset"] * 2, "ticket_round": [2, 2], "fl_round": [1, 2],
                         "global_acc": [0.6, 0.7]})
    write_parquet(run / "rounds.parquet", rows)
    write_parquet(run / "messages.parquet", pd.DataFrame({"bytes": [10, 20]}))
    assert protocol.collect(tmp_path)["global_acc"].tolist() == [0.6, 0.7]
    assert len(federated_results.load_messages(tmp_path)) == 2
    rows.assign(global_acc=0.99).to_parquet(run / "rounds.parquet")  # edited by another tool: no digest
    with pytest.raises(integrity.IntegrityError, match=r"rounds.parquet: no recorded table hash"):
        protocol.collect(tmp_path)
    pd.DataFrame({"bytes": [1, 2]}).to_parquet(run / "messages.parquet")
    with pytest.raises(integrity.IntegrityError, match=r"messages.parquet"):
        federated_results.load_messages(tmp_path)


def test_os_errors_are_one_line_naming_the_path(tmp_path, monkeypatch, capsys):
    """A read-only or full outputs folder: the cell's lock fails as a failed cell naming the path, and
    anything else the command meets is one line on stderr, not a traceback (root ignores file modes, so
    the errors are raised where the OS would raise them)."""
    from ltnb import cli
    from ltnb.study import batch

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self.path))

    monkeypatch.setattr(integrity.CellLock, "acquire", denied)
    out = batch.run_cell({"key": "data", "executed": "x", "cell_dir": str(tmp_path / "data")})
    assert out["status"] == "failed" and out["ename"] == "PermissionError"
    assert out["evalue"] == f"cannot take the cell's lock: {tmp_path / 'data' / integrity.LOCK_NAME}: Permission denied"
    monkeypatch.setattr(batch, "main", lambda *a, **k: (_ for _ in ()).throw(
        PermissionError(13, "Permission denied", "/srv/outputs/smoke/data")))
    assert cli.main(["batch", "params/smoke.yaml"]) == 2
    err = capsys.readouterr().err
    assert err == "ltnb batch: error: /srv/outputs/smoke/data: Permission denied\n"
