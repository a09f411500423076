"""ltnb.estimate: the time model against a hand-worked computation on a known rates table (nothing is
measured here: the rates are written into the cache first), and the list scheduling of cells."""
from __future__ import annotations

import math

import pytest

from ltnb import config, estimate
from ltnb._io import write_json
from ltnb.plan import load_plan

STEP, EVAL, FIXED = 0.1, 0.001, 0.5  # seconds: a training step of a batch, evaluating one text, per round

PLAN = """\
study: est
defaults: {seed: 0, max_epochs: 2, embed_dim: 16, channels: 8, hidden: 8}
stages:
  - stage: data
    params: {corpus: builtin, per_domain: 100, domains: [products, movies, tweets], vocab_size: 300}
  - stage: obtain
    params: {rounds: 2, strategies: [reset, random]}
    grid: {domain: [products], seed: [0]}
  - stage: federated
    params: {ticket_rounds: [1, 2], strategies: [masks-reset], clients_per_domain: 2, fl_rounds: 3, local_epochs: 1}
    grid: {source: [products], seed: [0]}
"""


@pytest.fixture
def plan_and_cache(tmp_path):
    (tmp_path / "plan.yaml").write_text(PLAN)
    plan = load_plan(tmp_path / "plan.yaml", root=tmp_path)
    model = config.ModelSettings(embed_dim=16, channels=8, hidden=8)
    flat = {str(s): [v, v] for s, v in ((s, STEP) for s in estimate.SPARSITIES)}
    table = {"step": flat, "eval": {k: [EVAL, EVAL] for k in flat}, "fixed": {k: FIXED for k in flat},
             "lengths": list(estimate.LENGTHS)}
    cache = tmp_path / "cache"
    write_json(cache / estimate.RATES_FILE, {"models": {estimate._key(model, 300, 32): table}})
    return plan, cache


def test_cells_follow_the_hand_worked_model(plan_and_cache):
    plan, cache = plan_and_cache
    cells, notes = estimate.estimate_cells(plan, cache_dir=cache, log=lambda *a: None)
    by = {c.stage: c for c in cells}
    # per_domain 100 from the plan: validation = test = 100 // 2 // 4 * 2 = 24, train 52
    n_train, n_val, n_test = 52, 24, 24
    one_round = 2 * (math.ceil(n_train / 32) * STEP + n_val * EVAL) + n_test * EVAL + FIXED
    # reset trains rounds 0, 1, 2; random takes reset's round 0 and trains rounds 1, 2
    assert by["obtain"].training == pytest.approx(5 * one_round)
    # federated: the two dense runs (fair, naive) and 2 tickets x 1 strategy; 2 client domains x 2 shards of
    # 26 texts (1 batch each); Flower and Ray's cost per client and round: fixed plus per MB of the model
    # (300 x 16 embedding, convs 3/4/5 x 16 x 8 + 3 x 8 biases, 24 x 8 + 8, 8 x 2 + 2: 6,578 values, 4 bytes
    # each); after every round the global model is evaluated on all 3 domains' test splits
    weights = 300 * 16 + (3 + 4 + 5) * 16 * 8 + 3 * 8 + 24 * 8 + 8 + 8 * 2 + 2
    assert weights == 6578
    per_client = estimate.FL_CLIENT_ROUND + estimate.FL_CLIENT_ROUND_PER_MB * 4 * weights / 1e6
    client_domain_round = (2 * math.ceil(26 / 32) * STEP + n_val * EVAL) + FIXED + 2 * per_client
    per_run = 3 * (2 * client_domain_round + 3 * n_test * EVAL)
    assert by["federated"].training == pytest.approx(estimate.RAY_START + 4 * per_run)
    assert any("per_domain 100" in n for n in notes)


def test_more_federated_rounds_and_clients_cost_more(plan_and_cache, tmp_path):
    plan, cache = plan_and_cache
    base = {c.stage: c for c in estimate.estimate_cells(plan, cache_dir=cache, log=lambda *a: None)[0]}
    (tmp_path / "plan.yaml").write_text(PLAN.replace("fl_rounds: 3", "fl_rounds: 6"))
    bigger = load_plan(tmp_path / "plan.yaml", root=tmp_path)
    more = {c.stage: c for c in estimate.estimate_cells(bigger, cache_dir=cache, log=lambda *a: None)[0]}
    assert more["federated"].training - estimate.RAY_START == pytest.approx(
        2 * (base["federated"].training - estimate.RAY_START))


def test_schedule_is_list_scheduling_in_dependency_order():
    C = estimate.CellEstimate
    cells = [C("data", "data", (), 0.0, 10.0),
             C("a", "obtain", ("data",), 30.0, 0.0), C("b", "obtain", ("data",), 20.0, 0.0),
             C("c", "obtain", ("data",), 25.0, 0.0),
             C("t", "transfer", ("a",), 5.0, 0.0)]
    # 1 worker: everything in a row
    assert estimate.schedule(cells, 1) == pytest.approx(90.0)
    # 2 workers: data 0-10; a 10-40 and b 10-30; c 30-55; t waits for a: 40-45 -> 55
    assert estimate.schedule(cells, 2) == pytest.approx(55.0)
    # many workers: the longest path, data + a + t = 45
    assert estimate.schedule(cells, 8) == pytest.approx(45.0)


def test_a_batch_teaches_the_estimate_its_side_by_side_slowdown(plan_and_cache):
    """record_run keeps measured / modelled training per worker count; the next estimate with that
    many workers scales training by it (and says so), other worker counts are left alone."""
    plan, cache = plan_and_cache
    quiet = {"log": lambda *a: None, "cache_dir": cache}
    first = estimate.summary(plan, 2, **quiet)
    raw = first["raw_training"]
    key = next(k for k in raw if k.startswith("obtain"))
    model_key = first["model_keys"][key]
    estimate.record_run([{"stage": "obtain", "status": "done", "wall": 3 * raw[key] + 5, "training": 3 * raw[key],
                          "raw_training": raw[key], "model_key": model_key, "overhead": 5.0}], workers=2, cache_dir=cache)
    again = estimate.summary(plan, 2, **quiet)
    assert again["stages"]["obtain"]["training"] == pytest.approx(3 * first["stages"]["obtain"]["training"])
    assert any("x 3.00" in n for n in again["notes"])
    alone = estimate.summary(plan, 1, **quiet)
    assert alone["stages"]["obtain"]["training"] == pytest.approx(first["stages"]["obtain"]["training"])
    # another model (here: the same plan with wider layers) is not scaled by this model's ratio
    other = {"stage": "obtain", "status": "done", "wall": 1.0, "training": 100.0,
             "raw_training": 1.0, "model_key": "another machine or model", "overhead": 0.0}
    estimate.record_run([other], workers=2, cache_dir=cache)
    assert estimate.summary(plan, 2, **quiet)["stages"]["obtain"]["training"] == pytest.approx(
        again["stages"]["obtain"]["training"])


def test_rates_are_kept_per_thread_count():
    model = config.ModelSettings(embed_dim=16, channels=8, hidden=8)
    assert estimate._key(model, 300, 32, 1) != estimate._key(model, 300, 32, 2)
    assert "threads=1" in estimate._key(model, 300, 32)


def test_sparsity_levels_and_learned_values_between_them():
    for k in range(21):
        assert estimate.level(1 - 0.65 ** k) == k
    assert estimate.level(0.0) == 0 and estimate.level(0.5) == 2  # -ln 0.5 / -ln 0.65 = 1.61
    bins = {}
    for v in (1.0, 2.0, 3.0):  # a running mean: the plain mean while there are fewer than LEARN_CAP values
        estimate._update(bins, 2, v)
    estimate._update(bins, 6, 4.0)
    assert bins["2"] == [3, pytest.approx(2.0)]
    assert estimate._at(bins, 2) == pytest.approx(2.0)
    assert estimate._at(bins, 4) == pytest.approx(3.0)  # halfway between levels 2 and 6
    assert estimate._at(bins, 0) == pytest.approx(2.0) and estimate._at(bins, 9) == pytest.approx(4.0)  # nearest
    assert estimate._at({}, 3) is None and estimate._at(None, 3) is None
    many = {}
    for i in range(3 * estimate.LEARN_CAP):  # past the cap, newer values weigh more: it follows a change
        estimate._update(many, 0, 1.0 if i < 2 * estimate.LEARN_CAP else 5.0)
    # an exponential mean with weight 1 / LEARN_CAP: after LEARN_CAP values of 5, 1 + 4 (1 - (1 - 1/cap)^cap)
    cap = estimate.LEARN_CAP
    assert estimate._at(many, 0) == pytest.approx(1 + 4 * (1 - (1 - 1 / cap) ** cap))


def test_epochs_per_round_exact_prior_then_learned():
    none = config.TrainSettings(max_epochs=15, patience=None)
    assert estimate.round_epochs(none, "reset", 5, {}) == (15.0, "exact")
    early = config.TrainSettings(max_epochs=15, patience=3)
    assert estimate.prior_epochs(early) == 8  # ceil(15 / 3) + 3
    assert estimate.round_epochs(early, "random", 5, {}) == (8.0, "prior")
    assert estimate.prior_epochs(config.TrainSettings(max_epochs=4, patience=3)) == 4  # never above max_epochs
    learned = {}
    estimate._update(learned.setdefault(estimate._epochs_key("random", early), {}), 5, 11.0)
    estimate._update(learned.setdefault(estimate._epochs_key("reset", early), {}), 5, 6.0)
    estimate._update(learned.setdefault(estimate._epochs_key("reset", none), {}), 5, 2.0)  # another budget
    assert estimate.round_epochs(early, "random", 5, learned) == (pytest.approx(11.0), "learned")
    # a strategy not yet seen: the mean of the others with the same budget at that level
    assert estimate.round_epochs(early, "shuffle", 5, learned) == (pytest.approx(8.5), "learned")


def test_the_estimate_uses_what_finished_trainings_taught_per_sparsity_level(plan_and_cache):
    """Learned ratios at a level multiply that level's rounds; learned epochs replace max_epochs; rounds
    of levels not learned take the nearest learned level."""
    plan, cache = plan_and_cache
    quiet = {"log": lambda *a: None, "cache_dir": cache}
    first = {c.key: c for c in estimate.estimate_cells(plan, workers=2, **quiet)[0]}
    key = next(k for k in first if k.startswith("obtain"))
    model_key = first[key].model_key
    table = estimate._load_cache(cache)
    table["observed"] = {"round_ratio": {f"2|{model_key}": {"0": [4, 2.0], "2": [4, 4.0]}}}
    estimate._save_cache(table, cache)
    cells, notes = estimate.estimate_cells(plan, workers=2, **quiet)
    ob = next(c for c in cells if c.key == key)
    n_train, n_val, n_test = 52, 24, 24
    one_round = 2 * (math.ceil(n_train / 32) * STEP + n_val * EVAL) + n_test * EVAL + FIXED
    # rounds of the cell: reset 0, 1, 2 and random 1, 2 -> levels 0, 1, 2, 1, 2: ratios 2, 3 (between), 4, 3, 4
    assert ob.training == pytest.approx(one_round * (2 + 3 + 4 + 3 + 4))
    assert ob.raw_training == pytest.approx(5 * one_round)
    assert any("learned from finished trainings" in n for n in notes)
    assert estimate.estimate_cells(plan, workers=1, **quiet)[0][1].training == pytest.approx(5 * one_round)


def test_rates_keys_ignore_the_initialisation_and_old_keys_are_read(tmp_path):
    a = config.ModelSettings(embed_dim=16, channels=8, hidden=8)
    b = config.ModelSettings(embed_dim=16, channels=8, hidden=8, init_a=0.0, bias_init="zero")
    wider = config.ModelSettings(embed_dim=16, channels=9, hidden=8)
    assert estimate._key(a, 300, 32) == estimate._key(b, 300, 32) != estimate._key(wider, 300, 32)
    assert estimate._key(a, 300, 32) != estimate._key(a, 300, 32, precision="bfloat16")
    # a cache written when keys still named init_a: read under today's keys, nothing lost
    import json

    new = estimate._key(a, 300, 32)
    head, shape = new.split("|{", 1)
    old_shape = json.loads("{" + shape)
    old_shape["model"].update(init_a=a.init_a, bias_init=a.bias_init)
    old = head + "|" + json.dumps(old_shape, sort_keys=True)
    assert old != new
    write_json(tmp_path / estimate.RATES_FILE, {"models": {old: {"x": 1}},
                                                "observed": {"round_ratio": {f"2|{old}": {"0": [1, 2.0]}}}})
    table = estimate._load_cache(tmp_path)
    assert table["models"] == {new: {"x": 1}} and table["observed"]["round_ratio"] == {f"2|{new}": {"0": [1, 2.0]}}


def test_a_round_measured_on_a_shared_machine_counts_its_cpu_time():
    """``measured_seconds``: with one thread, the smaller of wall and CPU time (a round that waited for
    the CPU behind other work teaches what it needed, not what it waited); with more threads, or a row
    written before ``cpu_seconds`` existed, the wall time."""
    from types import SimpleNamespace as Row

    shared = Row(seconds=9.0, cpu_seconds=3.0)  # three processes on one core: 3 s of work took 9 s
    assert estimate.measured_seconds(shared, threads=1) == 3.0
    assert estimate.measured_seconds(Row(seconds=3.0, cpu_seconds=3.2), threads=1) == 3.0  # kernel threads add a little
    assert estimate.measured_seconds(shared, threads=2) == 9.0
    assert estimate.measured_seconds(Row(seconds=9.0, cpu_seconds=float("nan")), threads=1) == 9.0
    assert estimate.measured_seconds(Row(seconds=9.0), threads=1) == 9.0
