r"""SGFormer: one simple global attention layer beside a GCN (Wu et al., NeurIPS 2023)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import BatchNorm1d, LayerNorm, Linear, ModuleList, ReLU, Sequential

from gtpe.models.config import ConfigError, GPSModelConfig
from gtpe.models.gps_model import _feature_encoder, check_model_arguments
from gtpe.nn.attention.sgformer import QK_NORMS, SGFormerAttention
from gtpe.nn.encoders import LinearEncoder
from gtpe.nn.local import GCN
from gtpe.nn.ops import scatter_mean, scatter_sum

__all__ = ["SGFormerModel"]

GNNS = ("plain", "residual")
AGGREGATES = ("add", "cat")


# -- option checks shared with PolynormerModel --------------------------------------------------

def _is_number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def unit_interval(lo_open: bool = False, hi_open: bool = False) -> Callable[[Any], bool]:
    """A check for a number in [0, 1] (``lo_open`` / ``hi_open``: that end excluded)."""
    def ok(v: Any) -> bool:
        return _is_number(v) and (v > 0 if lo_open else v >= 0) and (v < 1 if hi_open else v <= 1)
    return ok


def non_negative_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int) and v >= 0


def positive_int(v: Any) -> bool:
    return non_negative_int(v) and v >= 1


def boolean(v: Any) -> bool:
    return v is True or v is False


def one_of(*choices: Any) -> Callable[[Any], bool]:
    return lambda v: v in choices


def resolve_options(
    arch: str, options: Mapping[str, Any], spec: Mapping[str, tuple[Any, Callable[[Any], bool], str]]
) -> dict[str, Any]:
    """``options`` (``model.arch_options``) over the defaults of ``spec`` (name -> (default,
    check, what a valid value is)); an unknown key or a bad value is a :class:`ConfigError`."""
    unknown = sorted(set(options) - set(spec))
    if unknown:
        raise ConfigError(
            f"GPSModelConfig.arch_options: arch={arch!r} has no option(s) {unknown}; allowed: "
            f"{sorted(spec)}"
        )
    out = {k: d for k, (d, _, _) in spec.items()}
    for k, v in options.items():
        default, check, want = spec[k]
        if not check(v):
            raise ConfigError(
                f"GPSModelConfig.arch_options.{k} (arch={arch!r}) must be {want}, got {v!r}"
            )
        out[k] = v
    return out


def reject_unread(arch: str, config: GPSModelConfig, names: tuple[str, ...]) -> None:
    """Fields of :class:`GPSModelConfig` that ``arch`` does not read must keep their defaults,
    and the PE section must be empty (``pool: token`` is refused by the config itself)."""
    fields = GPSModelConfig.__dataclass_fields__
    for n in names:
        if getattr(config, n) != fields[n].default:
            raise ConfigError(
                f"GPSModelConfig: arch={arch!r} does not read {n} (a GPSModel option); leave it "
                f"at its default {fields[n].default!r}, got {getattr(config, n)!r}"
            )
    pes = [n for n in ("rwse", "lap", "maglap", "rrwp", "expander", "spd", "orf") if getattr(config.pe, n)]
    if pes:
        raise ConfigError(f"GPSModelConfig: arch={arch!r} reads no positional encodings, got pe.{pes[0]}")


def make_head(kind: str, in_dim: int, channels: int, out_dim: int) -> torch.nn.Module:
    """``'linear'``: ``Linear(in_dim, out_dim)``; ``'mlp'``: ``Linear(in_dim, C) - ReLU -
    Linear(C, out_dim)``."""
    if kind == "linear":
        return Linear(in_dim, out_dim)
    return Sequential(Linear(in_dim, channels), ReLU(), Linear(channels, out_dim))


def read_input(owner: str, data: Any, input_dropout: float, training: bool) -> tuple[Tensor, Tensor | None, int]:
    """``(x, batch, num_graphs)`` of a PyG batch, with dropout on float ``x``."""
    x = getattr(data, "x", None)
    if x is None:
        raise ValueError(f"{owner}: the batch has no 'x' (node features)")
    if input_dropout > 0:
        if not x.is_floating_point():
            raise ValueError(
                f"{owner}: input_dropout (dropout on the raw node features) needs float "
                f"features, got {x.dtype}"
            )
        x = F.dropout(x, input_dropout, training)
    batch = getattr(data, "batch", None)
    num_graphs = int(getattr(data, "num_graphs", 1) or 1) if batch is not None else 1
    return x, batch, num_graphs


def readout(h: Tensor, batch: Tensor | None, num_graphs: int, graph_level: bool, pool: str) -> Tensor:
    """Node features, or (``graph_level``) their per-graph mean / sum."""
    if not graph_level:
        return h
    if batch is None:
        batch = h.new_zeros(h.size(0), dtype=torch.long)
    return (scatter_mean if pool == "mean" else scatter_sum)(h, batch, num_graphs)


def _norms(kind: type[torch.nn.Module] | None, channels: int, n: int) -> ModuleList | None:
    return ModuleList([kind(channels) for _ in range(n)]) if kind is not None else None


class SGFormerModel(torch.nn.Module):
    r"""SGFormer (Wu et al., `"SGFormer: Simplifying and Empowering Transformers for
    Large-Graph Representations" <https://arxiv.org/abs/2306.10759>`_, NeurIPS 2023): a
    global branch of (by default) **one** simple global attention layer and a GCN branch,
    mixed by a fixed weight, then a linear output layer.  With :math:`X` the node features:

    .. math::
        Z^{(0)} &= \mathrm{Drop}\big(\mathrm{ReLU}(\mathrm{LN}_0(X W_I + b_I))\big),\qquad
        Z^{(\ell)} = \mathrm{Drop}\Big(\sigma\big(\mathrm{LN}_\ell(\alpha\,
            \mathrm{Attn}_\ell(Z^{(\ell-1)}) + (1 - \alpha)\, Z^{(\ell-1)})\big)\Big),\\
        \mathrm{Attn}(Z) &= D^{-1}\Big[V + \tfrac1n \tilde Q(\tilde K^\top V)\Big],\quad
            D = \operatorname{diag}\big(\mathbf 1 + \tfrac1n \tilde Q(\tilde K^\top \mathbf 1)\big),
            \quad \tilde Q = \tfrac{Q}{\lVert Q\rVert_F},\ \tilde K = \tfrac{K}{\lVert K\rVert_F}
            \quad\text{(Eq. 3-4; } Q, K, V \text{ linear in } Z\text{)},\\
        Y &= W_O\big[\,w\, \mathrm{GNN}(X) + (1 - w)\, Z^{(L_T)}\big] + b_O .

    :math:`w` is ``graph_weight``, :math:`\sigma` the ReLU with ``trans_act`` (else the
    identity), LN a LayerNorm with ``norm: batch`` (the official code's ``use_bn``: LayerNorm
    here, BatchNorm in the GNN), Drop the dropout ``trans_dropout``; ``residual: false`` drops
    the :math:`\alpha`-mix (:math:`Z^{(\ell)}` from :math:`\mathrm{Attn}_\ell` alone).  The
    attention is :class:`~gtpe.nn.attention.sgformer.SGFormerAttention` (``heads`` heads, each
    ``channels`` wide, averaged; linear in :math:`n`; each graph of a batch attends to itself).

    The GCN branch (``local: gcn``; ``local: null`` leaves it out, :math:`Y = W_O Z^{(L_T)} +
    b_O`, the paper's "w/o graph" ablation), :math:`L` = ``num_layers`` GCN layers
    :math:`\hat A H W + b` (:class:`~gtpe.nn.local.GCN`, :math:`\hat A` Kipf's normalised
    adjacency with self-loops):

    * ``gnn: plain`` (the official code for Cora/CiteSeer/PubMed, ``medium/models.py``): a plain
      GCN stack on :math:`X`, :math:`H^{(\ell+1)} = \mathrm{Drop}(\mathrm{ReLU}(\mathrm{BN}(
      \hat A H^{(\ell)} W_\ell + b_\ell)))`, the last layer :math:`\hat A H W + b` alone;
    * ``gnn: residual`` (the official code for large graphs, and PyG's ``SGFormer``):
      :math:`H^{(0)} = \mathrm{Drop}(\mathrm{ReLU}(\mathrm{BN}(X W + b)))`,
      :math:`H^{(\ell+1)} = \mathrm{Drop}(\mathrm{ReLU}(\mathrm{BN}(\hat A H^{(\ell)} W_\ell +
      b_\ell))) + H^{(0)}` (``residual: false``: without :math:`+ H^{(0)}`).

    ``aggregate: cat`` replaces the weighted sum by :math:`[Z^{(L_T)} \Vert \mathrm{GNN}(X)]`.
    The output layer is :math:`W_O, b_O` (``head: linear``, as the paper) or
    ``Linear-ReLU-Linear`` (``head: mlp``).

    Config (:class:`~gtpe.models.config.GPSModelConfig`, ``arch: sgformer``): ``channels``
    (hidden size), ``num_layers`` (GCN layers :math:`L`), ``local`` (``gcn`` or ``null``),
    ``attn`` (must be ``sgformer``), ``heads``, ``dropout`` (GNN dropout), ``norm`` (``batch``
    or ``null``), ``residual``, ``head``, ``input_dropout`` (dropout on float :math:`X`),
    ``pool`` (graph level: mean / add of the final node features before the output layer) and
    ``arch_options`` (defaults: the official code's):

    * ``trans_layers`` (1): attention layers :math:`L_T` (the paper: one);
    * ``trans_dropout`` (``null`` = ``dropout``): dropout of the global branch;
    * ``alpha`` (0.5): residual weight :math:`\alpha`;
    * ``trans_act`` (false): ReLU after each attention layer;
    * ``graph_weight`` (0.8): :math:`w`;
    * ``aggregate`` (``add``): ``add`` or ``cat``;
    * ``gnn`` (``plain``): ``plain`` or ``residual`` (above);
    * ``qk_norm`` (``graph``): ``graph`` (the paper's Frobenius norms) or ``node`` (PyG's
      per-node unit queries and keys).

    ``attn_dropout``, ``ffn``, ``fold_linear`` and ``pe`` are not read (non-default values are
    a :class:`ConfigError`, see :meth:`check_config`); edge features are not read.
    Differences from the official code: the value map :math:`W_V` is always learned (its
    Cora/CiteSeer runs use :math:`V = Z`); no separate weight decay for the global branch.

    ``forward(data)`` reads ``x``, ``edge_index``, ``batch`` and returns ``[N, out_dim]``
    (node level) or ``[num_graphs, out_dim]`` (``graph_level``).  The constructor arguments
    are :class:`~gtpe.models.GPSModel`'s; ``directed`` graphs get the symmetrised
    ``edge_index`` in the GCN branch (GCN is direction-blind).
    """

    OPTIONS: dict[str, tuple[Any, Callable[[Any], bool], str]] = {
        "trans_layers": (1, positive_int, "a positive integer"),
        "trans_dropout": (None, lambda v: v is None or unit_interval(hi_open=True)(v), "null or in [0, 1)"),
        "alpha": (0.5, unit_interval(), "a number in [0, 1]"),
        "trans_act": (False, boolean, "true or false"),
        "graph_weight": (0.8, unit_interval(), "a number in [0, 1]"),
        "aggregate": ("add", one_of(*AGGREGATES), f"one of {list(AGGREGATES)}"),
        "gnn": ("plain", one_of(*GNNS), f"one of {list(GNNS)}"),
        "qk_norm": ("graph", one_of(*QK_NORMS), f"one of {list(QK_NORMS)}"),
    }

    @classmethod
    def options(cls, config: GPSModelConfig) -> dict[str, Any]:
        """``config.arch_options`` over the defaults (checked)."""
        return resolve_options("sgformer", config.arch_options, cls.OPTIONS)

    @classmethod
    def check_config(cls, config: GPSModelConfig) -> None:
        """Validate ``arch_options`` and the general fields for ``arch: sgformer`` (one
        :class:`ConfigError` per problem)."""
        cls.options(config)
        if config.attn != "sgformer":
            raise ConfigError(
                f"GPSModelConfig: arch='sgformer' needs attn: sgformer (its global attention), "
                f"got attn={config.attn!r}"
            )
        if config.local not in ("gcn", None):
            raise ConfigError(
                f"GPSModelConfig: arch='sgformer' has a GCN branch (local: gcn) or none "
                f"(local: null), got local={config.local!r}"
            )
        if config.norm not in ("batch", None):
            raise ConfigError(
                f"GPSModelConfig: arch='sgformer' takes norm: batch (LayerNorm in the attention "
                f"branch, BatchNorm in the GCN, the official use_bn) or null, got {config.norm!r}"
            )
        reject_unread("sgformer", config, ("attn_dropout", "ffn", "fold_linear"))

    def __init__(
        self,
        config: GPSModelConfig,
        *,
        out_dim: int,
        node_input: str,
        node_in_dim: int,
        edge_input: str | None,
        edge_in_dim: int = 0,
        graph_level: bool = True,
        directed: bool = False,
    ):
        super().__init__()
        check_model_arguments("SGFormerModel", config, out_dim, node_input, arch="sgformer")
        self.check_config(config)
        opt = self.options(config)
        self.config, self.opt = config, opt
        self.out_dim = out_dim
        self.node_input, self.node_in_dim = node_input, node_in_dim
        self.edge_input, self.edge_in_dim = edge_input, edge_in_dim
        self.graph_level, self.directed = bool(graph_level), bool(directed)
        C, L = config.channels, config.num_layers
        self.dropout = float(config.dropout)
        td = opt["trans_dropout"]
        self.trans_dropout = float(config.dropout if td is None else td)
        norm = config.norm == "batch"

        # global branch: input layer, attention layers
        self.trans_encoder = _feature_encoder(node_input, node_in_dim, C, "node")
        self.attns = ModuleList(
            [SGFormerAttention(C, heads=config.heads, qk_norm=opt["qk_norm"]) for _ in range(opt["trans_layers"])]
        )
        self.trans_norms = _norms(LayerNorm if norm else None, C, opt["trans_layers"] + 1)

        # GCN branch
        self.use_graph = config.local == "gcn"
        self.gnn_encoder: torch.nn.Module | None = None
        self.convs: ModuleList | None = None
        self.gnn_norms: ModuleList | None = None
        if self.use_graph:
            plain = opt["gnn"] == "plain"
            if plain and node_input == "linear":  # layer 1's weight: Â (X W_0) + b_0 = GCNConv(in, C)
                self.gnn_encoder = LinearEncoder(node_in_dim, C, bias=False)
            else:
                self.gnn_encoder = _feature_encoder(node_input, node_in_dim, C, "node")
            self.convs = ModuleList(
                [GCN(C, weight=not (plain and i == 0 and node_input == "linear")) for i in range(L)]
            )
            # plain: BN after every GCN but the last; residual: after the input layer and each GCN
            self.gnn_norms = _norms(BatchNorm1d if norm else None, C, L - 1 if plain else L + 1)
        both = self.use_graph and opt["aggregate"] == "cat"
        self.head = make_head(config.head, 2 * C if both else C, C, out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    # -- branches ------------------------------------------------------------------------------
    def global_branch(self, x: Tensor, batch: Tensor | None, num_graphs: int) -> Tensor:
        r""":math:`Z^{(L_T)}` ``[N, C]``."""
        p = self.trans_dropout if self.training else 0.0
        z = self.trans_encoder(x)
        if self.trans_norms is not None:
            z = self.trans_norms[0](z)
        z = F.dropout(F.relu(z), p, self.training)
        alpha, residual = self.opt["alpha"], self.config.residual
        for i, attn in enumerate(self.attns):
            a = attn(z, batch, num_graphs)
            if residual:
                a = alpha * a + (1.0 - alpha) * z
            if self.trans_norms is not None:
                a = self.trans_norms[i + 1](a)
            if self.opt["trans_act"]:
                a = F.relu(a)
            z = F.dropout(a, p, self.training)
        return z

    def gnn_branch(self, x: Tensor, edge_index: Tensor) -> Tensor:
        r""":math:`\mathrm{GNN}(X)` ``[N, C]``."""
        assert self.gnn_encoder is not None and self.convs is not None
        if self.directed:  # GCN reads edges without their direction: the symmetrised graph
            edge_index = torch.cat([edge_index, edge_index.flip(0)], dim=1)
        p = self.dropout if self.training else 0.0
        norms = self.gnn_norms
        cache: dict[str, Any] = {}
        h = self.gnn_encoder(x)
        if self.opt["gnn"] == "plain":
            L = len(self.convs)
            for i, conv in enumerate(self.convs):
                h = conv(h, edge_index, cache=cache)
                if i < L - 1:
                    if norms is not None:
                        h = norms[i](h)
                    h = F.dropout(F.relu(h), p, self.training)
            return h
        if norms is not None:
            h = norms[0](h)
        h0 = F.dropout(F.relu(h), p, self.training)
        h = h0
        for i, conv in enumerate(self.convs):
            h = conv(h, edge_index, cache=cache)
            if norms is not None:
                h = norms[i + 1](h)
            h = F.dropout(F.relu(h), p, self.training)
            if self.config.residual:
                h = h + h0
        return h

    def forward(self, data: Any) -> Tensor:
        x, batch, num_graphs = read_input("SGFormerModel", data, self.config.input_dropout, self.training)
        z = self.global_branch(x, batch, num_graphs)
        if self.use_graph:
            g = self.gnn_branch(x, data.edge_index)
            if self.opt["aggregate"] == "add":
                w = self.opt["graph_weight"]
                z = w * g + (1.0 - w) * z
            else:
                z = torch.cat([z, g], dim=-1)
        z = readout(z, batch, num_graphs, self.graph_level, self.config.pool)
        return self.head(z)

    def __repr__(self) -> str:
        c, o = self.config, self.opt
        gnn = f"gcn x {c.num_layers} ({o['gnn']})" if self.use_graph else None
        return (
            f"{self.__class__.__name__}(channels={c.channels}, trans_layers={o['trans_layers']}, "
            f"heads={c.heads}, gnn={gnn!r}, graph_weight={o['graph_weight']}, "
            f"out_dim={self.out_dim}, graph_level={self.graph_level})"
        )
