"""The strategies of a study, each defined once: a ``Strategy`` says everything every consumer needs.

A strategy is a way to set up one chain (obtain) or one transfer run (transfer): which masks each
round trains, which initial values the survivors start from, what per-round state it keeps, and
how its curve is named and coloured. Every consumer reads this table instead of naming strategies:

* the settings check and the plan (``config.OBTAIN_STRATEGIES`` ..., ``stages.STAGES[...].strategies``,
  ``plan``'s "list reset too" rule from ``masks == "reset"``),
* the engine (``ltnb.core.strategies`` maps ``values`` and ``hook`` to functions; ``ltnb.core.lottery``
  runs every strategy through the same per-round body),
* the labels and colours of tables and charts (``ltnb.base.labels``), the explorer's order, the estimate and
  the cell records (``trains_round0``, ``default``).

The table is torch-free (``ltnb.base``), so the analysis reads it without the engine.

Fields:

* ``masks``: whose masks a round trains. ``"own"``: the chain prunes its own trained weights (IMP);
  ``"reset"``: the *reset* chain's mask of the same round (obtain: of the chain's own domain and seed,
  which must have run first; transfer: of the source domain, the transferred ticket).
* ``positions``: ``"ticket"``: those masks as they are; ``"random"``: for each tensor the same number of
  survivors as those masks, at uniformly random positions (``ltnb.core.strategies.random_positions``).
* ``values``: the name of the value function in ``ltnb.core.strategies.VALUES`` (``theta_0``: the
  chain's theta_0, in a transfer the source's; ``fresh``: a fresh draw from the initial distributions;
  ``shuffled``, ``rescaled``, ``rewound``).
* ``draw``: whose fresh draw ``fresh`` and ``rescaled`` use (``derive_seed(seed, round, draw, "init")``);
  sharing a draw makes two strategies differ only in what else they do (reinit vs random: the mask).
* ``hook``: the name of a round hook in ``ltnb.core.strategies.HOOKS`` (per-chain state: ``rewind``
  captures the weights after ``rewind_steps`` steps of round 0), or None.
* ``settings``: the ``LotterySettings`` fields only this strategy reads; other strategies' run hashes
  leave them out (``ltnb.core.lottery.run_hash``).
* ``trains_round0``: the chain trains its dense round 0 itself (rewind watches it train) instead of
  copying a sibling chain's.
* ``default``: run by a cell that names no strategies.
* ``federated``: a transfer strategy the federated stage may train too (``ltnb.study.federated`` sets its
  clients' start values with it, under the ticket's masks as they are).

Adding a strategy is one ``Strategy`` here (and, for a new kind of values or state, one function in
``ltnb.core.strategies``), plus its test: ``docs/extending.md``.
"""
from __future__ import annotations

from dataclasses import dataclass

MASKS = ("own", "reset")
POSITIONS = ("ticket", "random")
STAGES = ("obtain", "transfer")


@dataclass(frozen=True)
class Strategy:
    """One strategy of one stage (see the module doc)."""

    name: str
    stage: str
    label: str
    color: str
    about: str
    masks: str = "own"
    positions: str = "ticket"
    values: str = "theta_0"
    draw: str | None = None
    hook: str | None = None
    settings: tuple[str, ...] = ()
    trains_round0: bool = False
    default: bool = False
    federated: bool = False

    def __post_init__(self):
        if self.stage not in STAGES or self.masks not in MASKS or self.positions not in POSITIONS:
            raise ValueError(f"Strategy {self.name!r}: stage {self.stage!r}, masks {self.masks!r} or positions "
                             f"{self.positions!r} not one of {STAGES}, {MASKS}, {POSITIONS}")
        if self.stage == "transfer" and self.masks != "reset":
            raise ValueError(f"Strategy {self.name!r}: a transfer trains the source's (reset chain's) masks")
        if self.federated and (self.stage != "transfer" or self.positions != "ticket"):
            raise ValueError(f"Strategy {self.name!r}: the federated stage trains transfer strategies on the ticket's masks")
        if self.draw is None:
            object.__setattr__(self, "draw", self.name)

    @property
    def reads_reset_chain(self) -> bool:
        """An obtain chain that needs the reset chain of its domain and seed to have run first."""
        return self.stage == "obtain" and self.masks == "reset"


STRATEGIES: tuple[Strategy, ...] = (
    # ---- obtain: one IMP chain per (domain, seed, strategy)
    Strategy("reset", "obtain", "TICKET-RESET", "#1f77b4", "theta_0 under the chain's own mask (Frankle & Carbin)",
             default=True),
    Strategy("random", "obtain", "TICKET-RANDOM", "#d62728", "fresh values under the chain's own mask (Liu et al.)",
             values="fresh", default=True),
    Strategy("reinit", "obtain", "TICKET-REINIT", "#9467bd", "the reset chain's mask, random's fresh values",
             masks="reset", values="fresh", draw="random", default=True),
    Strategy("shuffle", "obtain", "TICKET-SHUFFLE", "#17becf",
             "the reset chain's mask, theta_0's survivors permuted within each tensor", masks="reset", values="shuffled"),
    Strategy("rescaled", "obtain", "TICKET-RESCALED", "#bcbd22",
             "the reset chain's mask, random's fresh values scaled to the RMS of theta_0's survivors",
             masks="reset", values="rescaled", draw="random"),
    Strategy("rewind", "obtain", "TICKET-REWIND", "#8c564b",
             "the weights after rewind_steps steps of round 0 under the chain's own mask (Frankle et al. 2019)",
             values="rewound", hook="rewind", settings=("rewind_steps",), trains_round0=True),
    Strategy("randmask-reset", "obtain", "RANDMASK-RESET", "#e7298a",
             "the reset chain's per-tensor counts at random positions, theta_0's values",
             masks="reset", positions="random"),
    Strategy("randmask-random", "obtain", "RANDMASK-RANDOM", "#a6761d",
             "the reset chain's per-tensor counts at random positions, random's fresh values",
             masks="reset", positions="random", values="fresh", draw="random"),
    # ---- transfer: train the target under the source's reset chain's mask of each round
    Strategy("masks-reset", "transfer", "MASKS-RESET", "#2ca02c", "the source's mask, the source's theta_0",
             masks="reset", default=True, federated=True),
    Strategy("masks-random", "transfer", "MASKS-RANDOM", "#ff7f0e", "the source's mask, fresh values",
             masks="reset", values="fresh", default=True, federated=True),
    Strategy("randmask-reset", "transfer", "RANDMASK-RESET", "#e7298a",
             "the source mask's per-tensor counts at random positions, the source's theta_0",
             masks="reset", positions="random"),
    Strategy("randmask-random", "transfer", "RANDMASK-RANDOM", "#a6761d",
             "the source mask's per-tensor counts at random positions, masks-random's fresh values",
             masks="reset", positions="random", values="fresh", draw="masks-random"),
)

BY_STAGE: dict[str, dict[str, Strategy]] = {stage: {s.name: s for s in STRATEGIES if s.stage == stage}
                                            for stage in STAGES}
assert sum(map(len, BY_STAGE.values())) == len(STRATEGIES), "a strategy is defined twice in one stage"


def get(stage: str, name: str) -> Strategy:
    """The strategy ``name`` of ``stage``; a ValueError naming the allowed ones otherwise."""
    try:
        return BY_STAGE[stage][name]
    except KeyError:
        allowed = sorted(BY_STAGE.get(stage, {}))
        raise ValueError(f"strategy = {name!r}: expected one of {allowed} for {stage}") from None


def names(stage: str) -> tuple[str, ...]:
    """The strategies of a stage, in the table's order."""
    return tuple(BY_STAGE[stage])


def defaults(stage: str) -> tuple[str, ...]:
    """What a cell of ``stage`` runs when it names no strategies."""
    return tuple(s.name for s in BY_STAGE[stage].values() if s.default)


def federated() -> tuple[str, ...]:
    """The transfer strategies the federated stage may train."""
    return tuple(s.name for s in BY_STAGE["transfer"].values() if s.federated)


def _one_each(pairs, what: str) -> dict[str, str]:
    """key -> value from (key, value) pairs, refusing a key with two values."""
    out: dict[str, str] = {}
    for k, v in pairs:
        if out.setdefault(k, v) != v:
            raise ValueError(f"{what} {k!r} has two values ({out[k]}, {v})")
    return out


def labels() -> dict[str, str]:
    """Strategy name -> label (a name used in both stages has one label there)."""
    return _one_each(((s.name, s.label) for s in STRATEGIES), "the label of strategy")


def colors() -> dict[str, str]:
    """Label -> colour."""
    return _one_each(((s.label, s.color) for s in STRATEGIES), "the colour of label")


def order() -> tuple[str, ...]:
    """Every strategy name once, obtain's first (tables and the explorer list them in this order)."""
    return tuple(dict.fromkeys(s.name for s in STRATEGIES))
