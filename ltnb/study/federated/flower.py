"""The federated stage on Flower (``flwr``): the ClientApp, the ServerApp and the bytes they send.

* Federated rounds: the server sends the global survivors to every client; each client trains
  them under the mask (``protocol.local_training``) and sends its survivors back; the server
  averages them weighted by the clients' training examples (``MaskedFedAvg``, Flower's ``FedAvg``
  on the surviving entries only, so pruned entries of the global model are exactly zero by
  construction). What the messages carry: ``protocol``'s module doc.
* After every federated round the server evaluates the global model on every domain's test split
  (the experimenter's view; it is not part of the protocol and not counted as communication).
  ``global_acc`` is the accuracy over the pooled test splits of the client domains.
* A real ``ServerApp`` (``server_app``) whose strategy ``MaskedFedAvg`` is Flower's ``FedAvg``
  adapted to masked weights, and a real ``ClientApp`` (``client_app``), run by Flower's simulation
  engine (``simulation``). One simulation runs all pending runs of a cell.

Bytes are counted from the messages Flower sends, with Flower's own serialization: for each
message, the protobuf of its header (``flwr.common.serde.message_to_proto`` of the message without
content), the protobuf of its object tree and the deflated bytes of every object it is made of
(Message, RecordDict, records, Arrays, ArrayChunks): what Flower's deployment runtime pushes for it
and what a SuperNode pulls. (The simulation engine itself hands messages to Ray in memory.) The
count is per client link: a model sent to 8 clients counts 8 times. gRPC/HTTP framing is not
included. The ids Flower draws at random per run (run, node and task ids, protobuf varints of 1-10
bytes) are counted at their widest, 10 bytes, so identical runs count identical bytes (``wire_bytes``).
``payload`` is the arrays' raw bytes, split into ``mask``, ``values`` (float32) and
``indices`` (row indices) per message and per round; the rest is Flower's framing (object ids, npy
headers, record keys), checked by the tests.

Flower is imported inside the functions that use it (importing this module does not load it).
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ltnb.base._io import write_parquet
from ltnb.core import strategies, tickets
from ltnb.core.model import parameter_shapes
from ltnb.core.pruning import Mask
from ltnb.study.federated.protocol import (DENSE, GLOBAL, MB, MESSAGES, NAIVE, ROUNDS, ClientSpec, Federation, RowLayout,
                                           flatten, local_training, pack_masks, protocol_of, run_name, unflatten,
                                           unpack_masks)
from ltnb.text.tokens import fingerprint

# Flower reads FLWR_TELEMETRY_ENABLED when it is imported; nothing may leave this machine.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


# ------------------------------------------------------------------------------------ bytes
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


WIDE_ID = 2 ** 64 - 1  # a 64-bit id at its widest: 10 bytes as a protobuf varint


def _wide_ids(message):
    """``message`` with its run, node and task ids replaced by ``WIDE_ID`` (content shared, not copied).

    Flower draws these ids at random per run (uint64s, protobuf varints of 1-10 bytes, mostly 9 or 10),
    and they appear twice in a message (its header and its deflated Message object), so identical runs
    counted 2-6 bytes apart per message. Counted at their widest, a message of the same content and
    round always has the same size, at most 1 byte per id above what a deployment would send."""
    import copy

    from flwr.app.message import make_message

    md = copy.copy(message.metadata)
    for f in ("_run_id", "_src_node_id", "_dst_node_id", "_src_task_id", "_dst_task_id"):
        if md.__dict__.get(f) is not None:
            md.__dict__[f] = WIDE_ID
    if message.has_error():
        return make_message(metadata=md, error=message.error)
    return make_message(metadata=md, content=message.content)


def wire_bytes(message) -> int:
    """Bytes of ``message`` as Flower's deployment runtime pushes and pulls it: the header protobuf
    (``message_to_proto`` of the message without content), the object-tree protobuf and the deflated
    content of every object the message is made of (see the module doc), its random ids counted at
    their widest (``_wide_ids``), so the same message counts the same bytes in every run."""
    from flwr.app.message import remove_content_from_message
    from flwr.common.serde import message_to_proto
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree

    message = _wide_ids(message)
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
def client_train(spec: ClientSpec, msg, context):
    """The ClientApp's train handler: read this client's shard, rebuild the global survivors and the
    mask (kept in ``context.state`` after the first round), train under the mask
    (``protocol.local_training``), reply with the trained survivors.

    Protocol ``rows`` (``protocol.protocol_of``): the client keeps its copy of the global survivors in
    ``context.state``; after the first message the server sends only the embedding rows that changed
    in the global model and the other tensors' survivors, and the client replies with the rows its
    training changed (any survivor not exactly equal) and the other survivors; its training decays
    only the rows its texts look up (lazy decay). Protocol ``full``: every survivor, and decay on
    every row, as the engine trains."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

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
    trained, result, touched = local_training(spec, pid, data, received, masks, run=run, fl_round=fl_round,
                                              lazy=rows_protocol)
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
    from flwr.app import Array, ArrayRecord, Message, MessageType, RecordDict
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
        from ltnb.core.model import build as build_model

        self.domains = (plan.source, *plan.client_domains)
        self.client_domains = plan.client_domains
        self.model = build_model(plan.vocab_size, plan.settings.model, seed=None)
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
    kind = protocol_of(run.strategy)
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
