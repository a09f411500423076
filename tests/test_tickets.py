import pytest
import torch

from ltnb.core import tickets
from ltnb.base.config import LotterySettings, ModelSettings
from ltnb.core.model import KimCNN, initial_state
from ltnb.core.pruning import Mask, prune_step

SETTINGS = LotterySettings(model=ModelSettings(embed_dim=16, channels=8, hidden=16))


def _write(tmp_path):
    theta_0 = initial_state(50, SETTINGS.model, seed=0)
    theta_file = tickets.save_state(tmp_path / "theta_0.safetensors", theta_0)
    trained = {n: t + 1.0 for n, t in theta_0.items()}
    mask = prune_step(trained, Mask.ones_like(trained), 0.35)
    trained = mask.apply(trained)
    path = tickets.save(tmp_path / "round_01.safetensors", masks=mask, trained=trained, round=1,
                        settings=SETTINGS, vocab_size=50, theta_0=theta_file, extra={"domain": "x"})
    return path, theta_0, trained, mask


def test_roundtrip(tmp_path):
    path, theta_0, trained, mask = _write(tmp_path)
    t = tickets.load(path, model=KimCNN(50, embed_dim=16, channels=8, hidden=16), settings=SETTINGS)
    assert t.round == 1 and t.vocab_size == 50 and t.settings == SETTINGS and t.meta == {"domain": "x"}
    assert t.sparsity == pytest.approx(mask.sparsity())
    for n in theta_0:
        assert torch.equal(t.init[n], theta_0[n])
        assert torch.equal(t.trained[n], trained[n])
        assert torch.equal(t.masks[n], mask[n])


def test_mismatched_model_or_settings_refused(tmp_path):
    path, *_ = _write(tmp_path)
    with pytest.raises(ValueError, match="shapes do not match"):
        tickets.load(path, model=KimCNN(50, embed_dim=32, channels=8, hidden=16))
    with pytest.raises(ValueError, match="shapes do not match"):
        tickets.load(path, model=KimCNN(60, embed_dim=16, channels=8, hidden=16))
    with pytest.raises(ValueError, match="model settings"):
        tickets.load(path, settings=ModelSettings())


def test_corrupted_files_refused(tmp_path):
    path, *_ = _write(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match="corrupted"):
        tickets.load(path)
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match=str(path.name)):
        tickets.load(path)
    with pytest.raises(FileNotFoundError):
        tickets.load(tmp_path / "nope.safetensors")


def test_changed_theta_0_and_non_tickets_refused(tmp_path):
    path, theta_0, *_ = _write(tmp_path)
    tickets.save_state(tmp_path / "theta_0.safetensors", {n: t * 2 for n, t in theta_0.items()})
    with pytest.raises(ValueError, match="theta_0 file .* has changed"):
        tickets.load(path)
    with pytest.raises(ValueError, match="not an ltnb ticket"):
        tickets.load(tmp_path / "theta_0.safetensors")
