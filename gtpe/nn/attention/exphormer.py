r"""Exphormer sparse attention: local edges + expander edges + virtual nodes.

Shirzad et al., "Exphormer: Sparse Transformers for Graphs" (ICML 2023).  Attention is
evaluated only on the edge set :math:`\mathcal{E} = \mathcal{E}_{local} \cup
\mathcal{E}_{exp} \cup \mathcal{E}_{virt}` (the graph's edges, a random regular expander from
:class:`gtpe.transforms.AddExpanderEdges`, and edges between every real node and each of its
graph's ``num_virtual`` virtual nodes, both directions).  For an edge :math:`j \to i`:

.. math::
    s_{ij} = \frac{\langle W_Q x_i,\; W_K x_j \odot E_{ij}\rangle_h}{\sqrt{d}},\qquad
    \alpha_{ij} = \operatorname{softmax}_{j:\,(j\to i)\in\mathcal{E}}(s_{ij}),\qquad
    x'_i = W_O \big\Vert_h \sum_j \alpha_{ij} W_V x_j,

per head :math:`h` (inner product over the head's :math:`d = C/H` channels).  :math:`E_{ij}` is
``edge_proj(edge_attr)`` for local edges (a learned type embedding when there are no edge
features) and a learned type embedding for expander and virtual edges.  The softmax is the exact,
max-stabilised segment softmax of :mod:`gtpe.nn.ops` (the official code clamps scores to
:math:`[-5, 5]` instead).  Virtual nodes start from a learned embedding when ``virtual_x`` is
``None``; their updated states are returned so that the next layer continues from them (layers
that always receive ``virtual_x`` are built with ``init_virtual=False`` and hold no embedding).

Time and memory are :math:`O(|\mathcal{E}| C)`; no :math:`N \times N` tensor is formed.
Edges are used as given (``edge_index[0]`` = source :math:`j`, ``edge_index[1]`` = target
:math:`i`); pass both directions for undirected graphs (PyG and ``AddExpanderEdges`` do).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear, Parameter

from gtpe.nn.ops import (
    check_batch_shape,
    check_heads,
    check_index_shape,
    edge_aggregate,
    edge_attr_error,
    edge_dot,
    scatter_softmax,
)

# rows of ``type_emb``
_LOCAL, _EXPANDER, _VIRTUAL = 0, 1, 2


class ExphormerAttention(torch.nn.Module):
    r"""Exphormer attention over local, expander and virtual-node edges.

    Args:
        channels (int): input/output size :math:`C`.
        heads (int): number of heads (must divide ``channels``).
        dropout (float): dropout on the attention weights.
        edge_dim (int, optional): size of ``edge_attr``; if given, local edges use
            ``edge_proj(edge_attr)`` as :math:`E_{ij}` (and ``edge_attr`` is then required).
        num_virtual (int): virtual nodes per graph (0 disables them).
        bias (bool): learn biases in the projections.
        init_virtual (bool): learn the initial virtual-node embedding ``virtual_emb``
            ``[num_virtual, C]`` used when ``virtual_x`` is ``None``.  With ``False`` no
            embedding is created and ``virtual_x`` is required (for layers after the first,
            which continue from the previous layer's virtual-node states).

    ``forward(x, edge_index, batch, edge_attr=None, expander_index=None, virtual_x=None,
    num_graphs=None)`` returns ``(x_out [N, C], virtual_out [B * num_virtual, C])``; the
    virtual nodes of graph ``g`` are rows ``g * num_virtual ... (g + 1) * num_virtual - 1``.
    ``num_graphs`` (B) defaults to ``virtual_x.size(0) // num_virtual`` or ``batch.max() + 1``.
    """

    def __init__(
        self,
        channels: int,
        heads: int = 4,
        dropout: float = 0.0,
        edge_dim: int | None = None,
        num_virtual: int = 1,
        bias: bool = True,
        init_virtual: bool = True,
    ) -> None:
        super().__init__()
        channels, heads = check_heads("ExphormerAttention", channels, heads)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ExphormerAttention: dropout must be in [0, 1), got {dropout}")
        if num_virtual < 0:
            raise ValueError(f"ExphormerAttention: num_virtual must be >= 0, got {num_virtual}")
        if edge_dim is not None and edge_dim <= 0:
            raise ValueError(
                f"ExphormerAttention: edge_dim must be positive or None, got {edge_dim}"
            )
        self.channels = channels
        self.heads = heads
        self.head_dim = channels // heads
        self.dropout = float(dropout)
        self.edge_dim = edge_dim
        self.num_virtual = num_virtual
        self.init_virtual = bool(init_virtual)
        self.in_proj_weight = Parameter(torch.empty(3 * channels, channels))
        if bias:
            self.in_proj_bias = Parameter(torch.empty(3 * channels))
        else:
            self.register_parameter("in_proj_bias", None)
        self.edge_proj = Linear(edge_dim, channels, bias=bias) if edge_dim is not None else None
        # E for local edges without features / expander edges / virtual edges
        self.type_emb = Parameter(torch.empty(3, channels))
        if num_virtual > 0 and self.init_virtual:
            self.virtual_emb = Parameter(torch.empty(num_virtual, channels))
        else:
            self.register_parameter("virtual_emb", None)
        self.out_proj = Linear(channels, channels, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            torch.nn.init.zeros_(self.in_proj_bias)
        if self.edge_proj is not None:
            self.edge_proj.reset_parameters()
        torch.nn.init.normal_(self.type_emb, mean=1.0, std=0.1)  # E ~ 1: plain dot product at init
        if self.virtual_emb is not None:
            torch.nn.init.normal_(self.virtual_emb, std=1.0)
        self.out_proj.reset_parameters()

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        batch: Tensor | None = None,
        edge_attr: Tensor | None = None,
        expander_index: Tensor | None = None,
        virtual_x: Tensor | None = None,
        num_graphs: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        C, H, D, V = self.channels, self.heads, self.head_dim, self.num_virtual
        if x.dim() != 2 or x.size(1) != C:
            raise ValueError(
                f"ExphormerAttention: expected x of shape [N, {C}], got {tuple(x.shape)}"
            )
        N = x.size(0)
        check_index_shape("ExphormerAttention", "edge_index", edge_index)
        if expander_index is not None:
            check_index_shape("ExphormerAttention", "expander_index", expander_index, "M")
        if self.edge_proj is not None and edge_attr is None:
            raise ValueError("ExphormerAttention: edge_dim was given, so edge_attr is required")
        if self.edge_proj is not None:
            err = edge_attr_error(
                "ExphormerAttention", edge_attr, edge_index.size(1), self.edge_dim, "edge_dim", False
            )
            if err is not None:
                raise ValueError(err)
        if self.edge_proj is None and edge_attr is not None:
            raise ValueError(
                "ExphormerAttention: got edge_attr but the module was built with edge_dim=None"
            )
        if batch is None:
            batch = edge_index.new_zeros(N)
        else:
            check_batch_shape("ExphormerAttention", batch, N)

        # ---- virtual nodes: rows N + g * V + v of the joint node set
        if V > 0:
            if virtual_x is not None:
                if virtual_x.dim() != 2 or virtual_x.size(1) != C or virtual_x.size(0) % V != 0:
                    raise ValueError(
                        f"ExphormerAttention: virtual_x must be [num_graphs * {V}, {C}], "
                        f"got {tuple(virtual_x.shape)}"
                    )
                B = virtual_x.size(0) // V
                if num_graphs is not None and num_graphs != B:
                    raise ValueError(
                        f"ExphormerAttention: num_graphs={num_graphs} but virtual_x has {B} graphs"
                    )
            else:
                if self.virtual_emb is None:
                    raise ValueError(
                        "ExphormerAttention: virtual_x is required (built with "
                        "init_virtual=False, so there is no initial virtual-node embedding)"
                    )
                B = num_graphs if num_graphs is not None else (int(batch.max()) + 1 if N > 0 else 0)
                virtual_x = self.virtual_emb.to(x.dtype).repeat(B, 1)
            h = torch.cat([x, virtual_x], 0)
        else:
            B = 0
            h = x
        M = h.size(0)

        qkv = F.linear(h, self.in_proj_weight, self.in_proj_bias).view(M, 3, H, D)
        q, k, v = qkv.unbind(1)  # [M, H, D] each
        scale = 1.0 / math.sqrt(D)

        # ---- edge groups: (src, dst, E) with E [E_g, H, D] or a broadcast [1, H, D]
        groups: list[tuple[Tensor, Tensor, Tensor]] = []
        if edge_attr is not None:
            e_local = self.edge_proj(edge_attr).view(-1, H, D)
        else:
            e_local = self.type_emb[_LOCAL].view(1, H, D)
        groups.append((edge_index[0], edge_index[1], e_local))
        if expander_index is not None and expander_index.numel() > 0:
            groups.append(
                (expander_index[0], expander_index[1], self.type_emb[_EXPANDER].view(1, H, D))
            )
        if V > 0 and N > 0:
            real = torch.arange(N, device=x.device).repeat_interleave(V)  # [N*V]
            virt = N + (batch * V).repeat_interleave(V) + torch.arange(V, device=x.device).repeat(N)
            e_virt = self.type_emb[_VIRTUAL].view(1, H, D)
            groups.append((real, virt, e_virt))  # real -> virtual
            groups.append((virt, real, e_virt))  # virtual -> real

        # edge_dot / edge_aggregate recompute the gathered [E, H, D] rows in the backward
        # pass instead of keeping them alive: activation memory O(E * H) per group.
        scores = [edge_dot(q, k, dst, src, e) * scale for src, dst, e in groups]  # [E_g, H]
        src_all = torch.cat([g[0] for g in groups])
        dst_all = torch.cat([g[1] for g in groups])
        alpha = scatter_softmax(torch.cat(scores), dst_all, M)  # [E_tot, H]
        if self.dropout > 0 and self.training:
            alpha = F.dropout(alpha, p=self.dropout, training=True)
        out = edge_aggregate(v, alpha, src_all, dst_all, M)  # [M, H, D]
        out = self.out_proj(out.reshape(M, C))
        return out[:N], out[N:]

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.channels}, heads={self.heads}, "
            f"dropout={self.dropout}, "
            f"edge_dim={self.edge_dim}, num_virtual={self.num_virtual}"
            + ("" if self.init_virtual else ", init_virtual=False")
            + ")"
        )
