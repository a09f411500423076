"""How long will a plan take on this machine? An estimate from measured rates, before a run.

The model of one training round (``ltnb.core.train.fit``) is::

    epochs x (ceil(n_train / batch) x step(s, L) + n_val x eval(s, L)) + n_test x eval(s, L) + fixed(s)

where ``s`` is the round's sparsity, ``L`` the mean length of the domain's texts (subwords),
``step`` the time of one training step of a batch, ``eval`` the time to evaluate one text and
``fixed`` what a round costs besides (building the sparse plan and the packed embedding, the
optimizer, copying the best epoch's weights, saving the ticket).

The rates are **measured** on this machine, once per model shape, vocabulary size, batch size,
precision and thread count, by timing the real ``fit`` on synthetic data at a few sparsities and two
lengths (``calibrate``, about 10-40 s), and cached in ``<cache>/rates.json`` like the sparse
crossover. Between measured points they are interpolated (linear in ``L``, linear in log(1 - s)).

Synthetic data are not the real texts (the real ids repeat, which the packed embedding and the
sparse kernels feel) and one process alone is not two side by side, so the estimate then **learns
from finished trainings**: after a batch, every trained round of its obtain and transfer cells
(``seconds``, or with one thread per worker the smaller of it and ``cpu_seconds``, so that rounds run
on a machine busy with other work do not teach it that the machine is slow; ``epochs_run``,
``sparsity`` of its result row) is compared with the model above for
that round's data and epochs, and the ratio is kept per sparsity level (one level = one round of
35% pruning, ``-ln(1 - s) / -ln 0.65``), per model, precision, threads and number of workers: a
running mean over the last ``LEARN_CAP`` rounds of that level. An estimate multiplies each round by
the ratio at its level (interpolated between learned levels; the nearest one outside them). Before
any finished training of that model with that many workers it uses the cell-level ratio of the last
batch, else 1, and says so.

**Epochs.** With ``patience`` null every round runs ``max_epochs`` (exact). With early stopping the
epochs a round runs are learned the same way from finished trainings, per strategy, sparsity level,
``max_epochs`` and ``patience`` (they depend on the data and the model, not on the machine); before
any, the stated prior is ``min(max_epochs, ceil(max_epochs / 3) + patience)`` (a best epoch at a third
of the budget: measured 7.6-8.6 epochs for 15 and patience 3 on the demo's products chains).

A batch run also records the mean overhead of a cell of each stage (kernel start, imports, cells
other than the training call) and the wall time of the cells that do not train (the stages whose
``cost`` is ``"wall"`` in ``ltnb.base.stages``, which also holds the defaults used until then), so later
estimates use this machine's own numbers.

A plan's cells are then scheduled on ``workers`` workers in dependency order (the runner's rule:
a cell starts when its inputs are done), which gives the estimated wall time; per stage it prints
the worker time. What it cannot know is printed with it: the data stage of a corpus it has not
seen (the time to stream and sample Amazon files), and for a study without data yet, the texts' mean
length (an assumed ``ASSUMED_LEN`` per corpus; the built-in corpus's test-split sizes with ``test_surplus``
are read from the fetched corpus).

**A cache that cannot be used says so.** Every number read from ``rates.json`` is checked before it is
used, and every number written (``_clean``): finite, and within ranges far beyond any measurement here
(``MAX_RATE_S``, ``RATIO_RANGE``, ``MAX_EPOCHS``, ``MAX_CELL_S``, ``MAX_LENGTH``). An entry that is not is
reported in one line naming the file and its key, dropped (the file is rewritten without it, so it is
said once), and measured again (rates: ``calibrate``) or learned again by the next batches (what finished
trainings taught); a file that is not a JSON table is reported and started again. ``learn`` and
``record_run`` keep finite numbers only.
"""
from __future__ import annotations

import heapq
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from ltnb.base import config, paths, registry, stages
from ltnb.base._io import read_json, write_json

RATES_FILE = "rates.json"
SPARSITIES = (0.0, 0.65, 0.884, 0.968, 0.991, 0.998)
CALIBRATION_BATCHES = (2, 8)  # a step's time is the difference of fits of these many batches
LENGTHS = (16, 64)
ASSUMED_LEN = {"builtin": 22.0, "amazon": 130.0, "blitzer": 160.0}  # subwords, when no data is there yet
PAPER_SPLIT = (20000, 10000, 10000)
RAY_START = 20.0  # seconds: a federated cell's private Ray head and its client worker (measured here)
# seconds per client and federated round besides training: Flower's messages, Ray's actor call, the shard
# read; a fixed part and a part per MB of the model's values (measured here: a dense round of the demo's
# 4.0M-weight model, 16 MB, about 1.75 s per client; of a 0.54M-weight model, 2.2 MB, about 0.35 s)
FL_CLIENT_ROUND = 0.25
FL_CLIENT_ROUND_PER_MB = 0.094
LEVEL = -math.log(0.65)  # one round of the paper's 35% pruning: the unit of the learned sparsity levels
LEARN_CAP = 100  # a level's learned mean follows about its last 100 rounds (a faster engine replaces a slower one)


# ----------------------------------------------------------------------------------- calibration

def _key(model: config.ModelSettings, vocab_size: int, batch_size: int, threads: int = 1,
         precision: str = "float32") -> str:
    from ltnb.core.sparse import machine_key

    shape = _shape_json({"model": config._plain(config.kwargs(model)), "vocab": int(vocab_size),
                         "batch": int(batch_size)})
    from ltnb.core.lottery import ENGINE_VERSION

    prec = "" if precision == "float32" else f"|precision={precision}"
    # the engine's version (from 5 on): a new engine's costs are measured and learned anew, never mixed
    # with an older one's
    engine = f"|engine={ENGINE_VERSION}" if ENGINE_VERSION >= 5 else ""
    return f"{machine_key('cpu')}|threads={int(threads)}{prec}{engine}|{shape}"


SPEED_BLIND = ("init_a", "bias_init")  # model settings that change the initial values, not the time a step takes


def _shape_json(shape: dict) -> str:
    """The model part of a rates key: what a step's time depends on (``SPEED_BLIND`` settings left out,
    so a plan that only changes the initialisation, like params/init.yaml, uses what others measured)."""
    shape = {**shape, "model": {k: v for k, v in shape["model"].items() if k not in SPEED_BLIND}}
    return json.dumps(shape, sort_keys=True)


def _migrate(key: str) -> str:
    """A key written before ``SPEED_BLIND`` settings were left out, in today's form (others unchanged)."""
    i = key.find("|{")
    if i < 0:
        return key
    try:
        shape = json.loads(key[i + 1:])
        return key[: i + 1] + _shape_json(shape)
    except (ValueError, KeyError, TypeError):
        return key


def calibrate(model: config.ModelSettings, vocab_size: int, batch_size: int = 32, *, threads: int = 1,
              precision: str = "float32", log=print) -> dict:
    """Time ``ltnb.core.train.fit`` at ``SPARSITIES`` x ``LENGTHS`` on synthetic data (see the module doc),
    with ``threads`` torch threads (a batch worker's) in ``precision``. Returns ``{"step": {s: [t(L1),
    t(L2)]}, "eval": {...}, "fixed": {s: t}, "lengths": [...]}``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        return _calibrate(model, vocab_size, batch_size, precision=precision, log=log)
    finally:
        torch.set_num_threads(before)


def _calibrate(model: config.ModelSettings, vocab_size: int, batch_size: int, *, precision: str = "float32",
               log=print) -> dict:
    import torch

    from ltnb.core.model import build as build_model
    from ltnb.core.pruning import Mask, prune_step
    from ltnb.text.tokens import TokenSplit
    from ltnb.core.train import EVAL_BATCH, _masked_parameters, evaluate, fit, make_batches

    t0 = time.perf_counter()
    log(f"estimate: measuring training rates on this machine for this model (once; cached in {RATES_FILE})")
    train_settings = config.TrainSettings(max_epochs=1, batch_size=batch_size, precision=precision)
    g = torch.Generator().manual_seed(0)

    def split(n, length):
        ids = torch.randint(2, vocab_size, (n, length), generator=g)
        return TokenSplit.from_lists(ids.tolist(), (torch.arange(n) % 2).tolist())

    out = {"step": {}, "eval": {}, "fixed": {}, "lengths": list(LENGTHS), "sparsities": list(SPARSITIES)}
    model_ = build_model(vocab_size, model, seed=0)
    weights = {n: p.detach().clone() for n, p in model_.named_parameters()}
    mask = Mask.ones_like(weights)
    warm = {"train": split(2 * batch_size, LENGTHS[0]), "validation": split(1, LENGTHS[0]), "test": split(1, LENGTHS[0])}
    fit(build_model(vocab_size, model, seed=0), warm, train_settings, seed=0, progress=False)  # first-call costs
    for s in SPARSITIES:
        while mask.sparsity() < s - 1e-3:  # (a tiny model's ceilings may stop short of s: then as far as it goes)
            before = mask.kept()
            mask = prune_step(weights, mask, 0.35)
            if mask.kept() == before:
                break
        steps, evals, fixed = [], [], []
        for length in LENGTHS:
            times = {}
            for k in CALIBRATION_BATCHES:  # the best of two tries each: noise only ever adds time
                data = {"train": split(k * batch_size, length), "validation": split(1, length), "test": split(1, length)}
                for _ in range(2):
                    m = build_model(vocab_size, model, seed=0)
                    t = time.perf_counter()
                    fit(m, data, train_settings, masks=mask if s > 0 else None, seed=0, progress=False)
                    times[k] = min(times.get(k, math.inf), time.perf_counter() - t)
            k1, k2 = CALIBRATION_BATCHES
            step = max((times[k2] - times[k1]) / (k2 - k1), times[k1] / k1 / 4, 1e-6)
            steps.append(step)
            fixed.append(max(times[k1] - k1 * step, 0.0))
            m.eval()
            if s > 0:  # evaluate on the path fit's validations take at this sparsity (packed, CSR)
                _masked_parameters(m, dict(m.named_parameters()), mask, torch.device("cpu"), None)
            batches = make_batches(split(EVAL_BATCH, length), EVAL_BATCH, max_len=10_000)
            t = time.perf_counter()
            evaluate(m, batches, precision)
            evals.append(max((time.perf_counter() - t) / EVAL_BATCH, 1e-9))
            m.packed_embedding = m.sparse_plan = None
        out["step"][str(s)], out["eval"][str(s)], out["fixed"][str(s)] = steps, evals, sum(fixed) / len(fixed)
    out["seconds"] = time.perf_counter() - t0
    out["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    log(f"estimate: rates measured in {out['seconds']:.0f} s")
    return out


def _cache(cache_dir=None) -> Path:
    return paths.cache_dir(cache_dir) / RATES_FILE


# What rates.json may hold: a number outside these ranges is a corrupt or hand-edited cache, never a
# measurement of this machine. The bounds are orders of magnitude beyond what is measured here (a
# training step of the demo's model 0.01-0.3 s, one text's evaluation about 1e-4 s, a round's fixed part
# under 1 s; learned ratios 0.8-3; a cell's overhead 5-60 s), so a slow machine never trips them.
MAX_RATE_S = 3600.0  # seconds: a step of one batch, one text's evaluation, a round's fixed part
RATIO_RANGE = (1e-3, 1e3)  # measured / modelled training time (a ratio, no unit)
MAX_EPOCHS = 1e6  # epochs a round ran (learned under early stopping)
MAX_CELL_S = 30 * 86400.0  # seconds: a cell's overhead or wall time, a round's extra time
MAX_LENGTH = 1e6  # subwords: the two calibration lengths


def _number(v, lo: float, hi: float, *, lo_open: bool = False) -> bool:
    """``v`` a finite number (not a bool) in [lo, hi] (``(lo, hi]`` with ``lo_open``)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return False
    return (v > lo if lo_open else v >= lo) and v <= hi


def _show(v) -> str:
    return json.dumps(v)[:60] if isinstance(v, (int, float, str, bool, type(None))) else type(v).__name__


def _rates_problem(r) -> str | None:
    """Why a ``models`` entry (``calibrate``'s dict) cannot be used, or None."""
    rate = f"a number of seconds in (0, {MAX_RATE_S:g}]"
    if not isinstance(r, dict):
        return f"is {_show(r)}, not a table of rates"
    ls = r.get("lengths")
    if not (isinstance(ls, list) and len(ls) == 2 and all(_number(x, 0, MAX_LENGTH, lo_open=True) for x in ls)
            and ls[0] < ls[1]):
        return f"['lengths'] is {_show(ls) if not isinstance(ls, list) else json.dumps(ls)[:60]}, not two " \
               f"increasing lengths in (0, {MAX_LENGTH:g}]"
    for what in ("step", "eval", "fixed"):
        part = r.get(what)
        if not isinstance(part, dict) or not part:
            return f"['{what}'] is {_show(part)}, not a table by sparsity"
        for k, v in part.items():
            try:
                ok = 0.0 <= float(k) < 1.0
            except ValueError:
                ok = False
            if not ok:
                return f"['{what}'] has the key {k[:60]!r}, not a sparsity in [0, 1)"
            if what == "fixed":
                if not _number(v, 0.0, MAX_RATE_S):
                    return f"['{what}']['{k}'] is {_show(v)}, not a number of seconds in [0, {MAX_RATE_S:g}]"
            elif not (isinstance(v, list) and len(v) == 2):
                return f"['{what}']['{k}'] is {_show(v)}, not two rates (one per calibration length)"
            else:
                for i, x in enumerate(v):
                    if not _number(x, 0.0, MAX_RATE_S, lo_open=True):
                        return f"['{what}']['{k}'][{i}] is {_show(x)}, not {rate}"
    return None


def _level_problem(k, v, lo: float, hi: float, what: str) -> str | None:
    """Why one level of learned bins (``{level: [n, mean]}``) cannot be used, or None."""
    if not (isinstance(k, str) and k.lstrip("-").isdigit()):
        return f"['{k[:60]}'] is not a sparsity level"
    if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], int) and not isinstance(v[0], bool)
            and v[0] >= 1):
        return f"['{k}'] is {_show(v) if not isinstance(v, list) else json.dumps(v)[:60]}, not [count, mean]"
    if not _number(v[1], lo, hi):
        return f"['{k}'][1] is {_show(v[1])}, not {what} in [{lo:g}, {hi:g}]"
    return None


def _clean(table) -> tuple[dict, list[str]]:
    """``table`` without the entries that cannot be used, and one line per entry dropped (its key and
    why). Every number an estimate reads from rates.json passes here first (``_load_cache``) and every
    number written does too (``_save_cache``)."""
    if not isinstance(table, dict):
        return {}, [f"holds {_show(table)}, not a table"]
    dropped: list[str] = []

    def section(name: str, part, check) -> None:
        if not isinstance(part, dict):
            dropped.append(f"{name} is {_show(part)}, not a table")
            return
        for k in list(part):
            why = check(part[k])
            if why is not None:
                dropped.append(f"{name}[{k!r}]{'' if why.startswith('[') else ' '}{why}")
                del part[k]

    if "models" in table:
        section("['models']", table["models"], _rates_problem)
        if not isinstance(table["models"], dict):
            del table["models"]
    seen = table.get("observed")
    if "observed" in table and not isinstance(seen, dict):
        dropped.append(f"['observed'] is {_show(seen)}, not a table")
        del table["observed"]
        seen = None
    if isinstance(seen, dict):
        if "training_ratio" in seen:
            section("['observed']['training_ratio']", seen["training_ratio"], lambda v: None if _number(
                v, *RATIO_RANGE) else f"is {_show(v)}, not a ratio in [{RATIO_RANGE[0]:g}, {RATIO_RANGE[1]:g}]")
        learned = {"round_ratio": (*RATIO_RANGE, "a ratio"), "epochs": (1.0, MAX_EPOCHS, "a number of epochs"),
                   "round_extra": (0.0, MAX_CELL_S, "a number of seconds")}
        for name, (lo, hi, what) in learned.items():  # per key, per sparsity level
            if name not in seen:
                continue
            section(f"['observed']['{name}']", seen[name],
                    lambda v: None if isinstance(v, dict) else f"is {_show(v)}, not a table by sparsity level")
            for key, bins in (seen[name].items() if isinstance(seen[name], dict) else ()):
                for k in list(bins):
                    why = _level_problem(k, bins[k], lo, hi, what)
                    if why is not None:
                        dropped.append(f"['observed']['{name}'][{key!r}]{why}")
                        del bins[k]
        for name in ("training_ratio", *learned):
            if name in seen and not isinstance(seen[name], dict):
                del seen[name]
        if "learned_rounds" in seen and not (isinstance(seen["learned_rounds"], list)
                                             and all(isinstance(t, str) for t in seen["learned_rounds"])):
            dropped.append("['observed']['learned_rounds'] is not a list of round names")
            del seen["learned_rounds"]
        for stage in (s for s in stages.STAGES if s in seen):
            entry = seen[stage]
            if not isinstance(entry, dict):
                dropped.append(f"['observed']['{stage}'] is {_show(entry)}, not a table")
                del seen[stage]
                continue
            for k in [k for k in ("overhead", "wall") if k in entry]:
                if not _number(entry[k], 0.0, MAX_CELL_S):
                    dropped.append(f"['observed']['{stage}']['{k}'] is {_show(entry[k])}, not a number of seconds "
                                   f"in [0, {MAX_CELL_S:g}]")
                    del entry[k]
    return table, dropped


def _stderr(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr)


def _load_cache(cache_dir=None, log=None) -> dict:
    """rates.json as a table, every entry checked (``_clean``): an entry that cannot be used is reported
    in one line naming the file and its key (``log``; default stderr), dropped and the file rewritten
    without it, so its rates are measured again (``rates``) or its learned values learned again; a file
    that is not JSON at all is reported and started again."""
    log = log or _stderr
    f = _cache(cache_dir)
    try:
        table = read_json(f) if f.exists() else {}
    except (OSError, ValueError) as e:
        log(f"estimate: {f}: cannot be used ({str(e).replace(str(f) + ': ', '')}); started again, rates are "
            "measured again")
        _save_cache({}, cache_dir, log=log)
        return {}
    table, dropped = _clean(table)
    for why in dropped:
        log(f"estimate: {f}: {why}; dropped, "
            + ("to be learned again from the next batches" if why.startswith("['observed']") else
               "to be measured again when an estimate needs it"))
    # keys of rates and of what was learned, in today's form (the first of two that now coincide is kept)
    sections = [table.get("models")] + [(table.get("observed") or {}).get(k) for k in
                                        ("training_ratio", "round_ratio", "round_extra")]
    for part in (p for p in sections if isinstance(p, dict)):
        for k in list(part):
            new = _migrate(k)  # the model part is the tail from "|{", after any "workers|" prefix
            if new != k:
                part.setdefault(new, part[k])
                del part[k]
    if dropped:
        _save_cache(table, cache_dir, log=log)
    return table


def rates(model: config.ModelSettings, vocab_size: int, batch_size: int = 32, *, threads: int = 1, cache_dir=None,
          precision: str = "float32", log=print, measure: bool = True) -> dict | None:
    """The measured rates for this machine, model, precision and thread count (from the cache, or
    measured once and stored; ``measure=False``: None when not cached)."""
    table = _load_cache(cache_dir, log)
    key = _key(model, vocab_size, batch_size, threads, precision)
    if key not in table.get("models", {}):
        if not measure:
            return None
        r = calibrate(model, vocab_size, batch_size, threads=threads, precision=precision, log=log)
        why = _rates_problem(r)
        if why is not None:  # (never seen: what fit and the clock give is finite and positive)
            raise ValueError(f"the rates just measured for this model cannot be used: {why.lstrip()}")
        table.setdefault("models", {})[key] = r
        _save_cache(table, cache_dir, log=log)
        return r
    return table["models"][key]


def _save_cache(table: dict, cache_dir=None, *, log=None) -> None:
    """Write rates.json; an entry that is not a usable number (``_clean``) is left out, with one line
    naming it (a writer's bug: ``learn`` and ``record_run`` keep only finite numbers)."""
    table, dropped = _clean(table)
    for why in dropped:
        (log or _stderr)(f"estimate: not written to {_cache(cache_dir)}: {why}")
    try:
        write_json(_cache(cache_dir), table)
    except OSError:
        pass


def record_run(times: list[dict], *, workers: int | None = None, cache_dir=None, log=None) -> None:
    """Keep what a batch measured for later estimates: per stage, the mean overhead per cell and the
    wall of cells that do not train; and, when ``times`` carry ``raw_training`` (the calibrated model's
    training seconds of the cell) and ``model_key``, the ratio of measured to modelled training per model
    with ``workers`` workers. Only finite, positive measurements are kept (a NaN or infinite time is
    left out, never written)."""
    table = _load_cache(cache_dir, log)
    seen = table.setdefault("observed", {})
    trained = [t for t in times if t["status"] == "done" and _number(t.get("raw_training"), 0, math.inf, lo_open=True)
               and _number(t.get("training"), 0, math.inf, lo_open=True)]
    for key in sorted({t.get("model_key", "") for t in trained}):
        part = [t for t in trained if t.get("model_key", "") == key]
        ratio = sum(t["training"] for t in part) / sum(t["raw_training"] for t in part)
        if workers and key and _number(ratio, *RATIO_RANGE):
            seen.setdefault("training_ratio", {})[f"{int(workers)}|{key}"] = ratio
    for stage in sorted({t["stage"] for t in times}):
        part = [t for t in times if t["stage"] == stage and t["status"] == "done"]
        if not part:
            continue
        entry = seen.setdefault(stage, {})
        for what in ("overhead", "wall") if stages.STAGES[stage].cost == "wall" else ("overhead",):
            values = [t[what] for t in part if _number(t.get(what), 0.0, MAX_CELL_S)]
            if values:
                entry[what] = sum(values) / len(values)
    _save_cache(table, cache_dir, log=log)


# ------------------------------------------------------------------ learning from finished trainings

MIN_TRAINED = 1e-3  # seconds: a result row below this did not train (round 0, shared by a seed's strategies: ~5 us)
LEARNED_KEEP = 20000  # rounds remembered as learned (so a resumed chain's earlier rounds are not counted twice)


def level(sparsity: float) -> int:
    """A round's sparsity level, ``-ln(1 - s) / -ln 0.65`` rounded: round k of 35% pruning is level k."""
    return int(round(-math.log(max(1.0 - float(sparsity), 1e-9)) / LEVEL))


def _update(bins: dict, lvl: int, value: float) -> None:
    """A running mean at level ``lvl`` that follows about the last ``LEARN_CAP`` values (a value that is
    not a finite number is not learned)."""
    if not (isinstance(value, (int, float)) and math.isfinite(value)):
        return
    n, mean = bins.get(str(lvl), (0, 0.0))
    n += 1
    bins[str(lvl)] = [n, mean + (value - mean) / min(n, LEARN_CAP)]


def _at(bins: dict | None, lvl: int) -> float | None:
    """The learned value at level ``lvl``: its own; else interpolated between the nearest learned levels
    below and above; else the nearest one; None when nothing is learned."""
    if not bins:
        return None
    have = sorted(int(k) for k in bins)
    lo, hi = [k for k in have if k <= lvl], [k for k in have if k >= lvl]
    if lo and hi:
        a, b = lo[-1], hi[0]
        if a == b:
            return bins[str(a)][1]
        w = (lvl - a) / (b - a)
        return bins[str(a)][1] * (1 - w) + bins[str(b)][1] * w
    return bins[str(lo[-1] if lo else hi[0])][1]


def _epochs_key(strategy: str, train: config.TrainSettings) -> str:
    return f"{strategy}|max_epochs={train.max_epochs}|patience={train.patience}"


def prior_epochs(train: config.TrainSettings) -> int:
    """Epochs a round runs under early stopping before anything is learned: the best epoch at a third
    of ``max_epochs``, then ``patience`` more (measured on the demo's products chains, 15 and patience 3:
    7.6-8.6 epochs; this gives 8)."""
    return min(train.max_epochs, math.ceil(train.max_epochs / 3) + int(train.patience))


def round_epochs(train: config.TrainSettings, strategy: str, lvl: int, learned: dict) -> tuple[float, str]:
    """(epochs, where from) for one round: ``max_epochs`` without early stopping ("exact"); else the
    mean learned for this strategy at this level, else for any strategy with the same budget
    ("learned"), else ``prior_epochs`` ("prior")."""
    if train.patience is None:
        return float(train.max_epochs), "exact"
    own = _at(learned.get(_epochs_key(strategy, train)), lvl)
    if own is not None:
        return own, "learned"
    tail = _epochs_key("", train)
    others = [v for k, bins in learned.items() if k.endswith(tail) and (v := _at(bins, lvl)) is not None]
    if others:
        return sum(others) / len(others), "learned"
    return float(prior_epochs(train)), "prior"


def _strategies(c) -> list[str]:
    return list(c.params.get("strategies") or registry.defaults("obtain" if c.stage == "obtain" else "transfer"))


def _cell_settings(c) -> config.LotterySettings:
    flat = config.LotterySettings.flat_fields()
    return config.LotterySettings.from_params(**{k: c.params[k] for k in c.settings_names if k in flat})


def _runs(plan, c, s: config.LotterySettings, vocab_size: int):
    """(strategy, run folder) of every chain of an obtain or transfer cell."""
    from ltnb.core import lottery
    from ltnb.text import vocab

    data_key = vocab.data_key(plan.study_dir)
    seed = int(c.params.get("seed", 0))
    for strategy in _strategies(c):
        h = lottery.run_hash(s, data_key=data_key, vocab_size=vocab_size, strategy=strategy)
        if c.stage == "obtain":
            yield strategy, paths.obtain_dir(plan.study_dir, c.params["domain"], strategy, seed) / h
        else:
            yield strategy, paths.transfer_dir(plan.study_dir, c.params["source"], c.params["target"], strategy, seed) / h


def measured_seconds(row, threads: int = 1) -> float:
    """What a finished round cost this machine (``learn``): its wall ``seconds``, or with one thread the
    smaller of that and its ``cpu_seconds`` (rows written before that column have only the wall time)."""
    wall = float(row.seconds)
    cpu = getattr(row, "cpu_seconds", None)
    if int(threads) == 1 and cpu is not None and math.isfinite(float(cpu)) and float(cpu) > 0:
        return min(wall, float(cpu))
    return wall


def learn(plan, done: list[tuple], *, workers: int, threads: int = 1, cache_dir=None, log=None) -> int:
    """Learn from the trained rounds of a batch's finished cells that run chains (obtain, transfer;
    ``done``: (cell, seconds its notebook spent training), other cells are skipped) run on ``workers``
    workers: per sparsity level, the ratio of each round's measured ``seconds`` to the model's (for its
    data and ``epochs_run``); per strategy and level, the epochs run under early stopping; and the
    seconds per round that the training cells spend besides ``fit`` (pruning, saving tickets,
    diagnostics). Rounds already learned are skipped. Returns the number of rounds learned from.

    A round's measured seconds are its wall time, or, when the workers train with one thread and the row
    has it, the smaller of its wall and CPU time: on a machine shared with other work the wall time of a
    round grows while the CPU time it needs does not, and the estimate is for this machine alone. On an
    otherwise idle machine a round's CPU time is a little below its wall time (0.87-0.94 of it in the
    demo's 2-worker batch here: the batch's own processes), so learned times run that much short."""
    from ltnb.base import integrity

    table = _load_cache(cache_dir, log)
    seen = table.setdefault("observed", {})
    ratio_bins, epoch_bins = seen.setdefault("round_ratio", {}), seen.setdefault("epochs", {})
    learned = seen.setdefault("learned_rounds", [])
    known = set(learned)
    count = 0
    for c, cell_training in done:
        if stages.STAGES[c.stage].cost != "chains":
            continue
        s = _cell_settings(c)
        domain = c.params.get("domain") or c.params["target"]
        n, length, vocab_size, _ = _data_shape(plan, domain)
        n = _cut_train(n, s)
        r = rates(s.model, vocab_size, s.train.batch_size, threads=threads, cache_dir=cache_dir,
                  precision=s.train.precision, measure=False, log=log or _stderr)
        if r is None:
            continue
        key = f"{int(workers)}|{_key(s.model, vocab_size, s.train.batch_size, threads, s.train.precision)}"
        fit_seconds, rows_new = 0.0, 0
        for strategy, run in _runs(plan, c, s, vocab_size):
            f = run / paths.RESULTS
            if not f.exists():
                continue
            for row in integrity.read_parquet(f).itertuples():
                tag = f"{run.resolve()}:{int(row.round)}"
                if tag in known:
                    continue
                known.add(tag)
                learned.append(tag)
                rows_new += 1
                if not (row.seconds > MIN_TRAINED and row.epochs_run >= 1 and math.isfinite(row.seconds)):
                    continue
                lvl = level(row.sparsity)
                model = round_seconds(r, sparsity=row.sparsity, n=n, length=min(length, s.train.max_len),
                                      epochs=int(row.epochs_run), batch_size=s.train.batch_size)
                if not model > 0:
                    continue
                _update(ratio_bins.setdefault(key, {}), lvl, measured_seconds(row, threads) / model)
                if s.train.patience is not None:
                    _update(epoch_bins.setdefault(_epochs_key(strategy, s.train), {}), lvl, float(row.epochs_run))
                fit_seconds += float(row.seconds)
                count += 1
        # what the training cell spent besides fit, per round written
        if rows_new and cell_training > 0 and math.isfinite(cell_training):
            _update(seen.setdefault("round_extra", {}).setdefault(key, {}), 0 if c.stage == "obtain" else 1,
                    max(cell_training - fit_seconds, 0.0) / rows_new)
    del learned[:-LEARNED_KEEP]
    _save_cache(table, cache_dir, log=log)
    return count


# ----------------------------------------------------------------------------------- the model

def _interp(r: dict, what: str, s: float, length: float) -> float:
    """A rate at sparsity ``s`` and length ``length``: linear in log(1 - s) and in length."""
    pts = sorted(float(k) for k in r[what])
    x = -math.log(max(1 - s, 1e-6))
    xs = [-math.log(max(1 - p, 1e-6)) for p in pts]

    def at(p):
        v = r[what][str(p)] if str(p) in r[what] else r[what][repr(p)]
        if isinstance(v, list):  # linear in length through the two measured lengths
            (l1, l2), (a, b) = r["lengths"], v
            return max(a + (b - a) * (length - l1) / (l2 - l1), a * 0.25)
        return v

    if x <= xs[0]:
        return at(pts[0])
    for (x1, p1), (x2, p2) in zip(zip(xs, pts), zip(xs[1:], pts[1:])):
        if x <= x2:
            w = (x - x1) / (x2 - x1)
            return at(p1) * (1 - w) + at(p2) * w
    return at(pts[-1])


def round_seconds(r: dict, *, sparsity: float, n: tuple[int, int, int], length: float, epochs: int,
                  batch_size: int) -> float:
    """The model of one round (module doc)."""
    n_train, n_val, n_test = n
    step = _interp(r, "step", sparsity, length)
    ev = _interp(r, "eval", sparsity, length)
    return epochs * (math.ceil(n_train / batch_size) * step + n_val * ev) + n_test * ev + _interp(r, "fixed", sparsity, 0)


@dataclass
class CellEstimate:
    key: str
    stage: str
    deps: tuple
    training: float
    overhead: float
    raw_training: float = 0.0  # before the observed ratio
    model_key: str = ""  # the rates' key (machine, threads, model shape) of a cell that trains

    @property
    def seconds(self) -> float:
        return self.training + self.overhead


def _cut_train(n: tuple, s) -> tuple:
    """Split sizes with the training split cut to the chain's ``train_size`` (when it sets one)."""
    size = getattr(s, "train_size", None)
    return (min(int(n[0]), int(size)), *n[1:]) if size else tuple(n)


def _data_shape(plan, domain: str) -> tuple[tuple[int, int, int], float, int, str]:
    """(split sizes, mean length, vocabulary size, where it came from) of one domain."""
    from ltnb.text import vocab

    try:
        info = vocab.info(plan.study_dir)
        ls = info["lengths"]
        n = tuple(int(ls[f"{domain}/{s}"]["n"]) for s in ("train", "validation", "test"))
        mean = sum(ls[f"{domain}/{s}"]["mean_len"] * ls[f"{domain}/{s}"]["n"] for s in ("train", "validation", "test")) / max(sum(n), 1)
        return n, float(mean), int(info["vocab_size"]), "the study's encodings"
    except (FileNotFoundError, KeyError, ValueError):
        pass
    data = next((c for c in plan.cells if c.stage == "data"), None)
    p = dict(data.params) if data else {}
    corpus = p.get("corpus", "builtin")
    sizes = p.get("sizes")
    if isinstance(sizes, dict):  # every split's size given (DataSettings.sizes)
        train = sizes["train"] if isinstance(sizes["train"], int) else int(sizes["train"].get(domain, 0))
        return (int(train), int(sizes["validation"]), int(sizes["test"])), ASSUMED_LEN.get(corpus, 100.0), \
            int(p.get("vocab_size", 8000)), f"the plan (sizes; mean length assumed {ASSUMED_LEN.get(corpus, 100.0):g} subwords)"
    per = p.get("per_domain")
    if per is None:
        per = 994 if corpus == "builtin" else 40000
    val = test = per // 2 // 4 * 2
    train = per - val - test
    surplus = ""
    if corpus == "builtin" and p.get("test_surplus"):  # the domain's balanced surplus goes to its test split
        balanced = _builtin_balanced().get(domain)
        if balanced:
            test = max(test, balanced - train - val)
            surplus = ", test splits from the built-in corpus's balanced sizes"
    return (train, val, test), ASSUMED_LEN.get(corpus, 100.0), int(p.get("vocab_size", 8000)), \
        f"the plan (per_domain {per}{surplus}; mean length assumed {ASSUMED_LEN.get(corpus, 100.0):g} subwords)"


_BALANCED: dict = {}


def _builtin_balanced() -> dict[str, int]:
    """Per domain of the fetched built-in corpus: twice its smaller class after removing repeated texts
    (what ``test_surplus`` can give); empty when the corpus is not fetched."""
    if not _BALANCED:
        from ltnb.text import corpus

        try:
            df = corpus.load_builtin().drop_duplicates("text")
        except corpus.CorpusError:
            return {}
        _BALANCED.update({d: 2 * int(g.label.value_counts().min()) for d, g in df.groupby("domain")})
    return _BALANCED


def _federated_seconds(plan, c, notes: set, *, threads: int = 1, cache_dir=None, log=print) -> float:
    """One federated cell: the two dense runs (fair and naive) and every (ticket round, strategy) run,
    each ``fl_rounds`` rounds
    of every client's ``local_epochs`` on its shard (clients one after another: a batch cell has one CPU)
    and the evaluation of the global model on every domain's test split; plus Ray's start."""
    lottery = config.LotterySettings.flat_fields()
    s = config.LotterySettings.from_params(**{k: c.params[k] for k in c.settings_names if k in lottery})
    f = config.FederatedSettings(**{k: c.params[k] for k in c.settings_names if k not in lottery})
    data = next((d for d in plan.cells if d.stage == "data"), None)
    domains = list((data.params.get("domains") if data else None) or [c.params["source"]])
    clients = list(f.client_domains or [d for d in domains if d != c.params["source"]])
    strategies = c.params.get("strategies") or list(registry.federated())
    runs = [0.0, 0.0] + [1 - (1 - s.prune_fraction) ** t for t in f.ticket_rounds for _ in strategies]
    bs = s.train.batch_size
    total = RAY_START
    # local early stopping: assume the best local epoch is the 2nd, so patience + 2 epochs run (measured in
    # the federated demo, patience 1 of at most 5: 2-4 epochs, mean 2.6); without patience all of them
    epochs = f.local_epochs if f.local_patience is None else min(f.local_epochs, f.local_patience + 2)
    if f.local_patience is not None:
        notes.add(f"federated clients: {epochs} local epochs assumed per round (patience {f.local_patience} + 2, "
                  f"at most {f.local_epochs})")
    m = s.model
    weights = lambda V: (V * m.embed_dim + sum(k * m.embed_dim * m.channels + m.channels for k in m.kernel_sizes)  # noqa: E731
                         + len(m.kernel_sizes) * m.channels * m.hidden + m.hidden + m.hidden * 2 + 2)
    for sp in runs:
        for d in clients:
            (n_train, n_val, _), length, vocab_size, where = _data_shape(plan, d)
            notes.add(f"data sizes and lengths from {where}")
            r = rates(s.model, vocab_size, bs, threads=threads, cache_dir=cache_dir, precision=s.train.precision, log=log)
            L = min(length, s.train.max_len)
            step, ev = _interp(r, "step", sp, L), _interp(r, "eval", sp, L)
            shard = math.ceil(n_train / f.clients_per_domain / bs) * f.clients_per_domain
            total += f.fl_rounds * (epochs * (shard * step + n_val * ev) + _interp(r, "fixed", sp, 0)
                                    + (FL_CLIENT_ROUND + FL_CLIENT_ROUND_PER_MB * 4e-6 * weights(vocab_size))
                                    * f.clients_per_domain)
        for d in domains:  # the server's evaluation after every round
            (_, _, n_test), length, vocab_size, _ = _data_shape(plan, d)
            total += f.fl_rounds * n_test * _interp(rates(s.model, vocab_size, bs, threads=threads, cache_dir=cache_dir,
                                                          precision=s.train.precision, log=log),
                                                    "eval", sp, min(length, s.train.max_len))
    return total


def _chain_seconds(c, s, n: int, length: int, vocab_size: int, model_key: str, *, threads: int, workers, cache_dir, log,
                   learned_epochs: dict, bins, cell_ratio, extra: dict, sources: dict, used: set) -> tuple[float, float]:
    """A chains cell's (training, raw training) seconds: every strategy's rounds at the calibrated rates
    (``rounds``), times the ratio learned at the round's sparsity level (``bins``), else the last batch's
    cell-level ratio, else 1; plus the learned seconds per result row outside training. ``sources`` and
    ``used`` collect what was assumed (``_assumptions``)."""
    r = rates(s.model, vocab_size, s.train.batch_size, threads=threads, cache_dir=cache_dir,
              precision=s.train.precision, log=log)
    training = raw_training = 0.0
    rows = 0
    for i, strategy in enumerate(_strategies(c)):
        first = 0 if (c.stage == "obtain" and (i == 0 or registry.get("obtain", strategy).trains_round0)) else 1
        rows += s.rounds + 1
        for rnd in range(first, s.rounds + 1):
            sp = 1 - (1 - s.prune_fraction) ** rnd
            lvl = level(sp)
            epochs, src = round_epochs(s.train, strategy, lvl, learned_epochs)
            sources["epochs"].add(src)
            raw = round_seconds(r, sparsity=sp, n=n, length=min(length, s.train.max_len), epochs=epochs,
                                batch_size=s.train.batch_size)
            factor = _at(bins, lvl)
            if factor is not None:
                sources["time"].add("learned")
            elif cell_ratio:
                factor = cell_ratio
                used.add(round(cell_ratio, 2))
            else:
                factor = 1.0
                sources["time"].add("calibrated")
            raw_training += raw
            training += raw * factor
    part = (extra.get(f"{workers}|{model_key}") or {}).get("0" if c.stage == "obtain" else "1")
    if part and part[1] is not None:
        training += part[1] * rows
    return training, raw_training


def _assumptions(sources: dict, used: set, workers, threads: int) -> set[str]:
    """The notes that say what the training estimates rest on."""
    notes: set[str] = set()
    if "learned" in sources["time"]:
        notes.add(f"training times per sparsity level learned from finished trainings of this model with {workers} "
                  "worker(s) on this machine")
    if used:
        notes.add(f"training times x {', '.join(f'{r:.2f}' for r in sorted(used))}: what the last batch of this "
                  f"model with {workers} worker(s) here measured against the calibrated rates")
    if "calibrated" in sources["time"] and not used:
        notes.add(f"training times from rates measured by one process alone ({threads} thread(s)) on synthetic "
                  "data; the first batch learns how this model's real trainings with its workers compare, and later "
                  "estimates use it")
    if sources["epochs"] == {"exact"}:
        notes.add("no early stopping (patience null): every round runs max_epochs")
    elif "prior" in sources["epochs"]:
        notes.add("early stopping: epochs per round not yet learned for some strategies; assumed "
                  "min(max_epochs, ceil(max_epochs / 3) + patience) (the prior)")
    elif "learned" in sources["epochs"]:
        notes.add("early stopping: epochs per round learned from finished trainings (per strategy and sparsity)")
    return notes


def estimate_cells(plan, *, threads: int = 1, workers: int | None = None, cache_dir=None,
                   log=print) -> tuple[list[CellEstimate], list[str]]:
    """Per cell: estimated training and overhead seconds; and notes on what was assumed. A round's
    training is the calibrated model's (``raw_training``) for its epochs (``round_epochs``) times the
    ratio learned from finished trainings of this model on this machine with ``workers`` workers at its
    sparsity level (``learn``); before any, the last batch's cell-level ratio (``observed.training_ratio``:
    workers side by side share memory bandwidth and caches, which a calibration run alone does not see)."""
    observed = _load_cache(cache_dir, log).get("observed", {})
    ratios, round_ratio = observed.get("training_ratio", {}), observed.get("round_ratio", {})
    learned_epochs = observed.get("epochs", {})
    extra = observed.get("round_extra", {})  # per workers|model: level 0 obtain, 1 transfer (seconds per round)
    used: set[float] = set()
    notes: set[str] = set()
    sources: dict[str, set] = {"time": set(), "epochs": set()}
    out = []
    for c in plan.cells:
        overhead = observed.get(c.stage, {}).get("overhead", stages.STAGES[c.stage].overhead)
        training, raw_training, model_key = 0.0, 0.0, ""
        cost = stages.STAGES[c.stage].cost
        if cost in ("chains", "federated"):
            s = _cell_settings(c)
            # the domain trained on: obtain's domain, transfer's target (federated: the source's vocabulary)
            domain = c.params.get("domain") or c.params.get("target") or c.params["source"]
            n, length, vocab_size, where = _data_shape(plan, domain)
            n = _cut_train(n, s)
            model_key = _key(s.model, vocab_size, s.train.batch_size, threads, s.train.precision)
        cell_ratio = ratios.get(f"{workers}|{model_key}") if (workers and model_key) else None
        if cost == "chains":
            notes.add(f"data sizes and lengths from {where}")
            training, raw_training = _chain_seconds(
                c, s, n, length, vocab_size, model_key, threads=threads, workers=workers, cache_dir=cache_dir,
                log=log, learned_epochs=learned_epochs, bins=round_ratio.get(f"{workers}|{model_key}") if workers else None,
                cell_ratio=cell_ratio, extra=extra, sources=sources, used=used)
        elif cost == "federated":
            raw_training = _federated_seconds(plan, c, notes, threads=threads, cache_dir=cache_dir, log=log)
            training = raw_training * cell_ratio if cell_ratio else raw_training
            if cell_ratio:
                used.add(round(cell_ratio, 2))
        else:
            wall = observed.get(c.stage, {}).get("wall", stages.STAGES[c.stage].wall)
            overhead = max(overhead, wall)
            if c.stage == "data" and plan.cells and c.params.get("corpus", "builtin") != "builtin":
                notes.add("the data stage of Amazon or Blitzer files (reading and sampling them) is not estimated")
        out.append(CellEstimate(c.key, c.stage, tuple(c.deps), training, overhead, raw_training=raw_training,
                                model_key=model_key))
    if any(stages.STAGES[c.stage].cost != "wall" for c in plan.cells):
        notes |= _assumptions(sources, used, workers, threads)
    return out, sorted(notes)


def schedule(cells: list[CellEstimate], workers: int) -> float:
    """Wall time of running ``cells`` on ``workers`` workers, a cell starting when its inputs are done
    (list scheduling in plan order, as the runner submits them)."""
    done: dict[str, float] = {}
    free = [0.0] * max(1, int(workers))
    heapq.heapify(free)
    for c in cells:  # plan order is a topological order
        ready = max((done.get(d, 0.0) for d in c.deps), default=0.0)
        w = heapq.heappop(free)
        start = max(w, ready)
        done[c.key] = start + c.seconds
        heapq.heappush(free, done[c.key])
    return max(done.values(), default=0.0)


def summary(plan, workers: int, *, threads: int = 1, cache_dir=None, log=print) -> dict:
    """Per stage (cells, training, overhead, worker seconds), the total, and the wall time on
    ``workers`` workers of ``threads`` threads (and on 1, 2, 4, 8, 16, 32 for comparison, with the
    same per-cell times)."""
    cells, notes = estimate_cells(plan, threads=threads, workers=workers, cache_dir=cache_dir, log=log)
    per_stage = {}
    for c in cells:
        st = per_stage.setdefault(c.stage, {"cells": 0, "training": 0.0, "overhead": 0.0})
        st["cells"] += 1
        st["training"] += c.training
        st["overhead"] += c.overhead
    return {"stages": per_stage, "worker_seconds": sum(c.seconds for c in cells), "workers": workers,
            "wall": schedule(cells, workers), "by_workers": {n: schedule(cells, n) for n in (1, 2, 4, 8, 16, 32)},
            "notes": notes, "cells": {c.key: c.seconds for c in cells},
            "raw_training": {c.key: c.raw_training for c in cells},
            "model_keys": {c.key: c.model_key for c in cells}}


def fmt_seconds(s: float) -> str:
    s = float(s)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def print_summary(est: dict, out) -> None:
    print(f"estimate on this machine ({est['workers']} worker(s)): {fmt_seconds(est['wall'])} wall, "
          f"{fmt_seconds(est['worker_seconds'])} of worker time", file=out)
    for stage, st in est["stages"].items():
        print(f"  {stage:<10} {st['cells']:>4} cells  training {fmt_seconds(st['training']):>9}  "
              f"other {fmt_seconds(st['overhead']):>9}", file=out)
    print("  wall time by workers: " + ", ".join(f"{n}: {fmt_seconds(v)}" for n, v in est["by_workers"].items()), file=out)
    for n in est["notes"]:
        print(f"  note: {n}", file=out)
