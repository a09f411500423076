"""The Kim CNN for sentence classification, as described in the paper (Section 4.2).

Token ids -> embedding (417-d, trained, dropout 0.285) -> three Conv1d over time (heights 3, 4, 5;
127 channels each; no stride, padding or dilation) -> ReLU -> 1-max pooling over time -> concatenate
(381) -> Linear 381->117 -> ReLU -> Linear 117->2 (logits).

Choices the paper leaves open, made here:

* **Padding.** Batches are padded with id ``PAD_ID = 0`` (SentencePiece's pad/unk id in our vocabulary).
  Id 0 is an ordinary trainable embedding row (no ``padding_idx``), because in a SentencePiece model
  without a pad piece id 0 is ``<unk>``, which must stay learnable. A sequence shorter than the
  widest filter is padded to that width, so every input, even one token, gives an output. When
  ``lengths`` is passed (training and evaluation always pass it), pooling only looks at the
  windows of each sequence's own (width-padded) length: the batch's extra padding is invisible,
  and a sequence's logits do not depend on which other sequences share its batch (up to dropout).
* **Initialisation** (``ModelSettings.init_a``, ``bias_init``; why the defaults, see ``ltnb.base.config``).
  Embedding ~ N(0, 1). Conv and linear weights He-uniform, ``kaiming_uniform_(a=init_a,
  nonlinearity="leaky_relu")``: U(-b, b) with b = sqrt(6 / ((1 + a^2) fan_in)); the default a = sqrt(5)
  is PyTorch's layer default (b = 1/sqrt(fan_in)), a = 0 is He et al.'s ReLU bound sqrt(6/fan_in).
  Biases: ``fan_in`` is PyTorch's default rule for these layers, U(-1/sqrt(fan_in), 1/sqrt(fan_in));
  ``zero`` sets them to 0. fan_in is in_channels * height for a conv, in_features for a linear
  layer. All draws come from an explicit ``torch.Generator`` seeded by ``seed``, on the CPU, so
  theta_0 is the same on every device.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ltnb.base.config import ARCHITECTURES, ModelSettings

PAD_ID = 0


class KimCNN(nn.Module):
    """Kim (2014) CNN. ``forward(ids [batch, time], lengths [batch] | None) -> logits [batch, classes]``.

    Parameter names (the keys of masks and tickets): ``embedding.weight``, ``convs.{i}.weight``,
    ``convs.{i}.bias``, ``fc1.weight``, ``fc1.bias``, ``fc2.weight``, ``fc2.bias``.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        embed_dim: int = 417,
        kernel_sizes: Iterable[int] = (3, 4, 5),
        channels: int = 127,
        hidden: int = 117,
        classes: int = 2,
        dropout: float = 0.285,
        init_a: float = math.sqrt(5),
        bias_init: str = "fan_in",
        seed: int | None = 0,
    ):
        super().__init__()
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"KimCNN: vocab_size = {vocab_size!r}: expected a positive integer")
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.init_a, self.bias_init = float(init_a), str(bias_init)
        # torch's layers draw default values from the global generator when built; fork it so that
        # building a model never changes the caller's random state (our values come from ``seed``)
        with torch.random.fork_rng(devices=[]):
            self.embedding = nn.Embedding(vocab_size, embed_dim)
            self.dropout = nn.Dropout(dropout)
            self.convs = nn.ModuleList(nn.Conv1d(embed_dim, channels, h) for h in self.kernel_sizes)
            self.fc1 = nn.Linear(channels * len(self.kernel_sizes), hidden)
            self.fc2 = nn.Linear(hidden, classes)
        if seed is not None:
            init_parameters(self, torch.Generator().manual_seed(int(seed)))
        # set by ltnb.core.train.fit while training a pruned model whose convs are sparse enough
        # (ltnb.core.sparse); None: dense convolutions. Not a parameter or buffer: never saved.
        self.sparse_plan = None
        self.packed_embedding = None  # likewise: a ltnb.core.sparse.PackedEmbedding of a pruned table

    #: the parameter names of the parts other modules ask about (``ltnb.core.lottery``'s diagnostics, the sparse
    #: kernels, the federated wire format): asked of the model, never spelled out elsewhere
    EMBEDDING = "embedding.weight"
    #: layer group -> the prefixes of its parameters' names (weights and biases)
    LAYER_GROUPS = {"embedding": ("embedding.",), "conv": ("convs.",), "mlp": ("fc1.", "fc2.")}

    @classmethod
    def layer_group(cls, name: str) -> str | None:
        """The layer group of a parameter name (``LAYER_GROUPS``), None for none."""
        return next((g for g, prefixes in cls.LAYER_GROUPS.items() if name.startswith(prefixes)), None)

    def conv_weights(self) -> list[str]:
        """The names of the convolutions' weights, in order (what the sparse kernels replace)."""
        return [f"convs.{i}.weight" for i in range(len(self.convs))]

    @classmethod
    def from_settings(cls, vocab_size: int, settings: ModelSettings, *, seed: int | None = 0) -> "KimCNN":
        return cls(
            vocab_size,
            embed_dim=settings.embed_dim,
            kernel_sizes=settings.kernel_sizes,
            channels=settings.channels,
            hidden=settings.hidden,
            dropout=settings.dropout,
            init_a=settings.init_a,
            bias_init=settings.bias_init,
            seed=seed,
        )

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor | None = None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        """Logits. ``noise`` (optional, [batch, time, embed]) replaces dropout's own draw: the embedded
        batch is multiplied by it (``benchmarks/multi.py`` draws each chain's dropout noise itself)."""
        width = max(self.kernel_sizes)
        if ids.shape[-1] < width:
            ids = F.pad(ids, (0, width - ids.shape[-1]), value=PAD_ID)
            if noise is not None:
                noise = F.pad(noise, (0, 0, 0, width - noise.shape[-2]), value=1.0)
        packed = getattr(self, "packed_embedding", None)
        if packed is not None and getattr(packed, "packed_convs", None) is not None:
            # the sparsest rounds: embedding and convs as one sparse product (ltnb.core.sparse), all convs'
            # outputs stacked [batch, time, convs x channels]; pooled as below, in one pass
            y = F.relu(packed.convs(ids, packed.packed_convs, [c.bias for c in self.convs],
                                    dropout=self.dropout.p if self.training else 0.0))
            T = ids.shape[1]
            ends = torch.tensor([T - h + 1 for h in self.kernel_sizes], device=ids.device)
            if lengths is not None:
                ends = torch.minimum(ends, lengths.to(ids.device).clamp(min=width).unsqueeze(1) - ends.new_tensor(
                    [h - 1 for h in self.kernel_sizes]))  # [batch, convs]
            valid = torch.arange(T, device=ids.device).view(1, T, 1) < ends.view(-1, 1, len(self.kernel_sizes))
            y = y.view(ids.shape[0], T, len(self.kernel_sizes), -1) * valid.unsqueeze(3)
            z = y.amax(dim=1).flatten(1)
            return self.fc2(F.relu(self.fc1(z)))
        if packed is not None:  # a pruned table: its survivors only, dropout drawn for them alone
            e = packed(ids, dropout=self.dropout.p if self.training else 0.0)  # [batch, time, embed]
        else:
            e = self.embedding(ids)
            e = self.dropout(e) if noise is None else e * noise
        if lengths is not None:
            padded = lengths.to(ids.device).clamp(min=width)
            positions = torch.arange(ids.shape[1], device=ids.device)
        plan = getattr(self, "sparse_plan", None)
        if plan is not None:
            from ltnb.core.sparse import sparse_convs

            outs = sparse_convs(plan, e, [c.weight for c in self.convs], [c.bias for c in self.convs])
        else:
            x = e.transpose(1, 2)  # [batch, embed, time]
            outs = [conv(x) for conv in self.convs]
        pooled = []
        for h, out in zip(self.kernel_sizes, outs):
            y = F.relu(out)  # [batch, channels, time - h + 1], all >= 0
            if lengths is not None:
                # windows that start past the sequence's own (width-padded) end are set to 0;
                # since ReLU outputs are >= 0 this leaves the max over the valid windows unchanged.
                valid = positions[: y.shape[2]].unsqueeze(0) < (padded - h + 1).unsqueeze(1)
                y = y * valid.unsqueeze(1)
            pooled.append(y.amax(dim=2))
        z = torch.cat(pooled, dim=1)
        return self.fc2(F.relu(self.fc1(z)))


def init_parameters(model: KimCNN, generator: torch.Generator) -> None:
    """Draw theta_0 in place: embedding N(0, 1); weights He-uniform with the model's ``init_a``;
    biases by its ``bias_init`` rule (see the module doc)."""
    with torch.no_grad():
        nn.init.normal_(model.embedding.weight, 0.0, 1.0, generator=generator)
        for layer in [*model.convs, model.fc1, model.fc2]:
            nn.init.kaiming_uniform_(layer.weight, a=model.init_a, nonlinearity="leaky_relu", generator=generator)
            if model.bias_init == "zero":
                nn.init.zeros_(layer.bias)
            else:
                bound = 1.0 / math.sqrt(fan_in(layer.weight))
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


def fan_in(weight: torch.Tensor) -> int:
    """in_features (linear) or in_channels * height (conv): ``weight[0].numel()``."""
    return weight[0].numel()



#: ``ModelSettings.architecture`` -> its class (with ``from_settings``, ``EMBEDDING``, ``LAYER_GROUPS``,
#: ``layer_group``): a second architecture is one class here and one value of the setting
MODELS: dict[str, type[nn.Module]] = {"kimcnn": KimCNN}
assert tuple(MODELS) == ARCHITECTURES  # one list of names (the settings check reads config's)


def model_class(settings: ModelSettings) -> type[nn.Module]:
    """The class of ``settings.architecture``."""
    try:
        return MODELS[settings.architecture]
    except KeyError:
        raise ValueError(f"model: architecture = {settings.architecture!r}: expected one of {', '.join(MODELS)}") from None


def build(vocab_size: int, settings: ModelSettings, *, seed: int | None = 0) -> nn.Module:
    """The model of ``settings`` (its architecture's ``from_settings``), initialised with ``seed`` (None: not)."""
    return model_class(settings).from_settings(vocab_size, settings, seed=seed)


def initial_state(vocab_size: int, settings: ModelSettings, seed: int) -> dict[str, torch.Tensor]:
    """Fresh initial values (a dict name -> tensor, on the CPU) drawn with ``seed``."""
    model = build(vocab_size, settings, seed=seed)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def parameter_shapes(vocab_size: int, settings: ModelSettings) -> dict[str, tuple[int, ...]]:
    """Shapes of every parameter, without allocating the model (meta device)."""
    with torch.device("meta"):
        model = build(vocab_size, settings, seed=None)
    return {n: tuple(p.shape) for n, p in model.named_parameters()}
