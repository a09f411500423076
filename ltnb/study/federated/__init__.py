"""Federated learning with a lottery ticket: the paper's proposed application, run with Flower.

The paper closes with "Applications in Federated Learning": a server finds a ticket on data it can
see, then clients retrain only that sparse ticket on their own data. This package runs it.

* The server holds one *source* domain. Its ticket is the mask of the source's TICKET-RESET chain
  (``ltnb.core.lottery.obtain``) at a chosen IMP round, read with ``ltnb.core.tickets.load``.
* The clients hold the other domains' training data: each client domain's training (and
  validation) split is cut into ``clients_per_domain`` disjoint shards, one per client, each in its
  own file that only that client reads.
* Runs: two dense FedAvg runs from theta_0, the fair baseline (``dense``, protocol ``rows``) and
  the naive reference (``dense-naive``, protocol ``full``), and the ticket at each chosen round with
  the initial values of ``ltnb.core.strategies`` (``masks-reset``: the chain's theta_0 under the mask;
  ``masks-random``: fresh values under the mask; protocol ``rows``), for a seed.
* Federated rounds: the server sends the global survivors to every client; each client trains
  them under the mask as the engine does and sends its survivors back; the server averages them
  weighted by the clients' training examples (FedAvg on the surviving entries only). Only surviving
  values travel, the mask once per client and run; protocol ``rows`` sends only the embedding rows
  that changed. After every round the server evaluates the global model on every domain's test split.

In three modules, by concern:

    protocol     the cell's plan (``prepare``, ``Federation``), the clients' shards, what travels
                 (masks, survivors, changed embedding rows) and a client's training step; no Flower, no Ray
    flower       the ClientApp and the ServerApp (its strategy ``MaskedFedAvg``), the bytes counted
    simulation   Flower's simulation engine on a private, supervised Ray cluster (``RayHead``)

and the cell itself here: ``run(prepare(study, source, ...))``.

Folders: ``paths.federated_dir(study, source, seed) / <hash>/`` with ``settings.json``,
``clients/`` (the shards and ``clients.json``), ``runs/<strategy>-rRR/`` (``rounds.parquet`` with one
row per federated round, written last; ``messages.parquet``, one row per message; ``global.safetensors``,
the final global model as a ticket) and ``results.parquet`` (all finished runs), and
``_COMPLETE.json`` when every requested run is done. The hash covers the source chain (its folder
name: settings, data and engine), the client domains, ``clients_per_domain``, ``fl_rounds``,
``local_epochs``, ``audit`` (when on) and ``FEDERATED_VERSION``, not the ticket rounds and
strategies, so asking for more sparsities extends a cell. A killed run has no ``rounds.parquet`` and restarts from its round 0
(federated rounds are short); finished runs are never redone.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import replace

import pandas as pd

from ltnb.base import paths
from ltnb.base._io import read_json, write_json
from ltnb.base.config import LotterySettings
from ltnb.study.federated.flower import client_app, client_train, content_bytes, describe, server_app, wire_bytes
from ltnb.study.federated.protocol import (DENSE, EMBEDDING, FEDERATED_VERSION, GLOBAL, MB, MESSAGES, NAIVE, RESULTS,
                                           ROUNDS, STRATEGIES, ClientShard, ClientSpec, Federation, RowLayout, collect,
                                           flatten, lazy_decay, local_training, looked_up_rows, pack_masks,
                                           payload_bytes, prepare, protocol_of, run_name, shard_indices, subset,
                                           unflatten, unpack_masks, write_shards)
from ltnb.study.federated.simulation import RayHead, simulate, supervise, warnings_quiet

__all__ = [
    "run", "prepare", "Federation", "ClientShard", "ClientSpec", "collect", "run_name", "write_shards", "shard_indices",
    "subset", "pack_masks", "unpack_masks", "flatten", "unflatten", "protocol_of", "RowLayout", "payload_bytes",
    "local_training", "looked_up_rows", "lazy_decay", "client_app", "client_train", "server_app", "content_bytes",
    "wire_bytes", "describe", "simulate", "RayHead", "supervise", "warnings_quiet", "FEDERATED_VERSION", "DENSE",
    "NAIVE", "STRATEGIES", "RESULTS", "ROUNDS", "MESSAGES", "GLOBAL", "MB", "EMBEDDING",
]


def run(plan: Federation, *, workers: int | None = None, progress: bool = True, log=print) -> pd.DataFrame:
    """Run (or resume, or just read) the federated runs of a cell checked by ``prepare``; return their rows.

    Runs every unfinished run (the dense baselines, then each ticket round x strategy) in one Flower
    simulation with ``clients_per_domain`` clients per client domain, ``workers`` of them training at
    once (default: ``$LTNB_TORCH_THREADS`` when the batch runner set it, else the machine's CPU count,
    at most the number of clients).
    ``plan.audit``: every reply also carries a fingerprint of the client's shard and a description
    of the message it received (``messages.parquet``, columns ``data_sha256``, ``received``); it costs
    a few hundred bytes per reply, which are counted like everything else.
    """
    n_clients = len(plan.client_domains) * plan.clients_per_domain
    if workers is None:
        workers = int(os.environ.get("LTNB_TORCH_THREADS") or os.cpu_count() or 1)
    workers = max(1, min(int(workers), n_clients))
    info = {"stage": "federated", "source": plan.source, "seed": plan.seed, "client_domains": list(plan.client_domains),
            "clients_per_domain": plan.clients_per_domain, "fl_rounds": plan.fl_rounds, "local_epochs": plan.local_epochs,
            "local_patience": plan.local_patience, "target_share": plan.target_share,
            "source_chain": os.path.relpath(plan.chain, plan.study), "settings": plan.settings.to_dict(),
            "data_key": plan.data_key, "vocab_size": plan.vocab_size, "settings_hash": plan.settings_hash,
            "audit": plan.audit, "version": FEDERATED_VERSION}
    f = plan.run_dir / "settings.json"
    def runs_alike(d):  # the target share is the analysis's (not in the hash): it may change between reruns;
        d = {k: v for k, v in d.items() if k != "target_share"}  # settings added since: at their defaults
        if isinstance(d.get("settings"), dict):
            d["settings"] = LotterySettings.comparable(d["settings"])
        return d

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
                          audit=plan.audit)
        simulate(plan, spec, pending, workers=workers, progress=progress, log=log)
    rows = collect(plan.run_dir)
    done = {run_name(s, r) for s, r in plan.runs()}
    if done <= set(rows["strategy"] + "-r" + rows["ticket_round"].map("{:02d}".format)):
        write_json(plan.run_dir / paths.COMPLETE_MARKER, {"runs": sorted(done), "rows": len(rows),
                                                          "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    keep = rows["strategy"].isin([DENSE, NAIVE]) | (rows["strategy"].isin(plan.strategies) & rows["ticket_round"].isin(plan.ticket_rounds))
    return rows[keep].reset_index(drop=True)
