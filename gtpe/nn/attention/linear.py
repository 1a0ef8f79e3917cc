r"""Performer linear attention (FAVOR+) within each graph of a PyG mini-batch.

Choromanski et al., "Rethinking Attention with Performers" (ICLR 2021).  The softmax kernel
:math:`\exp(q^\top k)` is replaced by positive orthogonal random features

.. math::
    \phi(x) = \tfrac{1}{\sqrt{m}}\exp\big(\omega_r^\top x - \tfrac12\lVert x\rVert^2\big)_{r=1..m},
    \qquad \mathbb{E}[\phi(q)^\top\phi(k)] = \exp(q^\top k),

with :math:`\omega_1..\omega_m` orthogonal (in blocks of :math:`d`) Gaussian directions with
chi-distributed norms.  With :math:`q = W_Q x / d^{1/4}`, :math:`k = W_K x / d^{1/4}` and
:math:`G(i)` the graph of node :math:`i`, each head computes

.. math::
    x'_i = \frac{\phi(q_i)^\top \sum_{j\in G(i)} \phi(k_j)\, v_j^\top}
                {\phi(q_i)^\top \sum_{j\in G(i)} \phi(k_j)},

i.e. per-graph segment sums: :math:`O(N m d)` time and memory, no :math:`N\times N` matrix.
The features are redrawn every ``redraw_interval`` training forward passes and are fixed in
eval mode; draw number :math:`t` uses the seed ``seed + t`` (deterministic, and restored with
the ``state_dict``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear, Parameter

from gtpe.nn.ops import check_batch_shape, check_heads, scatter_max, scatter_sum



class _PaddedLayout:
    """Rows of a sorted batch of ``B`` graphs in ``[B * L, .]`` with ``L`` the largest graph:
    ``pad`` scatters ``[N, .]`` there (zeros elsewhere; a view when the graphs have equal
    sizes), ``unpad`` gathers back, ``padding [B * L]`` marks the filler rows (``None``: none)."""

    def __init__(self, B: int, L: int, idx: Tensor | None, padding: Tensor | None) -> None:
        self.B, self.L, self.idx, self.padding = B, L, idx, padding

    @staticmethod
    def of(batch: Tensor | None, N: int, B: int) -> _PaddedLayout | None:
        """The layout of ``batch`` (``None``: one graph), or ``None`` when the batch is unsorted
        or padding would more than quadruple the rows."""
        if batch is None:
            return _PaddedLayout(1, N, None, None)
        if N > 1 and bool((batch[1:] < batch[:-1]).any()):
            return None
        counts = torch.bincount(batch, minlength=B)
        L = int(counts.max())
        if B * L == N:  # equal sizes: no filler rows
            return _PaddedLayout(B, L, None, None)
        if B * L > 4 * N:
            return None
        start = counts.cumsum(0) - counts
        off = torch.arange(B, device=batch.device) * L - start
        idx = torch.arange(N, device=batch.device) + off.index_select(0, batch)
        padding = torch.ones(B * L, dtype=torch.bool, device=batch.device).index_fill(0, idx, False)
        return _PaddedLayout(B, L, idx, padding)

    def pad(self, t: Tensor) -> Tensor:
        if self.idx is None:
            return t
        return t.new_zeros(self.B * self.L, *t.shape[1:]).index_copy(0, self.idx, t)

    def unpad(self, t: Tensor) -> Tensor:
        return t if self.idx is None else t.index_select(0, self.idx)


def orthogonal_random_features(
    num_features: int,
    dim: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""``[num_features, dim]`` matrix of orthogonal Gaussian directions (blocks of ``dim``
    orthonormal rows from a QR decomposition) scaled by the norms of independent Gaussian
    vectors, as in FAVOR+ (Choromanski et al. 2021, "positive orthogonal random features")."""
    nblocks = math.ceil(num_features / dim)
    g = torch.randn(nblocks, dim, dim, generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(g)  # batched: orthonormal columns per block
    w = q.transpose(1, 2).reshape(nblocks * dim, dim)[:num_features]
    norms = torch.randn(num_features, dim, generator=generator, dtype=torch.float64).norm(dim=1)
    return (w * norms.unsqueeze(1)).to(dtype)


class LinearAttention(torch.nn.Module):
    r"""Performer (FAVOR+) multi-head attention within each graph, linear in the number of nodes.

    Args:
        channels (int): input/output size :math:`C`.
        heads (int): number of heads (must divide ``channels``); head size :math:`d = C/H`.
        num_features (int, optional): random features :math:`m` per head
            (default :math:`\lceil d \ln d\rceil`, at least :math:`d`, as in the Performer code).
        dropout (float): dropout on the attention output (before the output projection).
        redraw_interval (int, optional): redraw the random features every this many training
            forward passes (``None`` or 0: never).  Eval mode never redraws.
        seed (int, optional): base seed of the feature draws (default: drawn from torch's global
            generator at construction, so ``torch.manual_seed`` makes it reproducible).
        bias (bool): learn biases in the projections.

    The random matrix is the buffer ``projection_matrix [m, d]`` (shared by the heads).
    Shapes: ``x [N, C]``, ``batch [N]`` (integer graph ids) -> ``[N, C]``; an empty batch
    (``N = 0``) gives ``[0, C]``, as the other attention modules.
    """

    def __init__(
        self,
        channels: int,
        heads: int = 4,
        num_features: int | None = None,
        dropout: float = 0.0,
        redraw_interval: int | None = 1000,
        seed: int | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        channels, heads = check_heads("LinearAttention", channels, heads)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LinearAttention: dropout must be in [0, 1), got {dropout}")
        if redraw_interval is not None and redraw_interval < 0:
            raise ValueError(
                f"LinearAttention: redraw_interval must be >= 0 or None, got {redraw_interval}"
            )
        d = channels // heads
        if num_features is None:
            num_features = max(d, math.ceil(d * math.log(d))) if d > 1 else 1
        if num_features <= 0:
            raise ValueError(f"LinearAttention: num_features must be positive, got {num_features}")
        self.channels = channels
        self.heads = heads
        self.head_dim = d
        self.num_features = num_features
        self.dropout = float(dropout)
        self.redraw_interval = redraw_interval or None
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        self.seed = int(seed)
        self.in_proj_weight = Parameter(torch.empty(3 * channels, channels))
        if bias:
            self.in_proj_bias = Parameter(torch.empty(3 * channels))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = Linear(channels, channels, bias=bias)
        self.register_buffer("projection_matrix", torch.empty(num_features, d))
        # number of draws so far and training forwards since the last draw
        self.register_buffer("num_draws", torch.zeros((), dtype=torch.long))
        self.register_buffer("calls_since_draw", torch.zeros((), dtype=torch.long))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            torch.nn.init.zeros_(self.in_proj_bias)
        self.out_proj.reset_parameters()
        if self.out_proj.bias is not None:
            torch.nn.init.zeros_(self.out_proj.bias)
        self.num_draws.zero_()
        self.redraw_features()

    @torch.no_grad()
    def redraw_features(self) -> None:
        """Draw a new ``projection_matrix`` (draw ``t`` uses seed ``seed + t``)."""
        gen = torch.Generator().manual_seed(self.seed + int(self.num_draws))
        w = orthogonal_random_features(self.num_features, self.head_dim, gen)
        self.projection_matrix.copy_(w.to(self.projection_matrix.device))
        self.num_draws += 1
        self.calls_since_draw.zero_()

    def feature_map(
        self, x: Tensor, is_query: bool, batch: Tensor | None = None, num_graphs: int = 1
    ) -> Tensor:
        r"""Positive random features :math:`\phi(x)` for ``x [N, H, d]`` (already scaled by
        :math:`d^{-1/4}`) -> ``[N, H, m]``.  A stabilising shift is subtracted in the exponent:
        per row for queries, per (graph, head) for keys; both cancel in the normalised output."""
        w = self.projection_matrix.to(x.dtype)
        proj = torch.einsum("nhd,md->nhm", x, w) - 0.5 * (x * x).sum(-1, keepdim=True)
        if is_query:
            shift = proj.detach().amax(dim=-1, keepdim=True)
        else:
            pm = proj.detach().amax(dim=-1)  # [N, H]
            if batch is None:
                shift = pm.amax(dim=0, keepdim=True).unsqueeze(-1)
            else:
                shift = scatter_max(pm, batch, num_graphs).index_select(0, batch).unsqueeze(-1)
        return torch.exp(proj - shift) / math.sqrt(self.num_features)

    def forward(self, x: Tensor, batch: Tensor | None = None) -> Tensor:
        if x.dim() != 2 or x.size(1) != self.channels:
            raise ValueError(
                f"LinearAttention: expected x of shape [N, {self.channels}], got {tuple(x.shape)}"
            )
        N = x.size(0)
        if batch is not None:
            check_batch_shape("LinearAttention", batch, N)
        if self.training and self.redraw_interval is not None:
            if int(self.calls_since_draw) >= self.redraw_interval:
                self.redraw_features()
            self.calls_since_draw += 1
        if N == 0:  # empty batch: [0, C], as the other attention modules
            return self.out_proj(x)
        H, d = self.heads, self.head_dim
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [N, 3C]
        num_graphs = 1
        if batch is not None and N > 0:
            num_graphs = int(batch.max()) + 1
        if num_graphs == 1:
            batch = None
        layout = _PaddedLayout.of(batch, N, num_graphs)
        if layout is None:  # very uneven sizes or unsorted batch
            out = self._segments(qkv.view(N, 3, H, d), batch, num_graphs)
        else:
            out = self._padded(qkv, layout)
        if self.dropout > 0 and self.training:
            out = F.dropout(out, p=self.dropout, training=True)
        return self.out_proj(out)

    def _padded(self, qkv: Tensor, layout: _PaddedLayout) -> Tensor:
        r"""The graphs padded to ``L`` rows ``[B, H, L, .]`` (a view when they have equal sizes):
        the feature maps and two batched matmuls per head, then back to ``[N, C]``.  The
        constant :math:`1/\sqrt m` of :math:`\phi` cancels in the ratio and is left out."""
        H, d, B, L = self.heads, self.head_dim, layout.B, layout.L
        p = layout.pad(qkv).view(B, L, 3, H, d)
        scale = d**-0.25
        q = p[:, :, 0].transpose(1, 2) * scale  # [B, H, L, d]
        k = p[:, :, 1].transpose(1, 2) * scale
        v = p[:, :, 2].transpose(1, 2)
        w_t = self.projection_matrix.to(qkv.dtype).t()  # [d, m]
        proj_q = q @ w_t - 0.5 * (q * q).sum(-1, keepdim=True)  # [B, H, L, m]
        proj_k = k @ w_t - 0.5 * (k * k).sum(-1, keepdim=True)
        if layout.padding is not None:  # padded keys: phi = 0
            proj_k = proj_k.masked_fill(layout.padding.view(B, 1, L, 1), float("-inf"))
        phi_q = torch.exp(proj_q - proj_q.detach().amax(-1, keepdim=True))
        shift = proj_k.detach().amax(dim=(-2, -1), keepdim=True)  # per graph and head
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))  # empty graph
        phi_k = torch.exp(proj_k - shift)
        ctx = torch.cat([phi_k.transpose(-1, -2) @ v, phi_k.sum(-2).unsqueeze(-1)], -1)
        o = phi_q @ ctx  # [B, H, L, d + 1]: the last column is the normaliser
        out = o[..., :d] / o[..., d:].clamp_min(torch.finfo(o.dtype).tiny)
        return layout.unpad(out.transpose(1, 2).reshape(B * L, H * d))

    def _segments(self, qkv: Tensor, batch: Tensor, B: int) -> Tensor:
        """Per-node outer products and segment sums (any sizes and order of the nodes)."""
        N, H, d = qkv.size(0), self.heads, self.head_dim
        scale = d**-0.25
        phi_q = self.feature_map(qkv[:, 0] * scale, True)  # [N, H, m]
        phi_k = self.feature_map(qkv[:, 1] * scale, False, batch, B)  # [N, H, m]
        v1 = torch.cat([qkv[:, 2], qkv.new_ones(N, H, 1)], dim=-1)  # [N, H, d+1]
        kv = phi_k.unsqueeze(-1) * v1.unsqueeze(-2)  # [N, H, m, d+1]
        ctx = scatter_sum(kv, batch, B).index_select(0, batch)  # [N, H, m, d+1]
        o = torch.einsum("nhm,nhme->nhe", phi_q, ctx)
        out = o[..., :d] / o[..., d:].clamp_min(torch.finfo(o.dtype).tiny)
        return out.reshape(N, H * d)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.channels}, heads={self.heads}, "
            f"num_features={self.num_features}, dropout={self.dropout}, "
            f"redraw_interval={self.redraw_interval})"
        )
