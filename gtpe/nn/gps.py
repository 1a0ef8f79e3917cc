r"""The GPS layer: local message passing + global attention + MLP.

Rampášek et al., `"Recipe for a General, Powerful, Scalable Graph Transformer"
<https://arxiv.org/abs/2205.12454>`_ (NeurIPS 2022).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Dropout, Identity, Linear, ReLU, Sequential

from gtpe.nn.local import GCN, GINE, DirGINE, GatedGCN
from gtpe.nn.ops import (
    make_norm,
    check_batch_shape,
    check_index_range,
    check_index_shape,
    check_positive_int,
    checks_enabled,
    edge_attr_error,
    segment_count,
)

__all__ = ["ATTN_TYPES", "LOCAL_TYPES", "NORM_TYPES", "GPSLayer"]

LOCAL_TYPES = ("gine", "dirgine", "gatedgcn", "gcn")
ATTN_TYPES = ("full", "linear", "exphormer", "grit", "gt", "graphormer", "sgformer", "polynormer")
NORM_TYPES = ("batch", "layer")


def _none(v: Any) -> Any:
    return None if isinstance(v, str) and v.lower() == "none" else v


def _make_norm(norm: str | None, channels: int) -> torch.nn.Module | None:
    return make_norm(
        norm, channels, f"GPSLayer: unknown norm {norm!r}; expected one of {NORM_TYPES} or None"
    )


def _make_attn(
    attn: str, channels: int, heads: int, attn_dropout: float, kwargs: dict[str, Any]
) -> torch.nn.Module:
    # Imported lazily: the attention modules live in gtpe.nn.attention (one file each).
    if attn == "full":
        from gtpe.nn.attention.full import FullAttention

        return FullAttention(channels, heads=heads, dropout=attn_dropout, **kwargs)
    if attn == "linear":
        from gtpe.nn.attention.linear import LinearAttention

        return LinearAttention(channels, heads=heads, dropout=attn_dropout, **kwargs)
    if attn == "exphormer":
        from gtpe.nn.attention.exphormer import ExphormerAttention

        return ExphormerAttention(channels, heads=heads, dropout=attn_dropout, **kwargs)
    if attn == "grit":
        from gtpe.nn.attention.grit import GRITAttention

        return GRITAttention(channels, heads=heads, dropout=attn_dropout, **kwargs)
    if attn == "gt":
        from gtpe.nn.attention.gt import GTAttention

        return GTAttention(channels, heads=heads, dropout=attn_dropout, **kwargs)
    if attn == "graphormer":
        from gtpe.nn.attention.graphormer import GraphormerAttention

        return GraphormerAttention(channels, heads=heads, dropout=attn_dropout, **kwargs)
    if attn in ("sgformer", "polynormer"):
        if attn_dropout > 0:  # neither has attention weights to drop (linear attention)
            raise ValueError(
                f"GPSLayer: attn={attn!r} has no attention-weight dropout (a linear attention "
                f"without an N x N matrix); got attn_dropout={attn_dropout}, use dropout"
            )
        if attn == "sgformer":
            from gtpe.nn.attention.sgformer import SGFormerAttention

            return SGFormerAttention(channels, heads=heads, **kwargs)
        from gtpe.nn.attention.polynormer import PolynormerAttention

        return PolynormerAttention(channels, heads=heads, **kwargs)
    raise ValueError(
        f"GPSLayer: unknown attn {attn!r}; expected one of {ATTN_TYPES}, a torch.nn.Module or None"
    )


def _attn_kind(attn: torch.nn.Module) -> str:
    name = type(attn).__name__
    if name in ("FullAttention", "LinearAttention"):
        return "dense"  # forward(x, batch)
    if name == "ExphormerAttention":
        return "exphormer"
    if name == "GRITAttention":
        return "grit"
    if name == "GTAttention":
        return "gt"
    if name == "GraphormerAttention":
        return "graphormer"
    if name in ("SGFormerAttention", "PolynormerAttention"):
        return "per_graph"  # forward(x, batch, num_graphs)
    if isinstance(attn, torch.nn.MultiheadAttention):
        return "mha"
    return "dense"


class GPSLayer(torch.nn.Module):
    r"""One GPS layer (Rampášek et al., 2022), combining a local message-passing module and a
    global attention module in parallel:

    .. math::
        \mathbf{h}_L &= \mathrm{Norm}_1\big(\mathbf{x} + \mathrm{Dropout}(\mathrm{MPNN}(\mathbf{x},
            \mathbf{e}, \mathbf{A}))\big) \\
        \mathbf{h}_A &= \mathrm{Norm}_2\big(\mathbf{x} + \mathrm{Dropout}(\mathrm{Attn}(\mathbf{x}))\big) \\
        \mathbf{x}' &= \mathrm{Norm}_3\big(\mathbf{h} + \mathrm{MLP}(\mathbf{h})\big), \qquad
            \mathbf{h} = \mathbf{h}_L + \mathbf{h}_A,

    with :math:`\mathrm{MLP} = \mathrm{Linear}(C, 2C) \to \mathrm{ReLU} \to \mathrm{Dropout} \to
    \mathrm{Linear}(2C, C) \to \mathrm{Dropout}`.  A missing branch (``local=None`` or
    ``attn=None``) is left out of the sum.  ``residual=False`` drops the :math:`\mathbf{x} +`
    of both branches; ``ffn=False`` replaces the feed-forward block by the activation alone,
    :math:`\mathbf{x}' = \mathrm{ReLU}(\mathbf{h})` (no MLP, no :math:`\mathrm{Norm}_3`), or by
    nothing with ``act=False``, :math:`\mathbf{x}' = \mathbf{h}` (a plain stack's output
    layer).  With ``local='gcn', attn=None, norm=None, residual=False, ffn=False`` the layer is
    Kipf & Welling's hidden layer :math:`\mathbf{x}' = \mathrm{Dropout}(\mathrm{ReLU}(
    \hat{\mathbf{D}}^{-1/2}\hat{\mathbf{A}}\hat{\mathbf{D}}^{-1/2}\mathbf{x}\mathbf{W} +
    \mathbf{b}))` (the classic message-passing stack: conv, activation, dropout; with
    ``act=False, dropout=0`` its output layer).  For ``local='gine', attn='full', norm='batch'`` this is
    exactly PyG's :class:`torch_geometric.nn.GPSConv` with ``GINEConv`` and
    ``attn_type='multihead'`` (same parameters: ``local`` ↔ ``conv``, ``attn`` ↔ ``attn``,
    ``mlp``, ``norm1/2/3`` ↔ ``norm1/2/3.module``; see :meth:`from_pyg`).  Differences from
    ``GPSConv``: ``norm='layer'`` is the node-wise :class:`torch.nn.LayerNorm` (as GraphGPS),
    while PyG's ``'layer_norm'`` normalises over each graph; ``GatedGCN`` does its residual and
    dropout inside (as GraphGPS), so its branch is :math:`\mathrm{Norm}_1(\mathrm{GatedGCN}(\mathbf{x}))`.

    Args:
        channels: feature size :math:`C` (node features, and edge features unless ``edge_dim``).
        local: ``'gine'`` (:class:`~gtpe.nn.local.GINE`), ``'dirgine'``
            (:class:`~gtpe.nn.local.DirGINE`: separate weights for in- and out-edges of a directed
            ``edge_index``), ``'gatedgcn'`` (:class:`~gtpe.nn.local.GatedGCN`), ``'gcn'``
            (:class:`~gtpe.nn.local.GCN`, Kipf & Welling; ignores ``edge_attr``: no edge features
            reach it, and they are not checked for it; its normalised adjacency is computed once
            per ``state``), any
            ``torch_geometric`` ``MessagePassing`` instance (called with ``edge_attr`` when its
            ``forward`` takes it) or ``None``.
        attn: ``'full'`` (:class:`~gtpe.nn.attention.FullAttention`), ``'linear'``
            (Performer), ``'exphormer'``, ``'grit'``, ``'gt'``
            (:class:`~gtpe.nn.attention.GTAttention`: attention over the graph's edges),
            ``'graphormer'`` (:class:`~gtpe.nn.attention.graphormer.GraphormerAttention`: full
            attention with Graphormer's shortest-path-distance bias; ``attn_kwargs``
            ``max_dist``, default 5), ``'sgformer'``
            (:class:`~gtpe.nn.attention.sgformer.SGFormerAttention`, SGFormer's simple global
            attention; every head ``channels`` wide, heads averaged), ``'polynormer'``
            (:class:`~gtpe.nn.attention.polynormer.PolynormerAttention`, Polynormer's gated
            global attention with its own output projection, ReLU and LayerNorm; ``attn_kwargs``
            ``beta`` etc.) -- these two attend within each graph in :math:`O(N C^2)`, have no
            attention weights to drop (``attn_dropout`` must be 0) and get the residual, norm
            and dropout of the branch from the layer -- a
            module (``forward(x, batch)``, or a ``torch.nn.MultiheadAttention`` with
            ``batch_first=True``) or ``None``.
        heads: attention heads.
        dropout: dropout on both branches and in the MLP.
        attn_dropout: dropout on the attention weights.
        norm: ``'batch'``, ``'layer'`` or ``None``.
        edge_dim: size of ``edge_attr`` if not ``channels`` (GINE maps it with a linear layer).
        residual: add the input to each branch's output (the GPS recipe); ``False`` for a plain
            stack.
        ffn: the feed-forward block :math:`\mathrm{Norm}_3(\mathbf{h} + \mathrm{MLP}(\mathbf{h}))`;
            ``False``: :math:`\mathrm{ReLU}(\mathbf{h})` instead (no ``mlp``, no ``norm3``).
        act: with ``ffn=False``, apply that ReLU (``False``: return :math:`\mathbf{h}`).
        local_kwargs, attn_kwargs: extra constructor arguments of the built-in modules.

    Forward: ``x [N, C]``, ``edge_index [2, E]``, ``batch [N]`` (sorted graph ids; ``None`` = one
    graph), ``edge_attr [E, C]`` (optional), and keyword extras

    * ``expander_index [2, M]`` -- for ``attn='exphormer'`` (:class:`gtpe.transforms.AddExpanderEdges`);
    * ``pair_index [2, M]``, ``pair_attr [M, C]`` -- for ``attn='grit'``
      (:class:`gtpe.transforms.AddRRWP` + :class:`gtpe.nn.encoders.RRWPEncoder`);
    * ``spd_index [2, M]``, ``spd_val [M]`` -- for ``attn='graphormer'``
      (:class:`gtpe.transforms.AddSPD`; row 0 the start of a path, row 1 its end);
    * ``num_graphs`` -- number of graphs in the batch (saves a device sync; optional);
    * ``state`` -- a dict shared by the layers of one model forward (also the
      :class:`~gtpe.nn.attention.FullAttention` cache of ``'full'`` and ``'graphormer'``:
      the batch layout, and the checks and positions of ``spd_index``, once per batch): Exphormer keeps
      ``state['virtual_x']``, GRIT ``state['pair_index']``/``state['pair_attr']``, GatedGCN
      and GT (``update_edges``) ``state['edge_attr']`` (the updated edge features, used by the
      next layer instead of ``edge_attr``), GRIT's degree injection ``state['deg']``
      (out-degrees of ``edge_index``, as GRIT's transform).

    ``attn='exphormer'`` and ``attn='gt'`` are built with ``edge_dim=channels`` (``edge_dim``
    if given; they use ``edge_attr`` on the graph edges); pass ``attn_kwargs={'edge_dim': None}``
    for graphs without edge features.  ``attn='gt'`` is Dwivedi & Bresson's layer: with
    ``local=None`` the node path above is the paper's (:math:`O_h` is the attention's
    ``out_proj``), and the attention also updates the edge features (the paper's edge stream,
    with ``norm`` and ``dropout``: :class:`~gtpe.nn.attention.GTAttention`'s ``update_edges``,
    on by default when the edge features have ``channels`` columns); with ``local='gatedgcn'``,
    which updates the edges itself, GT does not (``update_edges=True`` is then an error).

    ``attn='grit'`` (Ma et al., `"Graph Inductive Biases in Transformers without Message
    Passing" <https://arxiv.org/abs/2305.17589>`_, ICML 2023) also updates the pair features,
    as the official ``GritTransformerLayer``:

    .. math::
        \mathbf{e}'_{ij} = \mathrm{Norm}_e\big(\mathbf{e}_{ij} + W_{Oe}\,
            \mathrm{Dropout}(\hat{\mathbf{e}}_{ij})\big),

    with :math:`\hat{\mathbf{e}}_{ij}` the attention's pair scores and :math:`W_{Oe}` its
    ``pair_out_proj`` (:class:`~gtpe.nn.attention.grit.GRITAttention`), ``dropout`` the
    layer's, :math:`\mathrm{Norm}_e` = ``attn.pair_norm`` of the layer's ``norm`` type over the
    :math:`C` pair channels (none with ``norm=None``) and the :math:`\mathbf{e}_{ij} +` only with
    ``residual=True``; the next layer reads :math:`\mathbf{e}'` from ``state['pair_attr']``.
    ``attn_kwargs={'update_pairs': False}`` (what :class:`~gtpe.models.GPSModel` gives its last
    layer, whose pair output nobody reads) skips the update (no :math:`W_{Oe}`, no
    :math:`\mathrm{Norm}_e`).  The node side drops as the official layer: ``dropout`` acts
    inside the attention (its ``node_dropout``), before the degree scaler and :math:`W_O`, not
    on the branch output, and the MLP drops once, after its activation (the same random
    masks as the official layer's, in the same order, see tests/test_original_ports.py).

    Returns the new node features ``[N, C]``.

    Inputs are checked before anything runs, each failure a one-line ``ValueError`` that names the
    tensor, its shape or values and what is expected: ``x`` a float ``[N, channels]``,
    ``edge_index`` (and ``expander_index`` / ``pair_index`` where the attention reads them) an
    integer ``[2, *]``, ``batch`` an integer ``[N]``, ``edge_attr`` a float ``[E, channels]``
    (``[E, edge_dim]`` with ``edge_dim``; integer edge types must be embedded first).  The node
    ids must lie in ``[0, N)`` and the graph ids in ``[0, num_graphs)`` (``>= 0`` without
    ``num_graphs``): one ``aminmax`` per index tensor and a single host sync, once per model
    forward when the layers share ``state`` (and pass the same tensors), skipped under
    ``torch.compile``, ``torch.jit.trace`` and TorchScript.  On a ZINC batch (32 graphs, 750
    nodes, 1612 edges, one CPU thread) all checks take ~15 µs of a ~2 ms layer forward.

    ``torch.compile`` works (tested with ``backend='aot_eager'``, forward and backward);
    :class:`~gtpe.nn.attention.FullAttention` reads the graph sizes on the host to plan its
    padding, which is one graph break (once per ``batch`` when the layers share ``state``).
    """

    def __init__(
        self,
        channels: int,
        local: str | torch.nn.Module | None = "gine",
        attn: str | torch.nn.Module | None = "full",
        heads: int = 4,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        norm: str | None = "batch",
        edge_dim: int | None = None,
        local_kwargs: dict[str, Any] | None = None,
        attn_kwargs: dict[str, Any] | None = None,
        residual: bool = True,
        ffn: bool = True,
        act: bool = True,
    ):
        super().__init__()
        local, attn, norm = _none(local), _none(attn), _none(norm)
        channels = check_positive_int("GPSLayer", "channels", channels)
        heads = check_positive_int("GPSLayer", "heads", heads)
        if edge_dim is not None:
            edge_dim = check_positive_int("GPSLayer", "edge_dim", edge_dim, " or None")
        if not 0.0 <= dropout < 1.0 or not 0.0 <= attn_dropout < 1.0:
            raise ValueError(
                f"GPSLayer: dropout ({dropout}) and attn_dropout ({attn_dropout}) must be in [0, 1)"
            )
        if isinstance(attn, str) and channels % heads != 0:
            raise ValueError(
                f"GPSLayer: channels ({channels}) must be divisible by heads ({heads})"
            )
        if local is None and attn is None:
            raise ValueError("GPSLayer: local and attn cannot both be None")
        for name, flag in (("residual", residual), ("ffn", ffn), ("act", act)):
            if flag is not True and flag is not False:
                raise ValueError(f"GPSLayer: {name} must be True or False, got {flag!r}")
        if ffn and not act:
            raise ValueError("GPSLayer: act=False (no activation after the branches) needs "
                             "ffn=False (the feed-forward block has its own ReLU)")
        if norm not in (None, "batch", "batch_norm", "layer", "layer_norm"):
            _make_norm(norm, channels)  # raises the unknown-norm error before any module is built
        self.channels = channels
        self.heads = heads
        self.dropout = float(dropout)
        self.attn_dropout = float(attn_dropout)
        self.norm_type = norm
        self.edge_dim = edge_dim
        self.residual = residual
        self.ffn = ffn
        self.act = act
        local_kwargs = dict(local_kwargs or {})
        attn_kwargs = dict(attn_kwargs or {})

        # -- local branch --
        self.local_type: str | None
        if local is None:
            self.local = None
            self.local_type = None
        elif isinstance(local, str):
            if local == "gine":
                self.local = GINE(channels, edge_dim=edge_dim, **local_kwargs)
            elif local == "dirgine":
                self.local = DirGINE(channels, edge_dim=edge_dim, **local_kwargs)
            elif local == "gatedgcn":
                if edge_dim is not None and edge_dim != channels:
                    raise ValueError(
                        f"GPSLayer: local='gatedgcn' needs edge features of size "
                        f"channels={channels}, got edge_dim={edge_dim}"
                    )
                local_kwargs.setdefault("residual", residual)
                self.local = GatedGCN(channels, dropout=dropout, **local_kwargs)
            elif local == "gcn":
                self.local = GCN(channels, **local_kwargs)
            else:
                raise ValueError(
                    f"GPSLayer: unknown local {local!r}; expected one of "
                    f"{LOCAL_TYPES}, a MessagePassing instance or None"
                )
            self.local_type = local
        elif isinstance(local, torch.nn.Module):
            self.local = local
            self.local_type = (
                "gine"
                if isinstance(local, GINE)
                else "dirgine"
                if isinstance(local, DirGINE)
                else "gatedgcn"
                if isinstance(local, GatedGCN)
                else "gcn"
                if isinstance(local, GCN)
                else "custom"
            )
        else:
            raise ValueError(f"GPSLayer: local must be a name, a module or None, got {local!r}")
        self._local_takes_edge_attr = False
        if self.local_type == "custom":
            params = inspect.signature(self.local.forward).parameters
            self._local_takes_edge_attr = "edge_attr" in params

        # -- attention branch --
        if attn is None:
            self.attn = None
            self.attn_type = None
        elif isinstance(attn, str):
            if attn in ("exphormer", "gt"):
                attn_kwargs.setdefault("edge_dim", edge_dim if edge_dim is not None else channels)
            if attn == "grit":  # the official pair stream: the layer's dropout, residual, norm
                attn_kwargs.setdefault("node_dropout", dropout)  # before W_O, as the official
                attn_kwargs.setdefault("pair_dropout", dropout)
                attn_kwargs.setdefault("pair_residual", residual)
                attn_kwargs.setdefault("pair_norm", norm)
            if attn == "gt":
                gated = self.local_type == "gatedgcn"
                if gated and attn_kwargs.get("update_edges"):
                    raise ValueError(
                        "GPSLayer: attn='gt' with update_edges=True cannot be combined with "
                        "local='gatedgcn' (both would update the edge features)"
                    )
                attn_kwargs.setdefault(
                    "update_edges", attn_kwargs["edge_dim"] == channels and not gated
                )
                attn_kwargs.setdefault("edge_norm", norm)
                attn_kwargs.setdefault("edge_dropout", dropout)
            self.attn = _make_attn(attn, channels, heads, attn_dropout, attn_kwargs)
            self.attn_type = attn
        elif isinstance(attn, torch.nn.Module):
            if isinstance(attn, torch.nn.MultiheadAttention) and not attn.batch_first:
                raise ValueError(
                    "GPSLayer: a torch.nn.MultiheadAttention attn must be built "
                    "with batch_first=True"
                )
            self.attn = attn
            self.attn_type = "custom"
        else:
            raise ValueError(f"GPSLayer: attn must be a name, a module or None, got {attn!r}")
        self._attn_kind = _attn_kind(self.attn) if self.attn is not None else None
        # (width, label, edge_dim hint) of edge_attr for each built-in module that reads it
        self._edge_attr_specs: list[tuple[int, str, bool]] = []
        if isinstance(self.local, (GINE, DirGINE)):
            lin = self.local.lin
            self._edge_attr_specs.append(
                (lin.in_features, "edge_dim", False) if lin is not None else (channels, "channels", True)
            )
        elif isinstance(self.local, GatedGCN):
            self._edge_attr_specs.append((channels, "channels", False))
        dim = (
            getattr(self.attn, "edge_dim", None)
            if self._attn_kind in ("exphormer", "gt")
            else None
        )
        if dim is not None:
            self._edge_attr_specs.append((dim, "channels" if dim == channels else "edge_dim", False))

        # -- MLP and norms (names as in PyG's GPSConv) --
        self.mlp = (
            Sequential(
                Linear(channels, 2 * channels),
                ReLU(),
                Dropout(dropout),
                Linear(2 * channels, channels),
                Dropout(dropout),
            )
            if ffn
            else None
        )
        # the official GRIT layer's FFN drops once, after the activation
        self._branch_dropout = self.attn_type != "grit"
        if self.mlp is not None and not self._branch_dropout:
            self.mlp[4] = Identity()
        self.norm1 = _make_norm(norm, channels) if self.local is not None else None
        self.norm2 = _make_norm(norm, channels) if self.attn is not None else None
        self.norm3 = _make_norm(norm, channels) if ffn else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.local is not None and hasattr(self.local, "reset_parameters"):
            self.local.reset_parameters()
        if self.attn is not None:
            if hasattr(self.attn, "reset_parameters"):
                self.attn.reset_parameters()
            elif hasattr(self.attn, "_reset_parameters"):
                self.attn._reset_parameters()
        if self.mlp is not None:
            self.mlp[0].reset_parameters()
            self.mlp[3].reset_parameters()
        for n in (self.norm1, self.norm2, self.norm3):
            if n is not None:
                n.reset_parameters()

    # ------------------------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        batch: Tensor | None = None,
        edge_attr: Tensor | None = None,
        *,
        expander_index: Tensor | None = None,
        pair_index: Tensor | None = None,
        pair_attr: Tensor | None = None,
        spd_index: Tensor | None = None,
        spd_val: Tensor | None = None,
        state: dict[str, Tensor] | None = None,
        num_graphs: int | None = None,
        **kwargs: Any,
    ) -> Tensor:
        if state is None:
            state = {}
        if kwargs and self.local_type != "custom":
            raise TypeError(
                f"GPSLayer.forward got unexpected keyword arguments "
                f"{sorted(kwargs)} (extras are expander_index, pair_index, "
                f"pair_attr, spd_index, spd_val, num_graphs, state)"
            )
        ea = state.get("edge_attr", edge_attr)
        self._check_inputs(x, edge_index, batch, ea, expander_index, pair_index, state, num_graphs)
        if batch is None:
            batch = x.new_zeros(x.size(0), dtype=torch.long)
        p = self.dropout if self.training else 0.0

        out: Tensor | None = None
        if self.local is not None:
            if self.local_type == "gatedgcn":
                h, e = self.local(x, edge_index, ea)
                if e is not None:
                    state["edge_attr"] = e
            else:
                if self.local_type in ("gine", "dirgine") or self._local_takes_edge_attr:
                    h = self.local(x, edge_index, edge_attr=ea, **kwargs)
                elif self.local_type == "gcn":  # edge features are not used by GCN
                    h = self.local(x, edge_index, cache=state)
                else:
                    h = self.local(x, edge_index, **kwargs)
                if p > 0:
                    h = F.dropout(h, p=p, training=True)
                if self.residual:
                    h = h + x
            if self.norm1 is not None:
                h = self.norm1(h)
            out = h

        if self.attn is not None:
            if self._attn_kind == "graphormer":
                a = self._graphormer(x, batch, spd_index, spd_val, state)
            else:
                a = self._attention(
                    x, edge_index, batch, ea, expander_index, pair_index, pair_attr, state,
                    num_graphs,
                )
            if p > 0 and self._branch_dropout:
                a = F.dropout(a, p=p, training=True)
            if self.residual:
                a = a + x
            if self.norm2 is not None:
                a = self.norm2(a)
            out = a if out is None else out + a

        assert out is not None
        if self.mlp is None:
            return out.relu() if self.act else out
        if p > 0:
            out = out + self.mlp(out)
        else:  # same as self.mlp without the (identity) Dropout calls
            out = out + self.mlp[3](self.mlp[0](out).relu())
        if self.norm3 is not None:
            out = self.norm3(out)
        return out

    def _check_inputs(
        self,
        x: Tensor,
        edge_index: Tensor,
        batch: Tensor | None,
        edge_attr: Tensor | None,
        expander_index: Tensor | None,
        pair_index: Tensor | None,
        state: dict[str, Any],
        num_graphs: int | None,
    ) -> None:
        """Shapes and dtypes (free), then the index ranges (one reduction per index tensor and
        one host sync), the latter once per model forward when the layers share ``state`` and
        never while compiling / tracing."""
        C = self.channels
        if not isinstance(x, Tensor) or x.dim() != 2 or x.size(1) != C or not x.is_floating_point():
            if not isinstance(x, Tensor):
                got = type(x).__name__
            elif x.is_floating_point():
                got = f"shape {list(x.shape)}"
            else:
                got = f"{x.dtype} of shape {list(x.shape)}"
            hint = "" if not isinstance(x, Tensor) or x.is_floating_point() else (
                " — embed integer node types first (torch.nn.Embedding)"
            )
            raise ValueError(
                f"GPSLayer: x must be a float tensor [N, channels] = [N, {C}]; got {got}{hint}"
            )
        N = x.size(0)
        check_index_shape("GPSLayer", "edge_index", edge_index)
        if batch is not None:
            check_batch_shape("GPSLayer", batch, N)
        if edge_attr is not None:
            err = self._edge_attr_error(edge_attr, edge_index.size(1))
            if err is not None:
                raise ValueError(err)
        kind = self._attn_kind
        items: list[tuple[str, Tensor, int | None, str]] = [("edge_index", edge_index, N, "N")]
        if kind == "exphormer" and expander_index is not None:
            check_index_shape("GPSLayer", "expander_index", expander_index, "M")
            items.append(("expander_index", expander_index, N, "N"))
        if kind == "grit" and pair_index is not None and "pair_index" not in state:
            check_index_shape("GPSLayer", "pair_index", pair_index, "M")
            items.append(("pair_index", pair_index, N, "N"))
        if batch is not None:
            items.append(("batch", batch, num_graphs, "num_graphs"))
        if not checks_enabled():
            return
        # tensors that an earlier layer of this model forward (same state) already checked
        done = state.get("checked_inputs")
        if done is None or done[0] != N or done[1] != num_graphs:
            done = (N, num_graphs, [])
        items = [it for it in items if not any(it[1] is t for t in done[2])]
        if items:
            check_index_range("GPSLayer", items)
            done[2].extend(t for _, t, _, _ in items)
            state["checked_inputs"] = done

    def _edge_attr_error(self, edge_attr: Tensor, num_edges: int) -> str | None:
        for width, label, edge_dim_hint in self._edge_attr_specs:
            err = edge_attr_error("GPSLayer", edge_attr, num_edges, width, label, edge_dim_hint)
            if err is not None:
                return err
        return None

    def _graphormer(
        self,
        x: Tensor,
        batch: Tensor,
        spd_index: Tensor | None,
        spd_val: Tensor | None,
        state: dict[str, Any],
    ) -> Tensor:
        if spd_index is None or spd_val is None:
            raise ValueError(
                "GPSLayer(attn='graphormer') needs spd_index and spd_val: add "
                "gtpe.transforms.AddSPD(max_dist=...) to the dataset transforms and pass "
                "spd_index=data.spd_index, spd_val=data.spd_val"
            )
        # state is FullAttention's cache: the pairs are checked and placed once per batch
        return self.attn(x, batch, spd_index, spd_val, cache=state)


    def _attn_edge_attr(self, kind: str, edge_attr: Tensor | None) -> Tensor | None:
        """The edge features an edge-reading attention (Exphormer, GT) gets: ``None`` when it
        was built without them (``attn_kwargs={'edge_dim': None}``), else ``edge_attr``,
        which must be given."""
        if getattr(self.attn, "edge_dim", None) is None:
            return None
        if edge_attr is None:
            raise ValueError(
                f"GPSLayer(attn='{kind}') was built for edge features (edge_dim="
                f"{self.attn.edge_dim}) but got edge_attr=None; for graphs without edge "
                "features build it with attn_kwargs={'edge_dim': None}"
            )
        return edge_attr

    def _attention(
        self,
        x: Tensor,
        edge_index: Tensor,
        batch: Tensor,
        edge_attr: Tensor | None,
        expander_index: Tensor | None,
        pair_index: Tensor | None,
        pair_attr: Tensor | None,
        state: dict[str, Tensor],
        num_graphs: int | None,
    ) -> Tensor:
        kind = self._attn_kind
        if kind == "dense":
            if type(self.attn).__name__ == "FullAttention":  # batch layout shared across layers
                return self.attn(x, batch, cache=state)
            return self.attn(x, batch)
        if kind == "per_graph":  # SGFormer, Polynormer: linear attention within each graph
            return self.attn(x, batch, num_graphs=num_graphs)
        if kind == "exphormer":
            if expander_index is None:
                raise ValueError(
                    "GPSLayer(attn='exphormer') needs expander_index: add "
                    "gtpe.transforms.AddExpanderEdges() to the dataset transforms and pass "
                    "expander_index=data.expander_index"
                )
            edge_attr = self._attn_edge_attr(kind, edge_attr)
            a, vx = self.attn(
                x,
                edge_index,
                batch,
                edge_attr=edge_attr,
                expander_index=expander_index,
                virtual_x=state.get("virtual_x"),
                num_graphs=num_graphs,
            )
            state["virtual_x"] = vx
            return a
        if kind == "gt":
            edge_attr = self._attn_edge_attr(kind, edge_attr)
            a, e = self.attn(x, edge_index, edge_attr)
            if e is not None:
                state["edge_attr"] = e
            return a
        if kind == "grit":
            pi = state.get("pair_index", pair_index)
            pa = state.get("pair_attr", pair_attr)
            if pi is None or pa is None:
                raise ValueError(
                    "GPSLayer(attn='grit') needs pair_index and pair_attr: add "
                    "gtpe.transforms.AddRRWP() to the dataset transforms and encode "
                    "data.rrwp_index/data.rrwp_val with gtpe.nn.encoders.RRWPEncoder"
                )
            deg = state.get("deg")
            if deg is None:  # GRIT's degree injection: the out-degree (row sums of A), as GRIT
                deg = segment_count(edge_index[0], x.size(0), dtype=x.dtype)
                state["deg"] = deg
            a, pa, pi = self.attn(x, pi, pa, batch, deg=deg, num_graphs=num_graphs)
            state["pair_index"] = pi
            state["pair_attr"] = pa
            return a
        # kind == 'mha': torch.nn.MultiheadAttention over padded graphs (as PyG's GPSConv).
        from torch_geometric.utils import to_dense_batch

        hd, mask = to_dense_batch(x, batch)
        hd, _ = self.attn(hd, hd, hd, key_padding_mask=~mask, need_weights=False)
        return hd[mask]

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_pyg(cls, conv: torch.nn.Module) -> GPSLayer:
        r"""Build a :class:`GPSLayer` with the weights of a PyG ``GPSConv`` (``attn_type=
        'multihead'``, ``norm='batch_norm'`` or ``None``).  A ``GINEConv`` local module becomes a
        :class:`~gtpe.nn.local.GINE` (same weights); any other ``conv`` is reused as is."""
        from torch_geometric.nn import GINEConv

        if not isinstance(conv.attn, torch.nn.MultiheadAttention):
            raise TypeError("GPSLayer.from_pyg supports attn_type='multihead' only")
        C = conv.channels
        norm = None if conv.norm3 is None else "batch"
        if norm is not None and not isinstance(
            getattr(conv.norm3, "module", None), torch.nn.BatchNorm1d
        ):
            raise ValueError("GPSLayer.from_pyg supports norm='batch_norm' or None only")
        g = conv.conv
        if isinstance(g, GINEConv):
            edge_dim = None
            if g.lin is not None:  # torch_geometric.nn.Linear (in_channels) or torch Linear
                edge_dim = getattr(g.lin, "in_channels", None) or g.lin.in_features
            local: torch.nn.Module | None = GINE(
                C,
                nn=copy.deepcopy(g.nn),
                eps=g.initial_eps,
                train_eps=isinstance(g.eps, torch.nn.Parameter),
                edge_dim=edge_dim,
            )
        else:
            local = g  # reused as is (its parameters are reset below, then restored)
            saved = copy.deepcopy(g.state_dict()) if g is not None else None
        layer = cls(
            C,
            local=local,
            attn="full",
            heads=conv.heads,
            dropout=conv.dropout,
            attn_dropout=conv.attn.dropout,
            norm=norm,
        )
        layer.to(next(conv.parameters()).device)
        with torch.no_grad():
            if isinstance(g, GINEConv):
                layer.local.nn.load_state_dict(g.nn.state_dict())
                layer.local.eps.copy_(g.eps)
                if g.lin is not None:
                    layer.local.lin.weight.copy_(g.lin.weight)
                    if g.lin.bias is not None:
                        layer.local.lin.bias.copy_(g.lin.bias)
            elif g is not None:
                layer.local.load_state_dict(saved)
        with torch.no_grad():
            layer.attn.in_proj_weight.copy_(conv.attn.in_proj_weight)
            if conv.attn.in_proj_bias is not None:
                layer.attn.in_proj_bias.copy_(conv.attn.in_proj_bias)
            layer.attn.out_proj.load_state_dict(conv.attn.out_proj.state_dict())
            layer.mlp.load_state_dict(conv.mlp.state_dict())
            if norm is not None:
                for mine, theirs in (
                    (layer.norm1, conv.norm1),
                    (layer.norm2, conv.norm2),
                    (layer.norm3, conv.norm3),
                ):
                    if mine is not None:
                        mine.load_state_dict(theirs.module.state_dict())
        return layer

    def __repr__(self) -> str:
        local = self.local_type if self.local_type != "custom" else self.local
        attn = self.attn_type if self.attn_type != "custom" else self.attn
        return (
            f"{self.__class__.__name__}({self.channels}, local={local!r}, attn={attn!r}, "
            f"heads={self.heads}, dropout={self.dropout}, attn_dropout={self.attn_dropout}, "
            f"norm={self.norm_type!r}"
            + ("" if self.residual else ", residual=False")
            + ("" if self.ffn else ", ffn=False")
            + ("" if self.act else ", act=False")
            + ")"
        )
