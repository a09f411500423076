"""Every setting of the study, defined once: frozen dataclasses whose fields carry their own checks.

A setting is one line: ``name: type = setting(default, "help", schema)``. The schema is a JSON
Schema fragment (``{"type": "integer", "minimum": 1}``); from it come

* the check in ``__post_init__`` (a bad value is refused naming the field and what is allowed),
* the plan's value checks (``ltnb.study.plan`` checks every stage's parameters against
  ``ltnb.base.stages.param_schema``, so ``patience: 0`` is refused at ``--dry-run`` with its line),
* the notebooks' accepted parameters (a notebook takes ``settings = {}``, a dict of overrides by
  flat name, see ``LotterySettings.from_params``),
* the command line's options (``ltnb data build`` is generated from ``DataSettings`` and
  ``VocabSettings``, see ``add_arguments``).

A run's folder is named by a hash of its settings (OpenLTH's idea), so a rerun finds finished work
and changed settings never overwrite old results. The hash covers the settings whose value differs
from the field's default (``hash_dict``; OpenLTH's rule), never a ``hashed=False`` field: a new setting
added with a default keeps every existing run's hash, so no finished chain is orphaned by it. The
other side of the rule: a default must never change meaning (``tests/test_run_hashes.py`` pins every
default and the hashes of the shipped plans' cells; changing a default is a new engine version).

``derive_seed`` turns (seed, round, purpose) into an independent integer seed: every random draw of a
chain (theta_0, the shuffling and dropout of each round, fresh random values) is derived from it, so a
chain resumed at round r draws exactly what an uninterrupted chain draws.

The initialisation (``ModelSettings.init_a``, ``bias_init``): the paper writes the He-uniform bound
as sqrt(6 / ((1 + a^2) fan_in)) "where a and fan_in are parameters calculated for each weight",
which is the wording of PyTorch's ``kaiming_uniform_`` docstring, and its other choices (an N(0, 1)
embedding, biases U(+-1/sqrt(fan_in))) are PyTorch's layer defaults. PyTorch's own Conv1d and Linear
layers call ``kaiming_uniform_`` with a = sqrt(5), i.e. b = 1/sqrt(fan_in). So the default here is
the layer default the paper most likely ran, a = sqrt(5); a = 0 (He et al.'s bound for ReLU,
b = sqrt(6/fan_in), 2.45x wider) is one setting away (``params/init.yaml`` runs both).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, Iterable

from ltnb.base import registry
from ltnb.base._io import stable_hash

# --------------------------------------------------------------------------------- schemas and checks

#: names that become folder or file names (domains, studies): letters, digits, _ . - ; no "..", no "__"
NAME_PATTERN = r"^(?!.*\.\.)(?!.*__)[A-Za-z0-9][A-Za-z0-9_.-]*$"
NAME = {"type": "string", "pattern": NAME_PATTERN,
        "x-allowed": "a name of letters, digits, '_', '.' and '-' (no '..' or '__', not starting with '.')"}

# the strategies are defined in ``ltnb.base.registry``; these names are read from it
OBTAIN_STRATEGIES = registry.names("obtain")
TRANSFER_STRATEGIES = registry.names("transfer")
#: obtain strategies that train the reset chain's mask of each round (controls), not masks of their own
RESET_MASK_STRATEGIES = tuple(s.name for s in registry.BY_STAGE["obtain"].values() if s.reads_reset_chain)
#: the transfer strategies the federated stage trains (the ticket's masks as they are)
FEDERATED_STRATEGIES = registry.federated()
FEDERATED_DENSE = "dense"  # the federated stage's dense FedAvg baseline (sends only changed embedding rows)
FEDERATED_NAIVE = "dense-naive"  # the second reference: dense FedAvg that sends every value every round
CORPORA = ("builtin", "amazon", "blitzer")
BIAS_INITS = ("fan_in", "zero")
THETA_0_PER = ("seed_domain", "seed")
# float32: everything in float32; bfloat16: forward passes (training and evaluation) under bf16 autocast
# (convolutions and matrix products in bf16, accumulated in float32; weights, gradients and Adam stay
# float32). Parity on the demo's chains: README / benchmarks/README.md, "Precision".
PRECISIONS = ("float32", "bfloat16")


def integer(minimum: int | None = None, *, nullable: bool = False) -> dict:
    s: dict[str, Any] = {"type": ["integer", "null"] if nullable else "integer"}
    if minimum is not None:
        s["minimum"] = minimum
    return s


def number(low: float | None = None, high: float | None = None, *, low_open=False, high_open=False) -> dict:
    s: dict[str, Any] = {"type": "number"}
    if low is not None:
        s["exclusiveMinimum" if low_open else "minimum"] = low
    if high is not None:
        s["exclusiveMaximum" if high_open else "maximum"] = high
    return s


BOOLEAN = {"type": "boolean"}


def one_of(values: Iterable[str]) -> dict:
    return {"enum": list(values)}


def describe(schema: dict) -> str:
    """What a schema allows, in words: "an integer >= 1", "a number in (0, 1)", "one of a, b" ..."""
    if "x-allowed" in schema:
        return schema["x-allowed"]
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    nullable = "null" in types
    types = [t for t in types if t != "null"]
    kind = types[0] if types else "value"
    if kind in ("integer", "number"):
        lo = schema.get("minimum", schema.get("exclusiveMinimum"))
        hi = schema.get("maximum", schema.get("exclusiveMaximum"))
        # NaN and infinities are refused (``strict_problem``); an interval says so by itself
        noun = "an integer" if kind == "integer" else "a number" if lo is not None and hi is not None else "a finite number"
        if lo is not None and hi is not None:
            left = "(" if "exclusiveMinimum" in schema else "["
            right = ")" if "exclusiveMaximum" in schema else "]"
            text = f"{noun} in {left}{lo:g}, {hi:g}{right}"
        elif lo is not None:
            text = f"{noun} {'>' if 'exclusiveMinimum' in schema else '>='} {lo:g}"
        elif hi is not None:
            text = f"{noun} {'<' if 'exclusiveMaximum' in schema else '<='} {hi:g}"
        else:
            text = noun
    elif kind == "boolean":
        text = "true or false"
    elif kind == "array":
        items = describe(schema.get("items", {}))
        unique = " distinct" if schema.get("uniqueItems") else ""
        text = f"a non-empty list of{unique} values, each {items}" if schema.get("minItems") else f"a list of values, each {items}"
    elif kind == "object":
        text = "a mapping"
        if "propertyNames" in schema:
            text += f" whose keys are each {describe(schema['propertyNames'])}"
    elif kind == "string":
        text = "a string"
    else:
        text = "a value"
    return f"{text} or null" if nullable else text


def _plain(value: Any) -> Any:
    """Tuples as lists (JSON), recursively, for validation and hashing."""
    return json.loads(json.dumps(value, default=str)) if isinstance(value, (tuple, list, dict)) else value


_VALIDATORS: dict[str, Any] = {}


def _types(schema: dict) -> set[str]:
    t = schema.get("type", [])
    return {t} if isinstance(t, str) else set(t)


def strict_problem(value: Any, schema: dict) -> bool:
    """What JSON Schema lets through and a setting must not be: a non-finite number (NaN, +-inf)
    anywhere in ``value``, and a float (``2.0``, ``1e12``) where the schema asks for an integer.
    JSON Schema counts ``2.0`` as an integer and has no word for NaN; a study of NaN learning rates
    would run to the end and report garbage, so both are refused (``fits``)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return True
        return "integer" in _types(schema) and "number" not in _types(schema)
    if isinstance(value, (list, tuple)):
        items = schema.get("items", {})
        return any(strict_problem(v, items) for v in value)
    if isinstance(value, dict):
        extra = schema.get("additionalProperties")
        sub = extra if isinstance(extra, dict) else {}
        return any(strict_problem(v, schema.get("properties", {}).get(k, sub)) for k, v in value.items())
    return False


def fits(value: Any, schema: dict) -> bool:
    """Whether ``value`` fits ``schema``: fastjsonschema, each schema compiled once, and no non-finite
    number or float-for-integer (``strict_problem``). A kernel checks its settings without importing
    jsonschema, whose import builds an optional IRI grammar (about 1.5 s); the plan's own structure is
    still reported by jsonschema, whose errors say where in the file. ``tests/test_config.py`` checks
    that both give the same verdicts on every setting's schema, apart from the strict rule."""
    import fastjsonschema

    if strict_problem(value, schema):
        return False
    key = json.dumps(schema, sort_keys=True)
    if key not in _VALIDATORS:
        _VALIDATORS[key] = fastjsonschema.compile(schema)
    try:
        _VALIDATORS[key](_plain(value))
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


def check_value(owner: str, name: str, value: Any, schema: dict) -> None:
    """Raise ``ValueError("owner.name = value: expected ...")`` unless ``value`` fits ``schema``."""
    if not fits(value, schema):
        raise ValueError(f"{owner}.{name} = {value!r}: expected {describe(schema)}")


def setting(default: Any = dataclasses.MISSING, help: str = "", schema: dict | None = None, *,
            default_factory: Any = dataclasses.MISSING, hashed: bool = True, omit_default: bool = False):
    """A dataclass field with its help text and its JSON schema (see the module doc).
    ``hashed=False``: the setting does not change the numbers (never part of a hash, ``hash_dict``).
    ``omit_default=True``: at its default the setting is left out of a plan cell's hash (a setting added
    later, so the cells of plans that do not use it keep their hashes)."""
    meta = {"help": help, "schema": schema or {}, "hashed": hashed, "omit_default": omit_default}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


class _Checked:
    """Mixin: check every field against its schema after ``__init__``; tuples for list fields."""

    def __post_init__(self):
        owner = type(self).__name__
        for f in fields(self):
            schema = f.metadata.get("schema")
            if not schema:
                continue
            value = getattr(self, f.name)
            check_value(owner, f.name, value, schema)
            if isinstance(value, list) and f.type.startswith("tuple"):
                object.__setattr__(self, f.name, tuple(value))

    @classmethod
    def settings_fields(cls) -> dict[str, dataclasses.Field]:
        """The fields that carry a schema (the settings), by name."""
        return {f.name: f for f in fields(cls) if f.metadata.get("schema")}

    def hash_dict(self) -> dict[str, Any]:
        """What a hash of these settings covers (OpenLTH's rule): every field whose value differs from
        its default, as plain data, nested settings recursively (kept only when something in them
        differs); ``hashed=False`` fields never. Settings left at their defaults hash as ``{}``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if not f.metadata.get("hashed", True):
                continue
            value = getattr(self, f.name)
            if isinstance(value, _Checked):
                sub = value.hash_dict()
                if sub:
                    out[f.name] = sub
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)  # lr: 1 and lr: 1.0 are one setting
            if _plain(value) != _plain(default):
                out[f.name] = _plain(value)
        return out

    def describe_settings(self) -> "list[dict]":
        """One row per setting: name, value, default, help (for notebooks and the README)."""
        out = []
        for name, f in self.settings_fields().items():
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out.append({"setting": name, "value": getattr(self, name), "default": default, "help": f.metadata["help"]})
        return out


# ----------------------------------------------------------------------------------- the settings


#: DataSettings.sizes: texts per domain of each split (even: half of each class); train for every domain or per domain
SIZES_SCHEMA = {
    "type": ["object", "null"], "required": ["train", "validation", "test"], "additionalProperties": False,
    "properties": {"train": {"anyOf": [integer(2), {"type": "object", "propertyNames": NAME, "minProperties": 1,
                                                    "additionalProperties": integer(2)}]},
                   "validation": integer(2), "test": integer(2)},
    "x-allowed": "null or a mapping {train: N or {domain: N, ...}, validation: N, test: N} of even integers >= 2 "
                 "(texts per domain, half of each class)",
}


@dataclass(frozen=True)
class DataSettings(_Checked):
    """The data stage (``ltnb.text.data.build``): which corpus, which domains, how many texts, the split seed."""

    corpus: str = setting("builtin", "which corpus: the built-in five-domain corpus, McAuley's Amazon files, "
                          "or Blitzer's multi-domain folders", one_of(CORPORA))
    domains: tuple[str, ...] | None = setting(None, "domains to keep (null: every domain of the corpus)",
                                              {"type": ["array", "null"], "items": NAME, "minItems": 1,
                                               "uniqueItems": True})
    per_domain: int | None = setting(None, "texts per domain, half of each class (null: the largest size every "
                                     "domain can give; amazon: the paper's 40,000)", integer(4, nullable=True))
    seed: int = setting(0, "sampling and split seed", integer(0))
    pos_threshold: float = setting(1.0, "built-in corpus: VADER valence at or above this is positive",
                                   number(-4, 4))
    neg_threshold: float = setting(-1.0, "built-in corpus: VADER valence at or below this is negative",
                                   number(-4, 4))
    amazon_files: dict | None = setting(None, "corpus amazon or blitzer: {domain: path to the file or folder}",
                                        {"type": ["object", "null"], "propertyNames": NAME,
                                         "additionalProperties": {"type": "string", "minLength": 1},
                                         "minProperties": 1})
    strict: bool = setting(False, "stop at the first bad record instead of skipping and counting it", BOOLEAN,
                           hashed=False)
    test_surplus: bool = setting(True, "each domain's balanced surplus beyond per_domain goes to its own test split "
                                 "(training and validation stay equal across domains)", BOOLEAN)
    sizes: dict | None = setting(None, "instead of per_domain: texts per domain of each split, half of each class, "
                                 "{train: N or {domain: N}, validation: N, test: N}; validation and test are the same "
                                 "texts whatever the training sizes (null: per_domain's 2:1:1)", SIZES_SCHEMA,
                                 omit_default=True)

    def __post_init__(self):
        super().__post_init__()
        if self.corpus == "builtin" and not self.neg_threshold < self.pos_threshold:
            raise ValueError(
                f"neg_threshold={self.neg_threshold} must be below pos_threshold={self.pos_threshold} "
                "(valence >= pos_threshold is positive, <= neg_threshold negative, the middle is dropped)")
        if self.sizes is not None and self.per_domain is not None:
            raise ValueError(f"DataSettings.sizes = {self.sizes!r} and per_domain = {self.per_domain!r}: give one of them "
                             "(sizes sets every split's size, per_domain the 2:1:1 total)")
        if self.sizes is not None:
            train = self.sizes["train"]
            odd = {k: v for k, v in ({"train": train} if isinstance(train, int) else
                                     {f"train.{d}": n for d, n in train.items()}).items() if v % 2}
            odd.update({k: self.sizes[k] for k in ("validation", "test") if self.sizes[k] % 2})
            if odd:
                raise ValueError(f"DataSettings.sizes: {', '.join(f'{k} = {v}' for k, v in odd.items())}: each size must be "
                                 "even (half of it per class)")
        if self.corpus != "builtin" and not self.amazon_files:
            what = "file" if self.corpus == "amazon" else "folder with positive.review and negative.review"
            raise ValueError(f"corpus={self.corpus!r} needs amazon_files: a dict {{domain: path to the {what}}}")


@dataclass(frozen=True)
class VocabSettings(_Checked):
    """The shared SentencePiece vocabulary (``ltnb.text.vocab.build``): the paper's 8K BPE pieces."""

    vocab_size: int = setting(8000, "SentencePiece pieces (paper: 8000)", integer(4))
    character_coverage: float = setting(0.9995, "SentencePiece character coverage (paper: 0.9995)",
                                        number(0, 1, low_open=True), hashed=False)
    model_type: str = setting("bpe", "SentencePiece model type (paper: bpe)", one_of(("bpe", "unigram", "char", "word")))
    max_len: int = setting(500, "subwords kept per text (paper: 500); longer texts are truncated", integer(1))


#: the models ``ModelSettings.architecture`` may name (``ltnb.core.model.MODELS`` holds their classes)
ARCHITECTURES = ("kimcnn",)


@dataclass(frozen=True)
class ModelSettings(_Checked):
    """The Kim CNN of the paper (``ltnb.core.model.KimCNN``): 417-d embeddings, filters 3/4/5 x 127, MLP 117,
    and its initial distributions (see the module doc for the default of ``init_a``)."""

    architecture: str = setting("kimcnn", "the model (ltnb.core.model.MODELS): kimcnn, the paper's Kim CNN",
                                one_of(ARCHITECTURES))
    embed_dim: int = setting(417, "embedding dimension (paper: 417)", integer(1))
    kernel_sizes: tuple[int, ...] = setting((3, 4, 5), "convolution heights (paper: 3, 4, 5)",
                                            {"type": "array", "items": integer(1), "minItems": 1})
    channels: int = setting(127, "filters per height (paper: 127)", integer(1))
    hidden: int = setting(117, "hidden units of the MLP (paper: 117)", integer(1))
    dropout: float = setting(0.285, "dropout on the embeddings (paper: 0.285)", number(0, 1, high_open=True))
    init_a: float = setting(math.sqrt(5), "He-uniform's a: weights U(-b, b), b = sqrt(6 / ((1 + a^2) fan_in)); "
                            "sqrt(5) = 2.236 is PyTorch's layer default (b = 1/sqrt(fan_in)), 0 is He et al. for ReLU",
                            number(0))
    bias_init: str = setting("fan_in", "biases: fan_in = U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's layer "
                             "default), zero = all 0", one_of(BIAS_INITS))


@dataclass(frozen=True)
class TrainSettings(_Checked):
    """Adam (lr 1e-3, L2 1e-5 as Adam weight_decay), batch 32, at most 15 epochs, best epoch kept.

    ``patience=None`` is the paper's literal reading: run all ``max_epochs`` and keep the epoch with
    the best validation accuracy. ``precision="bfloat16"`` runs the forward passes (training and
    evaluation) under bf16 autocast; it changes the numbers, so it enters the run hash, and
    ``"float32"`` is left out of it so the hashes of runs from before the setting do not change.
    (Settings written before it existed said ``bf16: true/false``; ``from_dict`` reads them.)
    """

    max_epochs: int = setting(15, "at most this many epochs per round (paper: 15); the best validation epoch is kept",
                              integer(1))
    patience: int | None = setting(None, "stop after this many epochs without a better validation accuracy "
                                   "(null: run all max_epochs)", integer(1, nullable=True))
    batch_size: int = setting(32, "examples per batch (paper: 32)", integer(1))
    lr: float = setting(1e-3, "Adam's learning rate (paper: 1e-3)", number(0, low_open=True))
    weight_decay: float = setting(1e-5, "L2 weight, as Adam's weight_decay (paper: 1e-5)", number(0))
    max_len: int = setting(500, "truncate sequences to this many subwords when batching (paper: 500)", integer(1))
    precision: str = setting("float32", "float32, or bfloat16: forward passes under bf16 autocast (AMX / AVX-512 BF16 "
                             "CPUs and GPUs; weights, gradients and Adam stay float32)", one_of(PRECISIONS))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainSettings":
        """From recorded settings; the older ``bf16`` flag becomes ``precision``."""
        d = dict(d)
        if "bf16" in d:
            bf16 = d.pop("bf16")
            if not isinstance(bf16, bool):
                raise ValueError(f"TrainSettings.bf16 = {bf16!r}: expected true or false")
            d.setdefault("precision", "bfloat16" if bf16 else "float32")
        return cls(**d)


@dataclass(frozen=True)
class LotterySettings(_Checked):
    """One IMP chain: ``rounds`` pruning rounds of ``prune_fraction`` of each layer's survivors, with
    the model and training settings nested (``model``, ``train``)."""

    rounds: int = setting(20, "pruning rounds after the dense round 0 (sparsity 1 - 0.65^rounds; paper: 20)",
                          integer(0))
    prune_fraction: float = setting(0.35, "fraction of each layer's surviving weights pruned per round (paper: 0.35)",
                                    number(0, 1, low_open=True, high_open=True))
    prune_biases: bool = setting(True, "prune bias vectors too (the paper prunes every layer)", BOOLEAN)
    rewind_steps: int = setting(0, "strategy rewind only: restart from the weights after this many optimizer "
                                "steps of round 0", integer(0))
    theta_0_per: str = setting("seed_domain", "what theta_0 is drawn from: (seed, domain), so a transfer's MASKS-RESET "
                               "carries the source's own values; or (seed) alone, one theta_0 for every domain of a "
                               "seed (the engine before version 4)", one_of(THETA_0_PER))
    train_size: int | None = setting(None, "texts of the domain's training split a chain trains on, half of each class: "
                                     "the first of each class in the data stage's seeded order, so a smaller size is part "
                                     "of a larger one (null: the whole split)", integer(2, nullable=True),
                                     omit_default=True)
    model: ModelSettings = field(default_factory=ModelSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    def __post_init__(self):
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", ModelSettings(**self.model))
        if isinstance(self.train, dict):
            object.__setattr__(self, "train", TrainSettings.from_dict(self.train))
        for name, cls in (("model", ModelSettings), ("train", TrainSettings)):
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"LotterySettings.{name}: expected a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        super().__post_init__()

    @classmethod
    def flat_fields(cls) -> dict[str, tuple[str | None, dataclasses.Field]]:
        """Flat parameter name -> (section or None, field): the names notebooks and plans use."""
        out: dict[str, tuple[str | None, dataclasses.Field]] = {n: (None, f) for n, f in cls.settings_fields().items()}
        for section, sub in (("model", ModelSettings), ("train", TrainSettings)):
            for n, f in sub.settings_fields().items():
                if n in out:
                    raise TypeError(f"setting {n!r} is defined twice ({out[n][0]} and {section})")
                out[n] = (section, f)
        return out

    @classmethod
    def from_params(cls, **params: Any) -> "LotterySettings":
        """Build from flat parameter names (``rounds=5, max_epochs=3, init_a=0, ...``). Names not given
        keep their defaults; unknown names are refused (a typo must not silently run the default)."""
        flat = cls.flat_fields()
        unknown = sorted(set(params) - set(flat))
        if unknown:
            raise ValueError(f"LotterySettings.from_params: unknown parameter(s) {unknown}; allowed: {sorted(flat)}")
        top: dict[str, Any] = {}
        sections: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
        for name, value in params.items():
            section = flat[name][0]
            (top if section is None else sections[section])[name] = value
        return cls(model=ModelSettings(**sections["model"]), train=TrainSettings(**sections["train"]), **top)

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name (the inverse of ``from_params``)."""
        out = {}
        for name, (section, _) in self.flat_fields().items():
            out[name] = getattr(self if section is None else getattr(self, section), name)
        return out

    def describe_settings(self) -> "list[dict]":
        rows = []
        for part in (self, self.model, self.train):
            rows += _Checked.describe_settings(part)
        return rows

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LotterySettings":
        """Inverse of ``to_dict`` (reads settings.json and ticket metadata). Settings recorded before
        ``theta_0_per`` existed drew theta_0 per seed alone."""
        d = dict(d)
        d.setdefault("theta_0_per", "seed")
        return cls(model=ModelSettings(**d.pop("model")), train=TrainSettings.from_dict(d.pop("train")), **d)

    def to_dict(self) -> dict[str, Any]:
        """All settings as plain data (what settings.json and tickets record; hashes read ``hash_dict``);
        ``train.precision`` only when not float32 and ``train_size`` only when set (as before the hash rule and
        the setting, so recorded files compare equal)."""
        d = dataclasses.asdict(self)
        if d["train"].get("precision") == "float32":
            d["train"].pop("precision")
        if d.get("train_size") is None:  # (absent when unset: runs from before the setting keep their hashes)
            d.pop("train_size")
        return d

    @classmethod
    def comparable(cls, d: dict[str, Any]) -> dict[str, Any]:
        """Recorded settings (``to_dict``) with every setting added since filled in with its default,
        so a settings.json written before a setting existed still compares equal to today's record
        of the same run (unreadable ones are returned as they are, and compare unequal)."""
        try:
            return json.loads(json.dumps(cls.from_dict(d).to_dict(), default=str))
        except (TypeError, ValueError, KeyError, AttributeError):
            return d

    def settings_hash(self, **extra: Any) -> str:
        """A 10-character hash of the non-default settings (``hash_dict``) plus ``extra`` (e.g. ``data_key=...``)."""
        return stable_hash({"settings": self.hash_dict(), **extra})


@dataclass(frozen=True)
class DivergenceSettings(_Checked):
    """Figure 1 (``ltnb.text.divergence``): the Jensen-Shannon divergence of the domains' unigram distributions."""

    log_base: float = setting(2.0, "logarithm base of the divergence (2: bits, in [0, 1])", number(1, low_open=True))


@dataclass(frozen=True)
class PhaseSettings(_Checked):
    """The phase-transition statistics (``ltnb.analysis.phase``) and the findings' verdicts (``ltnb.analysis.findings``)."""

    alpha: float = setting(0.05, "significance level of every test (family-wise over rounds, by max-T)",
                           number(0, 1, low_open=True, high_open=True))
    delta: float = setting(0.03, "the findings' match margin, in accuracy (0.03 = 3 points: the smallest difference "
                           "the paper names, its '3-5% dropoff'; ltnb.analysis.findings)",
                           number(0, 1, low_open=True, high_open=True))
    test: str = setting("signflip", "the per-round test: exact sign-flip permutation, or the t-test",
                        one_of(("signflip", "t")))


@dataclass(frozen=True)
class FederatedSettings(_Checked):
    """The federated stage (``ltnb.study.federated``): which of the source chain's tickets, how many clients,
    how many federated rounds. The source chain itself is named by the ``LotterySettings``."""

    ticket_rounds: tuple[int, ...] = setting((3, 5, 7, 10), "IMP rounds of the source's reset chain whose masks are "
                                             "trained (72.5, 88.4, 95.1, 98.7% sparse)",
                                             {"type": "array", "items": integer(1), "minItems": 1, "uniqueItems": True})
    client_domains: tuple[str, ...] | None = setting(None, "the clients' domains (null: every domain of the study but "
                                                     "the source)", {"type": ["array", "null"], "items": NAME,
                                                                     "minItems": 1, "uniqueItems": True})
    clients_per_domain: int = setting(2, "clients each client domain's training data is split into", integer(1))
    fl_rounds: int = setting(10, "federated rounds per run", integer(1))
    local_epochs: int = setting(1, "client epochs per federated round at most (best local validation epoch kept)",
                                integer(1))
    local_patience: int | None = setting(None, "stop a client's local training after this many epochs without a "
                                         "better local validation accuracy (null: every local epoch runs)",
                                         integer(1, nullable=True))
    target_share: float = setting(0.95, "the target accuracy, fixed before the runs: this share of the (fair) dense "
                                  "baseline's final global accuracy, mean over seeds; megabytes to reach it per seed",
                                  number(0, 1, low_open=True), hashed=False)
    audit: bool = setting(False, "replies also carry a fingerprint of the client's shard and what it received",
                          BOOLEAN)


def check_transfer(settings: LotterySettings) -> None:
    """A transfer trains under the source's masks 1..rounds, so it needs at least one round."""
    if settings.rounds < 1:
        raise ValueError(f"rounds = {settings.rounds}: a transfer needs at least 1 round (masks 1..rounds of the source)")


# ------------------------------------------------------------------ the parameters of each stage's cells

#: The parameters that say *which* cell a notebook runs (not settings): one definition for the
#: notebooks' parameters cells, the plan's checks and the library's own argument checks.
CELL_PARAMS: dict[str, dict] = {
    "seed": {"help": "the replicate: theta_0, shuffling, dropout and fresh values derive from it", "schema": integer(0)},
    "domain": {"help": "the domain the chain is trained and pruned in", "schema": NAME},
    "source": {"help": "the domain whose masks are transferred", "schema": NAME},
    "target": {"help": "the domain the masked network is trained on", "schema": NAME},
    "strategies": {"help": "the chains this cell runs", "schema": {"type": "array", "minItems": 1, "uniqueItems": True,
                                                                   "items": {"type": "string"}}},
    "progress": {"help": "progress bars", "schema": BOOLEAN},
    "workers": {"help": "federated clients trained at once (null: the batch's threads, else the CPU count)",
                "schema": integer(1, nullable=True)},
}

def table(*objects):
    """The settings of ``objects`` as a table (setting, value, default, help) for notebooks."""
    import pandas as pd

    rows = []
    for o in objects:
        rows += o.describe_settings()
    t = pd.DataFrame(rows, columns=["setting", "value", "default", "help"])
    t["changed"] = [json.dumps(_plain(v)) != json.dumps(_plain(d)) for v, d in zip(t["value"], t["default"])]
    return t.set_index("setting")


def kwargs(obj) -> dict:
    """A settings object's fields as keyword arguments (for code that takes keywords, e.g. a model's constructor)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def add_arguments(parser: argparse.ArgumentParser, *classes) -> None:
    """Command-line options for every setting of ``classes`` (``--vocab-size``, ``--domains A B``, ...),
    with each field's help, default and check. Parsed values are validated by the dataclass itself."""
    for cls in classes:
        for name, f in cls.settings_fields().items():
            schema = f.metadata["schema"]
            flag = "--" + name.replace("_", "-")
            types = schema.get("type", [])
            types = [types] if isinstance(types, str) else types
            default = f.default
            help_text = f"{f.metadata['help']} (default: {default})"
            if "boolean" in types:
                parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            elif "array" in types:
                parser.add_argument(flag, dest=name, nargs="+", default=default, metavar=name.upper().rstrip("S"),
                                    help=help_text)
            elif "object" in types:
                parser.add_argument(flag, dest=name, nargs="+", default=default, metavar="KEY=VALUE",
                                    type=_key_value, help=help_text)
            else:
                kind = int if "integer" in types else float if "number" in types else str
                parser.add_argument(flag, dest=name, type=_nullable(kind), default=default,
                                    choices=schema.get("enum"), help=help_text)


def from_arguments(args: argparse.Namespace, cls):
    """Build ``cls`` from the options ``add_arguments`` made (mappings given as KEY=VALUE pairs)."""
    values = {}
    for name in cls.settings_fields():
        v = getattr(args, name)
        if isinstance(v, list) and v and isinstance(v[0], tuple):
            v = dict(v)
        values[name] = v
    return cls(**values)


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    k, v = text.split("=", 1)
    return k, v


def _nullable(kind):
    def convert(text: str):
        if text.lower() in ("null", "none"):
            return None
        return kind(text)
    convert.__name__ = kind.__name__
    return convert


def derive_seed(*parts: Any) -> int:
    """A 60-bit seed from any JSON-able parts, e.g. ``derive_seed(seed, round, "train")``."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return int(hashlib.sha256(blob).hexdigest()[:15], 16)
