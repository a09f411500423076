"""Where the surviving weights of a round start from: one small function per strategy.

Each strategy maps ``(mask, start)`` to the initial values of the round's training, with pruned
entries exactly 0. ``Start`` carries what a strategy may use; the training loop never names a
strategy: it reads the strategy's definition (``ltnb.base.registry``) and calls its hook
(``RoundHook``) at fixed points.

* ``reset``  (TICKET-RESET, Frankle & Carbin): theta_0 under the mask.
* ``random`` (TICKET-RANDOM, Liu et al.): fresh values from the same initial distributions
  (``ltnb.core.model.init_parameters``), drawn with a seed derived from (seed, round, strategy), so a
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
  ``rewind_steps`` optimizer steps of round 0's dense training, under the mask (its ``RewindHook``
  captures them while round 0 trains and keeps them in ``theta_rewind.safetensors``).
* ``randmask-reset`` / ``randmask-random`` (obtain and transfer; a control beyond the paper): the
  ticket's per-tensor counts (obtain: the reset chain's mask of the round; transfer: the source's) at
  uniformly random positions (``random_positions``), with theta_0's values (transfer: the source's
  theta_0) or the fresh values ``random`` (transfer: ``masks-random``) draws. ``reset - randmask-reset``
  is the effect of *which* positions the ticket keeps, at the same values and per-layer sparsity.

Which strategy uses which piece is its definition in ``ltnb.base.registry`` (``masks``, ``positions``,
``values``, ``draw``, ``hook``); this module holds the pieces: ``VALUES`` (name -> value function),
``HOOKS`` (name -> per-chain state), ``positions`` (the mask a round trains).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch

from ltnb.base import registry
from ltnb.base.config import OBTAIN_STRATEGIES, RESET_MASK_STRATEGIES, TRANSFER_STRATEGIES, ModelSettings, derive_seed
from ltnb.base.paths import REWOUND
from ltnb.core import tickets
from ltnb.core.model import initial_state
from ltnb.core.pruning import Mask


@dataclass(frozen=True)
class Start:
    """What a strategy may draw its initial values from. ``draw``: whose fresh draw ``fresh_values``
    takes (the definition's ``draw``; None: the strategy's own)."""

    theta_0: Mapping[str, torch.Tensor]
    vocab_size: int
    model: ModelSettings
    seed: int
    round: int
    strategy: str
    rewound: Mapping[str, torch.Tensor] | None = None
    draw: str | None = None


def reset(mask: Mask, start: Start) -> dict[str, torch.Tensor]:
    return Mask(mask).apply(start.theta_0)


def fresh_values(start: Start, strategy: str | None = None) -> dict[str, torch.Tensor]:
    """The fresh initial values of (seed, round, draw): the same distributions as theta_0."""
    return initial_state(start.vocab_size, start.model,
                         derive_seed(start.seed, start.round, strategy or start.draw or start.strategy, "init"))


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
    fresh = Mask(mask).apply(fresh_values(start, start.draw or "random"))
    out = {}
    for name, m in Mask(mask).items():
        target, have = survivor_rms(start.theta_0[name], m), survivor_rms(fresh[name], m)
        out[name] = fresh[name] * (target / have) if have > 0 else fresh[name]
    return out


def rewind(mask: Mask, start: Start) -> dict[str, torch.Tensor]:
    if start.rewound is None:
        raise ValueError("strategy 'rewind': no rewound weights (the values after rewind_steps steps of round 0)")
    return Mask(mask).apply(start.rewound)


def random_positions(ticket: Mapping[str, torch.Tensor], prev: Mapping[str, torch.Tensor] | None, *, seed: int,
                     round: int) -> Mask:
    """For each tensor, as many survivors as ``ticket`` keeps, at uniformly random positions among the
    survivors of ``prev`` (the chain's own mask of the round before; None: every entry), drawn with a
    generator seeded by ``derive_seed(seed, round, "randmask", name)``.

    Drawing among the previous round's survivors keeps the chain's masks nested (a pruned weight never
    comes back, which ``lottery._verify_finished`` checks), and a uniformly random subset of a uniformly
    random subset is a uniformly random subset: at every round the positions are uniform over the
    tensor. The same (seed, round) draws the same positions for every strategy (randmask-reset and
    randmask-random differ only in values) and for a resumed chain. A tensor the ticket keeps whole (a
    bias with ``prune_biases`` off) stays whole; no other structure is imposed (the magnitude step
    prunes every tensor on its own, the embedding entry by entry, ``ltnb.core.pruning``)."""
    out = {}
    for name, m in ticket.items():
        k = int(m.sum())
        alive = (prev[name].reshape(-1) if prev is not None else torch.ones(m.numel(), dtype=torch.bool)).nonzero().squeeze(1)
        if k > alive.numel():
            raise ValueError(f"random_positions: {name}: the ticket keeps {k} entries, the previous mask only {alive.numel()}")
        g = torch.Generator().manual_seed(derive_seed(seed, round, "randmask", name))
        keep = alive[torch.randperm(alive.numel(), generator=g)[:k]]
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[keep] = True
        out[name] = flat.reshape(m.shape)
    return Mask(out)


def positions(definition: registry.Strategy, ticket: Mask, prev: Mask | None, *, seed: int, round: int) -> Mask:
    """The mask a round of ``definition`` trains: ``ticket`` (its own pruning, or the reset chain's
    mask of the round) as it is, or (``positions == "random"``) its counts at random positions."""
    if definition.positions == "random":
        return random_positions(ticket, prev, seed=seed, round=round)
    return ticket


#: the value functions a definition's ``values`` names
VALUES: dict[str, Callable[[Mask, Start], dict[str, torch.Tensor]]] = {
    "theta_0": reset, "fresh": random, "shuffled": shuffle, "rescaled": rescaled, "rewound": rewind}


def initial_values(definition: registry.Strategy, mask: Mask, start: Start) -> dict[str, torch.Tensor]:
    """The survivors' initial values of a round of ``definition`` (its ``draw`` filled in)."""
    return VALUES[definition.values](mask, dataclasses.replace(start, draw=start.draw or definition.draw))


# ------------------------------------------------------------------------ per-chain state (hooks)

class RoundHook:
    """Per-chain state a strategy keeps (none by default). The training loop calls, for every chain:
    ``check`` before anything trains, ``resume`` when it opens the chain, ``watch_round0`` and
    ``after_round0`` around the dense round 0 when the chain trains it, and ``start_fields`` for each
    later round's ``Start``."""

    def __init__(self, settings):
        self.settings = settings

    def check(self, train_batches: int) -> None:
        """Refuse settings this strategy cannot run with (``train_batches``: batches per epoch)."""

    def resume(self, run: Path, start_round: int) -> None:
        """Read the state a chain resumed at ``start_round`` kept."""

    def watch_round0(self, theta_0: Mapping[str, torch.Tensor]) -> Callable | None:
        """An ``on_step(step, model)`` callback for round 0's training, or None."""
        return None

    def after_round0(self, run: Path, result) -> None:
        """Keep what ``watch_round0`` saw."""

    def start_fields(self) -> dict:
        """Fields of each later round's ``Start``."""
        return {}


class RewindHook(RoundHook):
    """``rewind``: the weights after ``rewind_steps`` optimizer steps of round 0 (0: theta_0), captured
    while round 0 trains and kept in the chain's ``theta_rewind.safetensors``."""

    rewound: Mapping[str, torch.Tensor] | None = None

    def check(self, train_batches: int) -> None:
        k, most = self.settings.rewind_steps, self.settings.train.max_epochs * train_batches
        if k > most:
            raise ValueError(f"rewind_steps = {k}: round 0 has at most {most} optimizer steps "
                             f"({self.settings.train.max_epochs} epochs x {train_batches} batches)")

    def resume(self, run: Path, start_round: int) -> None:
        if start_round > 0:
            self.rewound = tickets.load_state(run / REWOUND)[0]

    def watch_round0(self, theta_0):
        k, self._captured = self.settings.rewind_steps, {}
        if k == 0:
            self._captured["w"] = {n: t.clone() for n, t in theta_0.items()}

        def on_step(step, m):
            if step == k:
                self._captured["w"] = {n: p.detach().cpu().clone() for n, p in m.named_parameters()}

        return on_step

    def after_round0(self, run: Path, result) -> None:
        if "w" not in self._captured:
            raise ValueError(f"rewind_steps = {self.settings.rewind_steps}: round 0 ran only {result.steps} steps")
        self.rewound = self._captured["w"]
        tickets.save_state(run / REWOUND, self.rewound, {"what": "rewound", "steps": str(self.settings.rewind_steps)})

    def start_fields(self) -> dict:
        return {"rewound": self.rewound}


#: the hooks a definition's ``hook`` names
HOOKS: dict[str, type[RoundHook]] = {"rewind": RewindHook}


def hook(definition: registry.Strategy, settings) -> RoundHook:
    """A fresh per-chain hook of ``definition`` for a chain with ``settings``."""
    return HOOKS[definition.hook](settings) if definition.hook else RoundHook(settings)


def _bound(definition: registry.Strategy) -> Callable[[Mask, Start], dict[str, torch.Tensor]]:
    def values(mask: Mask, start: Start) -> dict[str, torch.Tensor]:
        return initial_values(definition, mask, start)

    values.__name__ = values.__qualname__ = definition.values
    return values


#: name -> value function (the definition's ``values`` with its ``draw``), per stage
OBTAIN: dict[str, Callable[[Mask, Start], dict[str, torch.Tensor]]] = {
    s.name: _bound(s) for s in registry.BY_STAGE["obtain"].values()}
TRANSFER: dict[str, Callable[[Mask, Start], dict[str, torch.Tensor]]] = {
    s.name: _bound(s) for s in registry.BY_STAGE["transfer"].values()}
assert tuple(OBTAIN) == OBTAIN_STRATEGIES and tuple(TRANSFER) == TRANSFER_STRATEGIES  # one list of names
assert all(s.values in VALUES and (s.hook is None or s.hook in HOOKS) for s in registry.STRATEGIES), \
    "a strategy names a value function or hook this module does not have"

#: obtain strategies whose mask at round r is the reset chain's mask of round r (not their own pruning)
USES_RESET_MASKS = RESET_MASK_STRATEGIES
