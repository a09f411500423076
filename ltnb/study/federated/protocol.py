"""The federated stage without Flower or Ray: the cell's plan, the clients' shards, what travels and
how a client trains. (Flower's messages: ``flower``; the Ray cluster: ``simulation``.)

* ``prepare`` checks a cell and returns its ``Federation``: the source chain, the client domains,
  the cell's folder (named by a settings hash); it creates nothing.
* Client data (``write_shards``): each client domain's training (and validation) split is cut into
  ``clients_per_domain`` disjoint shards, one per client, each written to its own file before the
  federation starts (fingerprint: ``ltnb.text.tokens.fingerprint``); only that client's ClientApp reads it.
* Sparse all the way: the mask travels once per client and run (record ``mask``: ``bits``, the
  ``numpy.packbits`` of every tensor that has pruned entries, and ``pruned``, one flag byte per
  tensor; ``pack_masks``); afterwards only the surviving values travel, in both directions, as one
  float32 vector (record ``arrays``, array ``survivors``: each tensor's survivors in row-major order,
  tensors in the model's parameter order; ``flatten``). Protocol ``full`` (the naive dense run) sends
  every value every round; protocol ``rows`` (the fair dense baseline and the tickets) sends every
  survivor only in the first message to a client, then only the embedding rows that changed (array
  ``rows``: their indices, uint16 up to 65,536 rows; ``embedding``: their survivors; ``rest``: every
  survivor of the other tensors; ``RowLayout``), both ways, with lazy weight decay on the clients
  (``lazy_decay``). Dense runs send no mask.
* A client's training step (``local_training``): the engine's training (``ltnb.core.train.fit``: masked
  Adam, pruned weights stay 0, at most ``local_epochs``, early stopping after ``local_patience``
  epochs without a better local validation accuracy, best local epoch kept) from the global survivors.
* ``collect``: every finished run's rows of a cell.

An import-linter contract (``pyproject.toml``) keeps ``flwr`` and ``ray`` out of this module.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ltnb.base import integrity
from ltnb.base import config, paths
from ltnb.base._io import read_json, stable_hash, write_json, write_parquet
from ltnb.base.config import CELL_PARAMS, FederatedSettings, LotterySettings, ModelSettings, TrainSettings, derive_seed
from ltnb.base.config import FEDERATED_DENSE as DENSE
from ltnb.base.config import FEDERATED_NAIVE as NAIVE
from ltnb.base.config import FEDERATED_STRATEGIES as STRATEGIES
from ltnb.core.model import KimCNN, parameter_shapes
from ltnb.core.pruning import Mask
from ltnb.text.tokens import TokenSplit, fingerprint, save_splits

# (reading, summarising and drawing the results: ltnb.analysis.federated_results and ltnb.analysis.plots, torch-free)

#: bumped whenever what a run computes changes, so old cells are never resumed by new code
FEDERATED_VERSION = 2  # 2: the fair dense baseline (changed rows only), lazy decay, the naive run, local patience
RESULTS = "results.parquet"
ROUNDS = "rounds.parquet"
MESSAGES = "messages.parquet"
GLOBAL = "global.safetensors"
MB = 1e6  # megabytes are decimal (10^6 bytes) throughout
EMBEDDING = KimCNN.EMBEDDING  # the name of the embedding, asked of the model (the wire format sends its rows)


# ------------------------------------------------------------------------------------ parameters
@dataclass(frozen=True)
class ClientShard:
    """One client: a shard of one client domain's training and validation splits, in its own file."""

    partition: int  # Flower's partition-id of the node that plays this client
    domain: str
    shard: int  # 0 .. clients_per_domain - 1 within the domain
    path: str  # safetensors file with "train" and "validation" (ltnb.text.tokens.save_splits); relative to the
    #            cell's hash folder in clients.json, absolute in the ClientSpec the clients get
    n_train: int
    n_validation: int
    sha256: str  # fingerprint of the shard's token ids, offsets and labels (ltnb.text.tokens.fingerprint)


@dataclass(frozen=True)
class Federation:
    """Everything a cell needs, checked before anything starts (``prepare``); ``ltnb.study.federated.run`` takes it whole."""

    study: Path
    source: str
    seed: int
    ticket_rounds: tuple[int, ...]
    strategies: tuple[str, ...]
    client_domains: tuple[str, ...]
    clients_per_domain: int
    fl_rounds: int
    local_epochs: int
    local_patience: int | None
    target_share: float
    audit: bool  # replies also carry the shard's fingerprint and what the client received
    settings: LotterySettings  # the source chain's settings (model, training)
    chain: Path  # the source's reset chain
    data_key: str
    vocab_size: int
    run_dir: Path
    settings_hash: str

    @property
    def local_train(self) -> TrainSettings:
        """The clients' training: the chain's optimizer settings, at most ``local_epochs`` epochs per
        round, early stopping after ``local_patience`` epochs without a better local validation
        accuracy (None: every epoch runs), the best local validation epoch kept."""
        t = self.settings.train
        return TrainSettings(max_epochs=self.local_epochs, patience=self.local_patience, batch_size=t.batch_size, lr=t.lr,
                             weight_decay=t.weight_decay, max_len=t.max_len, precision=t.precision)

    def runs(self) -> list[tuple[str, int]]:
        """(strategy, ticket round) of every run: the two dense baselines first (fair, then naive)."""
        return [(DENSE, 0), (NAIVE, 0)] + [(s, r) for r in self.ticket_rounds for s in self.strategies]


def run_name(strategy: str, ticket_round: int) -> str:
    return f"{strategy}-r{int(ticket_round):02d}"


def _finished_chain_rounds(chain: Path) -> list[int]:
    f = chain / "results.parquet"
    if not f.exists():
        return []
    from ltnb.core.lottery import ticket_name

    return sorted(int(r) for r in integrity.read_parquet(f)["round"] if (chain / ticket_name(int(r))).exists())


def prepare(
    study_dir,
    source: str,
    *,
    seed: int = 0,
    strategies: Sequence[str] = STRATEGIES,
    settings: LotterySettings = LotterySettings(),
    fed_settings: FederatedSettings = FederatedSettings(),
) -> Federation:
    """Check what the settings classes cannot (the study's domains, the source chain and its rounds,
    the seed and strategies of the cell) and find the source chain; raise one error naming all problems.
    ``settings`` names the source chain, ``fed_settings`` the federation (each checked on construction).

    Creates nothing. ``ValueError`` for bad values (each message names the parameter and what is
    allowed), ``FileNotFoundError`` when the study's data or the source chain are missing.
    """
    from ltnb.text import vocab
    from ltnb.core.lottery import chain_dir

    study = paths.resolve_study(study_dir)
    problems: list[str] = []
    f = fed_settings
    if not config.fits(seed, CELL_PARAMS["seed"]["schema"]):
        problems.append(f"seed = {seed!r}: expected {config.describe(CELL_PARAMS['seed']['schema'])}")
    strategies = tuple(strategies) if isinstance(strategies, (list, tuple)) else (strategies,)
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad or len(set(strategies)) != len(strategies):
        problems.append(f"strategies = {list(strategies)!r}: expected distinct values from {list(STRATEGIES)} "
                        f"(the dense baseline always runs)")
    rounds_in = f.ticket_rounds
    if max(rounds_in) > settings.rounds:
        problems.append(f"ticket_rounds = {list(rounds_in)!r}: round {max(rounds_in)} is beyond the chain, "
                        f"which has rounds 0..{settings.rounds} (rounds = {settings.rounds}); allowed: 1..{settings.rounds}")
    if not isinstance(source, str) or not source:
        problems.append(f"source = {source!r}: expected a domain name")

    try:
        domains = list(vocab.info(study)["domains"])
    except FileNotFoundError as e:
        raise FileNotFoundError(f"federated: {e}") from None
    if isinstance(source, str) and source and source not in domains:
        problems.append(f"source = {source!r}: unknown domain; this study's domains: {', '.join(domains)}")
    if f.client_domains is None:
        clients = tuple(d for d in domains if d != source)
    else:
        clients = f.client_domains
        for d in clients:
            if d not in domains:
                problems.append(f"client_domains: unknown domain {d!r}; this study's domains: {', '.join(domains)}")
            elif d == source:
                problems.append(f"client_domains: {d!r} is the source (the server's domain); clients hold the other domains")
    if not clients and not any(p.startswith("client_domains") for p in problems):
        problems.append(f"client_domains: no client domain; the study has only {domains} and the source is {source!r}")
    if problems:
        raise ValueError("federated: " + "; ".join(problems))

    vocab_size = int(vocab.info(study)["vocab_size"])
    data_key = vocab.data_key(study)
    sizes = {(d, s): len(split) for d in clients for s, split in vocab.load_encoded(study, d)[0].items() if s != "test"}
    (small_domain, small_split), smallest = min(sizes.items(), key=lambda kv: kv[1])
    if f.clients_per_domain > smallest:
        raise ValueError(f"federated: clients_per_domain = {f.clients_per_domain}: the {small_split} split of {small_domain} "
                         f"has only {smallest} examples and every client needs some; allowed: 1..{smallest}")
    chain = chain_dir(study, source, "reset", seed, settings, data_key, vocab_size)
    finished = _finished_chain_rounds(chain) if chain.exists() else []
    missing = [r for r in (0, *rounds_in) if r not in finished]
    if missing:
        raise FileNotFoundError(
            f"federated: the source's reset chain at {chain} lacks round(s) {missing} (has {finished or 'none'}); "
            f"ticket_rounds must be among its finished rounds >= 1. Create it with notebooks/03_obtain.ipynb "
            f"(domain={source!r}, strategy='reset', seed={seed}, rounds>={max(rounds_in)}, the same other parameters).")
    h = stable_hash({"chain": chain.name, "clients": sorted(clients), "clients_per_domain": f.clients_per_domain,
                     "fl_rounds": f.fl_rounds, "local_epochs": f.local_epochs, "local_patience": f.local_patience,
                     "version": FEDERATED_VERSION,
                     **({"audit": True} if f.audit else {})})
    run_dir = paths.federated_dir(study, source, seed) / h
    return Federation(study=study, source=source, seed=seed, ticket_rounds=tuple(sorted(rounds_in)), strategies=strategies,
                client_domains=clients, clients_per_domain=f.clients_per_domain, fl_rounds=f.fl_rounds,
                local_epochs=f.local_epochs, local_patience=f.local_patience, target_share=float(f.target_share), audit=bool(f.audit),
                settings=settings, chain=chain, data_key=data_key, vocab_size=vocab_size,
                run_dir=run_dir, settings_hash=h)


# ------------------------------------------------------------------------------------ client data
def subset(split: TokenSplit, index: Sequence[int]) -> TokenSplit:
    return TokenSplit.from_lists([split.sequence(int(i)).tolist() for i in index], split.labels[list(index)].tolist())


def shard_indices(n: int, shards: int, seed: int) -> list[list[int]]:
    """A seeded permutation of range(n) cut into ``shards`` contiguous, disjoint, near-equal parts."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    bounds = [round(i * n / shards) for i in range(shards + 1)]
    return [sorted(perm[bounds[i]:bounds[i + 1]]) for i in range(shards)]


def write_shards(plan: Federation) -> list[ClientShard]:
    """Cut every client domain's train and validation splits into ``clients_per_domain`` shards, one
    file per client (written once; the same seed always gives the same shards)."""
    from ltnb.text import vocab

    folder = plan.run_dir / "clients"
    index = folder / "clients.json"
    if index.exists():
        return [ClientShard(**c) for c in read_json(index)]
    shards: list[ClientShard] = []
    for domain in plan.client_domains:
        data, _ = vocab.load_encoded(plan.study, domain)
        cut = {s: shard_indices(len(data[s]), plan.clients_per_domain, derive_seed(plan.seed, "federated", domain, s))
               for s in ("train", "validation")}
        for k in range(plan.clients_per_domain):
            splits = {s: subset(data[s], cut[s][k]) for s in ("train", "validation")}
            pid = len(shards)
            path = folder / f"client_{pid:03d}.safetensors"
            save_splits(path, splits)
            shards.append(ClientShard(partition=pid, domain=domain, shard=k, path=str(path.relative_to(plan.run_dir)),
                                      n_train=len(splits["train"]), n_validation=len(splits["validation"]),
                                      sha256=fingerprint(splits)))
    write_json(index, [asdict(s) for s in shards])
    return shards


# ------------------------------------------------------------------------------------ what travels
def pack_masks(masks: Mapping[str, torch.Tensor], names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The masks of ``names`` as one message: ``pruned`` (uint8, 1 per tensor that has pruned
    entries) and ``bits`` (uint8: ``numpy.packbits`` of each such tensor's mask, row-major, each
    tensor padded to whole bytes, concatenated in ``names`` order)."""
    pruned = np.array([not bool(masks[n].all()) for n in names], dtype=np.uint8)
    parts = [np.packbits(masks[n].reshape(-1).numpy().astype(np.uint8)) for n, f in zip(names, pruned) if f]
    return pruned, (np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8))


def unpack_masks(pruned: np.ndarray, bits: np.ndarray, shapes: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """Inverse of ``pack_masks``: bool masks of the pruned tensors (the others keep every entry)."""
    out, at = {}, 0
    for (name, shape), flag in zip(shapes.items(), np.asarray(pruned)):
        if flag:
            n = math.prod(shape)
            size = -(-n // 8)
            out[name] = torch.from_numpy(np.unpackbits(np.asarray(bits[at:at + size], dtype=np.uint8))[:n].astype(bool)).reshape(tuple(shape))
            at += size
    if at != len(bits):
        raise ValueError(f"mask message: {len(bits)} bytes of bits, the pruned tensors need {at}")
    return out


def flatten(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], names: Sequence[str]) -> np.ndarray:
    """The surviving entries of every tensor (all entries of a tensor without mask), float32,
    row-major, concatenated in ``names`` order: what travels each round."""
    parts = []
    for n in names:
        flat = weights[n].detach().cpu().reshape(-1).to(torch.float32)
        parts.append(flat if n not in masks else flat[masks[n].reshape(-1)])
    return torch.cat(parts).numpy().copy()


def unflatten(vector: np.ndarray, shapes: Mapping[str, Sequence[int]], masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of ``flatten``: dense tensors, pruned entries exactly 0."""
    values = torch.from_numpy(np.asarray(vector, dtype=np.float32))
    out, at = {}, 0
    for n, shape in shapes.items():
        n_all = math.prod(shape)
        if n in masks:
            keep = masks[n].reshape(-1)
            k = int(keep.sum())
            dense = torch.zeros(n_all, dtype=torch.float32)
            dense[keep] = values[at:at + k]
        else:
            k = n_all
            dense = values[at:at + k].clone()
        out[n] = dense.reshape(tuple(shape))
        at += k
    if at != values.numel():
        raise ValueError(f"survivors message: {values.numel()} values, the mask keeps {at}")
    return out


def protocol_of(strategy: str) -> str:
    """``full``: every survivor in every message (the naive dense reference); ``rows``: after the first
    message only the embedding rows that changed (row indices plus their survivors) and every
    survivor of the other tensors (the fair dense baseline and every ticket run)."""
    return "full" if strategy == NAIVE else "rows"


@dataclass(frozen=True)
class RowLayout:
    """Where each embedding row's survivors sit in the flat survivors vector (``flatten``'s order)."""

    start: int  # offset of the embedding's survivors in the vector
    counts: np.ndarray  # survivors per embedding row (int64, one per vocabulary entry)
    row_of: np.ndarray  # the row of each embedding survivor (int64, in vector order)
    total: int  # length of the whole vector

    @classmethod
    def of(cls, masks: Mapping[str, torch.Tensor], shapes: Mapping[str, Sequence[int]]) -> "RowLayout":
        """``masks``: the pruned tensors' bool masks (a tensor without one keeps every entry)."""
        start, total, counts = 0, 0, None
        for name, shape in shapes.items():
            m = masks.get(name)
            kept = math.prod(shape) if m is None else int(m.sum())
            if name == EMBEDDING:
                start = total
                counts = (np.full(shape[0], shape[1], dtype=np.int64) if m is None
                          else m.reshape(shape[0], -1).sum(dim=1).numpy().astype(np.int64))
            total += kept
        if counts is None:
            raise ValueError(f"the model has no {EMBEDDING}")
        return cls(start=start, counts=counts, row_of=np.repeat(np.arange(len(counts)), counts), total=total)

    @property
    def index_dtype(self):
        """The smallest unsigned integer that holds every row index (uint16 up to 65,536 rows)."""
        return np.uint16 if len(self.counts) <= 2 ** 16 else np.uint32

    def positions(self, rows: np.ndarray) -> np.ndarray:
        """Positions in the vector of the survivors of ``rows`` (row-major, rows ascending)."""
        pick = np.zeros(len(self.counts), dtype=bool)
        pick[np.asarray(rows, dtype=np.int64)] = True
        return np.flatnonzero(pick[self.row_of]) + self.start

    def rest(self) -> np.ndarray:
        """Positions of every survivor outside the embedding."""
        return np.r_[0:self.start, self.start + len(self.row_of):self.total]

    def changed_rows(self, new: np.ndarray, old: np.ndarray) -> np.ndarray:
        """Rows with at least one survivor not exactly equal in ``new`` and ``old``, ascending."""
        block = slice(self.start, self.start + len(self.row_of))
        diff = new[block] != old[block]
        return np.flatnonzero(np.bincount(self.row_of[diff], minlength=len(self.counts))).astype(self.index_dtype)

    def pack(self, vector: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
        """What a ``rows`` message carries: ``rows`` (indices), ``embedding`` (their survivors), ``rest``."""
        rows = np.asarray(rows, dtype=self.index_dtype)
        return {"rows": rows, "embedding": np.ascontiguousarray(vector[self.positions(rows)]),
                "rest": np.ascontiguousarray(vector[self.rest()])}

    def apply(self, vector: np.ndarray, rows: np.ndarray, embedding: np.ndarray, rest: np.ndarray) -> np.ndarray:
        """``vector`` with ``rows``' survivors and every survivor outside the embedding replaced."""
        out = np.array(vector, dtype=np.float32, copy=True)
        pos = self.positions(rows)
        if len(pos) != len(embedding) or len(rest) != self.total - len(self.row_of):
            raise ValueError(f"rows message: {len(embedding)} embedding values for {len(rows)} rows (need {len(pos)}), "
                             f"{len(rest)} other values (need {self.total - len(self.row_of)})")
        out[pos] = embedding
        out[self.rest()] = rest
        return out


def payload_bytes(mask: Mask, *, with_mask: bool) -> int:
    """The formula: 4 bytes per surviving value, plus ceil(n / 8) bytes of mask bits per tensor that
    has pruned entries when the message carries the mask."""
    values = 4 * mask.kept()
    bits = sum(-(-m.numel() // 8) for m in mask.values() if not bool(m.all())) if with_mask else 0
    return values + bits


# ------------------------------------------------------------------------------------ the client
@dataclass(frozen=True)
class ClientSpec:
    """What every ClientApp knows (pickled to the Ray actors): no data, only where its own shard is."""

    vocab_size: int
    model: ModelSettings
    train: TrainSettings
    seed: int
    clients: tuple[ClientShard, ...]
    threads: int = 1
    audit: bool = False  # replies also carry the shard's fingerprint and what the client received (tests)


def local_training(spec: ClientSpec, pid: int, data: Mapping[str, TokenSplit], received: np.ndarray,
                   masks: Mapping[str, torch.Tensor], *, run: str, fl_round: int, lazy: bool):
    """One client's training in a federated round: the model from the global survivors ``received``
    (``flatten``'s order) under ``masks``, trained as the engine trains (``ltnb.core.train.fit`` on the
    client's ``train`` split, its ``validation`` split choosing the best local epoch). Returns the
    trained survivors (``flatten``'s order), ``fit``'s result and the rows its training texts look up.

    ``lazy`` (protocol ``rows``): weight decay is lazy, as sparse optimizers do it: it applies to the
    rows the client's training texts look up (and row 0, the padding id); every other row is put
    back to the received values after every step (``lazy_decay``), which equals training with no
    decay for them (Adam is elementwise and a row no training text looks up never enters the loss).
    Without that, Adam's L2 term moves every row every step and every row would have to travel.
    Otherwise (protocol ``full``) decay applies to every row, as the engine trains."""
    from ltnb.core import train as _train
    from ltnb.core.model import build as build_model

    model = build_model(spec.vocab_size, spec.model, seed=None)
    shapes = parameter_shapes(spec.vocab_size, spec.model)  # the order the server flattens in
    weights = unflatten(received, shapes, masks)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(weights[name])
    local = {"train": data["train"], "validation": data["validation"], "test": data["validation"]}
    touched = looked_up_rows(data["train"], spec.train.max_len)
    on_step = lazy_decay(weights[EMBEDDING], touched) if lazy else None
    result = _train.fit(model, local, spec.train, masks=masks, seed=derive_seed(spec.seed, run, fl_round, "client", pid),
                        device="cpu", progress=False, desc=f"client {pid}", on_step=on_step)
    return flatten(dict(model.named_parameters()), masks, list(shapes)), result, touched


def looked_up_rows(split: TokenSplit, max_len: int) -> np.ndarray:
    """The embedding rows a training split looks up: every id within the first ``max_len`` of each
    text, and 0 (the padding id of texts shorter than the widest filter). Ascending."""
    lengths = (split.offsets[1:] - split.offsets[:-1]).clamp(max=max_len)
    pos = torch.arange(split.ids.numel()) - torch.repeat_interleave(split.offsets[:-1], split.offsets[1:] - split.offsets[:-1])
    keep = pos < torch.repeat_interleave(lengths, split.offsets[1:] - split.offsets[:-1])
    return np.union1d(torch.unique(split.ids[keep]).numpy(), [0]).astype(np.int64)


def lazy_decay(received: torch.Tensor, touched: np.ndarray):
    """``fit``'s ``on_step``: put every embedding row outside ``touched`` back to its received
    values (in the dense table and, when the pruned embedding trains packed, in its survivors)."""
    keep = torch.ones(received.shape[0], dtype=torch.bool)
    keep[torch.from_numpy(touched)] = False
    idx = keep.nonzero().squeeze(1)
    rows = received.index_select(0, idx)
    packed_at: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def restore(step: int, model) -> None:
        with torch.no_grad():
            model.embedding.weight.index_copy_(0, idx, rows)
            packed = getattr(model, "packed_embedding", None)
            if packed is not None:
                if id(packed) not in packed_at:
                    where = keep[packed.flat // received.shape[1]].nonzero().squeeze(1)
                    packed_at[id(packed)] = (where, received.reshape(-1)[packed.flat[where]].clone())
                where, values = packed_at[id(packed)]
                packed.values.index_copy_(0, where, values)

    return restore


# ------------------------------------------------------------------------------------ the results
def collect(run_dir: Path) -> pd.DataFrame:
    """All finished runs of a cell folder (their ``rounds.parquet``), also written as its results."""
    files = sorted((Path(run_dir) / "runs").glob(f"*/{ROUNDS}"))
    rows = pd.concat([integrity.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame(
        columns=["strategy", "ticket_round", "fl_round"])
    if files:
        rows = rows.sort_values(["ticket_round", "strategy", "fl_round"], kind="stable").reset_index(drop=True)
        write_parquet(Path(run_dir) / RESULTS, rows)
    return rows
