"""A plain IMP chain written the way most public lottery-ticket code is (the baseline of bench.py).

* ``torch.nn.utils.prune.l1_unstructured(module, name, amount=p)`` on every layer each round
  (embedding, conv and linear weights and biases: the paper prunes every layer), which keeps the
  mask as a forward pre-hook (``weight = weight_orig * weight_mask`` on every forward pass);
* every batch padded to the corpus's maximum length, capped at 500 (no per-batch lengths);
* ``torch.optim.Adam`` with its defaults (no fused kernel) and the paper's lr / L2;
* a fixed number of epochs (no early stopping, no best-epoch selection), one process;
* TICKET-RESET: survivors restart from theta_0, drawn as ltnb draws it with ``theta_0_per: seed`` (one theta_0
  per seed, ``derive_seed(seed, "theta_0")``; ltnb's default draws one per (seed, domain)).

It is deliberately not optimised; it is what ltnb's speed is measured against.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from ltnb.base.config import LotterySettings, derive_seed
from ltnb.core.model import initial_state


class RefCNN(nn.Module):
    def __init__(self, vocab_size, embed_dim=417, kernel_sizes=(3, 4, 5), channels=127, hidden=117, dropout=0.285):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, channels, h) for h in kernel_sizes)
        self.fc1 = nn.Linear(channels * len(kernel_sizes), hidden)
        self.fc2 = nn.Linear(hidden, 2)

    def forward(self, ids):
        x = self.dropout(self.embedding(ids)).transpose(1, 2)
        z = torch.cat([F.relu(c(x)).max(dim=2).values for c in self.convs], dim=1)
        return self.fc2(F.relu(self.fc1(z)))


def pad_all(split, length):
    """Every sequence truncated / padded (id 0) to ``length``."""
    n = len(split)
    ids = torch.zeros(n, length, dtype=torch.int64)
    offsets = split.offsets.tolist()
    for i in range(n):
        seq = split.ids[offsets[i] : offsets[i + 1]][:length]
        ids[i, : len(seq)] = seq
    return ids, split.labels.clone()


@torch.no_grad()
def accuracy(model, ids, labels, batch=256):
    model.eval()
    correct = sum(int((model(ids[i : i + batch]).argmax(1) == labels[i : i + batch]).sum()) for i in range(0, len(ids), batch))
    model.train()
    return correct / len(ids)


class Chain:
    """One reference reset chain, advanced a round at a time (``bench.py`` interleaves it with ltnb's
    rounds so that both see the same machine load)."""

    def __init__(self, data, vocab_size, settings: LotterySettings, *, seed=0):
        m, self.t, self.settings = settings.model, settings.train, settings
        length = min(500, self.t.max_len, max(int(data[s].lengths.max()) for s in ("train", "validation", "test")))
        self.length = max(length, max(m.kernel_sizes))
        self.X = {s: pad_all(data[s], self.length) for s in ("train", "validation", "test")}
        self.theta_0 = initial_state(vocab_size, m, derive_seed(seed, "theta_0"))
        self.model = RefCNN(vocab_size, m.embed_dim, m.kernel_sizes, m.channels, m.hidden, m.dropout)
        self.model.load_state_dict(self.theta_0)
        mods = [*self.model.convs, self.model.fc1, self.model.fc2]
        self.layers = [(self.model.embedding, "weight")] + [(mod, n) for mod in mods for n in ("weight", "bias")]
        self.rng = torch.Generator().manual_seed(seed)
        self.dropout_state = torch.Generator().manual_seed(seed).get_state()
        self.next_round = 0

    def round(self) -> dict:
        r, t, model = self.next_round, self.t, self.model
        t0 = time.perf_counter()
        if r > 0:
            for mod, name in self.layers:
                prune.l1_unstructured(mod, name, amount=self.settings.prune_fraction)
            with torch.no_grad():  # TICKET-RESET: surviving weights back to theta_0
                for n, p in model.named_parameters():
                    p.copy_(self.theta_0[n.replace("_orig", "")])
        opt = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        ids, labels = self.X["train"]
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.dropout_state)
            for epoch in range(t.max_epochs):
                perm = torch.randperm(len(ids), generator=self.rng)
                for i in range(0, len(ids), t.batch_size):
                    idx = perm[i : i + t.batch_size]
                    opt.zero_grad()
                    loss = F.cross_entropy(model(ids[idx]), labels[idx])
                    loss.backward()
                    opt.step()
            self.dropout_state = torch.get_rng_state()
        val_acc = accuracy(model, *self.X["validation"])
        test_acc = accuracy(model, *self.X["test"])
        zeros = sum(int((getattr(mod, name) == 0).sum()) for mod, name in self.layers)
        total = sum(getattr(mod, name).numel() for mod, name in self.layers)
        self.next_round += 1
        return {"round": r, "sparsity": zeros / total, "val_acc": val_acc, "test_acc": test_acc,
                "seconds": time.perf_counter() - t0, "padded_length": self.length}


def run_chain(data, vocab_size, settings: LotterySettings, *, seed=0, log=None):
    """Rounds 0..settings.rounds of a reset chain; returns a list of per-round dicts."""
    chain = Chain(data, vocab_size, settings, seed=seed)
    rows = []
    for _ in range(settings.rounds + 1):
        rows.append(chain.round())
        if log:
            log(f"reference round {rows[-1]['round']}: sparsity {rows[-1]['sparsity']:.4f} "
                f"test {rows[-1]['test_acc']:.3f} {rows[-1]['seconds']:.1f}s")
    return rows
