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
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(N, 3, H, d)
        scale = d**-0.25
        q, k, v = qkv[:, 0] * scale, qkv[:, 1] * scale, qkv[:, 2]
        num_graphs = 1
        if batch is not None and N > 0:
            num_graphs = int(batch.max()) + 1
        if num_graphs == 1:
            batch = None  # one graph: plain sums, no [N, H, m, d+1] tensors
        phi_q = self.feature_map(q, True)  # [N, H, m]
        phi_k = self.feature_map(k, False, batch, num_graphs)  # [N, H, m]
        v1 = torch.cat([v, v.new_ones(N, H, 1)], dim=-1)  # [N, H, d+1]: last column -> normaliser
        if batch is None:
            ctx = torch.einsum("nhm,nhe->hme", phi_k, v1)  # [H, m, d+1]
            o = torch.einsum("nhm,hme->nhe", phi_q, ctx)
        else:
            o = self._per_graph(phi_q, phi_k, v1, batch, num_graphs)
        out = o[..., :d] / o[..., d:].clamp_min(torch.finfo(o.dtype).tiny)
        out = out.reshape(N, H * d)
        if self.dropout > 0 and self.training:
            out = F.dropout(out, p=self.dropout, training=True)
        return self.out_proj(out)

    @staticmethod
    def _per_graph(phi_q: Tensor, phi_k: Tensor, v1: Tensor, batch: Tensor, B: int) -> Tensor:
        # o_i = phi(q_i)^T sum_{j in G(i)} phi(k_j) v1_j^T  ->  [N, H, d+1]
        N, H = phi_q.shape[:2]
        e = v1.size(-1)
        counts = torch.bincount(batch, minlength=B)
        L = int(counts.max())
        is_sorted = N < 2 or not bool((batch[1:] < batch[:-1]).any())
        if is_sorted and B * L <= 4 * N:
            # graphs padded to L rows (padded keys have phi = 0): two batched matmuls
            start = counts.cumsum(0) - counts
            off = torch.arange(B, device=batch.device) * L - start
            idx = torch.arange(N, device=batch.device) + off.index_select(0, batch)

            def pad(t: Tensor) -> Tensor:  # [N, H, f] -> [B, H, L, f]
                z = t.new_zeros(B * L, H, t.size(-1)).index_copy(0, idx, t)
                return z.view(B, L, H, -1).transpose(1, 2)

            ctx = pad(phi_k).transpose(-1, -2) @ pad(v1)  # [B, H, m, d+1]
            o = pad(phi_q) @ ctx  # [B, H, L, d+1]
            return o.transpose(1, 2).reshape(B * L, H, e).index_select(0, idx)
        # very uneven sizes or unsorted batch: per-node outer products and segment sums
        kv = phi_k.unsqueeze(-1) * v1.unsqueeze(-2)  # [N, H, m, d+1]
        ctx = scatter_sum(kv, batch, B).index_select(0, batch)  # [N, H, m, d+1]
        return torch.einsum("nhm,nhme->nhe", phi_q, ctx)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.channels}, heads={self.heads}, "
            f"num_features={self.num_features}, dropout={self.dropout}, "
            f"redraw_interval={self.redraw_interval})"
        )
