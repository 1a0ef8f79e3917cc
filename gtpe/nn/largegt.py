r"""LargeGT's local module: sampled 2-hop token sequences and attention over them (Dwivedi et
al., `"Graph Transformers for Large Graphs" <https://arxiv.org/abs/2312.11109>`_, 2023).

For a target node :math:`i`, :func:`sample_hop_neighbors` draws :math:`K - 1` nodes from the
multiset :math:`\mathcal{N}(i) \uplus \mathcal{N}^2(i)` (the in-neighbours of :math:`i`, then
every node with a walk of length 2 to :math:`i`, :math:`i` itself included when it has a
neighbour), so :math:`s_0 = i, s_1, \ldots, s_{K-1}`. Each sampled node contributes three tokens,
its features propagated 0, 1 and 2 hops (:func:`propagate_hops`, NAGphormer's Hop2Token), so the
sequence of :math:`3K` tokens sees 4 hops around :math:`i` from 2-hop operations:

.. math::
    \mathbf{T}_i = \big[\mathbf{X}_{s_k},\ (\hat{\mathbf{A}}\mathbf{X})_{s_k},\
        (\hat{\mathbf{A}}^2\mathbf{X})_{s_k}\big]_{k=0..K-1},\qquad
    \hat{\mathbf{A}} = \hat{\mathbf{D}}^{-1/2}(\mathbf{A}+\mathbf{I})\hat{\mathbf{D}}^{-1/2}.

:class:`LargeGTLocal` turns a sequence into one vector (a Transformer layer and an attention
readout over the tokens, as the paper's code).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Dropout, LayerNorm, Linear

from gtpe.nn.local import GCN
from gtpe.nn.ops import check_index_shape, check_positive_int, scatter_sum

__all__ = ["LargeGTLocal", "hop_tokens", "propagate_hops", "sample_hop_neighbors"]


def propagate_hops(x: Tensor, edge_index: Tensor, hops: int = 2) -> Tensor:
    r""":math:`[\mathbf{X}, \hat{\mathbf{A}}\mathbf{X}, \ldots, \hat{\mathbf{A}}^{h}\mathbf{X}]`
    stacked as ``[N, hops + 1, F]``, with Kipf & Welling's normalised adjacency
    :math:`\hat{\mathbf{A}}` of ``edge_index`` (messages :math:`j \to i`, one self-loop per
    node, :meth:`gtpe.nn.local.GCN.normalize`)."""
    check_index_shape("propagate_hops", "edge_index", edge_index)
    N = x.size(0)
    src, dst, w = GCN.normalize(edge_index, N, x.dtype)
    out = [x]
    for _ in range(hops):
        out.append(scatter_sum(out[-1].index_select(0, src) * w.unsqueeze(-1), dst, N))
    return torch.stack(out, dim=1)


def _in_edges(ptr: Tensor, nodes: Tensor) -> tuple[Tensor, Tensor]:
    """``(owner, position)``: for every in-edge of ``nodes`` (CSC order by ``ptr``), the index of
    its node in ``nodes`` and its position in the CSC order."""
    start = ptr.index_select(0, nodes)
    deg = ptr.index_select(0, nodes + 1) - start
    owner = torch.repeat_interleave(torch.arange(nodes.numel(), device=nodes.device), deg)
    first = torch.repeat_interleave(deg.cumsum(0) - deg, deg)
    pos = start.index_select(0, owner) + torch.arange(owner.numel(), device=nodes.device) - first
    return owner, pos


def sample_hop_neighbors(
    edge_index: Tensor,
    num_nodes: int,
    targets: Tensor,
    num_samples: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""LargeGT's token nodes: ``[T, K]`` node ids, row :math:`t` = the target
    ``targets[t]`` followed by :math:`K - 1` draws from its multiset
    :math:`M_i = \mathcal{N}(i) \uplus \mathcal{N}^2(i)` (:math:`\mathcal{N}(i)`: the sources of
    the edges :math:`j \to i`; :math:`\mathcal{N}^2(i)`: each node :math:`k` with a walk
    :math:`k \to j \to i`, once; as the paper's code, the rows of :math:`A` and :math:`A^2`).

    The elements of :math:`M_i` are put in a uniformly random order and slot :math:`r =
    0..K-2` takes the element at rank :math:`r \bmod |M_i|`: :math:`K - 1` draws without
    replacement when :math:`|M_i| \ge K - 1`, else every element :math:`\lfloor (K-1)/|M_i|
    \rfloor` or one more times (the paper's code repeats the list in its stored order); a node
    without neighbours gets :math:`K - 1` copies of itself (the paper's code: random nodes of
    the graph). Vectorised over all targets: the work is the number of 2-walks ending at them.

    Args:
        edge_index: ``[2, E]`` edges :math:`j \to i`.
        num_nodes: :math:`N`.
        targets: ``[T]`` node ids.
        num_samples: :math:`K \ge 1` (the target included).
        generator: random source of the order (``None``: torch's default generator of the
            device); a generator seeded the same gives the same sample.
    """
    check_index_shape("sample_hop_neighbors", "edge_index", edge_index)
    K = check_positive_int("sample_hop_neighbors", "num_samples", num_samples)
    device = edge_index.device
    targets = targets.to(device=device, dtype=torch.long)
    T = targets.numel()
    src, dst = edge_index[0].long(), edge_index[1].long()
    order = torch.sort(dst, stable=True).indices  # CSC: in-edges grouped by target
    src_csc = src.index_select(0, order)
    counts = torch.bincount(dst, minlength=num_nodes)
    ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])

    # hop 1: (target position, j) for every edge j -> target
    own1, pos1 = _in_edges(ptr, targets)
    hop1 = src_csc.index_select(0, pos1)
    # hop 2: (target position, k) for every walk k -> j -> target, each pair once
    own2, pos2 = _in_edges(ptr, hop1)
    key = own1.index_select(0, own2) * num_nodes + src_csc.index_select(0, pos2)
    key = torch.unique(key)
    owner = torch.cat([own1, key // num_nodes])
    cand = torch.cat([hop1, key % num_nodes])

    # a random order within each target's multiset: sort by owner + u, u ~ U[0, 1)
    u = torch.rand(owner.numel(), generator=generator, device=device, dtype=torch.float64)
    perm = torch.sort(owner.to(torch.float64) + u).indices
    cand = cand.index_select(0, perm)
    size = torch.bincount(owner, minlength=T)  # |M_i|
    start = size.cumsum(0) - size
    slot = torch.arange(K - 1, device=device)
    rank = slot.unsqueeze(0) % size.clamp_min(1).unsqueeze(1)  # [T, K-1]
    idx = (start.unsqueeze(1) + rank).clamp(max=max(cand.numel() - 1, 0))
    picked = cand[idx] if cand.numel() else targets.new_empty((T, K - 1))
    picked = torch.where((size > 0).unsqueeze(1), picked, targets.unsqueeze(1))
    return torch.cat([targets.unsqueeze(1), picked], dim=1)


def hop_tokens(hop_feats: Tensor, nodes: Tensor) -> Tensor:
    """The token sequences ``[T, K * (hops + 1), C]`` of the sampled ``nodes [T, K]`` from the
    per-node hop features ``[N, hops + 1, C]`` (:func:`propagate_hops`): for each sampled node
    its hop-0, hop-1, ... features, one after the other, as the paper's code."""
    T, K = nodes.shape
    return hop_feats.index_select(0, nodes.reshape(-1)).reshape(T, K * hop_feats.size(1), -1)


class LargeGTLocal(torch.nn.Module):
    r"""LargeGT's local module (the paper's code ``LocalModule``): one Transformer layer over
    a node's token sequence :math:`\mathbf{T} \in \mathbb{R}^{L\times C}` and an attention
    readout.

    .. math::
        \mathbf{E} &= \mathbf{T}\mathbf{W}_e + \mathbf{b}_e \\
        \mathbf{Z} &= \mathrm{LN}_f\Big(\mathrm{Drop}\big(\mathbf{E}\mathbf{W}_r + \mathbf{b}_r
            + \mathrm{Drop}(\mathrm{MHA}(\mathrm{LN}(\mathbf{E})))\big)\Big),\quad
            \mathrm{MHA}(\mathbf{H}) = \big[\mathrm{softmax}\big(\tfrac{\mathbf{Q}_h
            \mathbf{K}_h^\top}{\sqrt{C}}\big)\mathbf{V}_h\big]_{h=1..H}\mathbf{W}_o + \mathbf{b}_o \\
        \alpha_t &= \operatorname{softmax}_{t=1..L-1}\big(\mathbf{w}_a^\top[\mathbf{Z}_0 \Vert
            \mathbf{Z}_t] + b_a\big),\qquad
        \mathbf{h} = \mathbf{Z}_0 + \textstyle\sum_{t=1}^{L-1} \alpha_t \mathbf{Z}_t

    Each of the :math:`H` heads has size :math:`C` (:math:`\mathbf{Q}_h = \mathbf{H}
    \mathbf{W}^Q_h + \mathbf{b}^Q_h`, ... with :math:`\mathbf{W}^Q_h \in \mathbb{R}^{C\times
    C}`), so :math:`\mathbf{Z}, \mathbf{h}` have :math:`HC` features; :math:`\mathbf{W}_r \in
    \mathbb{R}^{C\times HC}` is the residual projection. Token 0 is the target; the others have
    no position, so :math:`\mathbf{h}` does not depend on their order. All linear maps start
    as :math:`\mathcal{N}(0, 0.02^2)` with zero bias (as the paper's code).

    Args:
        channels: token size :math:`C`.
        heads: :math:`H`.
        dropout: the two dropouts of the layer (``Drop``; 0.3 in the paper's code).
        attn_dropout: dropout on the attention weights.

    Shapes: ``tokens [B, L, C]`` (``L >= 2``) -> ``[B, H * C]``.
    """

    def __init__(self, channels: int, heads: int = 1, dropout: float = 0.3,
                 attn_dropout: float = 0.0) -> None:
        super().__init__()
        C = self.channels = check_positive_int("LargeGTLocal", "channels", channels)
        H = self.heads = check_positive_int("LargeGTLocal", "heads", heads)
        for name, p in (("dropout", dropout), ("attn_dropout", attn_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"LargeGTLocal: {name} must be in [0, 1), got {p!r}")
        self.dropout_p, self.attn_dropout_p = float(dropout), float(attn_dropout)
        self.embed = Linear(C, C)
        self.norm = LayerNorm(C)
        self.qkv = Linear(C, 3 * H * C)
        self.out = Linear(H * C, H * C)
        self.res = Linear(C, H * C)
        self.final_norm = LayerNorm(H * C)
        self.readout = Linear(2 * H * C, 1)
        self.dropout = Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.embed, self.qkv, self.out, self.res, self.readout):
            torch.nn.init.normal_(lin.weight, std=0.02)
            torch.nn.init.zeros_(lin.bias)
        self.norm.reset_parameters()
        self.final_norm.reset_parameters()

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 3 or tokens.size(-1) != self.channels or tokens.size(1) < 2:
            raise ValueError(
                f"LargeGTLocal: tokens must be [B, L >= 2, {self.channels}], got "
                f"{list(tokens.shape)}"
            )
        B, L, C = tokens.shape
        H = self.heads
        e = self.embed(tokens)
        q, k, v = self.qkv(self.norm(e)).view(B, L, 3, H, C).permute(2, 0, 3, 1, 4)  # [B,H,L,C]
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C), dim=-1)
        a = F.dropout(a, self.attn_dropout_p, self.training)
        y = self.out((a @ v).transpose(1, 2).reshape(B, L, H * C))
        z = self.final_norm(self.dropout(self.res(e) + self.dropout(y)))
        target, others = z[:, :1], z[:, 1:]
        score = self.readout(torch.cat([target.expand_as(others), others], dim=-1))
        alpha = torch.softmax(score, dim=1)  # [B, L-1, 1]
        return z[:, 0] + (alpha * others).sum(1)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.channels}, heads={self.heads}, "
                f"dropout={self.dropout_p})")
