"""The sparse conv path (ltnb.core.sparse) equals the dense one up to float rounding."""
import json

import pytest
import torch

from ltnb.core import sparse
from ltnb.base.config import TrainSettings
from ltnb.core.model import KimCNN
from ltnb.core.pruning import Mask, prune_step
from ltnb.core.train import fit, synthetic_data

CONVS = ("convs.0.weight", "convs.1.weight", "convs.2.weight")


def _pruned(rounds=6, seed=0, vocab=60, **kw):
    m = KimCNN(vocab, embed_dim=kw.get("embed_dim", 24), channels=kw.get("channels", 10), hidden=12, seed=seed,
               dropout=kw.get("dropout", 0.285))
    w = {n: p.detach().clone() for n, p in m.named_parameters()}
    mask = Mask.ones_like(w)
    for _ in range(rounds):
        mask = prune_step(w, mask, 0.35)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.mul_(mask[n])
    return m, mask


def _batch(vocab=60, B=7, T=13, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g), torch.randint(1, T + 1, (B,), generator=g)


def test_forward_and_grads_match_dense():
    m, mask = _pruned()
    ids, lengths = _batch()
    plan = sparse.build_plan([mask[n] for n in CONVS])
    assert 0 < plan.density < 0.2
    out = {}
    for name, p in (("dense", None), ("sparse", plan)):
        m.sparse_plan = p
        m.zero_grad()
        with torch.random.fork_rng():
            torch.manual_seed(0)  # same dropout
            logits = m(ids, lengths)
        logits.pow(2).sum().backward()
        out[name] = (logits.detach(), {n: q.grad * mask[n] for n, q in m.named_parameters()})
    torch.testing.assert_close(out["sparse"][0], out["dense"][0])
    for n in out["dense"][1]:
        torch.testing.assert_close(out["sparse"][1][n], out["dense"][1][n], msg=n)
    # eval mode, a one-token sequence (width padding) too
    m.eval()
    ids1, len1 = torch.tensor([[5]]), torch.tensor([1])
    m.sparse_plan = None
    d = m(ids1, len1)
    m.sparse_plan = plan
    torch.testing.assert_close(m(ids1, len1), d)


def test_training_steps_match_dense():
    """Without dropout the packed embedding and the sparse convs train exactly as the dense masked path
    (with dropout they draw their random numbers differently: see the next test)."""
    data = synthetic_data(60, sizes=(64, 32, 32), seed=0)
    settings = TrainSettings(max_epochs=2, lr=1e-3)
    res, params = {}, {}
    for mode in ("off", "on"):
        m, mask = _pruned(dropout=0.0)
        res[mode] = fit(m, data, settings, masks=mask, seed=2, device="cpu", progress=False, sparse=mode)
        assert m.sparse_plan is None
        params[mode] = {n: p.detach() for n, p in m.named_parameters()}
    for n in params["off"]:
        torch.testing.assert_close(params["on"][n], params["off"][n], rtol=1e-4, atol=1e-5, msg=n)
        assert ((params["on"][n] == 0) == (params["off"][n] == 0)).all()
    assert res["on"].steps == res["off"].steps


def test_dropout_on_a_pruned_embedding_is_dropout_on_its_survivors():
    """The packed embedding draws dropout for surviving entries only. Pruned entries stay 0; each
    surviving entry is kept with probability 1 - p (binomial test over many draws) and scaled by
    1 / (1 - p); in eval mode nothing is dropped; the same seed gives the same draws."""
    from scipy import stats

    m, mask = _pruned(rounds=4)
    table = m.embedding.weight.detach()
    packed = sparse.PackedEmbedding(table, mask["embedding.weight"])
    ids, _ = _batch(B=20, T=30)
    dense = table[ids]
    p = 0.285
    kept = total = 0
    for s in range(20):
        torch.manual_seed(s)
        e = packed(ids, dropout=p)
        assert (e[dense == 0] == 0).all()  # pruned entries never appear
        nz = dense != 0
        assert torch.allclose(e[nz][e[nz] != 0], dense[nz][e[nz] != 0] / (1 - p))
        kept += int((e[nz] != 0).sum())
        total += int(nz.sum())
    assert stats.binomtest(kept, total, 1 - p).pvalue > 1e-3
    torch.manual_seed(7)
    a = packed(ids, dropout=p)
    torch.manual_seed(7)
    assert torch.equal(a, packed(ids, dropout=p))
    assert torch.equal(packed(ids), dense)
    m.packed_embedding = packed
    m.eval()
    with torch.no_grad():
        out_eval = m(ids)
    m.packed_embedding = None
    with torch.no_grad():
        assert torch.allclose(out_eval, m(ids))  # eval: no dropout, the dense result


def test_plan_choice_and_crossover_file(tmp_path, monkeypatch):
    m, mask = _pruned(rounds=1)  # 35% pruned: dense
    assert sparse.plan_for(m, mask, mode="auto") is None
    assert sparse.plan_for(m, mask, mode="off") is None
    assert sparse.plan_for(m, mask, mode="on") is not None
    calls = []
    monkeypatch.setattr(sparse, "calibrate", lambda device="cpu": calls.append(1) or {"density": 0.25})
    assert sparse.crossover(cache_dir=tmp_path) == 0.25
    assert sparse.crossover(cache_dir=tmp_path) == 0.25 and len(calls) == 1  # stored, not re-measured
    table = json.loads((tmp_path / sparse.CROSSOVER_FILE).read_text())
    assert list(table) == [sparse.machine_key("cpu")]
    monkeypatch.setenv("LTNB_CACHE", str(tmp_path))
    m2, mask2 = _pruned(rounds=6)
    assert sparse.plan_for(m2, mask2, mode="auto") is not None  # density < 0.25
    with pytest.raises(ValueError, match="sparse"):
        sparse.plan_for(m2, mask2, mode="fast")


def test_calibrate_small_runs():
    r = sparse.calibrate(embed_dim=16, channels=8, batch=4, length=10, densities=(0.5, 0.05))
    assert 0.0 <= r["density"] <= 0.5 and r["dense_ms"] > 0


def _packed_forward(m, mask, ids, lengths, with_convs, seed=0):
    """Logits and every gradient (as dense tensors at the model's parameter names) through the packed
    embedding, with the packed product of embedding and convs or with the CSR conv kernels."""
    packed = sparse.PackedEmbedding(m.embedding.weight.detach(), mask["embedding.weight"])
    packed.packed_convs = sparse.PackedConvs([c.weight for c in m.convs], [mask[n] for n in CONVS]) if with_convs else None
    m.packed_embedding, m.sparse_plan = packed, None if with_convs else sparse.build_plan([mask[n] for n in CONVS])
    m.zero_grad()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        logits = m(ids, lengths)
    logits.pow(2).sum().backward()
    grads = {n: q.grad * mask[n] for n, q in m.named_parameters() if q.grad is not None}
    if with_convs:
        pc = packed.packed_convs
        for i, (c, gv) in enumerate(zip(m.convs, pc.values.grad.split(pc.parts))):
            grads[f"convs.{i}.weight"] = torch.zeros_like(c.weight).view(-1).index_put((pc.src[i],), gv).view(c.weight.shape)
    grads["embedding.weight"] = torch.zeros_like(m.embedding.weight).view(-1).index_put((packed.flat,), packed.values.grad).view(
        m.embedding.weight.shape)
    m.packed_embedding = m.sparse_plan = None
    return logits.detach(), grads


@pytest.mark.parametrize("rounds", [4, 8, 14])
def test_packed_convs_match_dense(rounds):
    """The packed product of embedding and convs (ltnb.core.sparse.PackedConvs) gives the dense masked path's
    logits and gradients without dropout, and the CSR path's with dropout (the same draws); one-token
    sequences and eval mode too."""
    m, mask = _pruned(rounds=rounds, dropout=0.0)
    ids, lengths = _batch(B=9, T=17)
    m.zero_grad()
    dense = m(ids, lengths)
    dense.pow(2).sum().backward()
    dense_grads = {n: q.grad * mask[n] for n, q in m.named_parameters()}
    logits, grads = _packed_forward(m, mask, ids, lengths, True)
    torch.testing.assert_close(logits, dense.detach())
    assert grads.keys() == dense_grads.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], dense_grads[n], msg=n)
    m.dropout.p = 0.285
    a, b = _packed_forward(m, mask, ids, lengths, True), _packed_forward(m, mask, ids, lengths, False)
    torch.testing.assert_close(a[0], b[0])
    for n in b[1]:
        torch.testing.assert_close(a[1][n], b[1][n], msg=n)
    m.eval()
    for x, ln in ((ids, lengths), (torch.tensor([[5]]), torch.tensor([1])), (ids, None)):
        with torch.no_grad():
            ref = m(x, ln)
            m.packed_embedding = sparse.PackedEmbedding(m.embedding.weight.detach(), mask["embedding.weight"])
            m.packed_embedding.packed_convs = sparse.PackedConvs([c.weight for c in m.convs], [mask[n] for n in CONVS])
            torch.testing.assert_close(m(x, ln), ref)
            m.packed_embedding = None


def test_packed_convs_write_back_and_masks():
    m, mask = _pruned(rounds=6)
    weights = [c.weight for c in m.convs]
    pc = sparse.PackedConvs(weights, [mask[n] for n in CONVS])
    assert [bool(a.eq(b).all()) for a, b in zip(pc.masks(weights), [mask[n] for n in CONVS])] == [True] * 3
    before = [w.detach().clone() for w in weights]
    with torch.no_grad():
        pc.values.mul_(2)
    pc.write_back(weights)
    for w, b in zip(weights, before):
        torch.testing.assert_close(w.detach(), 2 * b)


def test_training_with_packed_convs_matches_dense(monkeypatch):
    """fit on the packed product trains as the dense masked path (no dropout), and auto picks it only
    below the measured crossover of the packed path."""
    data = synthetic_data(60, sizes=(64, 32, 32), seed=0)
    settings = TrainSettings(max_epochs=2, lr=1e-3)
    params, res = {}, {}
    for mode, packed in (("off", "off"), ("on", "on")):
        monkeypatch.setenv("LTNB_PACKED_CONVS", packed)
        m, mask = _pruned(rounds=10, dropout=0.0)
        res[mode] = fit(m, data, settings, masks=mask, seed=2, device="cpu", progress=False, sparse=mode)
        assert m.packed_embedding is None and m.sparse_plan is None
        params[mode] = {n: p.detach() for n, p in m.named_parameters()}
    for n in params["off"]:
        torch.testing.assert_close(params["on"][n], params["off"][n], rtol=1e-4, atol=1e-5, msg=n)
        assert ((params["on"][n] == 0) == (params["off"][n] == 0)).all()
    assert res["on"].test_acc == res["off"].test_acc and res["on"].val_acc == res["off"].val_acc
    monkeypatch.delenv("LTNB_PACKED_CONVS")
    plan = sparse.build_plan([mask[n] for n in CONVS])
    monkeypatch.setattr(sparse, "packed_crossover", lambda device="cpu": 0.02)
    assert sparse.use_packed_convs(plan, 0.01) == (plan.density < 0.02)
    assert not sparse.use_packed_convs(plan, 0.03) and not sparse.use_packed_convs(None, 0.001)
    monkeypatch.setenv("LTNB_PACKED_CONVS", "fast")
    with pytest.raises(ValueError, match="LTNB_PACKED_CONVS"):
        sparse.use_packed_convs(plan, 0.01)


def test_calibrate_packed_small_runs(tmp_path, monkeypatch):
    r = sparse.calibrate_packed(vocab=50, embed_dim=16, channels=8, batch=4, length=10, densities=(0.2, 0.05))
    assert 0.0 <= r["density"] <= 0.2 and set(r["packed_ms"]) == {"0.2", "0.05"}
    monkeypatch.setattr(sparse, "calibrate", lambda device="cpu": {"density": 0.25})
    calls = []
    monkeypatch.setattr(sparse, "calibrate_packed", lambda device="cpu": calls.append(1) or {"density": 0.01})
    assert sparse.packed_crossover(cache_dir=tmp_path) == 0.01
    assert sparse.packed_crossover(cache_dir=tmp_path) == 0.01 and len(calls) == 1  # stored beside the CSR one
    entry = json.loads((tmp_path / sparse.CROSSOVER_FILE).read_text())[sparse.machine_key("cpu")]
    assert entry["density"] == 0.25 and entry["packed"]["density"] == 0.01
