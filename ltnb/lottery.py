"""Iterative magnitude pruning chains (obtain) and mask transfer runs, with per-round checkpoints.

One round of ``obtain`` reads like the paper (Section 4.3.2)::

    prune 35% of each layer's survivors of the previous round's trained weights   (round >= 1)
    set the survivors' initial values by strategy (reset / random / rewind)
    train, keep the best validation epoch, evaluate on validation and test
    save the ticket (mask, theta_0 reference, trained weights) and append the round's result row

Round 0 trains the dense network from theta_0 (FULL-MODEL; its rows have ``round == 0``).

Folders: ``paths.obtain_dir(study, domain, strategy, seed) / <hash>`` and
``paths.transfer_dir(study, source, target, strategy, seed) / <hash>``, each with ``settings.json``,
``theta_0.safetensors``, ``round_RR.safetensors`` (tickets), ``results.parquet`` (one row per finished
round) and, when all requested rounds are done, ``_COMPLETE.json``. Every file is written atomically.

The hash covers every setting that changes a round's numbers *except* ``rounds`` (round r of a
5-round chain is round r of a 20-round chain, so asking for more rounds extends the same chain) and,
for strategies other than ``rewind``, ``rewind_steps``; plus the vocabulary size and the data key.

Resuming: a round is finished when its row is in results.parquet (the ticket is written first).
Every round's randomness is derived from (seed, round, purpose) (``config.derive_seed``), and a
round restarts from the saved ticket of the round before, so a chain interrupted anywhere, between
rounds or mid-round, gives the same numbers as an uninterrupted one (on the CPU).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Mapping

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import integrity, paths, strategies, tickets
from . import train as _train
from ._io import read_json, stable_hash, write_json, write_parquet
from .config import LotterySettings, derive_seed
from .model import KimCNN, initial_state
from .pruning import Mask, prune_step
from .tokens import SPLITS, TokenSplit

COLUMNS = [
    "stage", "source", "target", "domain", "pair", "seed", "strategy", "round", "sparsity",
    "val_acc", "test_acc", "best_epoch", "epochs_run", "seconds", "settings_hash",
]
RESULTS = "results.parquet"
THETA_0 = "theta_0.safetensors"
REWOUND = "theta_rewind.safetensors"


def ticket_name(round: int) -> str:
    return f"round_{int(round):02d}.safetensors"


def data_fingerprint(data: Mapping[str, TokenSplit]) -> str:
    """A key for data passed directly (tests): SHA-256 of the splits' tensors."""
    h = hashlib.sha256()
    for name in sorted(data):
        for t in (data[name].ids, data[name].offsets, data[name].labels):
            h.update(name.encode())
            h.update(t.contiguous().numpy().tobytes())
    return "data-" + h.hexdigest()[:16]


#: Bumped whenever the engine's arithmetic changes (here: sparse kernels, packed embedding, eval
#: batching changed float rounding), so a chain resumed by a newer engine never mixes its rounds
#: with rounds of an older one: it starts a new folder instead.
ENGINE_VERSION = 2


def run_hash(settings: LotterySettings, *, data_key: str, vocab_size: int, strategy: str) -> str:
    """The folder name of a run (see the module doc for what it covers)."""
    d = settings.to_dict()
    d.pop("rounds")
    if strategy != "rewind":
        d.pop("rewind_steps")
    return stable_hash({"settings": d, "data_key": data_key, "vocab_size": int(vocab_size), "engine": ENGINE_VERSION})


def chain_dir(study_dir, domain: str, strategy: str, seed: int, settings: LotterySettings, data_key: str, vocab_size: int | None = None) -> Path:
    """Folder of one obtain chain. ``vocab_size`` defaults to the one recorded by the data key's
    encodings (``ltnb.vocab.load_encoded``) when omitted."""
    if vocab_size is None:
        _, vocab_size = _load_encoded(study_dir, domain)
    h = run_hash(settings, data_key=data_key, vocab_size=vocab_size, strategy=strategy)
    return paths.obtain_dir(study_dir, domain, strategy, seed) / h


def _load_encoded(study_dir, domain):
    from . import vocab  # written by the lead; imported late so the engine works without it

    return vocab.load_encoded(study_dir, domain)


def _resolve_data(study_dir, domain, data, vocab_size, data_key):
    if data is None:
        from . import vocab

        data, vocab_size = vocab.load_encoded(study_dir, domain)
        data_key = vocab.data_key(study_dir) if data_key is None else data_key
    else:
        if vocab_size is None:
            raise ValueError("vocab_size: required when data= is passed (the number of rows of the embedding)")
        data_key = data_fingerprint(data) if data_key is None else data_key
    missing = [s for s in SPLITS if s not in data]
    if missing:
        raise ValueError(f"data: missing split(s) {missing}; expected {list(SPLITS)}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size = {vocab_size!r}: expected a positive integer")
    top = max((int(data[s].ids.max()) for s in SPLITS if data[s].ids.numel()), default=0)
    if top >= vocab_size:
        raise ValueError(f"data: token id {top} >= vocab_size {vocab_size}")
    return data, vocab_size, data_key


def _check_common(seed, settings, progress):
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed = {seed!r}: expected a non-negative integer")
    if not isinstance(settings, LotterySettings):
        raise ValueError(f"settings: expected a ltnb.config.LotterySettings, got {type(settings).__name__}")


def _check_name(param: str, value) -> None:
    problem = integrity.name_problem(value, param)  # the name becomes a folder name
    if problem:
        raise ValueError(f"{param} = {value!r}: expected a domain name; {problem}")


def _read_rows(run: Path) -> pd.DataFrame:
    f = run / RESULTS
    return integrity.read_parquet(f) if f.exists() else pd.DataFrame(columns=COLUMNS)


def _finished_rounds(run: Path) -> set[int]:
    rows = _read_rows(run)
    return {int(r) for r in rows["round"] if (run / ticket_name(int(r))).exists()}


def _prepare_run(run: Path, info: dict) -> None:
    f = run / "settings.json"
    if f.exists():

        def comparable(d):  # as JSON (tuples -> lists), without the round count
            d = json.loads(json.dumps(d, default=str))
            d.pop("rounds", None)
            d.get("settings", {}).pop("rounds", None)
            return d

        if comparable(read_json(f)) != comparable(info):
            raise ValueError(f"{f}: records different settings than this run (hash collision or edited file); move the folder away")
    write_json(f, info)


def _load_weights(model: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(weights[n])


def _append_row(run: Path, rows: pd.DataFrame, row: dict) -> pd.DataFrame:
    new = pd.DataFrame([row], columns=COLUMNS)
    rows = new if rows.empty else pd.concat([rows[rows["round"] != row["round"]], new], ignore_index=True)
    rows = rows.sort_values("round", kind="stable").reset_index(drop=True)
    write_parquet(run / RESULTS, rows)
    return rows


def _trained_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters()}


def obtain(
    study_dir,
    domain: str,
    *,
    seed: int = 0,
    strategy: str = "reset",
    settings: LotterySettings = LotterySettings(),
    data: Mapping[str, TokenSplit] | None = None,
    vocab_size: int | None = None,
    data_key: str | None = None,
    device: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run (or resume, or just read) one IMP chain; return its result rows (rounds 0..settings.rounds).

    ``data=None`` reads the study's encodings with ``ltnb.vocab.load_encoded(study_dir, domain)``
    and keys the run by ``ltnb.vocab.data_key(study_dir)``. Passing ``data`` (dict split ->
    TokenSplit) needs ``vocab_size``; ``data_key`` then defaults to a fingerprint of the tensors.
    """
    _check_common(seed, settings, progress)
    _check_name("domain", domain)
    if strategy not in strategies.OBTAIN:
        raise ValueError(f"strategy = {strategy!r}: expected one of {sorted(strategies.OBTAIN)} for obtain "
                         f"(transfer strategies {sorted(strategies.TRANSFER)} belong to ltnb.lottery.transfer)")
    data, vocab_size, data_key = _resolve_data(study_dir, domain, data, vocab_size, data_key)
    if strategy == "rewind":
        steps = settings.train.max_epochs * -(-len(data["train"]) // settings.train.batch_size)
        if settings.rewind_steps > steps:
            raise ValueError(f"rewind_steps = {settings.rewind_steps}: round 0 has at most {steps} optimizer steps "
                             f"({settings.train.max_epochs} epochs x {-(-len(data['train']) // settings.train.batch_size)} batches)")
    h = run_hash(settings, data_key=data_key, vocab_size=vocab_size, strategy=strategy)
    run = paths.obtain_dir(study_dir, domain, strategy, seed) / h
    device = device or _train.default_device()
    info = {"stage": "obtain", "domain": domain, "strategy": strategy, "seed": seed, "settings": settings.to_dict(),
            "data_key": data_key, "vocab_size": vocab_size, "settings_hash": h, "rounds": settings.rounds}
    _prepare_run(run, info)

    theta_file = run / THETA_0
    if theta_file.exists():
        theta_0, _ = tickets.load_state(theta_file)
    else:
        theta_0 = initial_state(vocab_size, settings.model, derive_seed(seed, "theta_0"))
        tickets.save_state(theta_file, theta_0, {"what": "theta_0", "seed": str(seed)})

    rows = _read_rows(run)
    done = _finished_rounds(run)
    start_round = next((r for r in range(settings.rounds + 1) if r not in done), settings.rounds + 1)
    rows = rows[rows["round"] < start_round].reset_index(drop=True)

    rewound = None
    if strategy == "rewind" and start_round > 0:
        rewound, _ = tickets.load_state(run / REWOUND)
    prev = tickets.load(run / ticket_name(start_round - 1)) if 0 < start_round <= settings.rounds else None
    prev_mask = prev.masks if prev else None
    prev_trained = prev.trained if prev else None

    base = {"stage": "obtain", "source": domain, "target": domain, "domain": domain, "pair": domain,
            "seed": seed, "strategy": strategy, "settings_hash": h}
    bar = tqdm(range(start_round, settings.rounds + 1), desc=f"obtain {domain} {strategy} seed{seed}",
               disable=not progress, unit="round")
    model = None
    for r in bar:
        t0 = time.perf_counter()
        if r == 0:
            mask = Mask.ones_like(theta_0)
            init = theta_0
        else:
            mask = prune_step(prev_trained, prev_mask, settings.prune_fraction, prune_biases=settings.prune_biases)
            start = strategies.Start(theta_0=theta_0, vocab_size=vocab_size, model=settings.model, seed=seed,
                                     round=r, strategy=strategy, rewound=rewound)
            init = strategies.OBTAIN[strategy](mask, start)
        if model is None:  # built once per chain (~0.1 s); every round overwrites all its values
            model = KimCNN.from_settings(vocab_size, settings.model, seed=None)
        _load_weights(model, init)

        on_step = None
        if r == 0 and strategy == "rewind":
            captured = {}
            k = settings.rewind_steps

            def on_step(step, m, captured=captured, k=k):
                if step == k:
                    captured["w"] = _trained_state(m)

            if k == 0:
                captured["w"] = {n: t.clone() for n, t in theta_0.items()}
        result = _train.fit(model, data, settings.train, masks=mask, seed=derive_seed(seed, r, "train"),
                            device=device, progress=progress, desc=f"round {r}", on_step=on_step)
        trained = _trained_state(model)
        if r == 0 and strategy == "rewind":
            if "w" not in captured:
                raise ValueError(f"rewind_steps = {settings.rewind_steps}: round 0 ran only {result.steps} steps")
            rewound = captured["w"]
            tickets.save_state(run / REWOUND, rewound, {"what": "rewound", "steps": str(settings.rewind_steps)})

        tickets.save(run / ticket_name(r), masks=mask, trained=trained, round=r, settings=settings,
                     vocab_size=vocab_size, theta_0=theta_file,
                     extra={"stage": "obtain", "domain": domain, "strategy": strategy, "seed": seed})
        row = dict(base, round=r, sparsity=mask.sparsity(), val_acc=result.val_acc, test_acc=result.test_acc,
                   best_epoch=result.best_epoch, epochs_run=result.epochs_run,
                   seconds=time.perf_counter() - t0)
        rows = _append_row(run, rows, row)
        bar.set_postfix(sparsity=f"{mask.sparsity():.3f}", test_acc=f"{result.test_acc:.3f}")
        prev_mask, prev_trained = mask, trained
    bar.close()
    _mark_complete(run, rows, settings.rounds)
    return rows[rows["round"] <= settings.rounds].reset_index(drop=True)


def _mark_complete(run: Path, rows: pd.DataFrame, rounds: int) -> None:
    marker = run / paths.COMPLETE_MARKER
    old = read_json(marker) if marker.exists() else {}
    if int(old.get("rounds", -1)) < rounds:
        write_json(marker, {"rounds": rounds, "rows": int(len(rows)), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})


def transfer(
    study_dir,
    source: str,
    target: str,
    *,
    seed: int = 0,
    strategy: str = "masks-reset",
    settings: LotterySettings = LotterySettings(),
    data: Mapping[str, TokenSplit] | None = None,
    vocab_size: int | None = None,
    data_key: str | None = None,
    device: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Train on ``target`` under each round's mask (1..rounds) of ``source``'s ``reset`` chain.

    No further pruning. ``masks-reset`` starts from the source chain's theta_0, ``masks-random``
    from fresh values. The TICKET-TARGET baseline is the target's own reset chain (``obtain``).
    The saved tickets reference the source chain's theta_0 (``Ticket.init``) for both strategies;
    masks-random's fresh values are re-drawable from (seed, round) (``strategies.random``).
    ``data`` is the *target* data; ``data_key`` must name the key the source chain was run with
    (default: the study's ``ltnb.vocab.data_key``, or a fingerprint of ``data`` when passed).
    """
    _check_common(seed, settings, progress)
    _check_name("source", source)
    _check_name("target", target)
    if source == target:
        raise ValueError(f"target = source = {source!r}: a transfer needs two different domains "
                         f"(the source's own chain is obtain(..., domain={source!r}))")
    if strategy not in strategies.TRANSFER:
        raise ValueError(f"strategy = {strategy!r}: expected one of {sorted(strategies.TRANSFER)} for transfer")
    if settings.rounds < 1:
        raise ValueError(f"rounds = {settings.rounds}: a transfer needs at least 1 round (masks 1..rounds of the source)")
    data, vocab_size, data_key = _resolve_data(study_dir, target, data, vocab_size, data_key)
    src = chain_dir(study_dir, source, "reset", seed, settings, data_key, vocab_size)
    src_done = _finished_rounds(src) if src.exists() else set()
    missing = [r for r in range(1, settings.rounds + 1) if r not in src_done]
    if missing:
        raise FileNotFoundError(
            f"transfer {source}->{target}: the source's reset chain at {src} lacks round(s) {missing} "
            f"(has {sorted(src_done) or 'none'}). Create it first with ltnb.lottery.obtain(study_dir, {source!r}, "
            f"seed={seed}, strategy='reset', settings=<the same settings>), i.e. notebooks/03_obtain.ipynb with "
            f"domain={source!r} strategy='reset' seed={seed} rounds>={settings.rounds} and the same other parameters."
        )
    h = run_hash(settings, data_key=data_key, vocab_size=vocab_size, strategy=strategy)
    run = paths.transfer_dir(study_dir, source, target, strategy, seed) / h
    device = device or _train.default_device()
    info = {"stage": "transfer", "source": source, "target": target, "strategy": strategy, "seed": seed,
            "settings": settings.to_dict(), "data_key": data_key, "vocab_size": vocab_size, "settings_hash": h,
            "source_chain": os.path.relpath(src, study_dir), "rounds": settings.rounds}
    _prepare_run(run, info)

    rows = _read_rows(run)
    done = _finished_rounds(run)
    theta_file = src / THETA_0
    base = {"stage": "transfer", "source": source, "target": target, "domain": target, "pair": f"{source}->{target}",
            "seed": seed, "strategy": strategy, "settings_hash": h}
    todo = [r for r in range(1, settings.rounds + 1) if r not in done]
    bar = tqdm(todo, desc=f"transfer {source}->{target} {strategy} seed{seed}", disable=not progress, unit="round")
    model = None
    for r in bar:
        t0 = time.perf_counter()
        ticket = tickets.load(src / ticket_name(r))
        if ticket.vocab_size != vocab_size:
            raise ValueError(f"{ticket.path}: made with vocab_size {ticket.vocab_size}, target data has {vocab_size}")
        start = strategies.Start(theta_0=ticket.init, vocab_size=vocab_size, model=settings.model, seed=seed,
                                 round=r, strategy=strategy)
        init = strategies.TRANSFER[strategy](ticket.masks, start)
        if model is None:  # built once per run; every round overwrites all its values
            model = KimCNN.from_settings(vocab_size, settings.model, seed=None)
        ticket.check(model)
        _load_weights(model, init)
        result = _train.fit(model, data, settings.train, masks=ticket.masks, seed=derive_seed(seed, r, "transfer", target),
                            device=device, progress=progress, desc=f"round {r}")
        tickets.save(run / ticket_name(r), masks=ticket.masks, trained=_trained_state(model), round=r, settings=settings,
                     vocab_size=vocab_size, theta_0=theta_file,
                     extra={"stage": "transfer", "source": source, "target": target, "strategy": strategy, "seed": seed})
        row = dict(base, round=r, sparsity=ticket.masks.sparsity(), val_acc=result.val_acc, test_acc=result.test_acc,
                   best_epoch=result.best_epoch, epochs_run=result.epochs_run, seconds=time.perf_counter() - t0)
        rows = _append_row(run, rows, row)
        bar.set_postfix(sparsity=f"{ticket.masks.sparsity():.3f}", test_acc=f"{result.test_acc:.3f}")
    bar.close()
    _mark_complete(run, rows, settings.rounds)
    return rows[rows["round"] <= settings.rounds].reset_index(drop=True)
