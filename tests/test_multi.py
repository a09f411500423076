"""benchmarks/multi.py's fit_many (several chains at once, torch.func.vmap over the model's own forward)
equals separate fit() runs on the CPU."""
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

from ltnb.base.config import TrainSettings
from ltnb.core.model import KimCNN
from multi import fit_many  # noqa: E402
from ltnb.core.pruning import Mask, prune_step
from ltnb.core.train import fit, synthetic_data

DATA = synthetic_data(50, sizes=(70, 40, 40), signal=0.5, seed=0)
OTHER = synthetic_data(50, sizes=(70, 40, 40), signal=0.5, seed=5)


def _model(seed):
    return KimCNN(50, embed_dim=16, channels=8, hidden=12, seed=seed)


def _mask(model, rounds):
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    mask = Mask.ones_like(w)
    for _ in range(rounds):
        mask = prune_step(w, mask, 0.35)
    return mask


@pytest.mark.parametrize("patience", [None, 1])
def test_fit_many_equals_separate_runs(patience):
    settings = TrainSettings(max_epochs=3, lr=3e-3, patience=patience)
    specs = [(0, DATA, None), (1, OTHER, 2), (2, DATA, 4)]  # (seed, data, pruning rounds)
    masks = [None if r is None else _mask(_model(s), r) for s, _, r in specs]
    single = []
    for (s, d, _), mk in zip(specs, masks):
        m = _model(s)
        single.append((m, fit(m, d, settings, masks=mk, seed=10 + s, device="cpu", progress=False, sparse="off")))
    many = [_model(s) for s, _, _ in specs]
    res = fit_many(many, [d for _, d, _ in specs], settings, seeds=[10 + s for s, _, _ in specs], masks=masks,
                   device="cpu", progress=False)
    for (m1, r1), m2, r2 in zip(single, many, res):
        assert (r1.best_epoch, r1.epochs_run, r1.steps) == (r2.best_epoch, r2.epochs_run, r2.steps)
        assert abs(r1.val_acc - r2.val_acc) <= 1 / 40 and abs(r1.test_acc - r2.test_acc) <= 1 / 40
        for (n, a), (_, b) in zip(m1.named_parameters(), m2.named_parameters()):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=n)
        for h1, h2 in zip(r1.history, r2.history):
            assert h1["loss"] == pytest.approx(h2["loss"], rel=1e-5)


def test_fit_many_checks_inputs():
    with pytest.raises(ValueError, match="seeds"):
        fit_many([_model(0)], DATA, TrainSettings(max_epochs=1), seeds=[0, 1], device="cpu", progress=False)
    small = synthetic_data(50, sizes=(30, 20, 20))
    with pytest.raises(ValueError, match="same number of steps"):
        fit_many([_model(0), _model(1)], [DATA, small], TrainSettings(max_epochs=1), seeds=[0, 1], device="cpu", progress=False)


def test_precision_setting_keeps_old_hashes_reads_the_old_flag_and_runs_on_cpu():
    from ltnb.base.config import LotterySettings
    from ltnb.core.lottery import run_hash

    off = LotterySettings(train=TrainSettings(precision="float32"))
    on = LotterySettings(train=TrainSettings(precision="bfloat16"))
    assert "precision" not in off.to_dict()["train"] and on.to_dict()["train"]["precision"] == "bfloat16"
    h = lambda s: run_hash(s, data_key="k", vocab_size=10, strategy="reset")  # noqa: E731
    assert h(off) != h(on)
    assert LotterySettings.from_dict(off.to_dict()) == off and LotterySettings.from_dict(on.to_dict()) == on
    # settings recorded before the setting existed said bf16: true / false
    for flag, s in ((True, on), (False, off)):
        old = off.to_dict()
        old["train"]["bf16"] = flag
        assert LotterySettings.from_dict(old) == s
    assert LotterySettings.from_params(precision="bfloat16") == on
    with pytest.raises(ValueError, match="precision"):
        TrainSettings(precision="bf16")
    r = fit(_model(0), DATA, TrainSettings(max_epochs=1, precision="bfloat16"), device="cpu", progress=False)
    assert 0.0 <= r.test_acc <= 1.0
