"""Federated learning with a lottery ticket: the paper's proposed application, run with Flower.

The paper closes with "Applications in Federated Learning": a server finds a ticket on data it can
see, then clients retrain only that sparse ticket on their own data. This module runs it.

* The server holds one *source* domain. Its ticket is the mask of the source's TICKET-RESET chain
  (``ltnb.lottery.obtain``) at a chosen IMP round, read with ``ltnb.tickets.load``.
* The clients hold the other domains' training data: each client domain's training (and
  validation) split is cut into ``clients_per_domain`` disjoint shards, one per client. A shard is
  written to its own file before the federation starts and only that client's ClientApp reads it.
* Runs: two dense FedAvg runs from theta_0, the fair baseline (``dense``, protocol ``rows`` below) and
  the naive reference (``dense-naive``, protocol ``full``), and the ticket at each chosen round with
  the initial values of ``ltnb.strategies`` (``masks-reset``: the chain's theta_0 under the mask;
  ``masks-random``: fresh values under the mask; protocol ``rows``), for a seed.
* Federated rounds: the server sends the global survivors to every client; each client trains
  them under the mask as the engine does (``ltnb.train.fit``: masked Adam, pruned weights stay 0,
  at most ``local_epochs``, early stopping after ``local_patience`` epochs without a better local
  validation accuracy, best local epoch kept) and sends its survivors back; the
  server averages them weighted by the clients' training examples (FedAvg on the surviving
  entries only, so pruned entries of the global model are exactly zero by construction).
* Sparse all the way: the mask travels once per client and run (record ``mask``: ``bits``, the
  ``numpy.packbits`` of every tensor that has pruned entries, and ``pruned``, one flag byte per
  tensor); afterwards only the surviving values travel, in both directions, as one float32 vector
  (record ``arrays``, array ``survivors``: each tensor's survivors in row-major order, tensors in
  the model's parameter order). Protocol ``full`` (the naive dense run) sends every value every
  round; protocol ``rows`` (the fair dense baseline and the tickets) sends every survivor only in
  the first message to a client, then only the embedding rows that changed (array ``rows``: their
  indices, uint16 up to 65,536 rows; ``embedding``: their survivors; ``rest``: every survivor of the
  other tensors), both ways, with lazy weight decay on the clients (``client_train``). Dense runs
  send no mask.
* After every federated round the server evaluates the global model on every domain's test split
  (the experimenter's view; it is not part of the protocol and not counted as communication).
  ``global_acc`` is the accuracy over the pooled test splits of the client domains.

Flower (``flwr``): a real ``ServerApp`` whose strategy ``MaskedFedAvg`` is Flower's ``FedAvg``
adapted to masked weights, a real ``ClientApp``, run by Flower's simulation engine
(``flwr.simulation.run_simulation``, Ray backend). One simulation runs all pending runs of a cell.

Bytes are counted from the messages Flower sends, with Flower's own serialization: for each
message, the protobuf of its header (``flwr.common.serde.message_to_proto`` of the message without
content), the protobuf of its object tree and the deflated bytes of every object it is made of
(Message, RecordDict, records, Arrays, ArrayChunks): what Flower's deployment runtime pushes for it
and what a SuperNode pulls. (The simulation engine itself hands messages to Ray in memory.) The
count is per client link: a model sent to 8 clients counts 8 times. gRPC/HTTP framing is not
included. ``payload`` is the arrays' raw bytes, split into ``mask``, ``values`` (float32) and
``indices`` (row indices) per message and per round; the rest is Flower's framing (object ids, npy
headers, record keys), checked by the tests.

Ray on a small machine: Ray's raylet waits a limited time for its dashboard agent to start, and on
a busy 2-core machine the agent (a Python process that imports ray, about 5 s of CPU here) can miss
that window. ``RayHead`` therefore starts one private single-node Ray cluster per call of ``run``
(``ray start --head --block`` on 127.0.0.1 with free ports; no dashboard, no log monitor, usage stats
off, the agent given 180 s to register, no idle workers started ahead, workers at niceness 0 like
every other cell instead of Ray's 15). It retries a failed start, and a small supervisor process
stops Ray's process group on exit and when the process that started it dies (a killed kernel leaves
no Ray behind). Flower joins it through ``backend_config["init_args"]["address"]``; every client
gets 1 CPU and no GPU (``client_resources``) and the head has ``workers`` CPUs, so ``workers``
clients train at once.

Folders: ``paths.federated_dir(study, source, seed) / <hash>/`` with ``settings.json``,
``clients/`` (the shards and ``clients.json``), ``runs/<strategy>-rRR/`` (``rounds.parquet`` with one
row per federated round, written last; ``messages.parquet``, one row per message; ``global.safetensors``,
the final global model as a ticket) and ``results.parquet`` (all finished runs), and
``_COMPLETE.json`` when every requested run is done. The hash covers the source chain (its folder
name: settings, data and engine), the client domains, ``clients_per_domain``, ``fl_rounds``,
``local_epochs``, ``audit`` (when on) and this module's version, not the ticket rounds and
strategies, so asking for more sparsities extends a cell. A killed run has no ``rounds.parquet`` and restarts from its round 0
(federated rounds are short); finished runs are never redone.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ltnb.base import config, paths
from ltnb.core import strategies, tickets
from ltnb.base._io import read_json, stable_hash, write_json, write_parquet
from ltnb.base.config import CELL_PARAMS, FederatedSettings, LotterySettings, ModelSettings, TrainSettings, derive_seed
from ltnb.core.model import parameter_shapes
from ltnb.core.pruning import Mask
from ltnb.text.tokens import TokenSplit, fingerprint, save_splits

# (reading, summarising and drawing the results: ltnb.federated_results and ltnb.plots, torch-free)

#: bumped whenever what a run computes changes, so old cells are never resumed by new code
FEDERATED_VERSION = 2  # 2: the fair dense baseline (changed rows only), lazy decay, the naive run, local patience
from ltnb.base.config import FEDERATED_DENSE as DENSE  # noqa: E402
from ltnb.base.config import FEDERATED_NAIVE as NAIVE  # noqa: E402
from ltnb.base.config import TRANSFER_STRATEGIES as STRATEGIES  # noqa: E402
RESULTS = "results.parquet"
ROUNDS = "rounds.parquet"
MESSAGES = "messages.parquet"
GLOBAL = "global.safetensors"
MB = 1e6  # megabytes are decimal (10^6 bytes) throughout
EMBEDDING = "embedding.weight"

# Flower reads FLWR_TELEMETRY_ENABLED when it is imported; nothing may leave this machine.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


# ------------------------------------------------------------------------------------ parameters
@dataclass(frozen=True)
class ClientShard:
    """One client: a shard of one client domain's training and validation splits, in its own file."""

    partition: int  # Flower's partition-id of the node that plays this client
    domain: str
    shard: int  # 0 .. clients_per_domain - 1 within the domain
    path: str  # safetensors file with "train" and "validation" (ltnb.tokens.save_splits); relative to the
    #            cell's hash folder in clients.json, absolute in the ClientSpec the clients get
    n_train: int
    n_validation: int
    sha256: str  # fingerprint of the shard's token ids, offsets and labels (ltnb.tokens.fingerprint)


@dataclass(frozen=True)
class Federation:
    """Everything a cell needs, checked before anything starts (``prepare``)."""

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


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finished_chain_rounds(chain: Path) -> list[int]:
    f = chain / "results.parquet"
    if not f.exists():
        return []
    from ltnb.core.lottery import ticket_name

    return sorted(int(r) for r in pd.read_parquet(f)["round"] if (chain / ticket_name(int(r))).exists())


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
                local_epochs=f.local_epochs, local_patience=f.local_patience, target_share=float(f.target_share),
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


def protocol(strategy: str) -> str:
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


def content_bytes(content) -> dict[str, int]:
    """The payload of a message by kind: ``mask`` (the mask record's bytes), ``indices`` (row
    indices), ``values`` (every float32 value); what is left of its wire bytes is Flower's framing."""
    from flwr.app import ArrayRecord

    out = {"mask": 0, "indices": 0, "values": 0}
    for name, rec in content.items():
        if isinstance(rec, ArrayRecord):
            for key, a in rec.items():
                kind = "mask" if name == "mask" else "indices" if key == "rows" else "values"
                out[kind] += int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize  # (npy headers: framing)
    return out


def payload_bytes(mask: Mask, *, with_mask: bool) -> int:
    """The formula: 4 bytes per surviving value, plus ceil(n / 8) bytes of mask bits per tensor that
    has pruned entries when the message carries the mask."""
    values = 4 * mask.kept()
    bits = sum(-(-m.numel() // 8) for m in mask.values() if not bool(m.all())) if with_mask else 0
    return values + bits


def wire_bytes(message) -> int:
    """Bytes of ``message`` as Flower's deployment runtime pushes and pulls it: the header protobuf
    (``message_to_proto`` of the message without content), the object-tree protobuf and the deflated
    content of every object the message is made of (see the module doc)."""
    from flwr.app.message import remove_content_from_message
    from flwr.common.serde import message_to_proto
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree

    header = message_to_proto(remove_content_from_message(message)).ByteSize()
    tree = get_object_tree(message).ByteSize()
    body = sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())
    return header + tree + body


def describe(content) -> dict:
    """What a RecordDict holds: per record its type and, for ArrayRecords, each array's dtype and
    shape; for config and metric records their keys. (A client reports what it received.)"""
    from flwr.app import ArrayRecord

    out = {}
    for name, rec in content.items():
        if isinstance(rec, ArrayRecord):
            out[name] = {"type": "ArrayRecord", "arrays": {k: [a.dtype, list(a.shape)] for k, a in rec.items()}}
        else:
            out[name] = {"type": type(rec).__name__, "keys": sorted(rec.keys())}
    return out


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


def client_train(spec: ClientSpec, msg, context):
    """The ClientApp's train handler: read this client's shard, rebuild the model from the global
    survivors and the mask (kept in ``context.state`` after the first round), train under the mask
    with ``ltnb.train.fit``, reply with the trained survivors.

    Protocol ``rows`` (``protocol``): the client keeps its copy of the global survivors in
    ``context.state``; after the first message the server sends only the embedding rows that changed
    in the global model and the other tensors' survivors, and the client replies with the rows its
    training changed (any survivor not exactly equal) and the other survivors. Weight decay is lazy,
    as sparse optimizers do it: it applies to the rows the client's training texts look up (and
    row 0, the padding id); every other row is put back to the received values after every step,
    which equals training with no decay for them (Adam is elementwise and a row no training text
    looks up never enters the loss). Without that, Adam's L2 term moves every row every step and
    every row would have to travel. Protocol ``full``: every survivor, and decay on every row, as
    the engine trains."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    from ltnb.core import train as _train
    from ltnb.core.model import KimCNN
    from ltnb.text.tokens import load_splits

    torch.set_num_threads(spec.threads)
    pid = int(context.node_config["partition-id"])
    me = spec.clients[pid]
    data = load_splits(me.path)  # this client's shard, and nothing else
    config = msg.content["config"]
    run, fl_round = str(config["run"]), int(config["server-round"])
    key = f"mask {run}"
    if "mask" in msg.content:  # the first message of a run carries the mask; keep it for later rounds
        context.state[key] = ArrayRecord({k: Array(a.numpy()) for k, a in msg.content["mask"].items()})
    masked = int(config["masked-tensors"])
    if masked and key not in context.state:
        raise RuntimeError(f"client {pid}: run {run} has {masked} pruned tensors but no mask was received")

    model = KimCNN.from_settings(spec.vocab_size, spec.model, seed=None)
    shapes = parameter_shapes(spec.vocab_size, spec.model)  # the order the server flattens in
    masks = unpack_masks(context.state[key]["pruned"].numpy(), context.state[key]["bits"].numpy(), shapes) if masked else {}
    rows_protocol = str(config["protocol"]) == "rows"
    arrays = msg.content["arrays"]
    layout = RowLayout.of(masks, shapes) if rows_protocol else None
    if "survivors" in arrays:
        received = arrays["survivors"].numpy()
    else:  # the rows that changed in the global model since the last round, applied to this client's copy
        received = layout.apply(context.state[f"global {run}"]["survivors"].numpy(), arrays["rows"].numpy(),
                                arrays["embedding"].numpy(), arrays["rest"].numpy())
    if rows_protocol:
        context.state[f"global {run}"] = ArrayRecord({"survivors": Array(np.asarray(received, dtype=np.float32))})
    weights = unflatten(received, shapes, masks)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(weights[name])
    local = {"train": data["train"], "validation": data["validation"], "test": data["validation"]}
    touched = looked_up_rows(data["train"], spec.train.max_len)
    on_step = _lazy_decay(weights[EMBEDDING], touched) if rows_protocol else None
    result = _train.fit(model, local, spec.train, masks=masks, seed=derive_seed(spec.seed, run, fl_round, "client", pid),
                        device="cpu", progress=False, desc=f"client {pid}", on_step=on_step)
    trained = flatten(dict(model.named_parameters()), masks, list(shapes))
    if rows_protocol:
        changed = layout.changed_rows(trained, received)
        out = ArrayRecord({k: Array(v) for k, v in layout.pack(trained, changed).items()})
    else:
        changed = np.zeros(0)
        out = ArrayRecord({"survivors": Array(trained)})
    reply = RecordDict({
        "arrays": out,
        "metrics": MetricRecord({"num-examples": len(data["train"]), "local-val-acc": float(result.val_acc),
                                 "train-seconds": float(result.seconds), "steps": int(result.steps),
                                 "epochs-run": int(result.epochs_run), "best-epoch": int(result.best_epoch),
                                 "rows-touched": int(len(touched)), "rows-changed": int(len(changed))}),
        "client": ConfigRecord({"partition-id": pid, **({"data-sha256": fingerprint(data), "received": json.dumps(
            describe(msg.content), sort_keys=True)} if spec.audit else {})}),
    })
    return Message(content=reply, reply_to=msg)


def looked_up_rows(split: TokenSplit, max_len: int) -> np.ndarray:
    """The embedding rows a training split looks up: every id within the first ``max_len`` of each
    text, and 0 (the padding id of texts shorter than the widest filter). Ascending."""
    lengths = (split.offsets[1:] - split.offsets[:-1]).clamp(max=max_len)
    pos = torch.arange(split.ids.numel()) - torch.repeat_interleave(split.offsets[:-1], split.offsets[1:] - split.offsets[:-1])
    keep = pos < torch.repeat_interleave(lengths, split.offsets[1:] - split.offsets[:-1])
    return np.union1d(torch.unique(split.ids[keep]).numpy(), [0]).astype(np.int64)


def _lazy_decay(received: torch.Tensor, touched: np.ndarray):
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


def client_app(spec: ClientSpec):
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg, context):  # noqa: ANN001 - Flower's handler signature
        return client_train(spec, msg, context)

    return app


# ------------------------------------------------------------------------------------ the server
def _split(message) -> dict:
    """A message's payload by kind (``content_bytes``) and how many embedding rows it carries."""
    if message is None:
        return {"mask_bytes": 0, "values_bytes": 0, "indices_bytes": 0, "rows": 0}
    b = content_bytes(message.content)
    arrays = message.content.get("arrays")
    rows = int(arrays["rows"].shape[0]) if arrays is not None and "rows" in arrays else 0
    return {"mask_bytes": b["mask"], "values_bytes": b["values"], "indices_bytes": b["indices"], "rows": rows}


class _CountingGrid:
    """Delegates to Flower's Grid; records every message sent and received with its wire bytes.

    ``send_and_receive`` is Flower's push-then-pull loop, plus an ``abort`` event so the ServerApp
    thread ends when the simulation engine has failed instead of waiting for replies that never come.
    """

    def __init__(self, grid, abort: threading.Event, timeout: float):
        self._grid, self._abort, self._timeout = grid, abort, timeout
        self.log: list[dict] = []
        self.partition: dict[int, int] = {}  # node id -> partition id, from the replies

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout: float | None = None):
        messages = list(messages)
        if not messages:
            return []
        ids = set(self._grid.push_messages(messages))
        end = time.time() + (timeout or self._timeout)
        replies = []
        while ids:
            if self._abort.is_set():
                raise RuntimeError("federated: the simulation engine stopped; the ServerApp gives up waiting")
            if time.time() > end:
                raise TimeoutError(f"federated: no reply from {len(ids)} client(s) within {timeout or self._timeout:.0f} s")
            got = list(self._grid.pull_messages(ids))
            replies.extend(got)
            ids -= {m.metadata.reply_to_message_id for m in got}
            if ids:
                time.sleep(0.05)
        for m in replies:  # a client's reply names its partition, its data's fingerprint and what it got
            client = m.content.get("client") if not m.has_error() else None
            if client is not None:
                self.partition[int(m.metadata.src_node_id)] = int(client["partition-id"])
        for m in messages:
            node = int(m.metadata.dst_node_id)
            self.log.append({"direction": "down", "node_id": node, "partition": self.partition.get(node, -1),
                             "bytes": wire_bytes(m), "has_mask": "mask" in m.content, **_split(m), "rows_touched": 0,
                             "records": json.dumps(describe(m.content), sort_keys=True),
                             "data_sha256": "", "received": ""})
        for m in replies:
            node = int(m.metadata.src_node_id)
            client = m.content.get("client") if not m.has_error() else None
            self.log.append({"direction": "up", "node_id": node, "partition": self.partition.get(node, -1),
                             "bytes": wire_bytes(m) if not m.has_error() else 0, "has_mask": False,
                             **(_split(m) if not m.has_error() else _split(None)),
                             "rows_touched": int(m.content["metrics"].get("rows-touched", 0)) if not m.has_error() else 0,
                             "records": json.dumps(describe(m.content), sort_keys=True) if not m.has_error() else "",
                             "data_sha256": str(client.get("data-sha256", "")) if client is not None else "",
                             "received": str(client.get("received", "")) if client is not None else ""})
        return replies

    def take(self) -> list[dict]:
        out, self.log = self.log, []
        return out


def _masked_fedavg_class():
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
    from flwr.serverapp.strategy import FedAvg
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords, sample_nodes

    class MaskedFedAvg(FedAvg):
        """Flower's FedAvg on the surviving entries of a fixed mask.

        ``arrays`` (what ``start`` passes around) hold only the survivors of each tensor (1-D float32).
        The first message to each node also carries the bit-packed mask as the record ``mask``; the
        replies' survivors are averaged weighted by ``num-examples`` (Flower's
        ``aggregate_arrayrecords``). A client error stops the run (a silent drop would change the
        experiment).

        Protocol ``rows`` (see ``client_train``): ``arrays`` is still the whole global survivors
        vector on the server's side, but a node that holds the previous global model gets only the
        embedding rows that changed since (``RowLayout.pack``), and the replies carry only the rows
        each client changed. Their average is FedAvg written on the changes: new = old + sum_i w_i
        (client_i - old) / sum_i w_i over the rows client i sent (its other rows equal old), so a
        row no client changed stays exactly equal and never travels.
        """

        def __init__(self, mask_record: ArrayRecord, kept: int, n_clients: int, protocol: str = "full",
                     layout: RowLayout | None = None):
            super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n_clients,
                             min_evaluate_nodes=0, min_available_nodes=n_clients)
            self.mask_record = mask_record
            self.kept = kept  # surviving entries, the length of every survivors vector
            self.has_mask: set[int] = set()
            self.protocol, self.layout = protocol, layout
            self.held: np.ndarray | None = None  # the global survivors the clients hold (rows protocol)
            self.has_global: set[int] = set()

        def configure_train(self, server_round, arrays, config, grid):
            node_ids, _ = sample_nodes(grid, self.min_available_nodes, self.min_train_nodes)
            config["server-round"] = server_round
            config["protocol"] = self.protocol
            current = arrays["survivors"].numpy()
            changes = None
            if self.protocol == "rows" and self.held is not None:
                rows = self.layout.changed_rows(current, self.held)
                changes = ArrayRecord({k: Array(v) for k, v in self.layout.pack(current, rows).items()})
            messages = []
            for node in node_ids:
                records = {"arrays": changes if changes is not None and node in self.has_global else arrays,
                           "config": config}
                if len(self.mask_record) and node not in self.has_mask:
                    records["mask"] = self.mask_record
                    self.has_mask.add(node)
                if self.protocol == "rows":
                    self.has_global.add(node)
                messages.append(Message(content=RecordDict(records), message_type=MessageType.TRAIN, dst_node_id=node))
            if self.protocol == "rows":
                self.held = np.array(current, dtype=np.float32, copy=True)
            return messages

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            valid, errors = self._check_and_log_replies(replies, is_train=True)
            if errors or len(valid) < self.min_train_nodes:
                reasons = "; ".join(f"node {m.metadata.src_node_id}: {m.error.reason}" for m in errors)
                raise RuntimeError(f"federated round {server_round}: {len(valid)} of {self.min_train_nodes} clients "
                                   f"replied ({reasons or 'no error given'})")
            contents = [m.content for m in valid]
            metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
            if self.protocol == "rows":
                return self._aggregate_rows(server_round, valid), metrics
            for m in valid:
                got = {k: tuple(a.shape) for k, a in m.content["arrays"].items()}
                if got != {"survivors": (self.kept,)}:
                    raise RuntimeError(f"federated round {server_round}: node {m.metadata.src_node_id} sent arrays "
                                       f"{got}, expected the {self.kept} survivors")
            return aggregate_arrayrecords(contents, self.weighted_by_key), metrics

        def _aggregate_rows(self, server_round, valid) -> ArrayRecord:
            layout, old = self.layout, self.held.astype(np.float64)
            rest_at = layout.rest()
            change = np.zeros(layout.total, dtype=np.float64)
            sent = np.zeros(layout.total, dtype=bool)
            rest = np.zeros(len(rest_at), dtype=np.float64)
            total = 0.0
            for m in valid:
                a, w = m.content["arrays"], float(m.content["metrics"][self.weighted_by_key])
                if set(a.keys()) != {"rows", "embedding", "rest"}:
                    raise RuntimeError(f"federated round {server_round}: node {m.metadata.src_node_id} sent arrays "
                                       f"{sorted(a.keys())}, expected rows, embedding, rest")
                pos = layout.positions(a["rows"].numpy())
                emb, other = a["embedding"].numpy(), a["rest"].numpy()
                if len(emb) != len(pos) or len(other) != len(rest_at):
                    raise RuntimeError(f"federated round {server_round}: node {m.metadata.src_node_id} sent {len(emb)} "
                                       f"values for rows with {len(pos)} survivors and {len(other)} other values "
                                       f"(expected {len(rest_at)})")
                change[pos] += w * (emb.astype(np.float64) - old[pos])
                sent[pos] = True
                rest += w * other
                total += w
            new = np.array(self.held, dtype=np.float32, copy=True)
            new[sent] = (old[sent] + change[sent] / total).astype(np.float32)
            new[rest_at] = (rest / total).astype(np.float32)
            return ArrayRecord({"survivors": Array(new)})

    return MaskedFedAvg


@dataclass
class _Run:
    strategy: str
    ticket_round: int
    name: str
    folder: Path
    mask: Mask
    init: dict[str, torch.Tensor]
    theta_0: Path
    rows: list[dict] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    final: dict[str, torch.Tensor] | None = None


def _load_run(plan: Federation, strategy: str, ticket_round: int) -> _Run:
    from ltnb.core.lottery import THETA_0, ticket_name

    ticket = tickets.load(plan.chain / ticket_name(ticket_round), settings=plan.settings)
    mask = Mask(ticket.masks)
    if strategy in (DENSE, NAIVE):
        init = {n: t.clone() for n, t in ticket.init.items()}  # theta_0 (round 0's mask keeps everything)
    else:
        start = strategies.Start(theta_0=ticket.init, vocab_size=plan.vocab_size, model=plan.settings.model,
                                 seed=plan.seed, round=ticket_round, strategy=strategy)
        init = strategies.TRANSFER[strategy](mask, start)
    name = run_name(strategy, ticket_round)
    return _Run(strategy=strategy, ticket_round=ticket_round, name=name, folder=plan.run_dir / "runs" / name,
                mask=mask, init=init, theta_0=plan.chain / THETA_0)


class _Evaluator:
    """Test accuracy of a global model on every domain's test split (server side, experimenter's view)."""

    def __init__(self, plan: Federation):
        from ltnb.core import train as _train
        from ltnb.text import vocab
        from ltnb.core.model import KimCNN

        self.domains = (plan.source, *plan.client_domains)
        self.client_domains = plan.client_domains
        self.model = KimCNN.from_settings(plan.vocab_size, plan.settings.model, seed=None)
        self.batches = {}
        for d in self.domains:
            test = vocab.load_encoded(plan.study, d)[0]["test"]
            self.batches[d] = _train.make_batches(test, _train.EVAL_BATCH, max_len=plan.settings.train.max_len,
                                                  max_tokens=_train.EVAL_TOKENS)
        self.sizes = {d: sum(b.labels.numel() for b in bs) for d, bs in self.batches.items()}
        self.precision = plan.settings.train.precision

    def __call__(self, weights: Mapping[str, torch.Tensor]) -> dict[str, float]:
        from ltnb.core import train as _train

        with torch.no_grad():
            for n, p in self.model.named_parameters():
                p.copy_(weights[n])
        acc = {d: _train.evaluate(self.model, bs, self.precision) for d, bs in self.batches.items()}
        pooled = sum(acc[d] * self.sizes[d] for d in self.client_domains) / sum(self.sizes[d] for d in self.client_domains)
        return {"global_acc": pooled, "source_acc": acc[self.source], **{f"acc_{d}": a for d, a in acc.items()}}

    @property
    def source(self) -> str:
        return self.domains[0]


def _serve_run(plan: Federation, run: _Run, grid, evaluator: _Evaluator, abort: threading.Event, progress: bool) -> None:
    """One FedAvg experiment (``strategy.start``), recording a row per federated round."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
    from tqdm.auto import tqdm

    shapes = parameter_shapes(plan.vocab_size, plan.settings.model)  # the model's parameter order, as the clients
    names = list(shapes)
    pruned = {n: run.mask[n] for n in names if not bool(run.mask[n].all())}
    flags, bits = pack_masks(run.mask, names)
    mask_record = ArrayRecord({"pruned": Array(flags), "bits": Array(bits)}) if pruned else ArrayRecord()
    initial = ArrayRecord({"survivors": Array(flatten(run.init, pruned, names))})
    n_clients = len(plan.client_domains) * plan.clients_per_domain
    kind = protocol(run.strategy)
    layout = RowLayout.of(pruned, shapes)
    strategy = _masked_fedavg_class()(mask_record, run.mask.kept(), n_clients, kind, layout)
    counting = _CountingGrid(grid, abort, timeout=3600.0)
    started = time.perf_counter()
    cumulative = {"bytes": 0}
    bar = tqdm(total=plan.fl_rounds, desc=f"{plan.source} seed{plan.seed} {run.name}", disable=not progress, unit="round")

    def dense(arrays) -> dict[str, torch.Tensor]:
        return unflatten(arrays["survivors"].numpy(), shapes, pruned)

    def evaluate(server_round: int, arrays) -> MetricRecord:
        weights = dense(arrays)
        accs = evaluator(weights)
        log = counting.take()
        for e in log:
            e.update(run=run.name, fl_round=server_round)
        run.messages.extend(log)
        down = sum(e["bytes"] for e in log if e["direction"] == "down")
        up = sum(e["bytes"] for e in log if e["direction"] == "up")
        n_down = sum(e["direction"] == "down" for e in log)
        n_up = sum(e["direction"] == "up" for e in log)
        payload = sum(e["mask_bytes"] + e["values_bytes"] + e["indices_bytes"] for e in log)
        cumulative["bytes"] += down + up
        run.rows.append({
            "stage": "federated", "source": plan.source, "seed": plan.seed, "strategy": run.strategy,
            "ticket_round": run.ticket_round, "sparsity": run.mask.sparsity(), "survivors": run.mask.kept(),
            "fl_round": server_round, "clients": n_clients, "messages": n_down + n_up, "protocol": kind,
            "bytes_down": down, "bytes_up": up, "bytes_round": down + up, "payload_round": payload,
            **{f"{k}_bytes_round": sum(e[f"{k}_bytes"] for e in log) for k in ("mask", "values", "indices")},
            "rows_down": sum(e["rows"] for e in log if e["direction"] == "down"),
            "rows_up": sum(e["rows"] for e in log if e["direction"] == "up"),
            "rows_touched": sum(e["rows_touched"] for e in log if e["direction"] == "up"),
            "bytes_cumulative": cumulative["bytes"], **accs,
            "seconds": time.perf_counter() - started, "settings_hash": plan.settings_hash,
        })
        run.final = weights
        if server_round:
            bar.update(1)
            bar.set_postfix(global_acc=f"{accs['global_acc']:.3f}", MB=f"{cumulative['bytes'] / MB:.2f}")
        return MetricRecord({"global-acc": accs["global_acc"]})

    config = ConfigRecord({"run": run.name, "masked-tensors": len(pruned), "local-epochs": plan.local_epochs,
                           "protocol": kind})
    strategy.start(grid=counting, initial_arrays=initial, num_rounds=plan.fl_rounds, timeout=3600.0,
                   train_config=config, evaluate_fn=evaluate)
    bar.close()
    _write_run(plan, run)


def _write_run(plan: Federation, run: _Run) -> None:
    """The run's files; ``rounds.parquet`` last: it marks the run as finished."""
    msgs = pd.DataFrame(run.messages)
    write_parquet(run.folder / MESSAGES, msgs)
    tickets.save(run.folder / GLOBAL, masks=run.mask, trained=run.final, round=run.ticket_round,
                 settings=plan.settings, vocab_size=plan.vocab_size, theta_0=run.theta_0,
                 extra={"stage": "federated", "source": plan.source, "strategy": run.strategy, "seed": plan.seed,
                        "fl_rounds": plan.fl_rounds})
    write_parquet(run.folder / ROUNDS, pd.DataFrame(run.rows))


def server_app(plan: Federation, runs: Sequence[tuple[str, int]], abort: threading.Event, progress: bool = True):
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid, context):  # noqa: ANN001 - Flower's main signature
        evaluator = _Evaluator(plan)
        for strategy, ticket_round in runs:
            _serve_run(plan, _load_run(plan, strategy, ticket_round), grid, evaluator, abort, progress)

    return app


# ------------------------------------------------------------------------------------ Ray
# A small supervisor for `ray start --head --block` (its arguments): it runs Ray in its own process
# group, and on SIGTERM or SIGINT, or when the process that started it dies (Linux prctl
# PR_SET_PDEATHSIG), it sends Ray SIGTERM, waits `grace` seconds, then kills the whole group. Ray's
# own SIGTERM shutdown sometimes hangs once its raylet is gone; the group kill ends it, and a killed
# notebook kernel leaves no Ray behind. The supervisor runs in a session of its own (``supervise``):
# `ltnb batch` kills a cancelled cell's kernel with its whole process group (SIGKILL), which would
# otherwise take the supervisor with it before it could stop Ray.
_SUPERVISOR = """
import ctypes, os, signal, subprocess, sys, time
parent, grace, cmd = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
try:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
asked = []
signal.signal(signal.SIGTERM, lambda *_: asked.append(1))
signal.signal(signal.SIGINT, lambda *_: asked.append(1))
if os.getppid() != parent:
    sys.exit(1)  # the parent is already gone
ray = subprocess.Popen(cmd, start_new_session=True)
while ray.poll() is None and not asked:
    time.sleep(0.2)
if ray.poll() is None:
    ray.send_signal(signal.SIGTERM)
end = time.time() + grace
while ray.poll() is None and time.time() < end:
    time.sleep(0.2)
try:
    os.killpg(ray.pid, signal.SIGKILL)  # what is left of the group: gcs, raylet, agents, workers
except ProcessLookupError:
    pass
"""


def supervise(command: Sequence[str], *, grace: float, **popen) -> subprocess.Popen:
    """Start ``command`` under ``_SUPERVISOR`` (see above), the supervisor in a session of its own so
    that a SIGKILL to this process's group reaches it only as its parent's death."""
    return subprocess.Popen([sys.executable, "-c", _SUPERVISOR, str(os.getpid()), str(grace), *command],
                            start_new_session=True, **popen)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    """A private single-node Ray cluster for Flower's simulation engine (see the module doc).

    ``with RayHead(num_cpus=2) as head: ... head.address ...``. Starts ``ray start --head --block``
    in its own process group under a small supervisor process and waits for it. On exit, or when
    this process dies, the supervisor sends Ray SIGTERM and after ``stop_timeout`` s kills the rest
    of Ray's process group, so nothing is left behind, not even by a killed kernel. ``attempts`` starts are tried before giving up with the raylet's last log lines.
    """

    def __init__(self, num_cpus: int, *, attempts: int = 3, start_timeout: float = 240.0, stop_timeout: float = 30.0,
                 temp_dir: str | os.PathLike | None = None, log=print):
        if not _is_int(num_cpus) or num_cpus < 1:
            raise ValueError(f"workers = {num_cpus!r}: expected an integer >= 1 (clients trained at once)")
        self.num_cpus, self.attempts = num_cpus, attempts
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout
        # Ray's socket paths must stay short: a fixed folder under the system temp dir
        self.temp_dir = Path(temp_dir or Path(tempfile.gettempdir()) / f"ltnb_ray_{os.getuid()}")
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.address = ""

    def _command(self) -> list[str]:
        ray = str(Path(sys.executable).parent / "ray")
        ports = {k: _free_port() for k in ("port", "dashboard-agent-grpc-port", "dashboard-agent-listen-port",
                                           "runtime-env-agent-port", "metrics-export-port", "ray-client-server-port")}
        self.address = f"127.0.0.1:{ports['port']}"
        return [ray, "start", "--head", "--block", f"--num-cpus={self.num_cpus}", "--num-gpus=0",
                "--include-dashboard=false", "--include-log-monitor=false", "--disable-usage-stats",
                "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp_dir}",
                f"--object-store-memory={200 * 1024 * 1024}"] + [f"--{k}={v}" for k, v in ports.items()]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # no idle workers started ahead: Flower's actors need their own runtime env anyway
        # workers at the priority of every other cell (Ray's default niceness for workers is 15)
        env.update(RAY_USAGE_STATS_ENABLED="0", RAY_agent_register_timeout_ms="180000",
                   RAY_enable_worker_prestart="0", RAY_prestart_worker_first_driver="0", RAY_worker_niceness="0")
        return env

    def __enter__(self) -> "RayHead":
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        errors = []
        for attempt in range(1, self.attempts + 1):
            t0 = time.time()
            out = self.temp_dir / f"ray_start_{os.getpid()}.log"
            with open(out, "w") as fh:
                self.proc = supervise(self._command(), grace=self.stop_timeout, stdout=fh, stderr=subprocess.STDOUT,
                                      env=self._env(), stdin=subprocess.DEVNULL)
            while time.time() - t0 < self.start_timeout:
                text = out.read_text(errors="replace")
                if "Ray runtime started" in text:
                    self.log(f"Ray head at {self.address} with {self.num_cpus} CPU(s) started in {time.time() - t0:.1f} s")
                    return self
                if self.proc.poll() is not None:
                    break
                time.sleep(0.5)
            errors.append(f"attempt {attempt}: " + self._why(out))
            self._stop()
        raise RuntimeError("federated: Ray did not start (" + " | ".join(errors) + f"). Logs under {self.temp_dir}")

    def _why(self, out: Path) -> str:
        lines = [ln for ln in out.read_text(errors="replace").splitlines() if ln.strip()]
        raylet = sorted(self.temp_dir.glob("session_*/logs/raylet.out"), key=lambda p: p.stat().st_mtime)
        fatal = [ln for ln in (raylet[-1].read_text(errors="replace").splitlines() if raylet else []) if " C " in ln]
        return (fatal[-1][-300:] if fatal else lines[-1][-300:] if lines else "no output")

    def _stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)  # the supervisor stops Ray, then kills what is left of its group
        try:
            p.wait(self.stop_timeout + 15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)

    def __exit__(self, exc_type, *exc) -> None:
        self._stop()
        if exc_type is None:  # keep `ray start`'s output only when something went wrong
            with contextlib.suppress(OSError):
                (self.temp_dir / f"ray_start_{os.getpid()}.log").unlink()


# ------------------------------------------------------------------------------------ the cell
def run(
    study_dir,
    source: str,
    *,
    seed: int = 0,
    strategies: Sequence[str] = STRATEGIES,
    settings: LotterySettings = LotterySettings(),
    fed_settings: FederatedSettings = FederatedSettings(),
    workers: int | None = None,
    progress: bool = True,
    log=print,
) -> pd.DataFrame:
    """Run (or resume, or just read) the federated runs of one source and seed; return their rows.

    Checks everything first (``prepare``), then runs every unfinished run (the dense baseline, then
    each ticket round x strategy) in one Flower simulation with ``clients_per_domain`` clients per
    client domain (``fed_settings``), ``workers`` of them training at once (default: ``$LTNB_TORCH_THREADS`` when the
    batch runner set it, else the machine's CPU count, at most the number of clients).
    ``fed_settings.audit``: every reply also carries a fingerprint of the client's shard and a description
    of the message it received (``messages.parquet``, columns ``data_sha256``, ``received``); it costs
    a few hundred bytes per reply, which are counted like everything else.
    """
    plan = prepare(study_dir, source, seed=seed, strategies=strategies, settings=settings, fed_settings=fed_settings)
    audit = fed_settings.audit
    n_clients = len(plan.client_domains) * plan.clients_per_domain
    if workers is None:
        workers = int(os.environ.get("LTNB_TORCH_THREADS") or os.cpu_count() or 1)
    workers = max(1, min(int(workers), n_clients))
    info = {"stage": "federated", "source": plan.source, "seed": plan.seed, "client_domains": list(plan.client_domains),
            "clients_per_domain": plan.clients_per_domain, "fl_rounds": plan.fl_rounds, "local_epochs": plan.local_epochs,
            "local_patience": plan.local_patience, "target_share": plan.target_share,
            "source_chain": os.path.relpath(plan.chain, plan.study), "settings": plan.settings.to_dict(),
            "data_key": plan.data_key, "vocab_size": plan.vocab_size, "settings_hash": plan.settings_hash,
            "audit": bool(audit), "version": FEDERATED_VERSION}
    f = plan.run_dir / "settings.json"
    def runs_alike(d):  # the target share is the analysis's (not in the hash): it may change between reruns
        return {k: v for k, v in d.items() if k != "target_share"}

    if f.exists() and runs_alike(read_json(f)) != runs_alike(json.loads(json.dumps(info, default=str))):
        raise ValueError(f"{f}: records different settings than this run (hash collision or edited file); move the folder away")
    write_json(f, info)
    shards = write_shards(plan)
    pending = [(s, r) for s, r in plan.runs() if not (plan.run_dir / "runs" / run_name(s, r) / ROUNDS).exists()]
    if pending:
        log(f"federated {plan.source} seed {plan.seed}: {len(pending)} run(s) to do "
            f"({', '.join(run_name(s, r) for s, r in pending)}), {n_clients} clients, {workers} at a time")
        spec = ClientSpec(vocab_size=plan.vocab_size, model=plan.settings.model, train=plan.local_train, seed=plan.seed,
                          clients=tuple(replace(c, path=str(plan.run_dir / c.path)) for c in shards), threads=1,
                          audit=bool(audit))
        _simulate(plan, spec, pending, workers=workers, progress=progress, log=log)
    rows = collect(plan.run_dir)
    done = {run_name(s, r) for s, r in plan.runs()}
    if done <= set(rows["strategy"] + "-r" + rows["ticket_round"].map("{:02d}".format)):
        write_json(plan.run_dir / paths.COMPLETE_MARKER, {"runs": sorted(done), "rows": len(rows),
                                                          "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    keep = rows["strategy"].isin([DENSE, NAIVE]) | (rows["strategy"].isin(plan.strategies) & rows["ticket_round"].isin(plan.ticket_rounds))
    return rows[keep].reset_index(drop=True)


def _simulate(plan: Federation, spec: ClientSpec, runs, *, workers: int, progress: bool, log) -> None:
    from flwr.simulation import run_simulation

    abort = threading.Event()
    flwr_logger = logging.getLogger("flwr")
    level, pythonpath = flwr_logger.level, os.environ.get("PYTHONPATH")
    flwr_logger.setLevel(logging.ERROR)  # not its INFO per round, nor the run_simulation deprecation notice
    try:
        with RayHead(workers, log=log) as head, warnings_quiet():
            backend_config = {
                "init_args": {"address": head.address, "log_to_driver": False, "logging_level": "WARNING"},
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            }
            try:
                run_simulation(server_app=server_app(plan, runs, abort, progress), client_app=client_app(spec),
                               num_supernodes=len(spec.clients), backend_config=backend_config)
            finally:
                abort.set()  # a ServerApp thread still waiting for replies gives up
    finally:
        flwr_logger.setLevel(level)
        # Flower's Ray backend puts the driver's sys.path into os.environ["PYTHONPATH"]; put it back
        if pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = pythonpath


@contextlib.contextmanager
def warnings_quiet():
    """Flower's run_simulation warns that it is deprecated in favour of the `flwr run` CLI (a
    Flower App project plus a SuperLink); it is still Flower's documented Python entry point."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def collect(run_dir: Path) -> pd.DataFrame:
    """All finished runs of a cell folder (their ``rounds.parquet``), also written as its results."""
    files = sorted((Path(run_dir) / "runs").glob(f"*/{ROUNDS}"))
    rows = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame(
        columns=["strategy", "ticket_round", "fl_round"])
    if files:
        rows = rows.sort_values(["ticket_round", "strategy", "fl_round"], kind="stable").reset_index(drop=True)
        write_parquet(Path(run_dir) / RESULTS, rows)
    return rows


