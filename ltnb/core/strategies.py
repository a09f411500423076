"""Where the surviving weights of a round start from: one small function per strategy.

Each strategy maps ``(mask, start)`` to the initial values of the round's training, with pruned
entries exactly 0. ``Start`` carries what a strategy may use; the training loop never changes.

* ``reset``  (TICKET-RESET, Frankle & Carbin): theta_0 under the mask.
* ``random`` (TICKET-RANDOM, Liu et al.): fresh values from the same initial distributions
  (``ltnb.model.init_parameters``), drawn with a seed derived from (seed, round, strategy), so a
  resumed chain draws the same values.
* ``reinit`` (the control of Frankle & Carbin 2019): the *reset* chain's own mask of the round
  (the lottery module passes it), with fresh values: the very draw ``random`` makes for that seed
  and round. So ``reset - reinit`` differ only in the initial values (same mask), and
  ``reinit - random`` only in the mask (its pruning history), with the same fresh values.
* ``shuffle`` (a control beyond the paper; Zhou et al. 2019, "Deconstructing Lottery Tickets"): the
  reset chain's mask of the round, with theta_0's surviving values permuted among the survivors of
  each tensor (a seeded permutation per tensor and round). Same values, magnitudes and signs as a
  multiset per tensor as ``reset``, in the wrong places: ``reset - shuffle`` is the effect of *which*
  weight got which initial value.
* ``rescaled`` (a control beyond the paper): the reset chain's mask with ``reinit``'s fresh values,
  each tensor multiplied so that the RMS of its survivors equals the RMS of theta_0's survivors
  (``reset``'s). Same mask and the same scale as ``reset``, fresh values: ``shuffle - rescaled`` is the
  effect of theta_0's magnitude *distribution* beyond its scale, ``rescaled - reinit`` the effect of the
  scale alone (pruning by magnitude at initialisation keeps the largest entries of theta_0, so reset's
  survivors are larger than a fresh draw).
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

from ltnb.base.config import OBTAIN_STRATEGIES, RESET_MASK_STRATEGIES, TRANSFER_STRATEGIES, ModelSettings, derive_seed
from ltnb.core.model import initial_state
from ltnb.core.pruning import Mask


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


def fresh_values(start: Start, strategy: str | None = None) -> dict[str, torch.Tensor]:
    """The fresh initial values of (seed, round, strategy): the same distributions as theta_0."""
    return initial_state(start.vocab_size, start.model,
                         derive_seed(start.seed, start.round, strategy or start.strategy, "init"))


def random(mask: Mask, start: Start) -> dict[str, torch.Tensor]:
    return Mask(mask).apply(fresh_values(start))


def reinit(mask: Mask, start: Start) -> dict[str, torch.Tensor]:
    """Fresh values under the reset chain's mask: ``random``'s own draw for this seed and round."""
    return Mask(mask).apply(fresh_values(start, "random"))


def shuffle(mask: Mask, start: Start) -> dict[str, torch.Tensor]:
    """theta_0's survivors of each tensor, permuted among that tensor's surviving positions."""
    out = {}
    for name, m in Mask(mask).items():
        t = start.theta_0[name]
        flat_mask = m.reshape(-1)
        where = flat_mask.nonzero().squeeze(1)
        values = t.reshape(-1)[where]
        g = torch.Generator().manual_seed(derive_seed(start.seed, start.round, "shuffle", name))
        new = torch.zeros_like(t).reshape(-1)
        new[where] = values[torch.randperm(len(values), generator=g)]
        out[name] = new.reshape(t.shape)
    return out


def survivor_rms(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Root mean square of ``values`` over the entries ``mask`` keeps (0 when none survives)."""
    kept = values[mask.bool()].double()
    return float(kept.pow(2).mean().sqrt()) if kept.numel() else 0.0


def rescaled(mask: Mask, start: Start) -> dict[str, torch.Tensor]:
    """``reinit``'s fresh values, each tensor scaled to the RMS of theta_0's survivors under the mask."""
    fresh = Mask(mask).apply(fresh_values(start, "random"))
    out = {}
    for name, m in Mask(mask).items():
        target, have = survivor_rms(start.theta_0[name], m), survivor_rms(fresh[name], m)
        out[name] = fresh[name] * (target / have) if have > 0 else fresh[name]
    return out


def rewind(mask: Mask, start: Start) -> dict[str, torch.Tensor]:
    if start.rewound is None:
        raise ValueError("strategy 'rewind': no rewound weights (the values after rewind_steps steps of round 0)")
    return Mask(mask).apply(start.rewound)


OBTAIN: dict[str, Callable[[Mask, Start], dict[str, torch.Tensor]]] = {
    "reset": reset, "random": random, "reinit": reinit, "shuffle": shuffle, "rescaled": rescaled, "rewind": rewind}
TRANSFER: dict[str, Callable[[Mask, Start], dict[str, torch.Tensor]]] = {"masks-reset": reset, "masks-random": random}
assert tuple(OBTAIN) == OBTAIN_STRATEGIES and tuple(TRANSFER) == TRANSFER_STRATEGIES  # one list of names

#: obtain strategies whose mask at round r is the reset chain's mask of round r (not their own pruning)
USES_RESET_MASKS = RESET_MASK_STRATEGIES
