import numpy as np
import pytest
from scipy.stats import entropy

from ltnb.text import divergence


def test_hand_worked_example_in_bits():
    # P = (1/2, 1/2), Q = (1, 0), M = (3/4, 1/4)
    # KL(P||M) = 1/2 log2(2/3) + 1/2 log2(2) = 0.2075187...; KL(Q||M) = log2(4/3) = 0.4150375...
    # JSD = (0.2075187 + 0.4150375) / 2 = 0.3112781...
    assert divergence.jsd(np.array([0.5, 0.5]), np.array([1.0, 0.0])) == pytest.approx(0.3112781244591328, abs=1e-12)
    # disjoint supports: exactly 1 bit, ln 2 nats
    assert divergence.jsd(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    assert divergence.jsd(np.array([1.0, 0.0]), np.array([0.0, 1.0]), base=np.e) == pytest.approx(np.log(2))


def test_is_the_divergence_not_the_distance():
    rng = np.random.default_rng(0)
    p, q = rng.dirichlet(np.ones(50)), rng.dirichlet(np.ones(50))
    m = (p + q) / 2
    expected = 0.5 * entropy(p, m, base=2) + 0.5 * entropy(q, m, base=2)  # independent: KL via scipy.stats
    assert divergence.jsd(p, q) == pytest.approx(expected, rel=1e-10)


def test_matrix_symmetric_zero_diagonal_and_unigram_counts():
    d = {
        "a": divergence.unigram([2, 2, 3, 3], 5),
        "b": divergence.unigram([2, 3, 4, 4], 5),
        "c": divergence.unigram([2, 2, 3, 3, 2, 2, 3, 3], 5),
    }
    np.testing.assert_allclose(d["a"], [0, 0, 0.5, 0.5, 0])
    m = divergence.jsd_matrix(d)
    assert list(m.index) == ["a", "b", "c"]
    np.testing.assert_allclose(m.values, m.values.T)
    np.testing.assert_allclose(np.diag(m.values), 0)
    assert m.loc["a", "c"] == pytest.approx(0.0)  # same distribution
    assert m.loc["a", "b"] > 0
    long = divergence.long_table(m)
    assert set(long.columns) == {"domain", "other", "jsd", "jsd_x1e5"}
    np.testing.assert_allclose(long["jsd_x1e5"], long["jsd"] * 1e5)


def test_empty_unigram_is_an_error():
    with pytest.raises(ValueError, match="no tokens"):
        divergence.unigram([], 5)
