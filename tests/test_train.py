import pytest
import torch

from ltnb.base.config import TrainSettings
from ltnb.core.model import KimCNN
from ltnb.core.pruning import Mask, prune_step
from ltnb.text.tokens import TokenSplit
from ltnb.core.train import evaluate, fit, make_batches, synthetic_data

DATA = synthetic_data(50, signal=0.5, seed=0)
FAST = TrainSettings(max_epochs=6, lr=5e-3)


def _model(seed=0):
    return KimCNN(50, embed_dim=16, channels=8, hidden=16, seed=seed)


def test_batches_bucketed_padded_truncated_and_seeded():
    split = TokenSplit.from_lists([[1] * k for k in range(1, 41)], [k % 2 for k in range(40)])
    b1 = make_batches(split, 8, max_len=30, generator=torch.Generator().manual_seed(0))
    b2 = make_batches(split, 8, max_len=30, generator=torch.Generator().manual_seed(0))
    b3 = make_batches(split, 8, max_len=30, generator=torch.Generator().manual_seed(1))
    assert [b.ids.tolist() for b in b1] == [b.ids.tolist() for b in b2]
    assert [b.lengths.tolist() for b in b1] != [b.lengths.tolist() for b in b3]
    assert sorted(l for b in b1 for l in b.lengths.tolist()) == sorted(min(k, 30) for k in range(1, 41))
    for b in b1:
        assert b.ids.shape[1] == int(b.lengths.max()) <= 30  # padded per batch, truncated
        assert b.lengths.max() - b.lengths.min() <= 7  # bucketed by length
        for row, k in zip(b.ids, b.lengths):
            assert (row[:k] == 1).all() and (row[k:] == 0).all()


def test_learns_and_is_deterministic_and_leaves_caller_rng_alone():
    state = torch.random.get_rng_state()
    m1, m2 = _model(), _model()
    r1 = fit(m1, DATA, FAST, seed=3, device="cpu", progress=False)
    r2 = fit(m2, DATA, FAST, seed=3, device="cpu", progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert r1.test_acc > 0.75 and r1.val_acc > 0.75
    assert (r1.val_acc, r1.test_acc, r1.best_epoch) == (r2.val_acc, r2.test_acc, r2.best_epoch)
    for (n, a), (_, b) in zip(m1.named_parameters(), m2.named_parameters()):
        assert torch.equal(a, b), n


def test_pruned_weights_stay_exactly_zero():
    m = _model()
    w = {n: p.detach().clone() for n, p in m.named_parameters()}
    mask = Mask.ones_like(w)
    for _ in range(5):
        mask = prune_step(w, mask, 0.35)
    steps = []

    def check(step, model):
        for n, p in model.named_parameters():
            assert (p[~mask[n]] == 0).all()
        steps.append(step)

    fit(m, DATA, TrainSettings(max_epochs=2), masks=mask, device="cpu", progress=False, on_step=check)
    assert steps and steps[-1] == 2 * len(make_batches(DATA["train"], 32, max_len=500))
    for n, p in m.named_parameters():
        assert (p[~mask[n]] == 0).all()
        assert (p[mask[n]] != 0).all()
        assert not torch.equal(p[mask[n]], w[n][mask[n]])  # survivors trained


def test_early_stopping_restores_best_epoch():
    m = _model()
    r = fit(m, DATA, TrainSettings(max_epochs=15, patience=2, lr=0.05), device="cpu", progress=False)
    accs = [h["val_acc"] for h in r.history]
    assert r.epochs_run == len(accs)
    assert r.val_acc == max(accs) and r.best_epoch == accs.index(max(accs)) + 1
    if r.epochs_run < 15:
        assert r.epochs_run == r.best_epoch + 2
    val = make_batches(DATA["validation"], 256, max_len=500)
    assert evaluate(m, val) == r.val_acc  # the weights in the model are the best epoch's
    # patience=None: all epochs run, best kept
    r2 = fit(_model(), DATA, TrainSettings(max_epochs=4, lr=0.05), device="cpu", progress=False)
    assert r2.epochs_run == 4 and r2.val_acc == max(h["val_acc"] for h in r2.history)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda_and_keeps_zeros():
    m = _model()
    w = {n: p.detach().clone() for n, p in m.named_parameters()}
    mask = prune_step(w, Mask.ones_like(w), 0.5)
    r = fit(m, DATA, TrainSettings(max_epochs=2), masks=mask, device="cuda", progress=False)
    assert r.epochs_run == 2
    for n, p in m.named_parameters():
        assert p.is_cuda and (p.cpu()[~mask[n]] == 0).all()
