"""Where the surviving weights of a round start from: one small function per strategy.

Each strategy maps ``(mask, start)`` to the initial values of the round's training, with pruned
entries exactly 0. ``Start`` carries what a strategy may use; the training loop never changes.

* ``reset``  (TICKET-RESET, Frankle & Carbin): theta_0 under the mask.
* ``random`` (TICKET-RANDOM, Liu et al.): fresh values from the same initial distributions
  (``ltnb.model.init_parameters``), drawn with a seed derived from (seed, round, strategy), so a
  resumed chain draws the same values.
* ``masks-reset``: transfer; the *source* chain's theta_0 under the source mask (the lottery module
  passes the source's theta_0 as ``start.theta_0``).
* ``masks-random``: transfer; fresh values under the source mask.
* ``rewind`` (beyond the paper; Frankle et al. 2019 "late resetting"): the values after
  ``rewind_steps`` optimizer steps of round 0's dense training, under the mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from .config import ModelSettings, derive_seed
from .model import initial_state
from .pruning import Mask


@dataclass(frozen=True)
class Start:
    """What a strategy may draw its initial values from."""

    theta_0: Mapping[str, torch.Tensor]
    vocab_size: int
    model: ModelSettings
    seed: int
    round: int
    strategy: str
    rewound: Mapping[str, torch.Tensor] | None = None


def reset(mask: Mask, start: Start) -> dict[str, torch.Tensor]:
    return Mask(mask).apply(start.theta_0)


def random(mask: Mask, start: Start) -> dict[str, torch.Tensor]:
    fresh = initial_state(start.vocab_size, start.model, derive_seed(start.seed, start.round, start.strategy, "init"))
    return Mask(mask).apply(fresh)


def rewind(mask: Mask, start: Start) -> dict[str, torch.Tensor]:
    if start.rewound is None:
        raise ValueError("strategy 'rewind': no rewound weights (the values after rewind_steps steps of round 0)")
    return Mask(mask).apply(start.rewound)


OBTAIN: dict[str, Callable[[Mask, Start], dict[str, torch.Tensor]]] = {"reset": reset, "random": random, "rewind": rewind}
TRANSFER: dict[str, Callable[[Mask, Start], dict[str, torch.Tensor]]] = {"masks-reset": reset, "masks-random": random}
