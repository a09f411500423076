"""Iterative magnitude pruning chains (obtain) and mask transfer runs, with per-round checkpoints.

One round of ``obtain`` reads like the paper (Section 4.3.2)::

    prune 35% of each layer's survivors of the previous round's trained weights   (round >= 1)
    set the survivors' initial values by strategy (reset / random / reinit / rewind ..., ltnb.base.registry)
    train, keep the best validation epoch, evaluate on validation and test
    save the ticket (mask, theta_0 reference, trained weights) and append the round's result row

Round 0 trains the dense network from theta_0 (FULL-MODEL; its rows have ``round == 0``). It is
the same for every strategy of a seed (same theta_0, same training draws), so it is trained once:
a chain whose round 0 is not done yet takes it from a sibling chain of the same seed and settings
that has it (not from or for a strategy with ``trains_round0``: ``rewind`` must watch round 0 train),
bit for bit what training it again would give.

Every strategy runs through the same per-round body: its definition (``ltnb.base.registry``) says
whose masks a round trains (``masks``: its own pruning or the reset chain's; ``positions``: as they
are or at random positions) and which values it starts from (``values``); per-chain state is its hook
(``ltnb.core.strategies.RoundHook``), called at fixed points. No strategy is named here but ``reset``
(the chain the others read).

``reinit`` is the control that separates initial values from mask history: at round r it trains
the *reset* chain's mask of round r from fresh values (``ltnb.core.strategies.reinit``), so the reset
chain must have reached round r first (``obtain_cell`` runs reset first); so do the other strategies
with ``masks == "reset"`` (shuffle, rescaled, randmask-*).

A transfer run trains on the target domain under each round's mask (1..rounds) of the source's
reset chain: the same per-round body (``_train_round``), without pruning.

Folders: ``paths.obtain_dir(study, domain, strategy, seed) / <hash>`` and
``paths.transfer_dir(study, source, target, strategy, seed) / <hash>``, each with ``settings.json``,
``theta_0.safetensors``, ``round_RR.safetensors`` (tickets), ``results.parquet`` (one row per finished
round) and, when all requested rounds are done, ``_COMPLETE.json``. Every file is written atomically.

The hash covers every setting whose value differs from its default (``LotterySettings.hash_dict``,
OpenLTH's rule: a setting added with a default keeps every existing hash) *except* ``rounds`` (round r
of a 5-round chain is round r of a 20-round chain, so asking for more rounds extends the same chain) and
the settings only other strategies read (``Strategy.settings``: ``rewind_steps`` for all but ``rewind``);
plus the vocabulary size, the data key and ``ENGINE_VERSION``. ``tests/test_run_hashes.py`` pins the
hashes of the shipped plans' cells (a changed pin means every finished chain would be orphaned).

Resuming: a round is finished when its row is in results.parquet (the ticket is written first).
Every round's randomness is derived from (seed, round, purpose) (``config.derive_seed``), and a
round restarts from the saved ticket of the round before, so a chain interrupted anywhere, between
rounds or mid-round, gives the same numbers as an uninterrupted one (on the CPU).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Mapping

import pandas as pd
import torch
from tqdm.auto import tqdm

from ltnb.base import integrity, paths, registry
from ltnb.core import strategies, tickets
from ltnb.core import train as _train
from ltnb.base._io import read_json, stable_hash, write_json, write_parquet
from ltnb.base.config import CELL_PARAMS, LotterySettings, check_transfer, check_value, derive_seed
from ltnb.core.model import KimCNN, initial_state
from ltnb.core.model import build as build_model
from ltnb.base.paths import LEDGER, RESULTS, THETA_0, ticket_name
from ltnb.base.paths import ROW_COLUMNS as COLUMNS
from ltnb.core.pruning import Mask, prune_step
from ltnb.text.tokens import SPLITS, TokenSplit, fingerprint

#: Bumped whenever the engine's arithmetic changes, so a chain resumed by a newer engine never mixes
#: its rounds with rounds of an older one: it starts a new folder instead. 3: dropout on a pruned
#: embedding draws for its surviving entries only (ltnb.core.sparse.PackedEmbedding). 4: theta_0 per
#: (seed, domain) by default (``theta_0_per``), and every row carries the training diagnostics. 5: the
#: sparsest rounds run embedding and convs as one packed sparse product (ltnb.core.sparse.PackedConvs; other
#: float rounding), and the test runs on the validations' path.
#: (The run hash's rule changed once without a bump: since the registry, it covers non-default
#: settings only, so every hash of version 4 written before then differs; see docs/extending.md.)
#: Bumping it changes every pinned hash: regenerate tests/fixtures/run_hashes.json (its test says how).
ENGINE_VERSION = 5


def theta_0_seed(seed: int, domain: str, settings: LotterySettings) -> int:
    """The seed theta_0 is drawn from: (seed, domain) by default, (seed) with ``theta_0_per: seed``."""
    if settings.theta_0_per == "seed":
        return derive_seed(seed, "theta_0")
    return derive_seed(seed, domain, "theta_0")


#: layer groups of the diagnostics and the mask overlap, asked of the model (``KimCNN.LAYER_GROUPS``:
#: parameter-name prefixes); another architecture brings its own
LAYER_GROUPS = KimCNN.LAYER_GROUPS


def layer_group(name: str, model_cls=KimCNN) -> str | None:
    return model_cls.layer_group(name)


def seen_ids(split: TokenSplit, max_len: int) -> torch.Tensor:
    """The distinct token ids of ``split`` within its first ``max_len`` subwords per text (what training sees)."""
    lengths = split.lengths
    pos = torch.arange(split.ids.numel()) - torch.repeat_interleave(split.offsets[:-1], lengths)
    keep = pos < max_len
    return torch.unique(split.ids[keep])


def diagnostics(start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor],
                seen: torch.Tensor, result, model_cls=KimCNN) -> dict:
    """The training diagnostics of a round (``paths.DIAGNOSTIC_COLUMNS``): ``start`` the values the round
    trained from (pruned entries 0), ``end`` its trained values, ``seen`` the token ids of the training split."""
    out: dict = {"converged": bool(int(result.best_epoch) < int(result.epochs_run))}
    diff2 = {g: 0.0 for g in model_cls.LAYER_GROUPS}
    base2 = {g: 0.0 for g in model_cls.LAYER_GROUPS}
    for name, w0 in start.items():
        g = model_cls.layer_group(name)
        if g is None or not name.endswith(".weight"):
            continue
        w0 = w0.detach().double() * mask[name].double()  # the round's starting values under its mask
        diff2[g] += float((end[name].detach().double() - w0).pow(2).sum())
        base2[g] += float(w0.pow(2).sum())
    for g in model_cls.LAYER_GROUPS:
        out[f"wchange_{g}"] = (diff2[g] / base2[g]) ** 0.5 if base2[g] > 0 else float("nan")
    emb = mask[model_cls.EMBEDDING].bool()
    rows_alive = emb.any(dim=1)
    in_train = torch.zeros(emb.shape[0], dtype=torch.bool)
    in_train[seen[seen < emb.shape[0]]] = True
    n_alive = int(rows_alive.sum())
    out["emb_rows_seen"] = int((rows_alive & in_train).sum()) / n_alive if n_alive else float("nan")
    kept = int(emb.sum())
    out["emb_weights_seen"] = int(emb[in_train].sum()) / kept if kept else float("nan")
    return out


def run_hash(settings: LotterySettings, *, data_key: str, vocab_size: int, strategy: str) -> str:
    """The folder name of a run (see the module doc for what it covers)."""
    d = settings.hash_dict()
    d.pop("rounds", None)
    for name in _others_settings(strategy):
        d.pop(name, None)
    return stable_hash({"settings": d, "data_key": data_key, "vocab_size": int(vocab_size), "engine": ENGINE_VERSION})


def _others_settings(strategy: str) -> set[str]:
    """The settings only strategies other than ``strategy`` read (``Strategy.settings``)."""
    mine = {f for s in registry.STRATEGIES if s.name == strategy for f in s.settings}
    return {f for s in registry.STRATEGIES for f in s.settings} - mine


def chain_dir(study_dir, domain: str, strategy: str, seed: int, settings: LotterySettings, data_key: str,
              vocab_size: int | None = None) -> Path:
    """Folder of one obtain chain. ``vocab_size`` defaults to the one recorded by the study's encodings."""
    if vocab_size is None:
        from ltnb.text import vocab

        _, vocab_size = vocab.load_encoded(study_dir, domain)
    h = run_hash(settings, data_key=data_key, vocab_size=vocab_size, strategy=strategy)
    return paths.obtain_dir(study_dir, domain, strategy, seed) / h


def study_chain_dir(study_dir, domain: str, strategy: str, seed: int, settings: LotterySettings) -> Path:
    """``chain_dir`` for the study's own encodings (what notebooks use to find a chain)."""
    from ltnb.text import vocab

    return chain_dir(study_dir, domain, strategy, seed, settings, vocab.data_key(study_dir))


# ----------------------------------------------------------------------------------- shared helpers

def _resolve_data(study_dir, domain, data, vocab_size, data_key):
    if data is None:
        from ltnb.text import vocab

        data, vocab_size = vocab.load_encoded(study_dir, domain)
        data_key = vocab.data_key(study_dir) if data_key is None else data_key
    else:
        if vocab_size is None:
            raise ValueError("vocab_size: required when data= is passed (the number of rows of the embedding)")
        data_key = "data-" + fingerprint(data)[:16] if data_key is None else data_key  # data passed directly (tests)
    missing = [s for s in SPLITS if s not in data]
    if missing:
        raise ValueError(f"data: missing split(s) {missing}; expected {list(SPLITS)}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size = {vocab_size!r}: expected a positive integer")
    top = max((int(data[s].ids.max()) for s in SPLITS if data[s].ids.numel()), default=0)
    if top >= vocab_size:
        raise ValueError(f"data: token id {top} >= vocab_size {vocab_size}")
    return data, vocab_size, data_key


def _train_size(data, settings: LotterySettings):
    """``data`` with its training split cut to ``settings.train_size`` (``ltnb.text.tokens.first_per_class``);
    validation and test untouched. The setting is part of the run's hash, so each size has its own folder."""
    if settings.train_size is None:
        return data
    from ltnb.text.tokens import first_per_class

    return {**data, "train": first_per_class(data["train"], settings.train_size)}


def _check_common(seed, settings) -> None:
    check_value("lottery", "seed", seed, CELL_PARAMS["seed"]["schema"])
    if not isinstance(settings, LotterySettings):
        raise ValueError(f"settings: expected a ltnb.base.config.LotterySettings, got {type(settings).__name__}")


def _check_chain(stage: str, seed, settings, strategy: str, **names) -> None:
    """What a chain of ``stage`` (obtain, transfer) checks before anything is read or trains: the seed
    and the settings, each named domain (``domain``; ``source``, ``target``), and its strategy."""
    _check_common(seed, settings)
    for param, value in names.items():
        _check_name(param, value)
    allowed = strategies.OBTAIN if stage == "obtain" else strategies.TRANSFER
    if strategy not in allowed:
        hint = (f" (transfer strategies {sorted(strategies.TRANSFER)} belong to ltnb.core.lottery.transfer)"
                if stage == "obtain" else "")
        raise ValueError(f"strategy = {strategy!r}: expected one of {sorted(allowed)} for {stage}{hint}")


def _check_name(param: str, value) -> None:
    """A domain name becomes a folder name: the rule of ``ltnb.base.config.NAME`` (via ``ltnb.base.integrity``)."""
    problem = integrity.name_problem(value, param)
    if problem:
        raise ValueError(f"{param} = {value!r}: expected a domain name; {problem}")


def _read_rows(run: Path) -> pd.DataFrame:
    f = run / RESULTS
    rows = integrity.read_parquet(f) if f.exists() else pd.DataFrame(columns=COLUMNS)  # refused if changed
    for c in COLUMNS:  # rows written before a column existed
        if c not in rows.columns:
            rows[c] = pd.NA
    return rows[COLUMNS]


def _finished_rounds(run: Path) -> set[int]:
    rows = _read_rows(run)
    return {int(r) for r in rows["round"] if (run / ticket_name(int(r))).exists()}


def row_digest(row: Mapping) -> str:
    """A digest of one result row's values (``COLUMNS``), the same before and after a Parquet round trip
    (numbers as floats, missing values as null)."""
    import math
    import numbers

    def plain(v):
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            return None
        if isinstance(v, (bool, numbers.Number)) or hasattr(v, "dtype"):
            try:
                f = float(v)
            except (TypeError, ValueError):
                return str(v)
            return None if math.isnan(f) else repr(f)
        return str(v)

    return stable_hash({c: plain(row.get(c)) for c in COLUMNS}, length=64)


def _ledger(run: Path) -> dict:
    f = run / LEDGER
    try:
        d = read_json(f) if f.exists() else {}
    except ValueError as e:
        raise ValueError(f"{f}: unreadable ({e}); delete the chain folder {run} to train the chain anew") from None
    return d if isinstance(d, dict) else {}


def _record(run: Path, rounds: Mapping[int, tuple[str, str]]) -> None:
    """Add ``{round: (ticket sha256, row digest)}`` to the chain's ledger."""
    ledger = _ledger(run)
    ledger.update({str(r): {"ticket": t, "row": d} for r, (t, d) in rounds.items()})
    write_json(run / LEDGER, dict(sorted(ledger.items(), key=lambda kv: int(kv[0]))))


def _verify_finished(run: Path) -> None:
    """Before a chain resumes (or is read back as finished), every finished round is checked:

    * by digest: its ticket still has the content it was written with (``tickets.load_state``);
    * by meaning: the ticket is the round its name says and keeps exactly the count of weights the
      round implies (``tickets.load``), its mask lies inside the previous round's (a pruned weight
      never comes back), and its row's sparsity is the ticket's;
    * against the chain's ledger (``paths.LEDGER``): the ticket's SHA-256 and the row's digest are what
      the chain recorded when it wrote the round, so a ticket copied over another, or a mask or a row
      edited and sealed again, is refused instead of being carried on by the rerun.

    A changed round stops the chain, naming the file and what to do (its later rounds were trained from
    it, so the chain cannot be repaired in place). Rounds finished before chains kept a ledger are
    recorded on first sight."""
    advice = f"Its chain's later rounds were trained from it: delete the chain folder {run} and run again to train it anew."
    rows = _read_rows(run).set_index("round", drop=False)
    ledger, new, prev = _ledger(run), {}, None
    for r in sorted(_finished_rounds(run)):
        f = run / ticket_name(r)
        try:
            ticket = tickets.load(f)
        except integrity.IntegrityError as e:
            raise integrity.IntegrityError(e.file, e.expected, e.found, "tensor data or metadata", advice=advice) from None
        if prev is not None:
            grown = [n for n, m in ticket.masks.items() if bool((m & ~prev.masks[n]).any())]
            if grown:
                raise ValueError(f"{f}: its mask revives weights that round {prev.round} pruned (in {', '.join(grown)}); "
                                 f"a pruned weight never comes back. {advice}")
        row = rows.loc[r]
        if abs(float(row["sparsity"]) - ticket.masks.sparsity()) > 1e-9:
            raise ValueError(f"{run / RESULTS}: round {r}'s row says sparsity {float(row['sparsity']):.6f}, its ticket "
                             f"{f.name} has {ticket.masks.sparsity():.6f}. {advice}")
        sha, digest = integrity.file_sha256(f), row_digest(row)
        rec = ledger.get(str(r))
        if rec is None:
            new[r] = (sha, digest)
        elif rec.get("ticket") != sha:
            raise integrity.IntegrityError(f, rec.get("ticket"), sha, "ticket", recorded=f"in {run / LEDGER} when round {r} "
                                           "was trained", advice=advice)
        elif rec.get("row") != digest:
            raise ValueError(f"{run / RESULTS}: round {r}'s row is not the row the chain wrote (its digest was recorded "
                             f"in {run / LEDGER}); the table was edited. {advice}")
        prev = ticket
    if new:
        _record(run, new)


def _prepare_run(run: Path, info: dict) -> None:
    f = run / "settings.json"
    if f.exists():

        def comparable(d):  # as JSON (tuples -> lists), settings added since at their defaults, no round count
            d = json.loads(json.dumps(d, default=str))
            d.pop("rounds", None)
            if isinstance(d.get("settings"), dict):
                d["settings"] = LotterySettings.comparable(d["settings"])
                d["settings"].pop("rounds", None)
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
    rest = rows[rows["round"] != row["round"]]
    rows = new if rest.empty else pd.concat([rest, new], ignore_index=True)
    rows = rows.sort_values("round", kind="stable").reset_index(drop=True)
    write_parquet(run / RESULTS, rows)
    return rows


def _trained_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters()}


def _mark_complete(run: Path, rows: pd.DataFrame, rounds: int) -> None:
    marker = run / paths.COMPLETE_MARKER
    old = read_json(marker) if marker.exists() else {}
    if int(old.get("rounds", -1)) < rounds:
        write_json(marker, {"rounds": rounds, "rows": int(len(rows)), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})


class _Run:
    """What every round of one chain or transfer run shares: its folder, data, model, rows."""

    def __init__(self, run: Path, *, data, settings: LotterySettings, vocab_size: int, theta_file: Path,
                 base: dict, extra: dict, device: str, progress: bool):
        self.run, self.data, self.settings, self.vocab_size = run, data, settings, vocab_size
        self.theta_file, self.base, self.extra, self.device, self.progress = theta_file, base, extra, device, progress
        self.rows = _read_rows(run)
        self.model = None
        self.seen = seen_ids(data["train"], settings.train.max_len)  # for emb_rows_seen

    def train_round(self, r: int, mask: Mask, init: Mapping[str, torch.Tensor], *, seed: int,
                    on_step: Callable | None = None) -> tuple[dict[str, torch.Tensor], _train.FitResult]:
        """One round: load ``init``, train under ``mask``, save the ticket, append the row."""
        t0, c0 = time.perf_counter(), time.process_time()
        if self.model is None:  # built once per run (~0.1 s); every round overwrites all its values
            self.model = build_model(self.vocab_size, self.settings.model, seed=None)
        _load_weights(self.model, init)
        result = _train.fit(self.model, self.data, self.settings.train, masks=mask, seed=seed, device=self.device,
                            progress=self.progress, desc=f"round {r}", on_step=on_step)
        trained = _trained_state(self.model)
        diag = diagnostics(init, trained, mask, self.seen, result, type(self.model))
        self.save_round(r, mask, trained, result, seconds=time.perf_counter() - t0,
                        cpu_seconds=time.process_time() - c0, diag=diag)
        return trained, result

    def save_round(self, r: int, mask: Mask, trained: Mapping[str, torch.Tensor], result, *, seconds: float,
                   cpu_seconds: float = float("nan"), diag: Mapping | None = None) -> None:
        """Save the ticket and append the row; ``diag``: the diagnostics (default: taken from ``result``,
        a sibling chain's row of the shared round 0)."""
        tickets.save(self.run / ticket_name(r), masks=mask, trained=trained, round=r, settings=self.settings,
                     vocab_size=self.vocab_size, theta_0=self.theta_file, extra=self.extra)
        if diag is None:
            diag = {c: result[c] for c in paths.DIAGNOSTIC_COLUMNS}
        row = dict(self.base, round=r, sparsity=mask.sparsity(), val_acc=result.val_acc, test_acc=result.test_acc,
                   test_n=len(self.data["test"]), best_epoch=result.best_epoch, epochs_run=result.epochs_run,
                   seconds=seconds, cpu_seconds=cpu_seconds, **diag)
        self.rows = _append_row(self.run, self.rows, row)
        written = self.rows.set_index("round", drop=False).loc[r]
        _record(self.run, {r: (integrity.file_sha256(self.run / ticket_name(r)), row_digest(written))})

    def finish(self) -> pd.DataFrame:
        _mark_complete(self.run, self.rows, self.settings.rounds)
        return self.rows[self.rows["round"] <= self.settings.rounds].reset_index(drop=True)


# ------------------------------------------------------------------------------------------- obtain

def _shared_round0(study_dir, domain, seed, strategy, h, theta_0: Mapping[str, torch.Tensor]):
    """A finished round 0 of a sibling chain (same seed and settings hash, another strategy whose
    round 0 is the plain dense training), as ``(ticket, row)``; None if there is none."""
    if registry.get("obtain", strategy).trains_round0:
        return None
    for other in strategies.OBTAIN:
        if other == strategy or registry.get("obtain", other).trains_round0:
            continue
        sib = paths.obtain_dir(study_dir, domain, other, seed) / h
        if 0 not in (_finished_rounds(sib) if sib.exists() else set()):
            continue
        theirs, _ = tickets.load_state(sib / THETA_0)  # (the files' bytes may differ: safetensors
        if set(theirs) != set(theta_0) or not all(torch.equal(theirs[n], theta_0[n]) for n in theta_0):
            continue  # orders metadata freely) -- not the same theta_0: cannot happen, never assume
        ticket = tickets.load(sib / ticket_name(0))
        row = _read_rows(sib).set_index("round").loc[0]
        return ticket, row
    return None


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

    ``data=None`` reads the study's encodings with ``ltnb.text.vocab.load_encoded(study_dir, domain)``
    and keys the run by ``ltnb.text.vocab.data_key(study_dir)``. Passing ``data`` (dict split ->
    TokenSplit) needs ``vocab_size``; ``data_key`` then defaults to a fingerprint of the tensors.
    """
    chain, theta_0, reset_run, start_round = _open_chain(study_dir, domain, seed=seed, strategy=strategy,
                                                         settings=settings, data=data, vocab_size=vocab_size,
                                                         data_key=data_key, device=device, progress=progress)
    run, h, vocab_size = chain.run, chain.base["settings_hash"], chain.vocab_size
    definition = registry.get("obtain", strategy)
    hook = strategies.hook(definition, settings)
    _verify_finished(run)
    hook.resume(run, start_round)
    prev = tickets.load(run / ticket_name(start_round - 1)) if 0 < start_round <= settings.rounds else None
    prev_mask, prev_trained = (prev.masks, prev.trained) if prev else (None, None)

    bar = tqdm(range(start_round, settings.rounds + 1), desc=f"obtain {domain} {strategy} seed{seed}",
               disable=not progress, unit="round")
    for r in bar:
        if r == 0:
            mask = Mask.ones_like(theta_0)
            shared = _shared_round0(study_dir, domain, seed, strategy, h, theta_0)
            if shared is not None:  # the dense round 0 was trained by a sibling chain: take it
                t0 = time.perf_counter()
                ticket, row = shared
                chain.save_round(0, mask, ticket.trained, row, seconds=time.perf_counter() - t0)
                prev_mask, prev_trained = mask, ticket.trained
                continue
            trained, result = chain.train_round(0, mask, theta_0, seed=derive_seed(seed, 0, "train"),
                                                on_step=hook.watch_round0(theta_0))
            hook.after_round0(run, result)
        else:
            if definition.masks == "reset":
                mask = _reset_mask(reset_run, r, strategy)
            else:
                mask = prune_step(prev_trained, prev_mask, settings.prune_fraction, prune_biases=settings.prune_biases)
            mask = strategies.positions(definition, mask, prev_mask, seed=seed, round=r)
            start = strategies.Start(theta_0=theta_0, vocab_size=vocab_size, model=settings.model, seed=seed,
                                     round=r, strategy=strategy, **hook.start_fields())
            init = strategies.initial_values(definition, mask, start)
            trained, result = chain.train_round(r, mask, init, seed=derive_seed(seed, r, "train"))
        bar.set_postfix(sparsity=f"{mask.sparsity():.3f}", test_acc=f"{chain.rows['test_acc'].iloc[-1]:.3f}")
        prev_mask, prev_trained = mask, trained
    bar.close()
    return chain.finish()


def _open_chain(study_dir, domain, *, seed, strategy, settings, data, vocab_size, data_key, device, progress):
    """Check an obtain chain's arguments (before anything trains), prepare its folder and theta_0, and
    find where it resumes: ``(run state, theta_0, the reset chain's folder, first round to train)``."""
    _check_chain("obtain", seed, settings, strategy, domain=domain)
    data, vocab_size, data_key = _resolve_data(study_dir, domain, data, vocab_size, data_key)
    data = _train_size(data, settings)
    definition = registry.get("obtain", strategy)
    strategies.hook(definition, settings).check(-(-len(data["train"]) // settings.train.batch_size))
    h = run_hash(settings, data_key=data_key, vocab_size=vocab_size, strategy=strategy)
    run = paths.obtain_dir(study_dir, domain, strategy, seed) / h
    reset_run = paths.obtain_dir(study_dir, domain, "reset", seed) / h
    if definition.reads_reset_chain:  # refuse before anything trains
        have = _finished_rounds(reset_run) if reset_run.exists() else set()
        missing = [r for r in range(1, settings.rounds + 1) if r not in have]
        if missing:
            _reset_mask(reset_run, missing[0], strategy)  # raises, naming the round and what to run
    _prepare_run(run, {"stage": "obtain", "domain": domain, "strategy": strategy, "seed": seed,
                       "settings": settings.to_dict(), "data_key": data_key, "vocab_size": vocab_size,
                       "settings_hash": h, "rounds": settings.rounds})
    theta_0 = _theta_0(study_dir, run, domain, seed, settings, vocab_size)
    theta_file = run / THETA_0
    chain = _Run(run, data=data, settings=settings, vocab_size=vocab_size, theta_file=theta_file,
                 base={"stage": "obtain", "source": domain, "target": domain, "domain": domain, "pair": domain,
                       "seed": seed, "strategy": strategy, "settings_hash": h},
                 extra={"stage": "obtain", "domain": domain, "strategy": strategy, "seed": seed},
                 device=device or _train.default_device(), progress=progress)
    done = _finished_rounds(run)
    start_round = next((r for r in range(settings.rounds + 1) if r not in done), settings.rounds + 1)
    chain.rows = chain.rows[chain.rows["round"] < start_round].reset_index(drop=True)
    return chain, theta_0, reset_run, start_round


def set_aside(study_dir, run: Path, why: str) -> Path:
    """Move a run folder that cannot be resumed to ``<study>/stale/<its path>.<time>`` (kept for a person
    to look at; nothing reads it), say so, and return where it went; the run folder is left with its
    settings.json alone, and the caller starts the run anew."""
    study = Path(study_dir).resolve()
    dest = study / paths.STALE / f"{run.resolve().relative_to(study).as_posix()}.{time.strftime('%Y%m%dT%H%M%S')}"
    info = read_json(run / "settings.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(run, dest)
    run.mkdir(parents=True)
    write_json(run / "settings.json", info)  # the same run, anew: its settings stay
    print(f"{run}: {why}; set aside as {dest}, the run starts anew", flush=True)
    return dest


def _theta_0(study_dir, run: Path, domain: str, seed: int, settings: LotterySettings, vocab_size: int):
    """The chain's theta_0, checked by meaning: a file that is there must hold exactly its (seed, domain)
    draw, whatever its digest says; a missing one is drawn again, byte for byte the file its tickets
    record (``tensorfiles.write``). If finished rounds record another theta_0 file (one written before
    files were byte-stable), they cannot be verified any more: the chain is set aside (``set_aside``)
    and starts anew, instead of every later transfer failing on it."""
    theta_file = run / THETA_0
    draw = initial_state(vocab_size, settings.model, theta_0_seed(seed, domain, settings))
    if theta_file.exists():
        return _check_draw(theta_file, draw, seed, domain)
    meta = {"what": "theta_0", "seed": str(seed)}
    if settings.theta_0_per == "seed_domain":
        meta["domain"] = domain
    tickets.save_state(theta_file, draw, meta)
    done = sorted(_finished_rounds(run))
    if done:
        recorded = _header_meta(run / ticket_name(done[0])).get("theta_0_sha256")
        if recorded != integrity.file_sha256(theta_file):
            set_aside(study_dir, run, f"theta_0 was missing; drawn again, it is not the file its {len(done)} finished "
                                      f"round(s) were trained from")
            tickets.save_state(theta_file, draw, meta)
    return draw


def _check_draw(theta_file: Path, draw: Mapping[str, torch.Tensor], seed: int, domain: str) -> dict[str, torch.Tensor]:
    """theta_0 read from ``theta_file`` (its digest checked), refused unless it holds ``draw``, its
    (seed, domain) draw, equal up to float rounding (another CPU's vectorised RNG may round a last bit
    differently): a file replaced by another draw and sealed again is caught here."""
    theta_0, _ = tickets.load_state(theta_file)
    bad = [n for n in draw if n not in theta_0 or theta_0[n].shape != draw[n].shape
           or not torch.allclose(theta_0[n], draw[n], rtol=1e-5, atol=1e-6)]
    if bad or set(theta_0) != set(draw):
        raise ValueError(f"{theta_file}: does not hold the theta_0 drawn for seed {seed}, domain {domain} "
                         f"(differs in {', '.join(bad) or 'its tensor names'}): the file was replaced. Delete the "
                         f"chain folder {theta_file.parent} to train the chain anew.")
    return theta_0


def _header_meta(path: Path) -> dict:
    """A tensor file's header metadata, unchecked (``{}`` if unreadable)."""
    from ltnb.base import tensorfiles

    try:
        return tensorfiles.read(path, missing="missing")[1]
    except (OSError, ValueError):
        return {}


def _reset_mask(reset_run: Path, r: int, strategy: str) -> Mask:
    f = reset_run / ticket_name(r)
    if r not in (_finished_rounds(reset_run) if reset_run.exists() else set()):
        raise FileNotFoundError(f"strategy {strategy!r} trains the reset chain's mask of round {r}, but {f} is not "
                                f"finished: run the reset chain of this domain, seed and settings first "
                                f"(ltnb.core.lottery.obtain_cell runs reset before the others)")
    return tickets.load(f).masks


def _ordered(names, first: str) -> list[str]:
    names = list(dict.fromkeys(names))
    return sorted(names, key=lambda s: s != first)


class ChainsFailed(RuntimeError):
    """Some chains of a cell failed (the others ran to the end); ``.errors`` maps strategy -> error."""

    def __init__(self, what: str, errors: dict[str, BaseException]):
        self.errors = errors
        lines = "; ".join(f"{s}: {type(e).__name__}: {e}" for s, e in errors.items())
        super().__init__(f"{what}: {len(errors)} chain(s) failed ({lines})")


def _run_each(what: str, names, run_one: Callable[[str], pd.DataFrame]) -> pd.DataFrame:
    """Run every named chain even when one fails; raise ChainsFailed afterwards, naming each failure."""
    frames, errors = [], {}
    for name in names:
        try:
            frames.append(run_one(name))
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - one failing chain must not stop the others
            errors[name] = e
    if errors:
        raise ChainsFailed(what, errors)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def obtain_cell(study_dir, domain: str, *, seed: int = 0, strategies: tuple[str, ...] = registry.defaults("obtain"),
                settings: LotterySettings = LotterySettings(), device: str | None = None,
                progress: bool = True) -> pd.DataFrame:
    """Every chain of one (domain, seed): ``reset`` first (the others reuse its dense round 0, and
    ``reinit`` trains its masks), then the rest. A failing chain does not stop the others; the
    failures are raised together at the end (``ChainsFailed``)."""
    data, vocab_size, data_key = _resolve_data(study_dir, domain, None, None, None)

    def one(strategy: str) -> pd.DataFrame:
        return obtain(study_dir, domain, seed=seed, strategy=strategy, settings=settings, data=data,
                      vocab_size=vocab_size, data_key=data_key, device=device, progress=progress)

    return _run_each(f"obtain {domain} seed {seed}", _ordered(strategies, "reset"), one)


# ----------------------------------------------------------------------------------------- transfer

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
    from fresh values; ``randmask-*`` train the source masks' per-tensor counts at random positions
    (``strategies.random_positions``; the run's tickets record the mask it trained). The TICKET-TARGET baseline is the target's own reset chain (``obtain``).
    The saved tickets reference the source chain's theta_0 (``Ticket.init``) for both strategies;
    masks-random's fresh values are re-drawable from (seed, round) (``strategies.random``).
    ``data`` is the *target* data; ``data_key`` must name the key the source chain was run with
    (default: the study's ``ltnb.text.vocab.data_key``, or a fingerprint of ``data`` when passed).
    """
    _check_chain("transfer", seed, settings, strategy, source=source, target=target)
    if source == target:
        raise ValueError(f"target = source = {source!r}: a transfer needs two different domains "
                         f"(the source's own chain is obtain(..., domain={source!r}))")
    check_transfer(settings)
    data, vocab_size, data_key = _resolve_data(study_dir, target, data, vocab_size, data_key)
    data = _train_size(data, settings)
    src = chain_dir(study_dir, source, "reset", seed, settings, data_key, vocab_size)
    src_done = _finished_rounds(src) if src.exists() else set()
    missing = [r for r in range(1, settings.rounds + 1) if r not in src_done]
    if missing:
        raise FileNotFoundError(
            f"transfer {source}->{target}: the source's reset chain at {src} lacks round(s) {missing} "
            f"(has {sorted(src_done) or 'none'}). Create it first with ltnb.core.lottery.obtain(study_dir, {source!r}, "
            f"seed={seed}, strategy='reset', settings=<the same settings>), i.e. notebooks/03_obtain.ipynb with "
            f"domain={source!r} seed={seed} rounds>={settings.rounds} and the same other settings."
        )
    # the source's theta_0 (masks-reset trains from it) is its (seed, source) draw, whatever its digest says
    _check_draw(src / THETA_0, initial_state(vocab_size, settings.model, theta_0_seed(seed, source, settings)), seed, source)
    h = run_hash(settings, data_key=data_key, vocab_size=vocab_size, strategy=strategy)
    run = paths.transfer_dir(study_dir, source, target, strategy, seed) / h
    _prepare_run(run, {"stage": "transfer", "source": source, "target": target, "strategy": strategy, "seed": seed,
                       "settings": settings.to_dict(), "data_key": data_key, "vocab_size": vocab_size,
                       "settings_hash": h, "source_chain": os.path.relpath(src, study_dir), "rounds": settings.rounds})
    chain = _Run(run, data=data, settings=settings, vocab_size=vocab_size, theta_file=src / THETA_0,
                 base={"stage": "transfer", "source": source, "target": target, "domain": target,
                       "pair": f"{source}->{target}", "seed": seed, "strategy": strategy, "settings_hash": h},
                 extra={"stage": "transfer", "source": source, "target": target, "strategy": strategy, "seed": seed},
                 device=device or _train.default_device(), progress=progress)
    try:
        _verify_finished(run)
    except tickets.ThetaChanged as e:  # the source chain was set aside and trained anew: so is this run
        set_aside(study_dir, run, f"its source chain's theta_0 is not the one it was trained with ({e})")
        chain.rows = _read_rows(run)
    done = _finished_rounds(run)
    todo = [r for r in range(1, settings.rounds + 1) if r not in done]
    definition = registry.get("transfer", strategy)
    bar = tqdm(todo, desc=f"transfer {source}->{target} {strategy} seed{seed}", disable=not progress, unit="round")
    for r in bar:
        ticket = tickets.load(src / ticket_name(r))
        if ticket.vocab_size != vocab_size:
            raise ValueError(f"{ticket.path}: made with vocab_size {ticket.vocab_size}, target data has {vocab_size}")
        _check_ticket_shapes(ticket, vocab_size, settings)
        prev = None  # the run's own mask of the round before (random positions are drawn inside it)
        if definition.positions != "ticket" and r > 1:
            prev = tickets.load(run / ticket_name(r - 1)).masks
        mask = strategies.positions(definition, ticket.masks, prev, seed=seed, round=r)
        start = strategies.Start(theta_0=ticket.init, vocab_size=vocab_size, model=settings.model, seed=seed,
                                 round=r, strategy=strategy)
        init = strategies.initial_values(definition, mask, start)
        chain.train_round(r, mask, init, seed=derive_seed(seed, r, "transfer", target))
        bar.set_postfix(sparsity=f"{mask.sparsity():.3f}", test_acc=f"{chain.rows['test_acc'].iloc[-1]:.3f}")
    bar.close()
    return chain.finish()


def _check_ticket_shapes(ticket: tickets.Ticket, vocab_size: int, settings: LotterySettings) -> None:
    from ltnb.core.model import parameter_shapes

    want = parameter_shapes(vocab_size, settings.model)
    got = {n: tuple(m.shape) for n, m in ticket.masks.items()}
    if got != want:
        raise ValueError(f"{ticket.path}: ticket shapes {got} do not match the model's {want}")


def transfer_cell(study_dir, source: str, target: str, *, seed: int = 0,
                  strategies: tuple[str, ...] = registry.defaults("transfer"),
                  settings: LotterySettings = LotterySettings(), device: str | None = None,
                  progress: bool = True) -> pd.DataFrame:
    """Every transfer run of one (source, target, seed); a failing run does not stop the others."""
    data, vocab_size, data_key = _resolve_data(study_dir, target, None, None, None)

    def one(strategy: str) -> pd.DataFrame:
        return transfer(study_dir, source, target, seed=seed, strategy=strategy, settings=settings, data=data,
                        vocab_size=vocab_size, data_key=data_key, device=device, progress=progress)

    return _run_each(f"transfer {source}->{target} seed {seed}", _ordered(strategies, "masks-reset"), one)


def target_baseline(study_dir, target: str, *, seed: int, settings: LotterySettings) -> pd.DataFrame:
    """TICKET-TARGET for a transfer: the rows of the target's own reset chain with the same seed and
    settings (empty if it has not run)."""
    run = study_chain_dir(study_dir, target, "reset", seed, settings)
    return _read_rows(run) if run.exists() else pd.DataFrame(columns=COLUMNS)


# ------------------------------------------------------------------------------------- mask overlap

OVERLAP_COLUMNS = ["comparison", "stage", "pair", "seed", "settings_hash", "round", "sparsity", "layer", "jaccard"]


def jaccard(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Jaccard overlap |A and B| / |A or B| of two masks' surviving entries, per layer group
    (``LAYER_GROUPS``: weights and biases) and over all parameters (``"all"``)."""
    inter: dict[str, int] = {}
    union: dict[str, int] = {}
    for name in a:
        x, y = a[name].bool(), b[name].bool()
        for g in (layer_group(name), "all"):
            if g is None:
                continue
            inter[g] = inter.get(g, 0) + int((x & y).sum())
            union[g] = union.get(g, 0) + int((x | y).sum())
    return {g: inter[g] / union[g] if union[g] else float("nan") for g in union}


def mask_overlap(study_dir, *, pair: str | None = None, seed: int | None = None) -> pd.DataFrame:
    """Per round and layer group, the Jaccard overlap of the masks (``OVERLAP_COLUMNS``) of

    * ``reset-<strategy>``: an obtain chain that prunes its own weights (``random``, ``rewind``) against
      the reset chain of the same domain, seed and settings (``pair`` is the domain);
    * ``source-target``: a transfer's source masks (its source's reset chain) against the target's own
      reset chain's masks (TICKET-TARGET), for every transfer pair and seed of the study (``pair`` is
      ``source->target``).

    ``pair`` (a domain or ``source->target``) and ``seed`` restrict it to those chains.
    Only finished rounds >= 1 of both chains; every ticket is read with its integrity check. The report
    stage writes it to ``report/mask_overlap.parquet`` (``write_mask_overlap``)."""
    study = paths.resolve_study(study_dir)
    cache: dict[Path, Mask] = {}

    def masks(run: Path, r: int) -> Mask:
        f = run / ticket_name(r)
        if f not in cache:
            cache[f] = tickets.load(f).masks
        return cache[f]

    only_pair, only_seed = pair, seed

    def compare(what: str, stage: str, pair: str, seed: int, a: Path, b: Path, out: list) -> None:
        if not (a.exists() and b.exists()) or only_pair not in (None, pair) or only_seed not in (None, seed):
            return
        for r in sorted((_finished_rounds(a) & _finished_rounds(b)) - {0}):
            ma, mb = masks(a, r), masks(b, r)
            for layer, j in jaccard(ma, mb).items():
                out.append({"comparison": what, "stage": stage, "pair": pair, "seed": seed, "settings_hash": a.name,
                            "round": r, "sparsity": ma.sparsity(), "layer": layer, "jaccard": j})

    out: list[dict] = []
    own = [s.name for s in registry.BY_STAGE["obtain"].values() if s.name != "reset" and s.masks == "own"]
    for reset_run in sorted(study.glob("obtain/*/reset/seed*/*/")):
        domain, seed = reset_run.parent.parent.parent.name, int(reset_run.parent.name[4:])
        for other in own:
            compare(f"reset-{other}", "obtain", domain, seed, reset_run,
                    paths.obtain_dir(study, domain, other, seed) / reset_run.name, out)
    for run in sorted(study.glob("transfer/*/masks-reset/seed*/*/")):
        source, target = run.parent.parent.parent.name.split("__")
        seed = int(run.parent.name[4:])
        compare("source-target", "transfer", f"{source}->{target}", seed,
                paths.obtain_dir(study, source, "reset", seed) / run.name,
                paths.obtain_dir(study, target, "reset", seed) / run.name, out)
    return pd.DataFrame(out, columns=OVERLAP_COLUMNS)


def write_mask_overlap(study_dir) -> Path:
    """``mask_overlap`` of the study, written to ``<study>/report/mask_overlap.parquet`` (the report reads it)."""
    study = paths.resolve_study(study_dir)
    return write_parquet(paths.report_dir(study) / "mask_overlap.parquet", mask_overlap(study))
