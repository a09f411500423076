
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from ltnb.base.config import ModelSettings
from ltnb.core.model import initial_state
from ltnb.core.pruning import Mask, keep_count, prune_step, zero_fraction


def _random_weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "embedding.weight": torch.randn(60, 7, generator=g),
        "convs.0.weight": torch.randn(5, 7, 3, generator=g),
        "convs.0.bias": torch.randn(5, generator=g),
        "fc.weight": torch.randn(3, 11, generator=g),
        "fc.bias": torch.randn(3, generator=g),
    }


def test_matches_torch_l1_unstructured_oracle_over_rounds():
    """Oracle: torch's l1_unstructured applied repeatedly on a module prunes among the unpruned
    entries (PruningContainer). Its float ``amount`` prunes round(p * n); ours keeps ceil((1-p) n),
    so the oracle is given the explicit count n - ceil((1 - p) n). Weights change between rounds
    (as after retraining); continuous random values, so no ties."""
    p = 0.35
    weights = _random_weights(0)
    holders = {}
    for name, w in weights.items():
        h = nn.Module()
        h.register_parameter("w", nn.Parameter(w.clone()))
        holders[name] = h
    masks = Mask.ones_like(weights)
    for r in range(1, 8):
        masks = prune_step(weights, masks, p)
        for name, h in holders.items():
            survivors = int(h.w_mask.sum()) if hasattr(h, "w_mask") else h.w.numel()
            # importance = the current values (``h.w`` is only refreshed by a forward pass)
            prune.l1_unstructured(h, "w", amount=survivors - keep_count(survivors, p), importance_scores=weights[name])
            assert torch.equal(h.w_mask.bool(), masks[name]), (r, name)
        # "retraining": new values for the next round, both sides see the same
        new = _random_weights(r)
        for name, h in holders.items():
            h.w_orig.data.copy_(new[name])
        weights = new


def test_round_vs_ceil_differ_as_documented():
    # n = 10, p = 0.35: torch float amount prunes round(3.5) = 4 (keeps 6); we keep ceil(6.5) = 7
    h = nn.Linear(10, 1, bias=False)
    prune.l1_unstructured(h, "weight", amount=0.35)
    assert int(h.weight_mask.sum()) == 6
    assert keep_count(10, 0.35) == 7
    assert keep_count(100, 0.35) == 65  # exact: no float artefact (0.65 * 100 = 65.00000000000001)
    assert keep_count(1, 0.35) == 1


def test_ties_by_index_and_no_resurrection():
    w = {"a": torch.ones(10)}
    m = prune_step(w, Mask.ones_like(w), 0.35)
    assert m["a"].tolist() == [True] * 7 + [False] * 3  # equal magnitudes: lower index kept
    big = {"a": torch.arange(10.0) * 100}  # pruned entries now have the largest magnitude
    m2 = prune_step(big, m, 0.35)
    assert not m2["a"][7:].any()
    assert m2["a"].sum() == keep_count(7, 0.35)
    assert m2["a"][2:7].all()  # largest surviving magnitudes kept


def test_prune_biases_false_and_validation():
    w = _random_weights(1)
    m = prune_step(w, Mask.ones_like(w), 0.5, prune_biases=False)
    assert m["fc.bias"].all() and m["convs.0.bias"].all() and not m["fc.weight"].all()
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            prune_step(w, Mask.ones_like(w), bad)
    with pytest.raises(ValueError, match="bool"):
        Mask({"a": torch.ones(3)})


def test_sparsity_per_round_and_per_layer():
    w = initial_state(500, ModelSettings(embed_dim=32, channels=16, hidden=20), seed=0)
    masks = Mask.ones_like(w)
    assert masks.sparsity() == 0
    for r in range(1, 11):
        masks = prune_step(w, masks, 0.35)
        assert abs(masks.sparsity() - (1 - 0.65**r)) < 0.005, r
        rep = masks.report()
        # per layer: the exact ceil chain
        for name, t in w.items():
            expect = t.numel()
            for _ in range(r):
                expect = keep_count(expect, 0.35)
            assert rep[name]["kept"] == expect
        zeros = zero_fraction(masks.apply(w))
        assert zeros["overall"] == pytest.approx(masks.sparsity())
    assert rep["embedding.weight"]["sparsity"] == pytest.approx(1 - 0.65**10, abs=1e-3)


def test_fast_top_k_equals_stable_sort_with_many_ties():
    from ltnb.core.pruning import _top_indices

    g = torch.Generator().manual_seed(0)
    for n, k in [(1000, 650), (1000, 1), (1000, 999), (7, 7), (50, 0)]:
        v = torch.randint(0, 5, (n,), generator=g).float()  # many ties
        want = torch.sort(v, descending=True, stable=True).indices[:k]
        assert sorted(_top_indices(v, k).tolist()) == sorted(want.tolist())
