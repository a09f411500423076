"""How much memory a training cell needs at its peak, and how much this machine has.

The plan refuses (``ltnb.study.plan``, at ``--dry-run``) a cell that cannot fit the machine, saying by how
much, instead of letting a kernel be killed by the OS (or a swap storm) an hour into a batch:
``embed_dim: 1000000000000`` is an integer >= 1, but no machine can hold its embedding.

The estimate is an upper bound from the model's parameter count ``P`` (asked of the model itself,
``ltnb.core.model.parameter_shapes``, on the meta device: nothing is allocated) and one batch's activations:

* ``FLOAT_COPIES x 4 P`` bytes: the parameters, their gradients, Adam's two moments, theta_0, the best
  epoch's copy, the trained state, the previous round's trained state, the round's starting values,
  fresh random values, the ticket being written, the masks (float and bool);
* activations of one training batch, ``batch_size x L x (3 E + 4 C K) x 4`` bytes (the embedded batch,
  its dropout mask and transposed copy; each convolution's output, ReLU, and their gradients), or of
  one evaluation batch (at most ``ltnb.core.train.EVAL_TOKENS`` tokens), whichever is larger, ``L`` the longest
  sequence (``max_len`` of training and of the vocabulary, whichever is smaller);
* ``RUNTIME_BYTES`` for the process itself (Python, torch, pandas, the data).

Measured (AMD EPYC, 2026-12-04): one obtain round of the demo's model (vocab 8,000, bfloat16, batches of
texts 200-500 subwords long) peaks at 1.29 GB of resident memory; this estimate says 1.43 GB.
"""
from __future__ import annotations

import math
import os

from ltnb.base.config import LotterySettings

FLOAT_COPIES = 12
RUNTIME_BYTES = 2**30


def machine_bytes() -> int:
    """The memory this process may use: physical memory, or the cgroup's limit if that is lower."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(f, encoding="ascii").read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def parameter_count(settings: LotterySettings, vocab_size: int) -> int:
    """Parameters of the model these settings build (the model's own shapes, nothing allocated)."""
    from ltnb.core.model import parameter_shapes

    return sum(math.prod(s) for s in parameter_shapes(vocab_size, settings.model).values())


def peak_bytes(settings: LotterySettings, vocab_size: int, vocab_max_len: int) -> int:
    """An upper estimate of a training cell's peak memory (module doc)."""
    from ltnb.core.train import EVAL_TOKENS  # torch is imported for the parameter count anyway

    m, t = settings.model, settings.train
    length = min(t.max_len, vocab_max_len)
    per_token = 4 * (3 * m.embed_dim + 4 * m.channels * len(m.kernel_sizes))
    activations = per_token * max(t.batch_size * length, EVAL_TOKENS)
    return RUNTIME_BYTES + FLOAT_COPIES * 4 * parameter_count(settings, vocab_size) + activations


def fmt_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n / 1e3:,.0f} KB"
