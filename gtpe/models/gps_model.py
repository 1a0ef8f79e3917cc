"""GPS graph transformer model assembled from :class:`gtpe.nn.GPSLayer` (GraphGPS recipe)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import Linear, ModuleList, ReLU, Sequential
from torch_geometric.utils import to_undirected

from gtpe.models.config import ConfigError, GPSModelConfig
from gtpe.nn.attention.graphormer import (
    EDGE_BIAS_KEY,
    CentralityEncoding,
    GraphormerEdgeEncoding,
)
from gtpe.nn.encoders import (
    EmbeddingEncoder,
    LapPEEncoder,
    LinearEncoder,
    MagLapPEEncoder,
    OGBAtomEncoder,
    OGBBondEncoder,
    RRWPEncoder,
    RWSEEncoder,
    SinusoidEncoder,
)
from gtpe.nn.gps import GPSLayer
from gtpe.nn.ops import scatter_mean, scatter_sum

__all__ = ["CENTRALITY_MAX_DEGREE", "EDGE_INPUTS", "NODE_INPUTS", "GPSModel"]

NODE_INPUTS = ("embedding", "ogb_atom", "linear", "sinusoid")
# local modules that read edges without their direction: they get the symmetrised graph
DIRECTION_BLIND_LOCALS = ("gine", "gatedgcn", "gcn")
EDGE_INPUTS = ("embedding", "ogb_bond", "linear", None)
# Graphormer's centrality encoding: degrees above this share the last embedding row (molecules
# have degree <= 6; Graphormer's own tables stop at 511)
CENTRALITY_MAX_DEGREE = 64


def _feature_encoder(
    kind: str | None, in_dim: int, out_dim: int, what: str
) -> torch.nn.Module | None:
    if kind is None:
        return None
    if kind == "embedding":
        if in_dim < 1:
            raise ConfigError(
                f"GPSModel: {what}_input='embedding' needs {what}_in_dim = vocabulary "
                f"size >= 1, got {in_dim}"
            )
        return EmbeddingEncoder(in_dim, out_dim)
    if kind == "linear":
        if in_dim < 1:
            raise ConfigError(
                f"GPSModel: {what}_input='linear' needs {what}_in_dim >= 1, got {in_dim}"
            )
        return LinearEncoder(in_dim, out_dim)
    if kind == "sinusoid" and what == "node":
        if in_dim < 1 or in_dim > out_dim:
            raise ConfigError(
                f"GPSModel: node_input='sinusoid' needs node_in_dim = number of integer "
                f"columns of x, between 1 and the node embedding size {out_dim}; got {in_dim}"
            )
        return SinusoidEncoder(in_dim, out_dim)
    if kind == "ogb_atom" and what == "node":
        return OGBAtomEncoder(out_dim)
    if kind == "ogb_bond" and what == "edge":
        return OGBBondEncoder(out_dim)
    allowed = NODE_INPUTS if what == "node" else EDGE_INPUTS
    raise ConfigError(f"GPSModel: unknown {what}_input {kind!r}; expected one of {allowed}")


def check_model_arguments(owner: str, config: Any, out_dim: Any, node_input: Any,
                          arch: str | None = None) -> None:
    """The constructor checks the model classes share: a :class:`GPSModelConfig` (with
    ``config.arch == arch`` when ``arch`` is given), a positive integer ``out_dim``, a known
    ``node_input``, and ``config.input_dropout`` only with ``node_input='linear'``."""
    if not isinstance(config, GPSModelConfig):
        raise TypeError(
            f"{owner}: config must be a GPSModelConfig, got "
            f"{type(config).__name__} (use GPSModelConfig.from_dict)"
        )
    if isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1:
        raise ConfigError(f"{owner}: out_dim must be a positive integer, got {out_dim!r}")
    if node_input not in NODE_INPUTS:
        raise ConfigError(
            f"{owner}: unknown node_input {node_input!r}; expected one of {NODE_INPUTS}"
        )
    if arch is not None and config.arch != arch:
        raise ConfigError(
            f"{owner}: needs a config with arch={arch!r}, got arch={config.arch!r} "
            f"(use gtpe.models.model_class(config))"
        )
    if config.input_dropout > 0 and node_input != "linear":
        raise ConfigError(
            f"{owner}: input_dropout (dropout on the raw float node features) needs "
            f"node_input='linear', got {node_input!r}"
        )


def _heads_for(dim: int) -> int:
    return next(h for h in (4, 2, 1) if (2 * dim) % h == 0)


def _need(data: Any, name: str, hint: str) -> Tensor:
    value = getattr(data, name, None)
    if value is None:
        raise ValueError(
            f"GPSModel: the batch has no '{name}'; add {hint} to the dataset "
            f"transforms (GPSModelConfig.transforms() lists them)"
        )
    return value


class GPSModel(torch.nn.Module):
    r"""GPS graph transformer (Rampášek et al., 2022, `"Recipe for a General, Powerful,
    Scalable Graph Transformer" <https://arxiv.org/abs/2205.12454>`_):

    .. math::
        \mathbf{x}^{(0)}_i &= \big[\,\mathrm{Enc}(\mathbf{x}_i) \,\Vert\, \mathrm{RWSE}_i
            \,\Vert\, \mathrm{LapPE}_i \,\Vert\, \mathrm{MagLapPE}_i\,\big]
            \;(+\ \mathbf{W}_n\mathbf{P}_{ii}\ \text{with RRWP}) \\
        \mathbf{x}^{(\ell+1)} &= \mathrm{GPSLayer}_\ell(\mathbf{x}^{(\ell)}, \mathbf{e}, \ldots),
            \quad \ell = 0..L-1 \\
        \mathbf{y} &= \mathrm{MLP}\big(\mathrm{pool}(\mathbf{x}^{(L)})\big)\ \text{(graph level)}
            \quad\text{or}\quad \mathrm{MLP}(\mathbf{x}^{(L)}_i)\ \text{(node level)}

    The node input encoder has ``channels - sum(pe dims)`` outputs and the PE encoders'
    outputs are concatenated (GraphGPS), so ``x^{(0)}`` has ``channels`` features; the RRWP node
    term (GRIT) is added.  Edge features are encoded to ``channels``.  The head is
    ``Linear(C, C) - ReLU - Linear(C, out_dim)`` (``config.head='linear'``: ``Linear(C,
    out_dim)``; ``'pyg'``: ``Linear(C, C/2) - ReLU - Linear(C/2, C/4) - ReLU - Linear(C/4,
    out_dim)``, the head of PyG's ``examples/graph_gps.py``); pooling is ``config.pool``
    (mean/add).  ``config.residual`` / ``config.ffn`` go to every :class:`~gtpe.nn.GPSLayer`;
    ``config.input_dropout`` is dropout on the raw float node features (``node_input='linear'``
    only).  Kipf & Welling's GCN is ``local='gcn', attn=None, norm=None, residual=False,
    ffn=False, head='linear', input_dropout=0.5``:
    :math:`\mathbf{x}^{(\ell+1)} = \mathrm{Dropout}(\mathrm{ReLU}(\hat{A}\mathbf{x}^{(\ell)}W_\ell))`
    after the linear input encoder, the last layer without ReLU and dropout
    (:math:`\hat{A}\mathbf{x}^{(L-1)}W_{L-1}`), then one linear map; with
    ``config.fold_linear`` the first and last GCN have no weight of their own (the encoder and
    the head are theirs), so a 2-layer model is exactly
    :math:`\hat{A}\,\mathrm{Dropout}(\mathrm{ReLU}(\hat{A}\,\mathrm{Dropout}(X) W_0))W_1` (plus biases).

    Graphormer (``attn='graphormer'``, Ying et al., NeurIPS 2021): the layers' attention has
    the spatial encoding :math:`b^h_{\phi(j,i)}` (:class:`~gtpe.nn.attention.graphormer.GraphormerAttention`,
    distances from :class:`~gtpe.transforms.AddSPD`), one table shared by all layers as in the
    paper; ``x^{(0)}`` gets the centrality encoding :math:`z^-_{\deg^-} + z^+_{\deg^+}`
    (:class:`~gtpe.nn.attention.graphormer.CentralityEncoding`, degrees above
    :data:`CENTRALITY_MAX_DEGREE` = 64 share one row).  ``pool='token'`` is the paper's graph
    token: a learned vector :math:`x_{\mathrm{tok}}` is inserted as an extra node before the
    first node of every graph (no edges, no centrality encoding), every pair with a token gets
    one more learned bias per head :math:`t^h` (row ``max_dist + 1`` of the shared table: the
    layers are built with ``max_dist + 1``, listed pairs farther than ``max_dist`` keep the
    shared "far" bias), and the head reads the token's final features.  With
    ``pe.spd.edge_encoding`` = :math:`P > 0` the bias also gets Graphormer's edge encoding
    (Eq. 7) :math:`c^h_{ji} = \frac{1}{N}\sum_{n \le N} x_{e_n} W^E_n`, :math:`N = \min(\phi,
    P)`, along the path of ``spd_path_index`` from ``AddSPD(path_len=P)``
    (:class:`~gtpe.nn.attention.graphormer.GraphormerEdgeEncoding`): the edge features go
    through their own encoder straight to ``heads`` dims (:math:`x_e`, ``edge_input`` as
    below, so edge features are required; ``ConfigError`` without), the bias is computed once
    per forward and shared by all layers (handed over in their ``state``), pairs farther than
    ``max_dist`` (the far bias) and the graph token's pairs get none.  The path is the one
    ``AddSPD`` picks, the smallest shortest node sequence: where a pair has several shortest
    paths the choice depends on the node numbering (as Graphormer's BFS order), so the model
    is exactly permutation-invariant where shortest paths are unique (trees) and otherwise up
    to that choice.

    Args:
        config: :class:`~gtpe.models.config.GPSModelConfig` with ``arch='gps'`` (else a
            ``ConfigError``: ``arch='tokengt'`` is another model class,
            ``gtpe.models.model_class(config)``).
        out_dim: output size (number of tasks / classes).
        node_input: ``'embedding'`` (``x`` long ``[N]``/``[N,1]``, ``node_in_dim`` = vocabulary),
            ``'ogb_atom'`` (``x`` long ``[N, 9]``) or ``'linear'`` (``x`` float
            ``[N, node_in_dim]``) or ``'sinusoid'`` (``x`` integer ``[N, node_in_dim]``, each
            column through a sinusoidal encoding: :class:`~gtpe.nn.encoders.SinusoidEncoder`).
        edge_input: ``'embedding'`` (``edge_attr`` long ``[E]``/``[E,1]``, vocabulary
            ``edge_in_dim``), ``'ogb_bond'`` (``[E, 3]``), ``'linear'`` or ``None``.
        graph_level: graph-level (pooled) or node-level output.
        directed: ``edge_index`` lists each directed edge once, in its direction.  Then the
            direction-blind locals (``'gine'``, ``'gatedgcn'``) get the symmetrised graph
            (``edge_index`` concatenated with its flip, edge features duplicated; built once per
            forward), and so does everything else in the layers that reads the edges (Exphormer's
            and GT's edge attention, GRIT's edge merge and degrees), so that such a model sees
            direction only through its PEs; with ``'dirgine'`` or ``local=None`` every layer reads the
            edges as given (so Exphormer's, GT's and GRIT's attention then see direction too).
            The MagLapPE encoder always gets the given (directed) edges; the LapPE encoder
            ``'signnet'`` always gets the symmetrised graph without duplicate edges (the graph
            whose Laplacian :class:`~gtpe.transforms.AddLapPE` takes).  ``False`` (default):
            edges are used as given everywhere.

    ``forward(data)`` reads ``x, edge_index, edge_attr, batch`` and the PE attributes written by
    :meth:`GPSModelConfig.transforms` (``rwse``, ``lap_pe``/``lap_eigval``,
    ``maglap_pe``/``maglap_eigval``, ``rrwp``/``rrwp_index``/``rrwp_val``, ``expander_index``,
    ``spd_index``/``spd_val``/``in_degree``/``out_degree``, ``spd_path_index`` with the edge
    encoding) and returns ``[num_graphs, out_dim]``
    or ``[N, out_dim]``; a missing attribute is a ``ValueError`` naming the transform that
    writes it.
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
        check_model_arguments("GPSModel", config, out_dim, node_input)
        if config.arch != "gps":
            raise ConfigError(
                f"GPSModel: arch {config.arch!r} is another model class; build it with "
                f"gtpe.models.model_class(config)"
            )
        self.config = config
        self.out_dim = out_dim
        self.node_input, self.node_in_dim = node_input, node_in_dim
        self.edge_input, self.edge_in_dim = edge_input, edge_in_dim
        self.graph_level = graph_level
        if config.pool == "token" and not graph_level:
            raise ConfigError(
                "GPSModel: pool='token' (a graph token readout) needs graph_level=True"
            )
        self.directed = bool(directed)
        # symmetrise the edges for the layers (see ``directed``)
        self.symmetrise = self.directed and config.local in DIRECTION_BLIND_LOCALS
        C, pe = config.channels, config.pe

        self.node_encoder = _feature_encoder(node_input, node_in_dim, C - pe.concat_dim, "node")
        # Edge features are read by GINE/GatedGCN, Exphormer, GT and (merged into the pairs) GRIT;
        # Graphormer's edge encoding has an encoder of its own (below).
        uses_edges = config.local not in (None, "gcn") or config.attn in ("exphormer", "grit", "gt")
        self.edge_encoder = (
            _feature_encoder(edge_input, edge_in_dim, C, "edge") if uses_edges else None
        )
        self.rwse_encoder = (
            RWSEEncoder(pe.rwse.walk_length, pe.rwse.dim) if pe.rwse is not None else None
        )
        self.lap_encoder = (
            LapPEEncoder(pe.lap.k, pe.lap.dim, encoder=pe.lap.encoder, heads=_heads_for(pe.lap.dim))
            if pe.lap is not None
            else None
        )
        self.maglap_encoder = (
            MagLapPEEncoder(
                pe.maglap.k, pe.maglap.dim, num_q=pe.maglap.num_q, phase=pe.maglap.phase
            )
            if pe.maglap is not None
            else None
        )
        rrwp = config.rrwp_config
        self.rrwp_encoder = (
            RRWPEncoder(rrwp.walk_length, C, pairs=config.attn == "grit")
            if rrwp is not None
            else None
        )

        # Graphormer: centrality encoding on x^(0) and (pool='token') the graph token
        self.centrality = (
            CentralityEncoding(C, CENTRALITY_MAX_DEGREE) if config.attn == "graphormer" else None
        )
        self.graph_token = (
            torch.nn.Parameter(torch.empty(C)) if config.pool == "token" else None
        )
        # Graphormer's edge encoding (Eq. 7): edge features -> heads dims, one W^E_n per hop
        spd = config.spd_config
        self.spd_edge_encoder: torch.nn.Module | None = None
        self.edge_encoding: GraphormerEdgeEncoding | None = None
        if spd is not None and spd.edge_encoding > 0:
            if edge_input is None:
                raise ConfigError(
                    "GPSModel: pe.spd.edge_encoding > 0 (Graphormer's edge encoding) needs "
                    "edge features, got edge_input=None"
                )
            self.spd_edge_encoder = _feature_encoder(
                edge_input, edge_in_dim, config.heads, "edge"
            )
            self.edge_encoding = GraphormerEdgeEncoding(config.heads, spd.edge_encoding)

        L = config.num_layers
        self.layers = ModuleList(
            [
                GPSLayer(
                    C,
                    local=config.local,
                    attn=config.attn,
                    heads=config.heads,
                    # a plain stack's last layer (ffn=False) has no ReLU and no dropout: its
                    # output goes to the head, as in Kipf & Welling's GCN and PyG's BasicGNN
                    dropout=config.dropout if config.ffn or i < L - 1 else 0.0,
                    attn_dropout=config.attn_dropout,
                    norm=config.norm,
                    # the last GatedGCN's edge output is never read: skip it; fold_linear: the
                    # first / last GCN's weight is the input encoder / the linear head
                    local_kwargs=(
                        {"update_edges": False}
                        if config.local == "gatedgcn" and i == L - 1
                        else {"weight": False}
                        if config.fold_linear and i in (0, L - 1)
                        else None
                    ),
                    attn_kwargs=self._attn_kwargs(i),
                    residual=config.residual,
                    ffn=config.ffn,
                    act=config.ffn or i < L - 1,
                )
                for i in range(L)
            ]
        )
        if config.attn == "graphormer":  # one spatial encoding for all layers, as the paper
            for layer in self.layers[1:]:
                layer.attn.spatial = self.layers[0].attn.spatial
        if config.head == "mlp":
            self.head = Sequential(Linear(C, C), ReLU(), Linear(C, out_dim))
        elif config.head == "pyg":  # PyG's examples/graph_gps.py
            self.head = Sequential(Linear(C, C // 2), ReLU(), Linear(C // 2, C // 4), ReLU(),
                                   Linear(C // 4, out_dim))
        else:
            self.head = Linear(C, out_dim)
        self.reset_parameters()

    def _attn_kwargs(self, i: int) -> dict[str, Any] | None:
        """Constructor arguments of layer ``i``'s attention: no parameters that can get no
        gradient (Exphormer's virtual-node embedding only in the first layer, later layers
        continue from ``state['virtual_x']``; no pair output in the last GRIT layer; GT updates
        the edge features, as the paper, in every layer but the last, whose edge output nobody
        reads, and not beside GatedGCN, which updates them itself)."""
        attn, last = self.config.attn, self.config.num_layers - 1
        if attn == "exphormer":
            return {
                "edge_dim": self.config.channels if self.edge_encoder is not None else None,
                "init_virtual": i == 0,
            }
        if attn == "grit" and i == last:
            return {"update_pairs": False}
        if attn == "graphormer":  # one more row for the graph token's bias t
            spd = self.config.spd_config
            assert spd is not None
            return {"max_dist": spd.max_dist + (self.config.pool == "token")}
        if attn == "gt":
            edges = self.edge_encoder is not None
            return {
                "edge_dim": self.config.channels if edges else None,
                "update_edges": edges and i < last and self.config.local != "gatedgcn",
            }
        return None

    def reset_parameters(self) -> None:
        for m in (
            self.node_encoder,
            self.edge_encoder,
            self.rwse_encoder,
            self.lap_encoder,
            self.maglap_encoder,
            self.rrwp_encoder,
            self.centrality,
            self.spd_edge_encoder,
            self.edge_encoding,
        ):
            if m is not None:
                m.reset_parameters()
        if self.graph_token is not None:
            torch.nn.init.normal_(self.graph_token, std=0.02)  # as Graphormer's code
        for layer in self.layers:
            layer.reset_parameters()
        for m in self.head.modules():
            if isinstance(m, Linear):
                m.reset_parameters()

    def encode(self, data: Any) -> dict[str, Any]:
        """Input and PE encoders: returns the keyword arguments of the first GPS layer
        (``x, edge_index, batch, edge_attr`` and the extras) and ``num_graphs``; with
        Graphormer's edge encoding also ``spd_edge_bias [M, heads]`` (one row per
        ``spd_index`` pair), which :meth:`forward` hands the layers in their ``state``."""
        x_in = _need(data, "x", "node features")
        edge_index = data.edge_index
        batch = getattr(data, "batch", None)
        if batch is None:
            batch = edge_index.new_zeros(x_in.size(0))
        num_graphs = int(getattr(data, "num_graphs", 1) or 1)

        if self.config.input_dropout > 0:  # Kipf & Welling: dropout on the input features
            x_in = torch.nn.functional.dropout(x_in, self.config.input_dropout, self.training)
        parts = [self.node_encoder(x_in)]
        if self.rwse_encoder is not None:
            parts.append(self.rwse_encoder(_need(data, "rwse", "gtpe.transforms.AddRWSE")))
        if self.lap_encoder is not None:
            lap_edges = None
            if self.lap_encoder.encoder == "signnet":  # SignNet's GIN runs on AddLapPE's graph
                lap_edges = (
                    to_undirected(edge_index, num_nodes=x_in.size(0))
                    if self.directed
                    else edge_index
                )
            parts.append(
                self.lap_encoder(
                    _need(data, "lap_pe", "gtpe.transforms.AddLapPE"),
                    _need(data, "lap_eigval", "gtpe.transforms.AddLapPE"),
                    batch,
                    num_graphs,
                    edge_index=lap_edges,
                )
            )
        if self.maglap_encoder is not None:
            parts.append(
                self.maglap_encoder(
                    _need(data, "maglap_pe", "gtpe.transforms.AddMagLapPE"),
                    _need(data, "maglap_eigval", "gtpe.transforms.AddMagLapPE"),
                    batch,
                    num_graphs,
                    edge_index=edge_index,
                )
            )
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

        edge_attr = None
        if self.edge_encoder is not None:
            edge_attr = self.edge_encoder(_need(data, "edge_attr", "edge features"))
        if self.symmetrise:  # j -> i becomes j -> i and i -> j, with the same features
            edge_index = torch.cat([edge_index, edge_index.flip(0)], dim=1)
            if edge_attr is not None:
                edge_attr = torch.cat([edge_attr, edge_attr], dim=0)

        extra: dict[str, Any] = {}
        if self.rrwp_encoder is not None:
            rrwp = _need(data, "rrwp", "gtpe.transforms.AddRRWP")
            if self.rrwp_encoder.pair_lin is not None:
                h, pair_index, pair_attr = self.rrwp_encoder(
                    rrwp,
                    _need(data, "rrwp_index", "gtpe.transforms.AddRRWP"),
                    _need(data, "rrwp_val", "gtpe.transforms.AddRRWP"),
                    edge_index,
                    edge_attr,
                )
                extra["pair_index"], extra["pair_attr"] = pair_index, pair_attr
            else:
                h = self.rrwp_encoder.encode_nodes(rrwp)
            x = x + h
        if self.config.attn == "exphormer":
            extra["expander_index"] = _need(
                data, "expander_index", "gtpe.transforms.AddExpanderEdges"
            )
        if self.centrality is not None:  # attn == 'graphormer'
            hint = "gtpe.transforms.AddSPD"
            x = self.centrality(
                x, _need(data, "in_degree", hint), _need(data, "out_degree", hint)
            )
            extra["spd_index"] = _need(data, "spd_index", hint)
            extra["spd_val"] = _need(data, "spd_val", hint)
            if self.edge_encoding is not None:
                extra["spd_edge_bias"] = self._edge_bias(data, x.size(0), extra)
        return dict(
            x=x,
            edge_index=edge_index,
            batch=batch,
            edge_attr=edge_attr,
            num_graphs=num_graphs,
            **extra,
        )

    def _edge_bias(self, data: Any, N: int, extra: dict[str, Any]) -> Tensor:
        """Eq. 7's :math:`c` for every ``spd_index`` pair ``[M, heads]`` from the given (not
        symmetrised) edges; 0 for pairs beyond ``max_dist`` (they share the far bias)."""
        spd = self.config.spd_config
        assert self.edge_encoding is not None and self.spd_edge_encoder is not None
        assert spd is not None
        P = self.edge_encoding.path_len
        path = getattr(data, "spd_path_index", None)
        if path is None:
            raise ValueError(
                f"GPSModel: the batch has no 'spd_path_index'; add "
                f"gtpe.transforms.AddSPD(max_dist=..., path_len={P}) to the dataset transforms "
                f"(GPSModelConfig.transforms() lists them)"
            )
        spd_index, spd_val = extra["spd_index"], extra["spd_val"]
        if not isinstance(path, Tensor) or path.dim() != 2 or path.size(1) != spd_index.size(1):
            got = tuple(path.shape) if isinstance(path, Tensor) else type(path).__name__
            raise ValueError(
                f"GPSModel: spd_path_index must have one column per spd_index pair, [{P + 1}, "
                f"{spd_index.size(1)}], got {got}: compute both with one "
                f"gtpe.transforms.AddSPD(max_dist=..., path_len={P})"
            )
        edge_x = self.spd_edge_encoder(_need(data, "edge_attr", "edge features"))
        c = self.edge_encoding(edge_x, data.edge_index, path, num_nodes=N)
        return torch.where((spd_val <= spd.max_dist).unsqueeze(1), c, c.new_zeros(()))

    def forward(self, data: Any) -> Tensor:
        kw = self.encode(data)
        x, batch, num_graphs = kw.pop("x"), kw.pop("batch"), kw.pop("num_graphs")
        edge_index, edge_attr = kw.pop("edge_index"), kw.pop("edge_attr")
        token = None
        if self.graph_token is not None:
            x, batch, edge_index, token, kw = self._insert_graph_token(
                x, batch, edge_index, num_graphs, kw
            )
        state: dict[str, Tensor] = {}
        edge_bias = kw.pop("spd_edge_bias", None)
        if edge_bias is not None:  # Eq. 7, shared by all layers (GraphormerAttention's cache)
            state[EDGE_BIAS_KEY] = edge_bias
        for layer in self.layers:
            x = layer(x, edge_index, batch, edge_attr, state=state, num_graphs=num_graphs, **kw)
        if token is not None:
            return self.head(x.index_select(0, token))
        if self.graph_level:
            pool = scatter_mean if self.config.pool == "mean" else scatter_sum
            x = pool(x, batch, num_graphs)
        return self.head(x)

    def _insert_graph_token(
        self, x: Tensor, batch: Tensor, edge_index: Tensor, num_graphs: int, kw: dict[str, Any]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
        """Graphormer's graph token: a node before the first node of each graph (so ``batch``
        stays sorted; node ``i`` of graph ``g`` becomes ``i + g + 1``), paired with every node
        of its graph and itself at "distance" ``max_dist + 1`` (its own bias ``t``).  Returns
        the new ``x [N + G, C]``, ``batch``, ``edge_index`` (renumbered), the tokens' ids
        ``[G]`` and the layers' extras with the new ``spd_index`` / ``spd_val`` (and the edge
        encoding ``spd_edge_bias`` extended by zeros: the token's pairs get none)."""
        N, G, dev = x.size(0), num_graphs, x.device
        D = self.layers[0].attn.max_dist - 1  # the layers hold one more row for t
        counts = torch.bincount(batch, minlength=G)
        pos = torch.arange(N, device=dev) + batch + 1  # new id of node i
        token = torch.cumsum(counts + 1, 0) - counts - 1  # new id of graph g's token
        src = torch.empty(N + G, dtype=torch.long, device=dev)  # row of cat([x, tokens])
        src[pos] = torch.arange(N, device=dev)
        src[token] = torch.arange(N, N + G, device=dev)
        x = torch.cat([x, self.graph_token.expand(G, -1)]).index_select(0, src)
        graph_ids = torch.arange(G, device=dev)
        new_batch = torch.cat([batch, graph_ids]).index_select(0, src)
        spd_index, spd_val = kw["spd_index"], kw["spd_val"]
        tb = token.index_select(0, batch)  # the token of each node's graph
        index = torch.cat(
            [
                pos[spd_index],
                torch.stack([tb, pos]),  # token -> node
                torch.stack([pos, tb]),  # node -> token
                torch.stack([token, token]),
            ],
            dim=1,
        )
        far = torch.full_like(spd_val, D + 2)
        val = torch.cat(
            [torch.where(spd_val > D, far, spd_val), spd_val.new_full((2 * N + G,), D + 1)]
        )
        kw = {**kw, "spd_index": index, "spd_val": val}
        if "spd_edge_bias" in kw:
            c = kw["spd_edge_bias"]
            kw["spd_edge_bias"] = torch.cat([c, c.new_zeros(2 * N + G, c.size(1))])
        return x, new_batch, pos[edge_index], token, kw

    def __repr__(self) -> str:
        c = self.config
        return (
            f"{self.__class__.__name__}(channels={c.channels}, num_layers={c.num_layers}, "
            f"local={c.local!r}, attn={c.attn!r}, out_dim={self.out_dim}, "
            f"graph_level={self.graph_level}, directed={self.directed})"
        )
