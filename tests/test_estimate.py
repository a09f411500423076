"""ltnb.study.estimate: the time model against a hand-worked computation on a known rates table (nothing is
measured here: the rates are written into the cache first), and the list scheduling of cells."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from ltnb.base import config
from ltnb.study import estimate
from ltnb.base._io import write_json
from ltnb.study.plan import load_plan

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
    cache = tmp_path / "cache"
    write_json(cache / estimate.RATES_FILE, {"models": {estimate._key(MODEL, 300, 32): _rates_table()}})
    return plan, cache


MODEL = config.ModelSettings(embed_dim=16, channels=8, hidden=8)  # PLAN's


def _rates_table() -> dict:
    """What ``calibrate`` returns, with the rates STEP, EVAL and FIXED at every sparsity and length."""
    flat = {str(s): [STEP, STEP] for s in estimate.SPARSITIES}
    return {"step": flat, "eval": {k: [EVAL, EVAL] for k in flat}, "fixed": {k: FIXED for k in flat},
            "lengths": list(estimate.LENGTHS)}


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
    rates = _rates_table()  # (a valid table: entries that are not are dropped, test_a_corrupt_rate_...)
    write_json(tmp_path / estimate.RATES_FILE, {"models": {old: rates},
                                                "observed": {"round_ratio": {f"2|{old}": {"0": [1, 2.0]}}}})
    table = estimate._load_cache(tmp_path)
    assert table["models"] == {new: rates} and table["observed"]["round_ratio"] == {f"2|{new}": {"0": [1, 2.0]}}


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


# ------------------------------------------------------------------ a cache that cannot be used says so

def _no_constants(text: str):
    """json.loads that refuses NaN and Infinity (what rates.json must never hold)."""
    import json

    return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(AssertionError(f"{c} in rates.json")))


@pytest.fixture
def calibrations(monkeypatch):
    """``estimate.calibrate`` replaced by one returning the STEP/EVAL/FIXED table at once (the real one
    takes seconds); the list records each (model, vocab_size, batch_size) it was asked to measure."""
    calls = []

    def fake(model, vocab_size, batch_size=32, *, threads=1, precision="float32", log=print):
        calls.append((model, vocab_size, batch_size))
        return _rates_table()

    monkeypatch.setattr(estimate, "calibrate", fake)
    return calls


@pytest.mark.parametrize("bad, shown", [(float("nan"), "NaN"), (-0.1, "-0.1"), (1e308, "1e+308"),
                                        (float("inf"), "Infinity"), ("0.1", '"0.1"'), (0, "0")])
def test_a_corrupt_rate_is_reported_dropped_and_measured_again(plan_and_cache, calibrations, bad, shown):
    """A rate that is NaN, negative, absurdly large, infinite, a string or zero made the estimate print
    nothing (or "nan h") without a word; now one line names the file and the key, the entry is dropped,
    its rates are measured again and the estimate is the hand-worked one."""
    plan, cache = plan_and_cache
    good = estimate.summary(plan, 2, cache_dir=cache, log=lambda *a: None)
    assert calibrations == []  # the valid cache is used as it is
    f = cache / estimate.RATES_FILE
    table = _rates_table()
    table["step"]["0.65"] = [STEP, bad]
    key = estimate._key(MODEL, 300, 32)
    write_json(f, {"models": {key: table}})
    said = []
    est = estimate.summary(plan, 2, cache_dir=cache, log=said.append)
    assert calibrations == [(MODEL, 300, 32)]  # measured again, once, for that key
    bad_lines = [m for m in said if "dropped" in m]
    assert bad_lines == [f"estimate: {f}: ['models'][{key!r}]['step']['0.65'][1] is {shown}, not a number of "
                         "seconds in (0, 3600]; dropped, to be measured again when an estimate needs it"]
    assert est["wall"] == pytest.approx(good["wall"]) and math.isfinite(est["wall"])
    assert _no_constants(f.read_text())["models"][key] == _rates_table()  # the new rates, written
    said.clear()
    estimate.summary(plan, 2, cache_dir=cache, log=said.append)
    assert not said and len(calibrations) == 1  # reported once: the file no longer holds it


@pytest.mark.parametrize("entry, why", [
    ({"lengths": [64, 16]}, "['lengths'] is [64, 16], not two increasing lengths in (0, 1e+06]"),
    ({"fixed": {"0.0": -1.0}}, "['fixed']['0.0'] is -1.0, not a number of seconds in [0, 3600]"),
    ({"eval": {"1.5": [EVAL, EVAL]}}, "['eval'] has the key '1.5', not a sparsity in [0, 1)"),
    ({"step": {"0.0": [STEP]}}, "['step']['0.0'] is list, not two rates (one per calibration length)"),
    ({"step": None}, "['step'] is null, not a table by sparsity"),
])
def test_every_part_of_a_rates_entry_is_checked(plan_and_cache, calibrations, entry, why):
    plan, cache = plan_and_cache
    key = estimate._key(MODEL, 300, 32)
    write_json(cache / estimate.RATES_FILE, {"models": {key: {**_rates_table(), **entry}}})
    said = []
    estimate.summary(plan, 2, cache_dir=cache, log=said.append)
    assert [m for m in said if "dropped" in m] == [
        f"estimate: {cache / estimate.RATES_FILE}: ['models'][{key!r}]{why}; dropped, to be measured again when an estimate needs it"]
    assert calibrations == [(MODEL, 300, 32)]


def test_corrupt_learned_values_are_reported_and_learned_again(plan_and_cache, calibrations):
    """What finished trainings taught (ratios, epochs, overheads) is checked too: each bad entry is one
    line, dropped; the estimate is then the one without it (nothing measured again: the rates are fine)."""
    plan, cache = plan_and_cache
    f = cache / estimate.RATES_FILE
    plain = estimate.summary(plan, 2, cache_dir=cache, log=lambda *a: None)
    key = estimate._key(MODEL, 300, 32)
    table = _no_constants(f.read_text())
    table["observed"] = {"training_ratio": {f"2|{key}": float("nan")},
                         "round_ratio": {f"2|{key}": {"0": [3, -2.0]}, "1|other": [1, 2]},
                         "epochs": {"reset|max_epochs=2|patience=None": {"x": [1, 2.0]}},
                         "obtain": {"overhead": 1e308}, "data": "fast", "learned_rounds": [1, 2]}
    write_json(f, table)
    said = []
    est = estimate.summary(plan, 2, cache_dir=cache, log=said.append)
    tail = "; dropped, to be learned again from the next batches"
    assert sorted(said) == sorted(f"estimate: {f}: {m}{tail}" for m in [
        f"['observed']['training_ratio'][{'2|' + key!r}] is NaN, not a ratio in [0.001, 1000]",
        f"['observed']['round_ratio'][{'2|' + key!r}]['0'][1] is -2.0, not a ratio in [0.001, 1000]",
        "['observed']['round_ratio']['1|other'] is list, not a table by sparsity level",
        "['observed']['epochs']['reset|max_epochs=2|patience=None']['x'] is not a sparsity level",
        "['observed']['learned_rounds'] is not a list of round names",
        "['observed']['obtain']['overhead'] is 1e+308, not a number of seconds in [0, 2.592e+06]",
        "['observed']['data'] is \"fast\", not a table"])
    assert calibrations == []
    assert est["wall"] == pytest.approx(plain["wall"]) and est["cells"] == pytest.approx(plain["cells"])
    assert _no_constants(f.read_text())["observed"] == {"training_ratio": {}, "round_ratio": {f"2|{key}": {}},
                                                         "epochs": {"reset|max_epochs=2|patience=None": {}},
                                                         "obtain": {}}


@pytest.mark.parametrize("text", ["{not json", "__import__('os').system('true')", '[1, 2]', "", "/etc/passwd"])
def test_a_cache_that_is_not_a_table_says_so_and_is_measured_again(plan_and_cache, calibrations, text):
    plan, cache = plan_and_cache
    f = cache / estimate.RATES_FILE
    if text == "/etc/passwd":  # a symlink to a system file: read, refused, replaced by a file of its own
        before = Path(text).read_bytes()
        f.unlink()
        f.symlink_to(text)
    else:
        f.write_text(text)
    said = []
    est = estimate.summary(plan, 2, cache_dir=cache, log=said.append)
    assert len([m for m in said if m.startswith(f"estimate: {f}: ")]) == 1, said
    assert "not valid JSON" in said[0] or "holds list, not a table" in said[0]
    assert calibrations == [(MODEL, 300, 32)] and math.isfinite(est["wall"])
    assert not f.is_symlink() and estimate._key(MODEL, 300, 32) in _no_constants(f.read_text())["models"]
    if text == "/etc/passwd":
        assert Path(text).read_bytes() == before


def test_the_dry_run_prints_the_estimate_and_names_the_bad_entry(plan_and_cache, calibrations, monkeypatch):
    """``ltnb batch PLAN --dry-run`` with a NaN rate in the cache: the line, then the estimate."""
    import io

    from ltnb.study import batch

    plan, cache = plan_and_cache
    monkeypatch.setenv("LTNB_CACHE", str(cache))
    key = estimate._key(MODEL, 300, 32)
    table = _rates_table()
    table["eval"]["0.0"] = [float("nan"), EVAL]
    write_json(cache / estimate.RATES_FILE, {"models": {key: table}})
    out = io.StringIO()
    assert batch.main(plan.path, dry_run=True, out=out, estimate=True) == 0
    text = out.getvalue()
    assert f"estimate: {cache / estimate.RATES_FILE}: ['models'][{key!r}]['eval']['0.0'][0] is NaN" in text
    assert "estimate on this machine" in text and "nan" not in text.split("estimate on this machine")[1]
    assert calibrations == [(MODEL, 300, 32)]


def test_what_a_batch_records_is_never_a_non_finite_number(plan_and_cache):
    """record_run and learn's running means keep finite numbers only; a NaN that reached the table anyway
    is not written (and says so)."""
    plan, cache = plan_and_cache
    f = cache / estimate.RATES_FILE
    key = estimate._key(MODEL, 300, 32)
    nan = float("nan")
    estimate.record_run([{"stage": "obtain", "status": "done", "wall": nan, "training": nan, "raw_training": 2.0,
                          "model_key": key, "overhead": nan},
                         {"stage": "data", "status": "done", "wall": float("inf"), "training": 0.0, "raw_training": 0.0,
                          "model_key": "", "overhead": 1.0}], workers=2, cache_dir=cache, log=pytest.fail)
    observed = _no_constants(f.read_text())["observed"]
    assert "training_ratio" not in observed and observed["obtain"] == {} and observed["data"] == {"overhead": 1.0}
    bins = {}
    estimate._update(bins, 1, nan)
    estimate._update(bins, 1, float("inf"))
    estimate._update(bins, 1, 2.0)
    assert bins == {"1": [1, 2.0]}
    said = []
    table = _no_constants(f.read_text())
    table["observed"]["training_ratio"] = {f"2|{key}": nan}
    estimate._save_cache(table, cache, log=said.append)
    assert said == [f"estimate: not written to {f}: ['observed']['training_ratio'][{'2|' + key!r}] is NaN, not a "
                    "ratio in [0.001, 1000]"]
    assert _no_constants(f.read_text())["observed"]["training_ratio"] == {}
