"""Slow checks at the paper's full model size (`make test-slow`; not part of CI's `make test`)."""
import pytest

from ltnb.core import lottery
from ltnb.text import data, vocab
from ltnb.base.config import LotterySettings, VocabSettings

pytestmark = pytest.mark.slow


def test_full_size_chains_show_the_phase_transition(tmp_path, builtin_cache):
    """Built-in products at the demo's settings (paper model, vocab 8000, 3 epochs): the dense round
    learns above chance, and at 99.1% sparsity the reset ticket still does while random has collapsed."""
    study = tmp_path / "study"
    data.build(study, log=lambda *_: None)
    vocab.build(study, VocabSettings(vocab_size=8000), log=lambda *_: None)
    settings = LotterySettings.from_params(rounds=11, max_epochs=3, patience=2)
    reset = lottery.obtain(study, "products", seed=0, strategy="reset", settings=settings, progress=False)
    random = lottery.obtain(study, "products", seed=0, strategy="random", settings=settings, progress=False)
    assert reset.loc[0, "test_acc"] == random.loc[0, "test_acc"] > 0.58  # same dense round 0, above chance
    assert reset["sparsity"].iloc[-1] == pytest.approx(1 - 0.65 ** 11, abs=1e-3)
    assert reset["test_acc"].iloc[-1] > 0.55
    assert random["test_acc"].iloc[-1] < reset["test_acc"].iloc[-1]
