"""LargeGT: local attention over sampled 2-hop tokens + global attention to a k-means codebook
(Dwivedi et al. 2023), a node-level model."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import Dropout, Linear, ReLU, Sequential

from gtpe.models.config import ConfigError, GPSModelConfig
from gtpe.models.gps_model import check_model_arguments
from gtpe.nn.codebook import CodebookAttention
from gtpe.nn.largegt import LargeGTLocal, hop_tokens, propagate_hops, sample_hop_neighbors
from gtpe.nn.ops import make_norm

__all__ = ["ARCH_OPTIONS", "CONV_TYPES", "LargeGTModel"]

CONV_TYPES = ("full", "local", "global")
# arch_options and their defaults (the paper's code's defaults, except num_samples: its
# ogbn-products value is 100, snap-patents 50)
ARCH_OPTIONS: dict[str, Any] = {
    "conv_type": "full",     # full: local + global | local | global
    "num_samples": 50,       # K: the target and K - 1 nodes of its 2-hop neighbourhood
    "global_dim": 64,        # g: size of the codebook's feature part
    "num_centroids": 4096,   # M: codebook size
    "decay": 0.99,           # the codebook's EMA decay
    "local_dropout": 0.3,    # dropout inside the local Transformer layer
    "resample": False,       # training: a fresh token sample per forward (False: the fixed one)
    "sample_seed": 0,        # seed of the fixed token sample (eval mode, and training unless
                             # resample)
}
HOPS = 2  # the paper's sampling and propagation depth


def _check_options(opts: dict) -> dict[str, Any]:
    unknown = sorted(set(opts) - set(ARCH_OPTIONS))
    if unknown:
        raise ConfigError(
            f"LargeGTModel: unknown arch_options key {unknown[0]!r}; allowed: "
            f"{', '.join(ARCH_OPTIONS)}"
        )
    o = {**ARCH_OPTIONS, **opts}

    def bad(key: str, want: str) -> ConfigError:
        return ConfigError(f"LargeGTModel: arch_options.{key} must be {want}, got {o[key]!r}")

    if o["conv_type"] not in CONV_TYPES:
        raise bad("conv_type", f"one of {CONV_TYPES}")
    for key in ("num_samples", "global_dim", "num_centroids"):
        v = o[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise bad(key, "a positive integer")
    for key in ("decay", "local_dropout"):
        v = o[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise bad(key, "in [0, 1)")
    if o["resample"] is not True and o["resample"] is not False:
        raise bad("resample", "true or false")
    v = o["sample_seed"]
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise bad("sample_seed", "an integer >= 0")
    return o


class LargeGTModel(torch.nn.Module):
    r"""LargeGT (Dwivedi, Liu, Luu, Bresson, Shah, Zhao, `"Graph Transformers for Large Graphs"
    <https://arxiv.org/abs/2312.11109>`_, 2023), after the paper's code (one LargeGT layer):

    .. math::
        \mathbf{h}^{\mathrm{loc}}_i &= \mathrm{Local}\big(\phi_{\mathrm{seq}}(\mathbf{T}_i)\big),
            \qquad
        \mathbf{h}^{\mathrm{glob}}_i = \mathrm{Global}\big(\phi_{\mathrm{in}}(\mathbf{X}_i),
            \mathbf{p}_i\big) \\
        \mathbf{y}_i &= \mathbf{W}_{\mathrm{out}}\,\mathrm{FFN}\big([\mathbf{h}^{\mathrm{loc}}_i
            \Vert \mathbf{h}^{\mathrm{glob}}_i]\big) + \mathbf{b}_{\mathrm{out}}

    * tokens :math:`\mathbf{T}_i \in \mathbb{R}^{3K\times F}`: the raw features of :math:`K`
      nodes sampled from :math:`i`'s 2-hop neighbourhood (:math:`i` first,
      :func:`~gtpe.nn.largegt.sample_hop_neighbors`), each propagated 0, 1, 2 hops with
      :math:`\hat{\mathbf{A}}` (:func:`~gtpe.nn.largegt.propagate_hops`); the sample is drawn
      from a generator seeded with ``sample_seed`` (eval mode always; training unless
      ``resample``, as the paper's code, which samples once before training);
    * :math:`\phi_{\mathrm{seq}}` = ``Linear(F, C) - ReLU - Dropout - Linear(C, C)`` per token
      (its first map is applied to the node features before propagating: equal, as
      :math:`\hat{\mathbf{A}}` is linear, and :math:`F/C` times cheaper);
      Local = :class:`~gtpe.nn.largegt.LargeGTLocal` (``heads``, ``local_dropout``,
      ``attn_dropout``), :math:`HC` outputs;
    * :math:`\phi_{\mathrm{in}}` = ``Linear(F, C) - Norm - ReLU - Dropout - Linear(C, C)``;
      Global = :class:`~gtpe.nn.codebook.CodebookAttention` (``global_dim``,
      ``num_centroids``, ``decay``, ``heads``, ``attn_dropout``), :math:`HC` outputs, its
      codebook moved in training mode with the nodes whose outputs are returned;
      :math:`\mathbf{p}_i`: the raw Laplacian eigenvectors ``lap_pe`` with ``pe.lap`` (in place
      of the paper's node2vec embeddings), else none;
    * FFN = ``Linear(2HC, HC) - Norm - ReLU - Dropout - Linear(HC, C) - Norm - ReLU -
      Dropout`` (input :math:`HC` with ``conv_type`` ``'local'`` or ``'global'``: one branch);
      Norm = ``config.norm`` (batch, layer or none), Dropout = ``config.dropout``.

    Config: ``channels`` = :math:`C`, ``heads`` = :math:`H`, ``dropout``, ``attn_dropout``,
    ``norm``, ``num_layers: 1``, ``pe.lap`` (optional) and ``arch_options``
    (:data:`ARCH_OPTIONS`, checked by :meth:`check_config`).

    ``forward(data)`` reads ``x`` (float ``[N, F]``), ``edge_index`` (edges :math:`j \to i`,
    as given: the in-neighbours are sampled and propagated) and ``lap_pe`` with ``pe.lap``.
    It returns ``[N, out_dim]``, or, for a neighbour-sampled subgraph (``data.n_id`` and
    ``data.batch_size`` set, the seeds first: :func:`gtpe.train.loop._neighbor_loader`), the
    seeds' rows ``[batch_size, out_dim]``; the tokens and the propagation then see the
    subgraph only (its 2-hop nodes have no in-edges in a 2-hop subgraph).
    Edge features are not read.

    Args:
        config: :class:`~gtpe.models.config.GPSModelConfig` with ``arch='largegt'``.
        out_dim, node_input, node_in_dim: as :class:`~gtpe.models.GPSModel`;
            ``node_input`` must be ``'linear'`` (float features, propagated).
        edge_input, edge_in_dim: accepted for the common signature, not read.
        graph_level: must be ``False`` (LargeGT is a node-level model).
        directed: accepted; edges are used as given.
    """

    def __init__(
        self,
        config: GPSModelConfig,
        *,
        out_dim: int,
        node_input: str,
        node_in_dim: int,
        edge_input: str | None = None,
        edge_in_dim: int = 0,
        graph_level: bool = False,
        directed: bool = False,
    ):
        super().__init__()
        check_model_arguments("LargeGTModel", config, out_dim, node_input, arch="largegt")
        self.check_config(config)
        if graph_level:
            raise ConfigError("LargeGTModel: LargeGT is a node-level model; the dataset is "
                              "graph-level (use arch: gps or tokengt)")
        if node_input != "linear":
            raise ConfigError(f"LargeGTModel: needs float node features (node_input='linear'; "
                              f"LargeGT propagates them), got node_input={node_input!r}")
        if isinstance(node_in_dim, bool) or not isinstance(node_in_dim, int) or node_in_dim < 1:
            raise ConfigError(f"LargeGTModel: node_in_dim must be >= 1, got {node_in_dim!r}")
        self.config = config
        self.out_dim, self.node_input, self.node_in_dim = out_dim, node_input, node_in_dim
        self.edge_input, self.edge_in_dim = edge_input, edge_in_dim
        self.graph_level, self.directed = False, bool(directed)
        o = self.options = _check_options(config.arch_options)
        self.conv_type = o["conv_type"]
        F_, C, H, p = node_in_dim, config.channels, config.heads, config.dropout
        self.pe_dim = config.pe.lap.k if config.pe.lap is not None else 0

        def norm(dim: int) -> list[torch.nn.Module]:
            m = make_norm(config.norm, dim, f"LargeGTModel: unknown norm {config.norm!r}")
            return [m] if m is not None else []

        self.seq_in: Linear | None = None
        self.seq_mlp: Sequential | None = None
        self.local: LargeGTLocal | None = None
        if self.conv_type in ("full", "local"):
            self.seq_in = Linear(F_, C)
            self.seq_mlp = Sequential(ReLU(), Dropout(p), Linear(C, C))
            self.local = LargeGTLocal(C, H, dropout=o["local_dropout"],
                                      attn_dropout=config.attn_dropout)
        self.node_in: Sequential | None = None
        self.glob: CodebookAttention | None = None
        if self.conv_type in ("full", "global"):
            self.node_in = Sequential(Linear(F_, C), *norm(C), ReLU(), Dropout(p), Linear(C, C))
            self.glob = CodebookAttention(C, o["global_dim"], o["num_centroids"], heads=H,
                                          pe_dim=self.pe_dim, attn_dropout=config.attn_dropout,
                                          decay=o["decay"])
        branches = 2 if self.conv_type == "full" else 1
        self.ffn = Sequential(Linear(branches * H * C, H * C), *norm(H * C), ReLU(), Dropout(p),
                              Linear(H * C, C), *norm(C), ReLU(), Dropout(p))
        self.head = Linear(C, out_dim)
        self.reset_parameters()

    @staticmethod
    def fanout_hops(config: GPSModelConfig) -> int:
        """Hops of a neighbour-sampled subgraph (``train.fanouts`` length): the 2-hop
        neighbourhood the tokens are drawn from (their propagated features are then computed
        on that subgraph)."""
        return 2

    @classmethod
    def check_config(cls, config: GPSModelConfig) -> None:
        """:class:`~gtpe.models.config.ConfigError` for ``arch_options`` LargeGT does not know
        or values it cannot take, and for general fields it does not read set away from their
        defaults (``local``, ``attn``, ``residual``, ``ffn``, ``head``, ``input_dropout``,
        ``fold_linear``; ``pe`` other than ``pe.lap``) or ``num_layers`` other than 1."""
        _check_options(config.arch_options)
        fields = GPSModelConfig.__dataclass_fields__
        for name in ("local", "attn", "residual", "ffn", "head", "input_dropout", "fold_linear"):
            if getattr(config, name) != fields[name].default:
                raise ConfigError(
                    f"LargeGTModel: arch='largegt' does not read model.{name} (its local and "
                    f"global modules are chosen by arch_options.conv_type); remove it, got "
                    f"{name}={getattr(config, name)!r}"
                )
        if config.num_layers != 1:
            raise ConfigError(f"LargeGTModel: LargeGT has one local + global layer, as the "
                              f"paper's code; set num_layers: 1, got {config.num_layers}")
        other = [n for n in ("rwse", "maglap", "rrwp", "expander", "spd", "orf")
                 if getattr(config.pe, n, None) is not None]
        if other:
            raise ConfigError(f"LargeGTModel: arch='largegt' reads only pe.lap (positional "
                              f"encoding of the global queries), got pe.{other[0]}")
        o = {**ARCH_OPTIONS, **config.arch_options}
        if config.pe.lap is not None and o["conv_type"] == "local":
            raise ConfigError("LargeGTModel: pe.lap feeds the global module; conv_type 'local' "
                              "has none")

    def reset_parameters(self) -> None:
        for m in self.modules():
            if m is not self and isinstance(m, (Linear, torch.nn.BatchNorm1d,
                                                torch.nn.LayerNorm)):
                m.reset_parameters()
        if self.local is not None:  # its own init (N(0, 0.02^2))
            self.local.reset_parameters()
        if self.glob is not None:
            self.glob.reset_parameters()

    def sample(self, edge_index: Tensor, num_nodes: int, targets: Tensor) -> Tensor:
        """The token nodes ``[T, K]`` of ``targets`` (:func:`sample_hop_neighbors`): from
        torch's generator in training with ``resample``, else from one seeded with
        ``sample_seed``."""
        gen = None
        if not (self.training and self.options["resample"]):
            gen = torch.Generator(device=edge_index.device)
            gen.manual_seed(self.options["sample_seed"])
        return sample_hop_neighbors(edge_index, num_nodes, targets, self.options["num_samples"],
                                    generator=gen)

    def forward(self, data: Any) -> Tensor:
        x = getattr(data, "x", None)
        if x is None or not torch.is_floating_point(x) or x.dim() != 2:
            raise ValueError("LargeGTModel: the batch needs float node features 'x' [N, F]")
        N, edge_index = x.size(0), data.edge_index
        seeds = getattr(data, "batch_size", None) if "n_id" in data else None
        T = N if seeds is None else int(seeds)
        targets = torch.arange(T, device=x.device)
        parts = []
        if self.local is not None:
            assert self.seq_in is not None and self.seq_mlp is not None
            # phi_seq's first map, then propagation: A(XW) + b = (AX)W + b
            h = propagate_hops(x @ self.seq_in.weight.t(), edge_index, HOPS) + self.seq_in.bias
            nodes = self.sample(edge_index, N, targets)
            parts.append(self.local(self.seq_mlp(hop_tokens(h, nodes))))
        if self.glob is not None:
            assert self.node_in is not None
            pe = None
            if self.pe_dim:
                lap = getattr(data, "lap_pe", None)
                if lap is None:
                    raise ValueError(
                        f"LargeGTModel: the batch has no 'lap_pe'; add "
                        f"gtpe.transforms.AddLapPE(k={self.pe_dim}) to the dataset transforms "
                        f"(GPSModelConfig.transforms() lists them)")
                pe = lap[:T]
            parts.append(self.glob(self.node_in(x[:T]), pe))
        h = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return self.head(self.ffn(h))

    def __repr__(self) -> str:
        o, c = self.options, self.config
        return (f"{self.__class__.__name__}(channels={c.channels}, heads={c.heads}, "
                f"conv_type={o['conv_type']!r}, num_samples={o['num_samples']}, "
                f"num_centroids={o['num_centroids']}, out_dim={self.out_dim})")
