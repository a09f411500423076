"""The random-mask baselines (randmask-reset, randmask-random), obtain and transfer: the ticket's
per-tensor counts at random positions, theta_0's or fresh values, through the same per-round body.
Also the strategy table they are defined in (``ltnb.base.registry``)."""
import pytest
import torch

from ltnb.base import labels, registry, stages
from ltnb.core import lottery, strategies, tickets
from ltnb.core import train as _train
from ltnb.base.config import OBTAIN_STRATEGIES, TRANSFER_STRATEGIES

from test_lottery import DATA_A, DATA_B, KEY, SMALL, _obtain, _wrap_fit

RANDMASK = ("randmask-reset", "randmask-random")


def _capture_starts(monkeypatch):
    """Record the values each round's training starts from (the model's weights when ``fit`` is called)."""
    real, seen = _train.fit, {}

    def fit(model, *args, desc="", **kw):
        seen[desc] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return real(model, *args, desc=desc, **kw)

    monkeypatch.setattr(_train, "fit", fit)
    return seen


def _ticket(study, stage, name, strategy, r, **kw):
    if stage == "obtain":
        run = lottery.chain_dir(study, name, strategy, 0, SMALL, KEY, 50)
    else:
        h = lottery.run_hash(SMALL, data_key=KEY, vocab_size=50, strategy=strategy)
        run = lottery.paths.transfer_dir(study, *name.split("->"), strategy, 0) / h
    return tickets.load(run / f"round_{r:02d}.safetensors")


def _check_positions(ticket, variants):
    """Same per-tensor counts as the ticket, other positions, one draw for both variants."""
    a, b = variants
    for n, m in ticket.masks.items():
        assert int(a.masks[n].sum()) == int(m.sum()) == int(b.masks[n].sum()), n
        assert torch.equal(a.masks[n], b.masks[n]), n  # both value variants share the positions
        if m.numel() >= 20 and 0 < int(m.sum()) < m.numel():
            assert not torch.equal(a.masks[n], m), n  # random positions, not the ticket's


def test_obtain_randmask_counts_positions_and_values(tmp_path, monkeypatch):
    seen = {}
    starts = _capture_starts(monkeypatch)
    for strategy in ("reset", *RANDMASK):
        starts.clear()
        _obtain(tmp_path, strategy=strategy)
        seen[strategy] = dict(starts)
    theta_0 = tickets.load_state(lottery.chain_dir(tmp_path, "a", "reset", 0, SMALL, KEY, 50) / "theta_0.safetensors")[0]
    for r in range(1, SMALL.rounds + 1):
        reset = _ticket(tmp_path, "obtain", "a", "reset", r)
        rm = [_ticket(tmp_path, "obtain", "a", s, r) for s in RANDMASK]
        _check_positions(reset, rm)
        assert rm[0].sparsity == pytest.approx(reset.sparsity)
        mask = rm[0].masks
        start = strategies.Start(theta_0=theta_0, vocab_size=50, model=SMALL.model, seed=0, round=r, strategy="x")
        fresh = strategies.fresh_values(start, "random")  # random's (and reinit's) draw of (seed, round)
        for n, m in mask.items():
            got_reset, got_random = seen["randmask-reset"][f"round {r}"][n], seen["randmask-random"][f"round {r}"][n]
            assert torch.equal(got_reset, torch.where(m, theta_0[n], torch.zeros(())))  # theta_0 under the mask
            assert torch.equal(got_random, torch.where(m, fresh[n], torch.zeros(())))  # the fresh draw under it
            assert (rm[0].trained[n][~m] == 0).all()  # trained under the mask its ticket records


def test_obtain_randmask_needs_the_reset_chain_and_a_resumed_chain_draws_the_same_mask(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="reset chain"):
        _obtain(tmp_path / "none", strategy="randmask-reset")
    _obtain(tmp_path / "whole", strategy="reset")
    _obtain(tmp_path / "whole", strategy="randmask-reset")
    _obtain(tmp_path / "cut", strategy="reset")
    _wrap_fit(monkeypatch, crash_round=2, crash_step=1)
    with pytest.raises(KeyboardInterrupt):
        _obtain(tmp_path / "cut", strategy="randmask-reset")
    monkeypatch.undo()
    _obtain(tmp_path / "cut", strategy="randmask-reset")  # resumes at round 2 (its ledger and nesting checked)
    for r in range(1, SMALL.rounds + 1):
        a = _ticket(tmp_path / "whole", "obtain", "a", "randmask-reset", r)
        b = _ticket(tmp_path / "cut", "obtain", "a", "randmask-reset", r)
        assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)


def test_transfer_randmask_counts_positions_and_values(tmp_path, monkeypatch):
    _obtain(tmp_path, strategy="reset")
    starts = _capture_starts(monkeypatch)
    seen = {}
    for strategy in ("masks-random", *RANDMASK):
        starts.clear()
        lottery.transfer(tmp_path, "a", "b", strategy=strategy, settings=SMALL, data=DATA_B, vocab_size=50,
                         data_key=KEY, device="cpu", progress=False)
        seen[strategy] = dict(starts)
    src = lottery.chain_dir(tmp_path, "a", "reset", 0, SMALL, KEY, 50)
    theta_0 = tickets.load_state(src / "theta_0.safetensors")[0]
    for r in range(1, SMALL.rounds + 1):
        source = tickets.load(src / f"round_{r:02d}.safetensors")
        rm = [_ticket(tmp_path, "transfer", "a->b", s, r) for s in RANDMASK]
        _check_positions(source, rm)
        for n, m in rm[0].masks.items():
            # masks-random's fresh values, re-masked: the same draw (random positions aside)
            fresh = seen["masks-random"][f"round {r}"][n]
            assert torch.equal(seen["randmask-random"][f"round {r}"][n][m & source.masks[n]], fresh[m & source.masks[n]])
            assert (seen["randmask-random"][f"round {r}"][n][~m] == 0).all()
            assert torch.equal(seen["randmask-reset"][f"round {r}"][n], torch.where(m, theta_0[n], torch.zeros(())))
        if r > 1:  # nested: a pruned weight never comes back
            before = _ticket(tmp_path, "transfer", "a->b", "randmask-reset", r - 1)
            assert all(not (rm[0].masks[n] & ~before.masks[n]).any() for n in before.masks)
    # obtain's randmask in the source domain draws the same positions as the transfer's (same seed and counts)
    _obtain(tmp_path, strategy="randmask-reset")
    ob = _ticket(tmp_path, "obtain", "a", "randmask-reset", 2)
    tr = _ticket(tmp_path, "transfer", "a->b", "randmask-reset", 2)
    assert all(torch.equal(ob.masks[n], tr.masks[n]) for n in ob.masks)


def test_random_positions_are_nested_uniform_in_count_and_seeded():
    ticket = {"w": torch.zeros(40, 25, dtype=torch.bool)}
    ticket["w"].view(-1)[:300] = True
    prev = strategies.random_positions({"w": torch.ones(40, 25, dtype=torch.bool)}, None, seed=0, round=0)
    a = strategies.random_positions(ticket, prev, seed=3, round=2)
    assert int(a["w"].sum()) == 300 and not (a["w"] & ~prev["w"]).any()
    assert torch.equal(a["w"], strategies.random_positions(ticket, prev, seed=3, round=2)["w"])
    assert not torch.equal(a["w"], strategies.random_positions(ticket, prev, seed=4, round=2)["w"])
    assert not torch.equal(a["w"], ticket["w"])  # not the ticket's positions
    with pytest.raises(ValueError, match="keeps 300 entries"):
        strategies.random_positions(ticket, {"w": torch.zeros(40, 25, dtype=torch.bool)}, seed=0, round=1)


def test_the_strategy_table_is_what_every_consumer_reads():
    assert OBTAIN_STRATEGIES == registry.names("obtain") and TRANSFER_STRATEGIES == registry.names("transfer")
    assert set(RANDMASK) <= set(OBTAIN_STRATEGIES) and set(RANDMASK) <= set(TRANSFER_STRATEGIES)
    for s in registry.STRATEGIES:
        assert labels.series_name(s.name) == s.label and labels.COLORS[s.label] == s.color
        assert s.values in strategies.VALUES and (s.hook is None or s.hook in strategies.HOOKS)
    strategy_colors = [s.color for s in {s.label: s for s in registry.STRATEGIES}.values()]
    assert len(set(strategy_colors)) == len(strategy_colors)  # distinct colours
    assert registry.federated() == ("masks-reset", "masks-random")
    assert stages.STAGES["federated"].strategies == registry.federated()
    assert stages.STAGES["obtain"].strategies == OBTAIN_STRATEGIES
    # rewind_steps enters only rewind's hash
    moved = lottery.LotterySettings.from_params(**{**SMALL.flat(), "rewind_steps": 3})
    for name in ("reset", "randmask-reset", "masks-reset"):
        assert lottery.run_hash(moved, data_key=KEY, vocab_size=50, strategy=name) == \
            lottery.run_hash(SMALL, data_key=KEY, vocab_size=50, strategy=name)
    assert lottery.run_hash(moved, data_key=KEY, vocab_size=50, strategy="rewind") != \
        lottery.run_hash(SMALL, data_key=KEY, vocab_size=50, strategy="rewind")
    with pytest.raises(ValueError, match="expected one of"):
        registry.get("obtain", "masks-reset")
