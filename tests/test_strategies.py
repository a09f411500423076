import math

import torch
from scipy import stats

from ltnb.core import strategies
from ltnb.base.config import ModelSettings
from ltnb.core.model import initial_state
from ltnb.core.pruning import Mask, prune_step

SETTINGS = ModelSettings(embed_dim=32, channels=16, hidden=20)
VOCAB = 300


def _setup(rounds=3):
    theta_0 = initial_state(VOCAB, SETTINGS, seed=11)
    trained = {n: t + 0.1 * torch.randn(t.shape, generator=torch.Generator().manual_seed(1)) for n, t in theta_0.items()}
    mask = Mask.ones_like(theta_0)
    for _ in range(rounds):
        mask = prune_step(trained, mask, 0.35)
    return theta_0, mask


def _start(theta_0, strategy, round=3, seed=0, rewound=None):
    return strategies.Start(theta_0=theta_0, vocab_size=VOCAB, model=SETTINGS, seed=seed, round=round,
                            strategy=strategy, rewound=rewound)


def test_reset_restores_theta_0_on_survivors():
    theta_0, mask = _setup()
    w = strategies.reset(mask, _start(theta_0, "reset"))
    for n in theta_0:
        assert torch.equal(w[n][mask[n]], theta_0[n][mask[n]])
        assert (w[n][~mask[n]] == 0).all()
    same = strategies.TRANSFER["masks-reset"](mask, _start(theta_0, "masks-reset"))
    assert all(torch.equal(same[n], w[n]) for n in w)


def test_random_differs_from_theta_0_but_has_the_init_distributions():
    theta_0, mask = _setup()
    w = strategies.random(mask, _start(theta_0, "random"))
    again = strategies.random(mask, _start(theta_0, "random"))
    next_round = strategies.random(mask, _start(theta_0, "random", round=4))
    for n in theta_0:
        assert torch.equal(w[n], again[n])  # seeded from (seed, round)
        assert (w[n][~mask[n]] == 0).all()
        assert not torch.equal(w[n][mask[n]], theta_0[n][mask[n]])
        assert not torch.equal(w[n], next_round[n])
    # survivors follow the initial distributions (KS test): N(0, 1) for the embedding,
    # U(-b, b) for conv / linear weights (b = sqrt(6 / ((1 + a^2) fan_in)), a = sqrt(5) by default) and
    # biases (b = 1 / sqrt(fan_in))
    fresh = initial_state(VOCAB, SETTINGS, seed=12345)  # all entries, to test the distributions
    for source in (fresh, {n: w[n][mask[n]] for n in w}):
        emb = source["embedding.weight"].flatten().double().numpy()
        assert stats.kstest(emb, "norm").pvalue > 1e-3
        for layer in ("convs.0", "convs.2", "fc1"):
            fi = theta_0[f"{layer}.weight"][0].numel()
            a = SETTINGS.init_a
            for kind, b in (("weight", math.sqrt(6 / ((1 + a * a) * fi))), ("bias", 1 / math.sqrt(fi))):
                x = source[f"{layer}.{kind}"].flatten().double().numpy()
                if x.size >= 8:
                    assert stats.kstest(x, "uniform", args=(-b, 2 * b)).pvalue > 1e-3, (layer, kind)


def test_reinit_is_randoms_draw_under_the_given_mask():
    theta_0, mask = _setup()
    other_mask = Mask({n: ~m | (torch.arange(m.numel()).reshape(m.shape) % 2 == 0) for n, m in mask.items()})
    r = strategies.random(mask, _start(theta_0, "random"))
    ri = strategies.reinit(other_mask, _start(theta_0, "reinit"))
    fresh = strategies.fresh_values(_start(theta_0, "random"))
    for n in theta_0:  # the same fresh values as random's of this seed and round, under its own mask
        assert torch.equal(ri[n], torch.where(other_mask[n], fresh[n], torch.zeros(())))
        assert torch.equal(r[n], torch.where(mask[n], fresh[n], torch.zeros(())))
    by_table = strategies.OBTAIN["reinit"](other_mask, _start(theta_0, "reinit"))  # its definition's draw
    assert all(torch.equal(by_table[n], ri[n]) for n in ri)
    assert strategies.USES_RESET_MASKS == ("reinit", "shuffle", "rescaled", "randmask-reset", "randmask-random")


def test_rewind_uses_rewound_values():
    theta_0, mask = _setup()
    rewound = {n: t * 2 for n, t in theta_0.items()}
    w = strategies.rewind(mask, _start(theta_0, "rewind", rewound=rewound))
    for n in theta_0:
        assert torch.equal(w[n], torch.where(mask[n], rewound[n], torch.zeros(())))


def test_shuffle_permutes_theta_0s_survivors_within_each_tensor_and_rescaled_matches_their_rms():
    theta_0, mask = _setup()
    sh = strategies.shuffle(mask, _start(theta_0, "shuffle"))
    again = strategies.shuffle(mask, _start(theta_0, "shuffle"))
    other_round = strategies.shuffle(mask, _start(theta_0, "shuffle", round=4))
    rs = strategies.rescaled(mask, _start(theta_0, "rescaled"))
    fresh = strategies.reinit(mask, _start(theta_0, "reinit"))
    moved = 0
    for n, m in mask.items():
        kept = theta_0[n][m]
        assert torch.equal(torch.sort(sh[n][m]).values, torch.sort(kept).values)  # same multiset, same signs
        assert (sh[n][~m] == 0).all() and (rs[n][~m] == 0).all()
        assert torch.equal(sh[n], again[n])  # deterministic per (seed, round, tensor)
        moved += int((sh[n][m] != kept).sum())
        rms = lambda t: math.sqrt(float(t.double().pow(2).mean()))  # noqa: E731
        assert rms(rs[n][m]) == rms(rs[n][m]) and abs(rms(rs[n][m]) - rms(kept)) <= 1e-5 * rms(kept)
        scale = rms(kept) / rms(fresh[n][m])
        assert torch.allclose(rs[n], fresh[n] * scale, rtol=1e-5, atol=0)  # reinit's values, one factor per tensor
    assert moved > 0.9 * sum(int(m.sum()) for m in mask.values())
    assert any(not torch.equal(sh[n], other_round[n]) for n in sh)
    # magnitude pruning at initialisation keeps large entries: reset's embedding survivors are larger than fresh ones
    e = "embedding.weight"
    assert rms(theta_0[e][mask[e]]) > rms(fresh[e][mask[e]])
