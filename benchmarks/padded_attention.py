r"""The straightforward batched attention, as a drop-in for :class:`~gtpe.nn.attention.FullAttention`
(the baseline of ``benchmarks/train_bench.py``'s ``*-padded`` rows).

:class:`PaddedSDPAAttention` computes what ``FullAttention`` computes,

.. math::
    x'_i = W_O \big\Vert_h \sum_{j \in G(i)} \operatorname{softmax}_j\Big(
        \frac{\langle q^h_i, k^h_j\rangle}{\sqrt{d}} + b^h_{ij}\Big) v^h_j,

the way reference implementations of graph transformers (Graphormer, TokenGT) batch it: every
graph is padded to the largest graph of the batch (``to_dense_batch``), the bias is a dense
``[B, H, L, L]`` float tensor (``default_bias`` everywhere, ``pair_bias`` at the listed pairs,
``-inf`` on padded keys), and ONE ``scaled_dot_product_attention`` call runs over the whole
batch; the output is un-padded and goes through ``out_proj``.  No size buckets, no C kernel, no
sparse bias scatter.

It holds the very parameter objects of the ``FullAttention`` it wraps (``in_proj_weight``,
``in_proj_bias``, ``out_proj``; same names, so ``state_dict`` keys do not change), so a model
and its swapped copy train the same weights with the same optimizer.
:func:`swap_full_attention` replaces every ``FullAttention`` of a model (also inside
``GraphormerAttention`` or any other wrapper) by one of these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.utils import to_dense_batch

from gtpe.nn.attention import FullAttention


class PaddedSDPAAttention(torch.nn.Module):
    r"""``FullAttention``'s computation, padded to the largest graph of the batch, with one
    ``scaled_dot_product_attention`` call and a dense float bias.

    Args:
        full (FullAttention): the attention whose parameters (same objects) and sizes are used.

    ``forward`` has ``FullAttention.forward``'s signature: ``x [N, C]``, ``batch [N]`` (sorted),
    ``cache`` (accepted, unused), and the optional bias ``pair_index [2, M]`` (row 0 the key
    ``j``, row 1 the query ``i``), ``pair_bias [M, H]``, ``default_bias`` (float or ``[H]``)
    -> ``[N, C]``.
    """

    def __init__(self, full: FullAttention) -> None:
        super().__init__()
        if not isinstance(full, FullAttention):
            raise TypeError(
                f"PaddedSDPAAttention: expected a FullAttention, got {type(full).__name__}"
            )
        self.channels, self.heads, self.head_dim = full.channels, full.heads, full.head_dim
        self.dropout = full.dropout
        self.strategy = "padded-sdpa"  # read by GraphormerAttention.__repr__
        self.in_proj_weight = full.in_proj_weight  # the same Parameter objects
        self.in_proj_bias = full.in_proj_bias
        self.out_proj = full.out_proj

    def forward(
        self,
        x: Tensor,
        batch: Tensor | None = None,
        cache: dict | None = None,
        *,
        pair_index: Tensor | None = None,
        pair_bias: Tensor | None = None,
        default_bias: Tensor | float | None = None,
        **extra,
    ) -> Tensor:
        given = [k for k, v in extra.items() if v is not None]
        if given:
            raise TypeError(f"PaddedSDPAAttention: arguments {given} are not implemented here")
        if (pair_index is None) != (pair_bias is None):
            raise ValueError("PaddedSDPAAttention: a bias needs both pair_index and pair_bias")
        N = x.size(0)
        H, D = self.heads, self.head_dim
        if batch is None:
            batch = torch.zeros(N, dtype=torch.long, device=x.device)
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [N, 3C]
        dense, mask = to_dense_batch(qkv, batch)  # [B, L, 3C], [B, L]
        B, L = mask.shape
        q, k, v = dense.view(B, L, 3, H, D).permute(2, 0, 3, 1, 4)  # each [B, H, L, D]

        # dense bias in [B, L_query, L_key, H] (so that the pairs are one index_put), then
        # [B, H, L, L]
        if default_bias is None:
            bias = x.new_zeros(B, L, L, H)
        elif isinstance(default_bias, Tensor):
            bias = default_bias.to(x.dtype).reshape(-1).expand(H).expand(B, L, L, H)
        else:
            bias = x.new_full((B, L, L, H), float(default_bias))
        if pair_index is not None:
            counts = torch.bincount(batch, minlength=B)
            start = counts.cumsum(0) - counts
            key, query = pair_index[0], pair_index[1]
            g = batch.index_select(0, query)
            qpos = query - start.index_select(0, g)
            kpos = key - start.index_select(0, g)
            bias = bias.index_put((g, qpos, kpos), pair_bias.to(x.dtype))
        # -inf on padded keys (an empty graph keeps its keys: rows of no node, dropped below)
        key_mask = mask | ~mask.any(1, keepdim=True)
        bias = bias.masked_fill(~key_mask.view(B, 1, L, 1), float("-inf")).permute(0, 3, 1, 2)
        p = self.dropout if self.training else 0.0
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)  # [B, H, L, D]
        return self.out_proj(o.transpose(1, 2).reshape(B, L, H * D)[mask])

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels}, heads={self.heads}, dropout={self.dropout})"


def swap_full_attention(model: torch.nn.Module) -> int:
    """Replaces every :class:`FullAttention` submodule of ``model`` (in place) by a
    :class:`PaddedSDPAAttention` around it (a module shared by several parents gets one
    wrapper).  Returns the number of ``FullAttention`` modules replaced."""
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, FullAttention)
    ]
    wrappers: dict[int, PaddedSDPAAttention] = {}
    for parent, name, child in targets:
        w = wrappers.get(id(child))
        if w is None:
            w = wrappers[id(child)] = PaddedSDPAAttention(child)
        setattr(parent, name, w)
    return len(wrappers)
