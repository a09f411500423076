"""The run hashes of the shipped plans' cells, pinned (``tests/fixtures/run_hashes.json``).

A run's folder is named by its hash (``ltnb.core.lottery.run_hash``): the settings that differ from their
defaults (``LotterySettings.hash_dict``), the data key, the vocabulary size and ``ENGINE_VERSION``.

IF THIS TEST FAILS, every finished chain of that plan is orphaned: a rerun would not find it and
would train it all again in a new folder (the old one is left unread). That is right only when the
numbers a chain computes change. Then say so honestly:

* the engine's arithmetic changed: bump ``ENGINE_VERSION`` in ``ltnb/core/lottery.py`` (with a line
  saying what changed) and regenerate the pins;
* a setting's default changed meaning: do not; add a new setting (its default keeps the old meaning)
  or bump ``ENGINE_VERSION``. The pinned defaults below catch a changed default;
* a plan's cells changed (a new strategy, seed or grid value in params/*.yaml): regenerate the pins.

Anything else (a refactor, a new setting with its default, a new strategy) must keep every pin. To
regenerate (the data key is a stand-in: the real one is the study's vocabulary folder, made by the
data stage; a changed corpus or vocabulary changes the real hashes, not these)::

    PYTHONPATH=. .venv/bin/python tests/test_run_hashes.py --write
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINS = ROOT / "tests" / "fixtures" / "run_hashes.json"
PLANS = ("smoke", "demo", "paper")
DATA_KEY = "pinned-data-key"  # stands for the study's vocabulary folder name (vocab.data_key)


def _defaults() -> dict:
    from ltnb.base.config import LotterySettings, _plain

    out = {}
    for name, (_, f) in LotterySettings.flat_fields().items():
        out[name] = _plain(f.default if f.default is not dataclasses.MISSING else f.default_factory())
    return out


def compute() -> dict:
    """Every (plan, cell, strategy) of the shipped plans' obtain and transfer cells -> its run hash."""
    from ltnb.base import registry
    from ltnb.core import lottery
    from ltnb.base.config import LotterySettings, VocabSettings
    from ltnb.study.plan import load_plan

    plans = {}
    for name in PLANS:
        plan = load_plan(ROOT / "params" / f"{name}.yaml")
        data = next((c for c in plan.cells if c.stage == "data"), None)
        vocab_size = int((data.params if data else {}).get("vocab_size", VocabSettings().vocab_size))
        cells = {}
        for c in plan.cells:
            if c.stage not in ("obtain", "transfer"):
                continue
            flat = LotterySettings.flat_fields()
            s = LotterySettings.from_params(**{k: c.params[k] for k in c.settings_names if k in flat})
            cells[c.key] = {st: lottery.run_hash(s, data_key=DATA_KEY, vocab_size=vocab_size, strategy=st)
                            for st in (c.params.get("strategies") or registry.defaults(c.stage))}
        plans[name] = cells
    return {"engine": lottery.ENGINE_VERSION, "data_key": DATA_KEY, "defaults": _defaults(), "plans": plans}


def test_the_shipped_plans_run_hashes_are_pinned():
    pinned, now = json.loads(PINS.read_text()), compute()
    assert now["engine"] == pinned["engine"], (
        f"ENGINE_VERSION is {now['engine']}, the pins were made with {pinned['engine']}: regenerate them "
        "(module doc) if the engine's numbers changed")
    changed = [f"{plan} {cell} {st}: pinned {h}, now {now['plans'].get(plan, {}).get(cell, {}).get(st)}"
               for plan, cells in pinned["plans"].items() for cell, by in cells.items() for st, h in by.items()
               if now["plans"].get(plan, {}).get(cell, {}).get(st) != h]
    assert not changed, "run hashes changed: every finished chain of these cells is orphaned (module doc):\n" + \
        "\n".join(changed[:20])
    assert now["plans"] == pinned["plans"], "the plans have cells or strategies that are not pinned: regenerate (module doc)"


def test_no_default_changed():
    """A changed default would change what an unchanged hash means (the hash leaves defaults out)."""
    pinned, now = json.loads(PINS.read_text())["defaults"], _defaults()
    changed = {k: (v, now.get(k, "<removed>")) for k, v in pinned.items() if now.get(k, "<removed>") != v}
    assert not changed, f"defaults changed (pinned, now): {changed}; keep them, or bump ENGINE_VERSION (module doc)"


def test_a_new_setting_at_its_default_keeps_every_hash():
    from ltnb.core import lottery
    from ltnb.base.config import LotterySettings, TrainSettings, integer, setting

    grown = dataclasses.make_dataclass("GrownTrainSettings", [("new_knob", int, setting(0, "a new setting", integer(0)))],
                                       bases=(TrainSettings,), frozen=True)
    base = LotterySettings.from_params(rounds=3, embed_dim=16, lr=5e-3)
    same = dataclasses.replace(base, train=grown(lr=5e-3))
    moved = dataclasses.replace(base, train=grown(lr=5e-3, new_knob=2))
    h = {k: lottery.run_hash(s, data_key="k", vocab_size=50, strategy="reset") for k, s in
         (("base", base), ("same", same), ("moved", moved))}
    assert h["base"] == h["same"] != h["moved"]
    assert LotterySettings().hash_dict() == {} and base.hash_dict() == {"rounds": 3, "model": {"embed_dim": 16},
                                                                        "train": {"lr": 5e-3}}
    assert LotterySettings.from_params(lr=1).hash_dict() == LotterySettings.from_params(lr=1.0).hash_dict()
    # rounds never enters a run hash (more rounds extend the same chain)
    assert lottery.run_hash(base, data_key="k", vocab_size=50, strategy="reset") == lottery.run_hash(
        dataclasses.replace(base, rounds=7), data_key="k", vocab_size=50, strategy="reset")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: PYTHONPATH=. python {Path(__file__).relative_to(ROOT)} --write   (rewrites {PINS.relative_to(ROOT)})")
    PINS.write_text(json.dumps(compute(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {PINS.relative_to(ROOT)}")
