import pandas as pd
import pytest
import torch

from ltnb.analysis import results
from ltnb.base import paths
from ltnb.core import lottery, strategies, tickets
from ltnb.core import train as _train
from ltnb.base.config import LotterySettings, ModelSettings, TrainSettings
from ltnb.core.train import synthetic_data

DATA_A = synthetic_data(50, signal=0.5, seed=0)
DATA_B = synthetic_data(50, signal=0.5, seed=1)
KEY = "synthetic-v1"
SMALL = LotterySettings(rounds=3, model=ModelSettings(embed_dim=16, channels=8, hidden=16),
                        train=TrainSettings(max_epochs=4, lr=5e-3))
NUMBERS = ["round", "sparsity", "val_acc", "test_acc", "best_epoch", "epochs_run"]


def _obtain(study, settings=SMALL, data=DATA_A, domain="a", **kw):
    return lottery.obtain(study, domain, settings=settings, data=data, vocab_size=50, data_key=KEY,
                          device="cpu", progress=False, **kw)


def test_chain_learns_keeps_learning_at_90_percent_and_records_everything(tmp_path):
    s = LotterySettings(rounds=6, model=ModelSettings(embed_dim=32, channels=16, hidden=16),
                        train=TrainSettings(max_epochs=6, lr=5e-3))
    df = _obtain(tmp_path, settings=s)
    assert list(df.columns) == lottery.COLUMNS
    assert df["round"].tolist() == list(range(7))
    for r, sp in zip(df["round"], df["sparsity"]):
        assert sp == pytest.approx(1 - 0.65**r, abs=0.01)
    assert df["test_acc"].iloc[0] > 0.75
    assert df["sparsity"].iloc[-1] > 0.9 and df["test_acc"].iloc[-1] > 0.7
    assert (df["stage"] == "obtain").all() and (df["pair"] == "a").all()
    run = lottery.chain_dir(tmp_path, "a", "reset", 0, s, KEY, 50)
    assert (run / paths.COMPLETE_MARKER).exists() and (run / "settings.json").exists()
    t = tickets.load(run / "round_06.safetensors")
    assert t.round == 6 and t.sparsity == pytest.approx(df["sparsity"].iloc[-1])
    for n in t.masks:  # trained weights are zero exactly where pruned
        assert (t.trained[n][~t.masks[n]] == 0).all()
    # rerun: nothing to do, same rows
    pd.testing.assert_frame_equal(_obtain(tmp_path, settings=s), df)


def _wrap_fit(monkeypatch, crash_round, crash_step):
    real, calls = _train.fit, []

    def fit(*args, on_step=None, desc="", **kw):
        calls.append(desc)
        if desc == f"round {crash_round}":
            def boom(step, model):
                if on_step:
                    on_step(step, model)
                if step >= crash_step:
                    raise KeyboardInterrupt("simulated crash")
            return real(*args, on_step=boom, desc=desc, **kw)
        return real(*args, on_step=on_step, desc=desc, **kw)

    monkeypatch.setattr(_train, "fit", fit)
    return calls


@pytest.mark.parametrize("strategy", ["reset", "random"])
def test_resume_after_crash_mid_round_and_between_rounds_equals_uninterrupted(tmp_path, monkeypatch, strategy):
    s = LotterySettings(rounds=4, model=SMALL.model, train=SMALL.train)
    full = _obtain(tmp_path / "full", settings=s, strategy=strategy)
    # crash mid-round (3 steps into round 2's training)
    with monkeypatch.context() as mp:
        _wrap_fit(mp, crash_round=2, crash_step=3)
        with pytest.raises(KeyboardInterrupt):
            _obtain(tmp_path / "crash", settings=s, strategy=strategy)
    partial = pd.read_parquet(lottery.chain_dir(tmp_path / "crash", "a", strategy, 0, s, KEY, 50) / "results.parquet")
    assert partial["round"].tolist() == [0, 1]
    # crash between rounds: stop before round 3 does anything
    with monkeypatch.context() as mp:
        _wrap_fit(mp, crash_round=3, crash_step=0)
        with pytest.raises(KeyboardInterrupt):
            _obtain(tmp_path / "crash", settings=s, strategy=strategy)
    with monkeypatch.context() as mp:
        calls = _wrap_fit(mp, crash_round=-1, crash_step=0)
        resumed = _obtain(tmp_path / "crash", settings=s, strategy=strategy)
        assert calls == ["round 3", "round 4"]
    pd.testing.assert_frame_equal(resumed[NUMBERS], full[NUMBERS])
    # extending a chain (more rounds) continues the same folder; fewer rounds just reads
    short = _obtain(tmp_path / "ext", settings=LotterySettings(rounds=2, model=s.model, train=s.train), strategy=strategy)
    pd.testing.assert_frame_equal(short[NUMBERS], full[NUMBERS].iloc[:3])
    pd.testing.assert_frame_equal(_obtain(tmp_path / "ext", settings=s, strategy=strategy)[NUMBERS], full[NUMBERS])


def test_changed_settings_get_a_new_folder(tmp_path):
    s1 = LotterySettings(rounds=1, model=SMALL.model, train=TrainSettings(max_epochs=1))
    s2 = LotterySettings(rounds=1, model=SMALL.model, train=TrainSettings(max_epochs=2))
    a, b = _obtain(tmp_path, settings=s1), _obtain(tmp_path, settings=s2)
    assert a["settings_hash"].iloc[0] != b["settings_hash"].iloc[0]
    assert len(results.load(tmp_path)) == 4
    assert len(results.load(tmp_path, settings_hash=a["settings_hash"].iloc[0])) == 2


def test_transfer_uses_source_masks_and_results_load(tmp_path):
    src = _obtain(tmp_path)
    run = lottery.chain_dir(tmp_path, "a", "reset", 0, SMALL, KEY, 50)
    rows = {}
    for strategy in ("masks-reset", "masks-random"):
        rows[strategy] = lottery.transfer(tmp_path, "a", "b", strategy=strategy, settings=SMALL, data=DATA_B,
                                          vocab_size=50, data_key=KEY, device="cpu", progress=False)
        df = rows[strategy]
        assert df["round"].tolist() == [1, 2, 3]
        assert df["sparsity"].tolist() == src["sparsity"].iloc[1:].tolist()
        assert (df["pair"] == "a->b").all() and (df["domain"] == "b").all() and (df["stage"] == "transfer").all()
        tdir = paths.transfer_dir(tmp_path, "a", "b", strategy, 0) / df["settings_hash"].iloc[0]
        t = tickets.load(tdir / "round_02.safetensors")
        s = tickets.load(run / "round_02.safetensors")
        for n in t.masks:
            assert torch.equal(t.masks[n], s.masks[n])
            assert torch.equal(t.init[n], s.init[n])
    all_rows = results.load(tmp_path)
    assert len(all_rows) == 4 + 3 + 3
    summary = results.summarize(all_rows)
    assert set(summary["pair"]) == {"a", "a->b"} and (summary["n"] == 1).all()
    assert {"sparsity", "test_acc_mean", "test_acc_std", "n"} <= set(summary.columns)


def test_rewind_strategy_runs(tmp_path):
    s = LotterySettings(rounds=1, rewind_steps=3, model=SMALL.model, train=TrainSettings(max_epochs=1))
    df = _obtain(tmp_path, settings=s, strategy="rewind")
    assert df["round"].tolist() == [0, 1]
    run = lottery.chain_dir(tmp_path, "a", "rewind", 0, s, KEY, 50)
    assert (run / "theta_rewind.safetensors").exists()


def test_empty_study(tmp_path):
    df = results.load(tmp_path)
    assert df.empty and list(df.columns) == lottery.COLUMNS
    with pytest.raises(FileNotFoundError):
        results.load(tmp_path / "missing")


def test_bad_parameters_fail_before_training(tmp_path, monkeypatch):
    def no_training(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(_train, "fit", no_training)
    with pytest.raises(ValueError, match="prune_fraction"):
        LotterySettings(prune_fraction=1.5)
    with pytest.raises(ValueError, match="prune_fraction"):
        LotterySettings(prune_fraction=0)
    with pytest.raises(ValueError, match="rounds"):
        LotterySettings(rounds=-1)
    with pytest.raises(ValueError, match=r"strategy = 'bogus'.*\['randmask-random', 'randmask-reset', 'random', 'reinit', 'rescaled', 'reset', 'rewind', 'shuffle'\]"):
        _obtain(tmp_path, strategy="bogus")
    with pytest.raises(ValueError, match="strategy"):
        _obtain(tmp_path, strategy="masks-reset")
    with pytest.raises(ValueError, match="seed"):
        _obtain(tmp_path, seed=-1)
    with pytest.raises(ValueError, match="vocab_size"):
        lottery.obtain(tmp_path, "a", data=DATA_A, vocab_size=10, progress=False)
    kw = dict(settings=SMALL, data=DATA_B, vocab_size=50, data_key=KEY, device="cpu", progress=False)
    with pytest.raises(FileNotFoundError, match=r"(?s)obtain/a/reset/seed0.*strategy='reset'"):
        lottery.transfer(tmp_path, "a", "b", **kw)
    with pytest.raises(ValueError, match="target = source"):
        lottery.transfer(tmp_path, "a", "a", **kw)
    with pytest.raises(ValueError, match=r"strategy = 'reset'.*masks-random"):
        lottery.transfer(tmp_path, "a", "b", strategy="reset", **kw)
    with pytest.raises(ValueError, match="rounds = 0: a transfer needs at least 1 round"):
        lottery.transfer(tmp_path, "a", "b", **{**kw, "settings": LotterySettings(rounds=0, model=SMALL.model)})
    with pytest.raises(FileNotFoundError, match="reset chain's mask of round 1"):
        _obtain(tmp_path, strategy="reinit")
    assert not (tmp_path / "transfer").exists()


def test_round_0_is_trained_once_and_bit_identical(tmp_path, monkeypatch):
    """A seed's reset, random and reinit chains share round 0: the first trains it, the others take it,
    and what they take equals training it in each chain (a second study trains random alone)."""
    trained = []
    real = _train.fit

    def counting(*a, desc="", **kw):
        trained.append(desc)
        return real(*a, desc=desc, **kw)

    monkeypatch.setattr(_train, "fit", counting)
    shared = tmp_path / "shared"
    for strategy in ("reset", "random", "reinit"):
        _obtain(shared, strategy=strategy)
    assert trained.count("round 0") == 1 and len(trained) == 1 + 3 * SMALL.rounds
    alone = tmp_path / "alone"
    _obtain(alone, strategy="random")
    for strategy in ("random", "reinit"):
        a = tickets.load(lottery.chain_dir(shared, "a", strategy, 0, SMALL, KEY, 50) / "round_00.safetensors")
        b = tickets.load(lottery.chain_dir(alone, "a", "random", 0, SMALL, KEY, 50) / "round_00.safetensors")
        assert all(torch.equal(a.trained[n], b.trained[n]) for n in a.trained)
    rows = results.load(shared)
    r0 = rows[rows["round"] == 0].set_index("strategy")
    assert r0["test_acc"].nunique() == 1 and set(r0.index) == {"reset", "random", "reinit"}
    later_random = rows[(rows.strategy == "random")].reset_index(drop=True)
    alone_rows = results.load(alone)
    pd.testing.assert_frame_equal(later_random[NUMBERS], alone_rows[NUMBERS])  # the whole chain, equal


def test_reinit_trains_resets_masks_from_randoms_values(tmp_path):
    for strategy in ("reset", "random", "reinit"):
        _obtain(tmp_path, strategy=strategy)
    for r in (1, 3):
        reset = tickets.load(lottery.chain_dir(tmp_path, "a", "reset", 0, SMALL, KEY, 50) / f"round_{r:02d}.safetensors")
        rand = tickets.load(lottery.chain_dir(tmp_path, "a", "random", 0, SMALL, KEY, 50) / f"round_{r:02d}.safetensors")
        reinit = tickets.load(lottery.chain_dir(tmp_path, "a", "reinit", 0, SMALL, KEY, 50) / f"round_{r:02d}.safetensors")
        assert all(torch.equal(reinit.masks[n], reset.masks[n]) for n in reset.masks)  # reset's own masks
        # round 1 prunes the shared round 0 in every chain; from round 2 random prunes its own weights
        assert any(not torch.equal(rand.masks[n], reset.masks[n]) for n in reset.masks) == (r > 1)
    assert results.load(tmp_path).groupby("strategy")["sparsity"].max().nunique() == 1


def test_a_cell_runs_every_chain_and_reports_each_failure(tmp_path, monkeypatch):
    from ltnb.text import vocab

    monkeypatch.setattr(vocab, "load_encoded", lambda study, domain: (DATA_A, 50))
    monkeypatch.setattr(vocab, "data_key", lambda study: KEY)
    real = _train.fit

    def failing_random(*a, desc="", **kw):
        if desc == "round 2" and failing_random.strategy == "random":
            raise RuntimeError("random asked to fail")
        return real(*a, desc=desc, **kw)

    failing_random.strategy = ""
    real_obtain = lottery.obtain

    def obtain(*a, strategy="reset", **kw):
        failing_random.strategy = strategy
        return real_obtain(*a, strategy=strategy, **kw)

    monkeypatch.setattr(_train, "fit", failing_random)
    monkeypatch.setattr(lottery, "obtain", obtain)
    with pytest.raises(lottery.ChainsFailed, match="random: RuntimeError: random asked to fail") as e:
        lottery.obtain_cell(tmp_path, "a", strategies=("random", "reinit", "reset"), settings=SMALL, progress=False)
    assert list(e.value.errors) == ["random"]
    rows = results.load(tmp_path)
    assert set(rows[rows["round"] == SMALL.rounds].strategy) == {"reset", "reinit"}  # the others finished


def test_settings_from_params_and_hash():
    s = LotterySettings.from_params(rounds=5, prune_fraction=0.2, max_epochs=3, patience=None, embed_dim=32,
                                    channels=8, hidden=10, dropout=0.1, batch_size=16, lr=0.01,
                                    weight_decay=0.0, prune_biases=False, rewind_steps=2)
    assert s.rounds == 5 and s.train.max_epochs == 3 and s.model.embed_dim == 32 and not s.prune_biases
    assert LotterySettings.from_dict(s.to_dict()) == s
    assert s.settings_hash() == LotterySettings.from_dict(s.to_dict()).settings_hash()
    assert s.settings_hash() != LotterySettings().settings_hash()
    with pytest.raises(ValueError, match="unknown parameter.*'epochs'"):
        LotterySettings.from_params(epochs=3)
    with pytest.raises(ValueError, match="TrainSettings.patience"):
        LotterySettings.from_params(patience=0)
    with pytest.raises(ValueError, match="ModelSettings.dropout"):
        LotterySettings.from_params(dropout=1.0)
    with pytest.raises(ValueError, match="prune_biases"):
        LotterySettings.from_params(prune_biases="yes")


def test_rewind_steps_beyond_round_0_refused_before_training(tmp_path):
    s = LotterySettings(rounds=1, rewind_steps=10_000, model=SMALL.model, train=TrainSettings(max_epochs=1))
    with pytest.raises(ValueError, match="rewind_steps = 10000"):
        _obtain(tmp_path, settings=s, strategy="rewind")


def test_controls_train_resets_masks_from_theta_0s_values_permuted_or_fresh_values_rescaled(tmp_path):
    """shuffle: reset's mask, theta_0's survivors permuted within each tensor; rescaled: reset's mask,
    reinit's fresh values scaled per tensor to the RMS of theta_0's survivors. Both through obtain."""
    for strategy in ("reset", "random", "shuffle", "rescaled"):
        _obtain(tmp_path, strategy=strategy)
    theta_0 = tickets.load_state(lottery.chain_dir(tmp_path, "a", "reset", 0, SMALL, KEY, 50) / "theta_0.safetensors")[0]
    for r in range(1, SMALL.rounds + 1):
        name = f"round_{r:02d}.safetensors"
        reset = tickets.load(lottery.chain_dir(tmp_path, "a", "reset", 0, SMALL, KEY, 50) / name)
        for strategy in ("shuffle", "rescaled"):
            t = tickets.load(lottery.chain_dir(tmp_path, "a", strategy, 0, SMALL, KEY, 50) / name)
            assert all(torch.equal(t.masks[n], reset.masks[n]) for n in reset.masks)
        # the values each started from, re-drawn exactly as the chain drew them
        start = strategies.Start(theta_0=theta_0, vocab_size=50, model=SMALL.model, seed=0, round=r, strategy="shuffle")
        sh = strategies.shuffle(reset.masks, start)
        fresh = strategies.reinit(reset.masks, start)  # random's draw of (seed, round) under reset's mask
        rs = strategies.rescaled(reset.masks, start)
        for n, m in reset.masks.items():
            kept = theta_0[n][m]
            assert torch.equal(torch.sort(sh[n][m]).values, torch.sort(kept).values)  # same multiset
            assert (sh[n][~m] == 0).all() and (rs[n][~m] == 0).all()
            if m.sum() >= 10:  # (a tiny tensor's permutation may be the identity)
                assert not torch.equal(sh[n][m], kept)  # ... in other places
            want = float(kept.double().pow(2).mean().sqrt())
            assert float(rs[n][m].double().pow(2).mean().sqrt()) == pytest.approx(want, rel=1e-5)
            ratio = rs[n][m] / fresh[n][m]
            assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-5)  # one factor per tensor


def test_theta_0_per_seed_and_domain_by_default_or_per_seed(tmp_path):
    a = _obtain(tmp_path, domain="a", data=DATA_A)
    b = _obtain(tmp_path, domain="b", data=DATA_A)
    ta = tickets.load_state(lottery.chain_dir(tmp_path, "a", "reset", 0, SMALL, KEY, 50) / "theta_0.safetensors")[0]
    tb = tickets.load_state(lottery.chain_dir(tmp_path, "b", "reset", 0, SMALL, KEY, 50) / "theta_0.safetensors")[0]
    assert SMALL.theta_0_per == "seed_domain"
    assert all(not torch.equal(ta[n], tb[n]) for n in ta)
    per_seed = LotterySettings.from_params(**{**SMALL.flat(), "theta_0_per": "seed"})
    assert lottery.run_hash(per_seed, data_key=KEY, vocab_size=50, strategy="reset") != \
        lottery.run_hash(SMALL, data_key=KEY, vocab_size=50, strategy="reset")
    _obtain(tmp_path, settings=per_seed, domain="a")
    _obtain(tmp_path, settings=per_seed, domain="b")
    sa = tickets.load_state(lottery.chain_dir(tmp_path, "a", "reset", 0, per_seed, KEY, 50) / "theta_0.safetensors")[0]
    sb = tickets.load_state(lottery.chain_dir(tmp_path, "b", "reset", 0, per_seed, KEY, 50) / "theta_0.safetensors")[0]
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
    # settings recorded before the setting existed drew theta_0 per seed
    old = SMALL.to_dict()
    old.pop("theta_0_per")
    assert LotterySettings.from_dict(old).theta_0_per == "seed"
    assert len(a) == len(b)


def test_diagnostics_columns_against_a_hand_computation(tmp_path):
    """Every row's diagnostics, recomputed from the saved tickets (start values, mask, trained values)."""
    rows = _obtain(tmp_path, strategy="reset")
    run = lottery.chain_dir(tmp_path, "a", "reset", 0, SMALL, KEY, 50)
    theta_0 = tickets.load_state(run / "theta_0.safetensors")[0]
    ids = set()
    for i in range(len(DATA_A["train"])):
        ids |= set(DATA_A["train"].sequence(i)[:SMALL.train.max_len].tolist())
    for _, row in rows.iterrows():
        t = tickets.load(run / f"round_{int(row['round']):02d}.safetensors")
        groups = {"embedding": ["embedding.weight"], "conv": [n for n in t.masks if n.startswith("convs.") and n.endswith("weight")],
                  "mlp": ["fc1.weight", "fc2.weight"]}
        for g, names in groups.items():
            num = sum(float(((t.trained[n] - theta_0[n] * t.masks[n]).double() ** 2).sum()) for n in names)
            den = sum(float(((theta_0[n] * t.masks[n]).double() ** 2).sum()) for n in names)
            assert row[f"wchange_{g}"] == pytest.approx((num / den) ** 0.5, rel=1e-6)
        emb = t.masks["embedding.weight"]
        alive = [i for i in range(emb.shape[0]) if bool(emb[i].any())]
        assert row["emb_rows_seen"] == pytest.approx(sum(i in ids for i in alive) / len(alive))
        assert row["emb_weights_seen"] == pytest.approx(sum(int(emb[i].sum()) for i in alive if i in ids) / int(emb.sum()))
        assert bool(row["converged"]) == (row["best_epoch"] < row["epochs_run"])
    assert rows["wchange_embedding"].gt(0).all()


def test_mask_overlap_is_the_jaccard_of_the_survivors(tmp_path):
    for strategy in ("reset", "random"):
        _obtain(tmp_path, strategy=strategy)
    ov = lottery.mask_overlap(tmp_path)
    assert set(ov["comparison"]) == {"reset-random"} and set(ov["round"]) == {1, 2, 3}
    assert set(ov["layer"]) == {"embedding", "conv", "mlp", "all"}
    assert (ov[ov["round"] == 1]["jaccard"] == 1).all()  # both prune the shared dense round 0
    r = 3
    a = tickets.load(lottery.chain_dir(tmp_path, "a", "reset", 0, SMALL, KEY, 50) / f"round_{r:02d}.safetensors").masks
    b = tickets.load(lottery.chain_dir(tmp_path, "a", "random", 0, SMALL, KEY, 50) / f"round_{r:02d}.safetensors").masks
    sa = {(n, i) for n in a for i in a[n].reshape(-1).nonzero().squeeze(1).tolist()}
    sb = {(n, i) for n in b for i in b[n].reshape(-1).nonzero().squeeze(1).tolist()}
    got = ov[(ov["round"] == r) & (ov["layer"] == "all")]["jaccard"].item()
    assert got == pytest.approx(len(sa & sb) / len(sa | sb))
    emb = {x for x in sa if x[0] == "embedding.weight"}, {x for x in sb if x[0] == "embedding.weight"}
    got = ov[(ov["round"] == r) & (ov["layer"] == "embedding")]["jaccard"].item()
    assert got == pytest.approx(len(emb[0] & emb[1]) / len(emb[0] | emb[1]))
