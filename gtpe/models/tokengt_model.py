"""TokenGT: a plain Transformer over node and edge tokens (Kim et al., NeurIPS 2022)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import LayerNorm, Linear, ModuleList, ReLU, Sequential

from gtpe.models.config import GPSModelConfig
from gtpe.models.gps_model import _feature_encoder, check_model_arguments
from gtpe.nn.ops import scatter_mean, scatter_sum
from gtpe.nn.tokengt import GraphTokenizer, LapNodeIdentifier, ORFNodeIdentifier
from gtpe.nn.transformer import TransformerLayer

__all__ = ["TokenGTModel"]


class TokenGTModel(torch.nn.Module):
    r"""TokenGT (Kim et al., `"Pure Transformers are Powerful Graph Learners"
    <https://arxiv.org/abs/2207.02505>`_, NeurIPS 2022): the nodes and the edges of each graph
    are the tokens of a plain pre-LN Transformer.

    .. math::
        \mathbf{h}^{(0)} &= \big[\,\mathbf{x}_{\mathrm{tok}};\
            \mathbf{X}_v + \mathbf{W}_p[\mathbf{P}_v \Vert \mathbf{P}_v] + \mathbf{E}^V\ (v \in V);\
            \mathbf{X}_{uv} + \mathbf{W}_p[\mathbf{P}_u \Vert \mathbf{P}_v] + \mathbf{E}^E\
            ((u, v) \in E)\,\big] \\
        \mathbf{h}^{(\ell+1)} &= \mathrm{TransformerLayer}_\ell(\mathbf{h}^{(\ell)}),\quad
            \mathbf{z} = \mathrm{LN}(\mathbf{h}^{(L)}) \\
        \mathbf{y} &= \mathrm{MLP}(\mathbf{z}_{\mathrm{tok}})\ (\texttt{pool='token'}),\quad
            \mathrm{MLP}\big(\mathrm{pool}_{v \in V}\, \mathbf{z}_v\big)\
            (\texttt{'mean'/'add'}),\quad \mathrm{MLP}(\mathbf{z}_v)\ \text{(node level)}

    * tokens (:class:`~gtpe.nn.tokengt.GraphTokenizer`): node features ``x`` and edge features
      ``edge_attr`` encoded to :math:`C` (as :class:`~gtpe.models.GPSModel` encodes them; with
      ``edge_input=None`` every edge token gets one learned vector), one token per column of
      ``edge_index`` as given (PyG's undirected graphs list both directions: two tokens per
      edge, as TokenGT); per graph ``[graph token, nodes, edges]``; the graph token has no
      identifier and no type;
    * node identifiers :math:`\mathbf{P}`: ``pe.lap`` -> the Laplacian eigenvectors ``lap_pe``
      of :class:`~gtpe.transforms.AddLapPE` (:math:`d_p` = ``pe.lap.k``; ``pe.lap.dim`` and
      ``pe.lap.encoder`` are not used), random sign flip per graph and eigenvector in training
      (:class:`~gtpe.nn.tokengt.LapNodeIdentifier`); ``pe.orf`` -> orthonormal random features
      of size ``pe.orf.dim`` (:class:`~gtpe.nn.tokengt.ORFNodeIdentifier`: fresh in training,
      a fixed seed in eval mode);
    * layers: ``num_layers`` :class:`~gtpe.nn.TransformerLayer` (pre-LN, ``heads``,
      attention ``config.attn`` = ``'full'`` or ``'linear'``, FFN ``C -> 2C -> C`` with GELU,
      ``dropout`` on both residual branches, ``attn_dropout`` in the attention), then one
      LayerNorm; the head is ``Linear(C, C) - ReLU - Linear(C, out_dim)``.

    The graph token is always there; ``config.pool`` picks the graph-level readout (``'token'``
    its final features, ``'mean'``/``'add'`` over the node tokens only) and is not used at node
    level (``graph_level=False``: the node tokens' final features).

    Args:
        config: :class:`~gtpe.models.config.GPSModelConfig` with ``arch='tokengt'`` (else
            :class:`~gtpe.models.config.ConfigError`).
        out_dim, node_input, node_in_dim, edge_input, edge_in_dim, graph_level: as
            :class:`~gtpe.models.GPSModel`.
        directed: accepted for the same signature; edges are always tokenised as given, so a
            directed edge ``(u, v)`` is one token with identifier :math:`[\mathbf{P}_u \Vert
            \mathbf{P}_v]` (direction visible).

    ``forward(data)`` reads ``x, edge_index, edge_attr, batch`` and ``lap_pe`` (with ``pe.lap``;
    missing -> ``ValueError`` naming :class:`~gtpe.transforms.AddLapPE`) and returns
    ``[num_graphs, out_dim]`` or ``[N, out_dim]``.
    """

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
        check_model_arguments("TokenGTModel", config, out_dim, node_input, arch="tokengt")
        self.config = config
        self.out_dim = out_dim
        self.node_input, self.node_in_dim = node_input, node_in_dim
        self.edge_input, self.edge_in_dim = edge_input, edge_in_dim
        self.graph_level = bool(graph_level)
        self.directed = bool(directed)
        C, pe = config.channels, config.pe

        self.node_encoder = _feature_encoder(node_input, node_in_dim, C, "node")
        self.edge_encoder = _feature_encoder(edge_input, edge_in_dim, C, "edge")
        self.node_id: LapNodeIdentifier | ORFNodeIdentifier
        if pe.lap is not None:
            self.node_id = LapNodeIdentifier(pe.lap.k)
        else:
            assert pe.orf is not None  # GPSModelConfig._check_tokengt
            self.node_id = ORFNodeIdentifier(pe.orf.dim)
        self.tokenizer = GraphTokenizer(
            C, self.node_id.dim, edge_features=self.edge_encoder is not None
        )
        assert config.attn is not None
        self.layers = ModuleList(
            [
                TransformerLayer(
                    C,
                    heads=config.heads,
                    attn=config.attn,
                    dropout=config.dropout,
                    attn_dropout=config.attn_dropout,
                )
                for _ in range(config.num_layers)
            ]
        )
        self.norm = LayerNorm(C)
        self.head = Sequential(Linear(C, C), ReLU(), Linear(C, out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in (self.node_encoder, self.edge_encoder):
            if m is not None:
                m.reset_parameters()
        self.tokenizer.reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()
        self.norm.reset_parameters()
        self.head[0].reset_parameters()
        self.head[2].reset_parameters()

    def node_identifiers(
        self, data: Any, batch: Tensor, num_graphs: int, dtype: torch.dtype
    ) -> Tensor:
        r""":math:`\mathbf{P}` ``[N, d_p]`` for the batch (see the class docstring)."""
        if isinstance(self.node_id, LapNodeIdentifier):
            lap_pe = getattr(data, "lap_pe", None)
            if lap_pe is None:
                raise ValueError(
                    f"TokenGTModel: the batch has no 'lap_pe' (TokenGT's node identifiers); add "
                    f"gtpe.transforms.AddLapPE(k={self.node_id.k}) to the dataset transforms "
                    f"(GPSModelConfig.transforms() lists them) or use pe.orf"
                )
            return self.node_id(lap_pe.to(dtype), batch, num_graphs)
        return self.node_id(batch, num_graphs, dtype)

    def tokens(self, data: Any) -> tuple[Tensor, Any]:
        """Encoders and tokenizer: ``(tokens [T, C], layout)``
        (:class:`~gtpe.nn.tokengt.TokenLayout`)."""
        x_in = getattr(data, "x", None)
        if x_in is None:
            raise ValueError("TokenGTModel: the batch has no 'x' (node features)")
        edge_index = data.edge_index
        batch = getattr(data, "batch", None)
        if batch is None:
            batch = edge_index.new_zeros(x_in.size(0))
        num_graphs = int(getattr(data, "num_graphs", 1) or 1)
        x = self.node_encoder(x_in)
        edge_attr = None
        if self.edge_encoder is not None:
            e = getattr(data, "edge_attr", None)
            if e is None:
                raise ValueError(
                    f"TokenGTModel: the batch has no 'edge_attr' (edge_input={self.edge_input!r})"
                )
            edge_attr = self.edge_encoder(e)
        P = self.node_identifiers(data, batch, num_graphs, x.dtype)
        return self.tokenizer(x, edge_index, batch, P, edge_attr, num_graphs)

    def forward(self, data: Any) -> Tensor:
        h, layout = self.tokens(data)
        cache: dict[str, Any] = {}
        for layer in self.layers:
            h = layer(h, layout.batch, cache)
        h = self.norm(h)
        if not self.graph_level:
            return self.head(h.index_select(0, layout.node_pos))
        if self.config.pool == "token":
            return self.head(h.index_select(0, layout.graph_pos))
        pool = scatter_mean if self.config.pool == "mean" else scatter_sum
        batch = layout.batch.index_select(0, layout.node_pos)
        return self.head(pool(h.index_select(0, layout.node_pos), batch, layout.graph_pos.numel()))

    def __repr__(self) -> str:
        c = self.config
        return (
            f"{self.__class__.__name__}(channels={c.channels}, num_layers={c.num_layers}, "
            f"attn={c.attn!r}, node_id={self.node_id!r}, out_dim={self.out_dim}, "
            f"graph_level={self.graph_level}, directed={self.directed})"
        )
