"""Unequal domain sizes (issue 28): DataSettings.sizes, the chains' train_size, and the plan's checks."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from ltnb.base import config
from ltnb.study import plan
from ltnb.text import data, tokens


def _table(per_class: dict[str, int]) -> pd.DataFrame:
    rows = [(f"{d} text {y} {i}", y, d, "s") for d, n in per_class.items() for y in (0, 1) for i in range(n)]
    return pd.DataFrame(rows, columns=["text", "label", "domain", "source"])


def test_sizes_fixed_validation_and_test_nested_training():
    df = _table({"a": 60, "b": 40})
    big = data.sample_sized(df, {"train": {"a": 60, "b": 20}, "validation": 10, "test": 20}, seed=3)
    small = data.sample_sized(df, {"train": 20, "validation": 10, "test": 20}, seed=3)
    c = data.counts(big)
    assert c.loc[("a", "train"), "total"] == 60 and c.loc[("b", "train"), "total"] == 20
    for d in ("a", "b"):
        for split, n in (("validation", 10), ("test", 20)):
            assert c.loc[(d, split), "negative"] == c.loc[(d, split), "positive"] == n // 2
            # the same validation and test texts whatever the training size
            assert set(big[(big.domain == d) & (big.split == split)].text) == \
                set(small[(small.domain == d) & (small.split == split)].text)
        # a smaller training split is part of the larger one
        assert set(small[(small.domain == d) & (small.split == "train")].text) <= \
            set(big[(big.domain == d) & (big.split == "train")].text)
    assert data.leaks(big)["in_train_or_validation"] == 0
    other = data.sample_sized(df, {"train": 20, "validation": 10, "test": 20}, seed=4)
    assert set(other[other.split == "test"].text) != set(small[small.split == "test"].text)


def test_sizes_short_domain_and_bad_sizes_are_named():
    df = _table({"a": 60, "b": 20})
    with pytest.raises(data.NotEnoughData, match=r"domain 'b' has only 20 negative .* sizes needs 25 per class "
                                                 r"\(train 10, validation 5, test 10\)"):
        data.sample_sized(df, {"train": 20, "validation": 10, "test": 20})
    with pytest.raises(ValueError, match=r"sizes.train: no size for domain\(s\) \['b'\]"):
        data.sample_sized(df, {"train": {"a": 20}, "validation": 10, "test": 20})


def test_data_settings_sizes_checks():
    assert config.DataSettings().sizes is None
    with pytest.raises(ValueError, match=r"DataSettings.sizes = .* expected null or a mapping \{train: N"):
        config.DataSettings(sizes={"train": 10, "validation": 4})
    with pytest.raises(ValueError, match=r"DataSettings.sizes: train.a = 11, test = 3: each size must be even"):
        config.DataSettings(sizes={"train": {"a": 11}, "validation": 4, "test": 3})
    with pytest.raises(ValueError, match=r"give one of them"):
        config.DataSettings(sizes={"train": 10, "validation": 4, "test": 4}, per_domain=100)


def test_sizes_build_records_and_rebuild(tmp_path, monkeypatch):
    from ltnb.text import corpus

    df = _table({"products": 40, "movies": 40})
    monkeypatch.setattr(corpus, "_load_builtin", lambda *a, **k: (df, {}))
    s = config.DataSettings(domains=["products", "movies"], sizes={"train": {"products": 20, "movies": 40},
                                                                   "validation": 10, "test": 20})
    out = data.build(tmp_path, s, log=lambda *_: None)
    summary = data.load_summary(tmp_path)
    assert summary["settings"]["sizes"] == {"train": {"products": 20, "movies": 40}, "validation": 10, "test": 20}
    assert "ratios" not in summary["settings"] and summary["per_domain"] is None and summary["test_surplus"] is False
    assert summary["test_sizes"] == {"products": 20, "movies": 20} and summary["leaks"]["in_train_or_validation"] == 0
    assert len(out) == 20 + 40 + 2 * (10 + 20)
    with pytest.raises(data.SettingsMismatch, match="sizes"):
        data.build(tmp_path, config.DataSettings(domains=["products", "movies"],
                                                 sizes={"train": 20, "validation": 10, "test": 20}), log=lambda *_: None)


def test_first_per_class_is_nested_and_checked():
    seqs = [[i, i + 1] for i in range(10)]
    labels = [0, 1, 1, 0, 0, 1, 0, 1, 0, 1]
    split = tokens.TokenSplit.from_lists(seqs, labels)
    four = tokens.first_per_class(split, 4)
    assert four.labels.tolist() == [0, 1, 1, 0] and four.sequence(3).tolist() == [3, 4]
    eight = tokens.first_per_class(split, 8)
    assert [four.sequence(i).tolist() for i in range(4)] == [eight.sequence(i).tolist() for i in range(4)]
    assert int((eight.labels == 0).sum()) == 4
    with pytest.raises(ValueError, match=r"train_size = 12: the train split holds 5 negative and 5 positive .* is 10"):
        tokens.first_per_class(split, 12)
    with pytest.raises(ValueError, match="even"):
        tokens.first_per_class(split, 3)


def test_train_size_enters_the_run_hash_only_when_set():
    from ltnb.core import lottery

    base = config.LotterySettings(rounds=2)
    assert "train_size" not in base.to_dict()
    h = lambda s: lottery.run_hash(s, data_key="k", vocab_size=10, strategy="reset")  # noqa: E731
    assert h(base) != h(config.LotterySettings(rounds=2, train_size=500)) != h(config.LotterySettings(rounds=2, train_size=1000))
    assert config.LotterySettings.from_dict(config.LotterySettings(train_size=500).to_dict()).train_size == 500


def test_scale_plan_checks_and_cells():
    p = plan.load_plan("params/scale.yaml")
    obtain = [c for c in p.cells if c.stage == "obtain"]
    assert len(obtain) == 2 * 5 * 3 and {c.params["train_size"] for c in obtain} == {500, 1000, 2000}
    assert "obtain/airlines/seed0/train_size=500" in {c.key for c in obtain}
    assert len({c.params_hash for c in obtain}) == len(obtain)


def test_plan_refuses_a_train_size_larger_than_the_split(tmp_path):
    import yaml

    raw = yaml.safe_load(open("params/scale.yaml"))
    raw["stages"][0]["params"]["sizes"] = {"train": {"movies": 2000, "airlines": 800}, "validation": 500, "test": 2000}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(plan.PlanError, match=r"train_size = 1000: the data stage's training split of 'airlines' holds 800"):
        plan.load_plan(path, root=".")
