"""Settings defined once: every field's schema is the check of the dataclass, of the plan and of the
command line, so the three cannot drift (each field is tried with a value its schema forbids)."""
from __future__ import annotations

import argparse
import math

import pytest

from ltnb.base import config, stages
from ltnb.study.plan import PlanError, load_plan

from test_plan import FIX


def bad_value(schema: dict):
    """A value the schema forbids (None where nothing simple is forbidden)."""
    if "enum" in schema:
        return "bogus"
    types = schema.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    if "boolean" in types:
        return "yes"
    if "integer" in types and "minimum" in schema:
        return schema["minimum"] - 1
    if "number" in types:
        if "exclusiveMinimum" in schema:
            return schema["exclusiveMinimum"]
        if "minimum" in schema:
            return schema["minimum"] - 1
        if "exclusiveMaximum" in schema:
            return schema["exclusiveMaximum"]
    if "string" in types and "pattern" in schema:
        return "../x"
    if "array" in types:
        return []
    return None


STAGE_FIELDS = [(stage, name, f) for stage in ("data", "obtain", "phase", "divergence")
                for name, f in stages.stage_settings(stage).items()]


@pytest.mark.parametrize("stage,name,field", STAGE_FIELDS, ids=[f"{s}.{n}" for s, n, _ in STAGE_FIELDS])
def test_one_rule_per_setting_for_dataclass_and_plan(tmp_path, stage, name, field):
    value = bad_value(field.metadata["schema"])
    if value is None:
        pytest.skip("no simple forbidden value")
    with pytest.raises(ValueError, match=name):
        stages.for_stage(stage, {name: value})
    nb = {"data": "data", "obtain": "obtain", "phase": "report", "divergence": "divergence"}[stage]
    stage_key = "report" if stage == "phase" else stage
    text = (f"study: t\nstages:\n  - stage: {stage_key}\n    notebook: {FIX / (nb + '.ipynb')}\n"
            f"    params: {{{name}: {value!r}}}\n")
    if stage == "obtain":
        text = text.replace("    params: {", "    grid: {domain: [products], seed: [0]}\n    params: {")
    (tmp_path / "p.yaml").write_text(text.replace("'", '"'))
    with pytest.raises(PlanError) as e:
        load_plan(tmp_path / "p.yaml")
    assert any(name in p and "not allowed" in p for p in e.value.problems), e.value.problems


def test_describe_says_what_is_allowed():
    assert config.describe(config.integer(1, nullable=True)) == "an integer >= 1 or null"
    assert config.describe(config.number(0, 1, low_open=True, high_open=True)) == "a number in (0, 1)"
    assert config.describe(config.one_of(["a", "b"])) == "one of a, b"
    assert config.describe(config.BOOLEAN) == "true or false"
    with pytest.raises(ValueError, match=r"TrainSettings.patience = 0: expected an integer >= 1 or null"):
        config.TrainSettings(patience=0)


def test_command_line_options_come_from_the_settings():
    p = argparse.ArgumentParser()
    config.add_arguments(p, config.DataSettings, config.VocabSettings)
    flags = {a.dest for a in p._actions}
    assert set(config.DataSettings.settings_fields()) | set(config.VocabSettings.settings_fields()) <= flags
    args = p.parse_args(["--vocab-size", "300", "--domains", "products", "movies", "--per-domain", "null",
                         "--amazon-files", "books=a.json.gz", "--strict"])
    d = config.from_arguments(args, config.DataSettings)
    v = config.from_arguments(args, config.VocabSettings)
    assert v.vocab_size == 300 and d.domains == ("products", "movies") and d.per_domain is None and d.strict
    assert d.amazon_files == {"books": "a.json.gz"}
    with pytest.raises(ValueError, match="vocab_size"):
        config.from_arguments(p.parse_args(["--vocab-size", "2"]), config.VocabSettings)


def test_settings_round_trip_and_table():
    s = config.LotterySettings.from_params(rounds=3, init_a=0.0, max_epochs=2)
    assert config.LotterySettings.from_params(**s.flat()) == s
    t = config.table(s)
    assert t.loc["rounds", "value"] == 3 and t.loc["rounds", "changed"] and not t.loc["lr", "changed"]
    assert math.isclose(config.ModelSettings().init_a, math.sqrt(5))
    assert "He et al." in t.loc["init_a", "help"]
    with pytest.raises(ValueError, match="unknown name.*'epochs'"):
        stages.for_stage("obtain", {"epochs": 3})


def _all_setting_schemas() -> list[dict]:
    import dataclasses
    import inspect
    import json

    seen = {}
    for obj in vars(config).values():
        if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                if f.metadata.get("schema"):
                    seen[json.dumps(f.metadata["schema"], sort_keys=True)] = f.metadata["schema"]
    for spec in config.CELL_PARAMS.values():
        if spec.get("schema"):
            seen[json.dumps(spec["schema"], sort_keys=True)] = spec["schema"]
    return list(seen.values())


def test_settings_checks_agree_with_jsonschema_on_every_schema():
    """config.fits (fastjsonschema, what kernels use) gives jsonschema's Draft 2020-12 verdict on every
    setting's and cell parameter's schema, for edge values and each schema's own allowed values."""
    import jsonschema

    schemas = _all_setting_schemas()
    assert len(schemas) > 10
    probes = [None, True, False, 0, 1, -1, 2, 2.0, 2.5, 0.5, 1e-9, 1e9, math.inf, math.nan, 0.0, 1.0, -0.5, 3, 100,
              417, "", "a", "a..b", "reset", "products", "auto", [], [1], [1, 1], ["reset"], ["a", "a"], [3, 4, 5],
              [["products", "movies"]], {}, {"a": 1}, {"books": "x"}, {"": 1}, {"a..b": "x"}]
    refused = 0
    for schema in schemas:
        validator = jsonschema.Draft202012Validator(schema)
        for value in probes + list(schema.get("enum", [])) + list(schema.get("items", {}).get("enum", [])):
            # deliberately stricter than JSON Schema: NaN, infinities and 2.0 for an integer are refused
            strict = isinstance(value, float) and (not math.isfinite(value) or (
                "integer" in str(schema.get("type")) and "number" not in str(schema.get("type"))))
            expected = validator.is_valid(config._plain(value)) and not strict
            refused += validator.is_valid(config._plain(value)) and strict
            assert config.fits(value, schema) == expected, (schema, value)
    assert refused > 0  # the stricter rule did refuse values jsonschema lets through


@pytest.mark.parametrize("make, message", [
    (lambda: config.TrainSettings(lr=math.nan), r"TrainSettings.lr = nan: expected a finite number > 0"),
    (lambda: config.TrainSettings(lr=math.inf), r"TrainSettings.lr = inf"),
    (lambda: config.TrainSettings(weight_decay=math.inf), r"TrainSettings.weight_decay = inf"),
    (lambda: config.LotterySettings(prune_fraction=math.nan), r"LotterySettings.prune_fraction = nan: expected a number in \(0, 1\)"),
    (lambda: config.ModelSettings(dropout=math.nan), r"ModelSettings.dropout = nan"),
    (lambda: config.ModelSettings(init_a=math.inf), r"ModelSettings.init_a = inf"),
    (lambda: config.ModelSettings(embed_dim=16.0), r"ModelSettings.embed_dim = 16.0: expected an integer >= 1"),
    (lambda: config.ModelSettings(kernel_sizes=(3, 4.0)), r"ModelSettings.kernel_sizes"),
    (lambda: config.LotterySettings(rounds=2.0), r"LotterySettings.rounds = 2.0"),
    (lambda: config.PhaseSettings(alpha=math.nan), r"PhaseSettings.alpha = nan"),
    (lambda: config.DataSettings(pos_threshold=math.nan), r"DataSettings.pos_threshold = nan"),
])
def test_non_finite_numbers_and_floats_for_integers_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()
