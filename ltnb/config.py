"""Settings of the model, the training and the IMP chain: small frozen dataclasses.

A run's folder is named by a hash of its settings (OpenLTH's idea), so a rerun finds finished work
and changed settings never overwrite old results. Every field is checked in ``__post_init__`` and a
bad value is refused with the field's name and the allowed values.

``derive_seed`` turns (seed, round, purpose) into an independent integer seed: every random draw of a
chain (theta_0, the shuffling and dropout of each round, fresh random values) is derived from it, so a
chain resumed at round r draws exactly what an uninterrupted chain draws.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ._io import stable_hash


def derive_seed(*parts: Any) -> int:
    """A 60-bit seed from any JSON-able parts, e.g. ``derive_seed(seed, round, "train")``."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return int(hashlib.sha256(blob).hexdigest()[:15], 16)


def _int(owner: str, name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}.{name} = {value!r}: expected an integer >= {minimum}")


def _float(owner: str, name: str, value: Any, *, low: float, high: float, low_open=False, high_open=False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{owner}.{name} = {value!r}: expected a number in {lo}{low}, {high}{hi}")


@dataclass(frozen=True)
class ModelSettings:
    """The Kim CNN of the paper (``ltnb.model.KimCNN``): 417-d embeddings, filters 3/4/5 x 127, MLP 117."""

    embed_dim: int = 417
    kernel_sizes: tuple[int, ...] = (3, 4, 5)
    channels: int = 127
    hidden: int = 117
    dropout: float = 0.285

    def __post_init__(self):
        o = "ModelSettings"
        for name in ("embed_dim", "channels", "hidden"):
            _int(o, name, getattr(self, name), minimum=1)
        ks = self.kernel_sizes
        if not isinstance(ks, (list, tuple)) or not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
            raise ValueError(f"{o}.kernel_sizes = {ks!r}: expected a non-empty list of positive integers, e.g. (3, 4, 5)")
        object.__setattr__(self, "kernel_sizes", tuple(ks))
        _float(o, "dropout", self.dropout, low=0.0, high=1.0, high_open=True)


@dataclass(frozen=True)
class TrainSettings:
    """Adam (lr 1e-3, L2 1e-5 as Adam weight_decay), batch 32, at most 15 epochs, best epoch kept.

    ``patience=None`` is the paper's literal reading: run all ``max_epochs`` and keep the epoch with
    the best validation accuracy. An integer stops after that many epochs without improvement.
    ``max_len`` truncates every sequence at batching time (the paper: 500 subwords).
    ``bf16=True`` runs forward and loss under ``torch.autocast(dtype=torch.bfloat16)`` (fast on
    GPUs with bf16 tensor cores; weights and Adam stay float32). It changes the numbers, so it is
    part of the run hash when on; off (the default) it is left out of ``LotterySettings.to_dict``
    so the hashes of existing runs do not change.
    """

    max_epochs: int = 15
    patience: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-5
    max_len: int = 500
    bf16: bool = False

    def __post_init__(self):
        o = "TrainSettings"
        _int(o, "max_epochs", self.max_epochs, minimum=1)
        if self.patience is not None:
            _int(o, "patience", self.patience, minimum=1)
        _int(o, "batch_size", self.batch_size, minimum=1)
        _float(o, "lr", self.lr, low=0.0, high=float("inf"), low_open=True)
        _float(o, "weight_decay", self.weight_decay, low=0.0, high=float("inf"))
        _int(o, "max_len", self.max_len, minimum=1)
        if not isinstance(self.bf16, bool):
            raise ValueError(f"{o}.bf16 = {self.bf16!r}: expected True or False")


@dataclass(frozen=True)
class LotterySettings:
    """One IMP chain: ``rounds`` pruning rounds of ``prune_fraction`` of each layer's survivors.

    ``prune_biases=False`` leaves bias vectors dense (the paper prunes every layer). ``rewind_steps``
    is used by the ``rewind`` strategy only (values after k optimizer steps of round 0).
    """

    rounds: int = 20
    prune_fraction: float = 0.35
    prune_biases: bool = True
    rewind_steps: int = 0
    model: ModelSettings = field(default_factory=ModelSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    def __post_init__(self):
        o = "LotterySettings"
        _int(o, "rounds", self.rounds, minimum=0)
        _float(o, "prune_fraction", self.prune_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
        if not isinstance(self.prune_biases, bool):
            raise ValueError(f"{o}.prune_biases = {self.prune_biases!r}: expected True or False")
        _int(o, "rewind_steps", self.rewind_steps, minimum=0)
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", ModelSettings(**self.model))
        if isinstance(self.train, dict):
            object.__setattr__(self, "train", TrainSettings(**self.train))
        if not isinstance(self.model, ModelSettings):
            raise ValueError(f"{o}.model: expected a ModelSettings, got {type(self.model).__name__}")
        if not isinstance(self.train, TrainSettings):
            raise ValueError(f"{o}.train: expected a TrainSettings, got {type(self.train).__name__}")

    # flat notebook parameter name -> (section, field)
    PARAMS = {
        "rounds": (None, "rounds"),
        "prune_fraction": (None, "prune_fraction"),
        "prune_biases": (None, "prune_biases"),
        "rewind_steps": (None, "rewind_steps"),
        "max_epochs": ("train", "max_epochs"),
        "patience": ("train", "patience"),
        "batch_size": ("train", "batch_size"),
        "lr": ("train", "lr"),
        "weight_decay": ("train", "weight_decay"),
        "max_len": ("train", "max_len"),
        "bf16": ("train", "bf16"),
        "embed_dim": ("model", "embed_dim"),
        "kernel_sizes": ("model", "kernel_sizes"),
        "channels": ("model", "channels"),
        "hidden": ("model", "hidden"),
        "dropout": ("model", "dropout"),
    }

    @classmethod
    def from_params(cls, **params: Any) -> "LotterySettings":
        """Build from the flat parameter names of notebooks 03/04 (``rounds=5, max_epochs=3, ...``).

        Names not given keep their defaults; unknown names are refused (a typo must not silently run
        the default).
        """
        unknown = sorted(set(params) - set(cls.PARAMS))
        if unknown:
            raise ValueError(f"LotterySettings.from_params: unknown parameter(s) {unknown}; allowed: {sorted(cls.PARAMS)}")
        top: dict[str, Any] = {}
        sections: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
        for name, value in params.items():
            section, fname = cls.PARAMS[name]
            (top if section is None else sections[section])[fname] = value
        return cls(model=ModelSettings(**sections["model"]), train=TrainSettings(**sections["train"]), **top)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LotterySettings":
        """Inverse of ``to_dict`` (reads settings.json and ticket metadata)."""
        d = dict(d)
        return cls(model=ModelSettings(**d.pop("model")), train=TrainSettings(**d.pop("train")), **d)

    def to_dict(self) -> dict[str, Any]:
        """All settings as plain data; ``train.bf16`` only when on (older runs' hashes stay valid)."""
        d = dataclasses.asdict(self)
        if not d["train"].get("bf16"):
            d["train"].pop("bf16", None)
        return d

    def settings_hash(self, **extra: Any) -> str:
        """A 10-character hash of every setting plus ``extra`` (e.g. ``data_key=...``)."""
        return stable_hash({"settings": self.to_dict(), **extra})
