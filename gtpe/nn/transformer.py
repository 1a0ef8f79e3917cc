r"""A plain pre-LN Transformer encoder layer over the tokens of a PyG-style mini-batch.

Used by TokenGT (Kim et al., `"Pure Transformers are Powerful Graph Learners"
<https://arxiv.org/abs/2207.02505>`_, NeurIPS 2022), whose tokens are the nodes and edges of
each graph; attention stays inside each graph (``batch``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Dropout, LayerNorm, Linear

from gtpe.nn.ops import check_heads

__all__ = ["TRANSFORMER_ATTNS", "TransformerLayer"]

TRANSFORMER_ATTNS = ("full", "linear")


class TransformerLayer(torch.nn.Module):
    r"""Pre-LN Transformer encoder layer (Xiong et al. 2020; TokenGT's encoder layer):

    .. math::
        \mathbf{h} &\leftarrow \mathbf{h} + \mathrm{Drop}\big(\mathrm{Attn}(\mathrm{LN}_1(
            \mathbf{h}))\big) \\
        \mathbf{h} &\leftarrow \mathbf{h} + \mathrm{Drop}\big(\mathbf{W}_2\,
            \mathrm{GELU}(\mathbf{W}_1 \mathrm{LN}_2(\mathbf{h}) + \mathbf{b}_1) +
            \mathbf{b}_2\big)

    with :math:`\mathbf{W}_1 \in \mathbb{R}^{rC\times C}`, :math:`\mathbf{W}_2 \in
    \mathbb{R}^{C\times rC}` (``ffn_ratio`` :math:`r`, default 2).  ``Attn`` is
    :class:`~gtpe.nn.attention.FullAttention` (exact softmax attention within each graph of
    ``batch``) for ``attn='full'`` or :class:`~gtpe.nn.attention.LinearAttention` (Performer)
    for ``attn='linear'``; ``attn_dropout`` is the attention module's own dropout.  No final
    LayerNorm: a pre-LN stack ends with one (the model's).

    Args:
        channels (int): token size :math:`C`.
        heads (int): attention heads (must divide ``channels``).
        attn (str): ``'full'`` or ``'linear'``.
        dropout (float): dropout on both residual branches.
        attn_dropout (float): dropout inside the attention module.
        ffn_ratio (int): hidden size of the FFN in multiples of ``channels``.

    Shapes: ``x [T, C]``, ``batch [T]`` (graph id of each token; sorted for ``'full'``) ->
    ``[T, C]``.
    """

    def __init__(
        self,
        channels: int,
        heads: int = 4,
        attn: str = "full",
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        ffn_ratio: int = 2,
    ) -> None:
        super().__init__()
        channels, heads = check_heads("TransformerLayer", channels, heads)
        if attn not in TRANSFORMER_ATTNS:
            raise ValueError(
                f"TransformerLayer: attn must be one of {TRANSFORMER_ATTNS}, got {attn!r}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"TransformerLayer: dropout must be in [0, 1), got {dropout}")
        if isinstance(ffn_ratio, bool) or not isinstance(ffn_ratio, int) or ffn_ratio < 1:
            raise ValueError(
                f"TransformerLayer: ffn_ratio must be a positive integer, got {ffn_ratio!r}"
            )
        self.channels, self.heads, self.attn_type = channels, heads, attn
        self.dropout_p, self.ffn_ratio = float(dropout), ffn_ratio
        if attn == "full":
            from gtpe.nn.attention.full import FullAttention

            self.attn: torch.nn.Module = FullAttention(channels, heads, dropout=attn_dropout)
        else:
            from gtpe.nn.attention.linear import LinearAttention

            self.attn = LinearAttention(channels, heads, dropout=attn_dropout)
        self.norm1 = LayerNorm(channels)
        self.norm2 = LayerNorm(channels)
        self.lin1 = Linear(channels, ffn_ratio * channels)
        self.lin2 = Linear(ffn_ratio * channels, channels)
        self.dropout = Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.attn.reset_parameters()
        self.norm1.reset_parameters()
        self.norm2.reset_parameters()
        self.lin1.reset_parameters()
        self.lin2.reset_parameters()

    def forward(self, x: Tensor, batch: Tensor | None = None, cache: dict | None = None) -> Tensor:
        """``x [T, C]``, ``batch [T]`` -> ``[T, C]``.  ``cache``: a dict shared by the layers of
        one forward (:class:`~gtpe.nn.attention.FullAttention` keeps the batch layout there;
        ignored by ``'linear'``)."""
        h = self.norm1(x)
        if self.attn_type == "full":
            h = self.attn(h, batch, cache)
        else:
            h = self.attn(h, batch)
        x = x + self.dropout(h)
        h = self.lin2(F.gelu(self.lin1(self.norm2(x))))
        return x + self.dropout(h)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.channels}, heads={self.heads}, "
            f"attn={self.attn_type!r}, dropout={self.dropout_p}, ffn_ratio={self.ffn_ratio})"
        )
