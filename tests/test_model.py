import math

import pytest
import torch

from ltnb.base.config import ModelSettings
from ltnb.core.model import KimCNN, initial_state, parameter_shapes


def test_parameter_counts_at_paper_size():
    counts = {n: math.prod(s) for n, s in parameter_shapes(8000, ModelSettings()).items()}
    assert counts == {
        "embedding.weight": 3_336_000,
        "convs.0.weight": 158_877,
        "convs.0.bias": 127,
        "convs.1.weight": 211_836,
        "convs.1.bias": 127,
        "convs.2.weight": 264_795,
        "convs.2.bias": 127,
        "fc1.weight": 44_577,
        "fc1.bias": 117,
        "fc2.weight": 234,
        "fc2.bias": 2,
    }
    assert sum(counts.values()) == 4_016_819


def test_forward_shapes_short_inputs_and_padding_invariance():
    m = KimCNN(50, embed_dim=16, channels=8, hidden=16, seed=0).eval()
    assert m(torch.tensor([[7]])).shape == (1, 2)  # shorter than the widest filter
    a = torch.tensor([3, 4, 5, 6, 7, 8])
    b = torch.tensor([9, 10])
    batch = torch.zeros(2, 6, dtype=torch.long)
    batch[0], batch[1, :2] = a, b
    with torch.no_grad():
        both = m(batch, torch.tensor([6, 2]))
        alone_a = m(a[None], torch.tensor([6]))
        alone_b = m(b[None], torch.tensor([2]))
        longer_pad = m(torch.cat([batch, torch.zeros(2, 30, dtype=torch.long)], 1), torch.tensor([6, 2]))
    torch.testing.assert_close(both[0], alone_a[0])
    torch.testing.assert_close(both[1], alone_b[0])
    torch.testing.assert_close(longer_pad, both)


@pytest.mark.parametrize("a", [math.sqrt(5), 0.0, 1.0])
def test_init_distributions_and_seed(a):
    m = KimCNN(2000, embed_dim=64, channels=32, hidden=20, init_a=a, seed=3)
    emb = m.embedding.weight.detach()
    assert abs(emb.mean()) < 0.02 and abs(emb.std() - 1) < 0.02
    for layer in [*m.convs, m.fc1, m.fc2]:
        fi = layer.weight[0].numel()
        w, b = layer.weight.detach(), layer.bias.detach()
        bound = math.sqrt(6 / ((1 + a * a) * fi))  # the paper's He-uniform bound with PyTorch's a
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
        assert b.abs().max() <= 1 / math.sqrt(fi)
    if a == math.sqrt(5):  # the default is exactly what PyTorch's own layers draw
        torch.manual_seed(0)
        ref = torch.nn.Linear(200, 30)
        assert math.isclose(ref.weight.abs().max().item(), 1 / math.sqrt(200), rel_tol=0.05)
        assert m.fc1.weight.abs().max() <= 1 / math.sqrt(m.fc1.weight[0].numel())
    same = initial_state(2000, ModelSettings(embed_dim=64, channels=32, hidden=20, init_a=a), 3)
    other = initial_state(2000, ModelSettings(embed_dim=64, channels=32, hidden=20, init_a=a), 4)
    for n, p in m.named_parameters():
        assert torch.equal(same[n], p.detach())
        assert not torch.equal(other[n], p.detach())


def test_zero_biases_and_the_settings_enter_the_hash():
    m = KimCNN(100, embed_dim=8, channels=4, hidden=4, bias_init="zero", seed=0)
    assert all((layer.bias == 0).all() for layer in [*m.convs, m.fc1, m.fc2])
    from ltnb.base.config import LotterySettings
    base = LotterySettings()
    assert LotterySettings.from_params(init_a=0.0).settings_hash() != base.settings_hash()
    assert LotterySettings.from_params(bias_init="zero").settings_hash() != base.settings_hash()
    with pytest.raises(ValueError, match="bias_init"):
        ModelSettings(bias_init="ones")


def test_the_models_names_come_from_the_model_and_a_second_architecture_is_a_class_and_a_setting(monkeypatch):
    """Layer names and groups are asked of the model class (``KimCNN.EMBEDDING``, ``LAYER_GROUPS``,
    ``conv_weights``), and ``ModelSettings.architecture`` picks the class from ``ltnb.core.model.MODELS``; the
    setting at its default changes no run hash (``hash_dict`` leaves it out)."""
    from ltnb.base.config import LotterySettings, ModelSettings
    from ltnb.core import lottery, model as M

    m = M.build(100, ModelSettings(embed_dim=8, channels=4, hidden=6), seed=0)
    names = dict(m.named_parameters())
    assert type(m) is M.KimCNN and M.KimCNN.EMBEDDING in names and set(m.conv_weights()) <= set(names)
    assert {M.KimCNN.layer_group(n) for n in names} == set(M.KimCNN.LAYER_GROUPS)
    assert "architecture" not in LotterySettings().hash_dict().get("model", {})
    with pytest.raises(ValueError, match="architecture"):
        ModelSettings(architecture="transformer")

    class Tiny(M.KimCNN):  # a second architecture: a class in MODELS and a value of the setting
        LAYER_GROUPS = {**M.KimCNN.LAYER_GROUPS}

    monkeypatch.setitem(M.MODELS, "kimcnn", Tiny)
    assert type(M.build(100, ModelSettings(embed_dim=8, channels=4, hidden=6), seed=0)) is Tiny
    assert lottery.layer_group("fc1.weight", Tiny) == "mlp"
