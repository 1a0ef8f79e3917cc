r"""Polynormer's equivariant global and local attention, linear in the number of nodes.

Deng et al., `"Polynormer: Polynomial-Expressive Graph Transformer in Linear Time"
<https://arxiv.org/abs/2403.01232>`_ (ICLR 2024).  A Polynormer layer multiplies an attention
output by a gate :math:`H = X W_H + b_H` (plus a constant :math:`\beta`), so stacking
:math:`L` layers gives a polynomial of degree :math:`2^L` in the input features whose
coefficients are the attention scores.  The model runs :class:`PolynormerLocal` layers first
(attention over the graph's edges; their outputs are summed), then
:class:`PolynormerAttention` layers (attention over all nodes of each graph) -- the paper's
local-to-global scheme.  The equations below are those of the official code (and PyG's port),
which put a LayerNorm into the paper's :math:`(H + \beta) \odot \mathrm{Attn}(X)`.

**Global** (:class:`PolynormerAttention`), per head, with the sigmoid as the kernel and
:math:`j` running over the nodes of node :math:`i`'s graph:

.. math::
    q_i = \sigma(W_Q x_i),\quad k_j = \sigma(W_K x_j),\quad v_j = W_V x_j,\qquad
    a_i = \frac{q_i^\top \sum_j k_j v_j^\top}{q_i^\top \sum_j k_j},

.. math::
    x'_i = \mathrm{Dropout}\Big(\mathrm{ReLU}\big(W_O\,[\mathrm{LN}(a_i) \odot (W_H x_i + b_H
    + \beta)] + b_O\big)\Big),

with :math:`a_i` the concatenated heads; ``qk_shared`` uses :math:`q = k`
(:math:`W_Q = W_K`, the default of the official code and of PyG's module).  Summing
:math:`\sum_j k_j v_j^\top` (``[d, d]`` per head and graph) first makes it :math:`O(N C^2)`
time and :math:`O(N C)` memory: no :math:`N \times N` matrix.

**Local** (:class:`PolynormerLocal`), per layer, with GAT scores (no self-loops, as the
official code) over the in-edges :math:`j \to i`:

.. math::
    h_i = \mathrm{ReLU}(W_H x_i + b_H),\qquad
    \alpha_{ij} = \operatorname{softmax}_{j}\big(\mathrm{LeakyReLU}_{0.2}(a_s^\top W_G x_j
    + a_d^\top W_G x_i)\big),

.. math::
    \tilde x_i = \mathrm{Dropout}\Big(\mathrm{ReLU}\big(\textstyle\sum_j \alpha_{ij} W_G x_j
    + W_L x_i + b_L\big)\Big),\qquad
    x'_i = (1 - \beta)\,\mathrm{LN}(h_i \odot \tilde x_i) + \beta\, \tilde x_i .

``conv='gcn'`` replaces the GAT sum by :math:`\sum_j \hat D^{-1/2}_{ii}\hat A_{ij}
\hat D^{-1/2}_{jj} W_G x_j` (PyG's ``Polynormer(local_attn=False)``).

:math:`\beta` is a constant (PyG) or, with ``beta=None``, a learned per-channel
:math:`\sigma(\theta)` (the official code's default ``--beta -1``).

Implementation: the weights of a layer's node projections are one parameter
(``in_proj_weight``).  The local layer applies them as one matmul, with the GAT score vectors
folded in (:math:`a_s^\top W_G`, :math:`a_d^\top W_G` as two more rows); the global layer as one
matmul per block (contiguous outputs make its elementwise ops about twice as fast on CPU), with
:math:`\beta` folded into the gate's bias, and it never forms :math:`V`: it uses
:math:`\sum_j k_j v_j^\top = (\sum_j k_j x_j^\top) W_V^\top + (\sum_j k_j) b_V^\top`, which
saves the value projection (and its ``[N, C]`` activation); the local sum over the edges is a
sparse CSR matmul on CPU (``aggregate``); the per-graph sums of the global layer are batched matmuls
(:class:`~gtpe.nn.attention.sgformer.GraphLayout`), so each graph of a batch attends only to
itself.  PyG's ``PolynormerAttention`` pads graphs to the largest one and its normaliser also
sums the padded keys (:math:`\sigma(b_K) \neq 0`), so it agrees with this module only for
graphs of equal size.  Channels are head-major here (PyG: head-minor); :meth:`from_pyg`
permutes the weights.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import LayerNorm, Linear, Parameter

from gtpe.nn.attention.sgformer import GraphLayout
from gtpe.nn.ops import (
    check_batch_shape,
    check_heads,
    check_index_shape,
    edge_aggregate,
    scatter_softmax,
)

__all__ = ["PolynormerAttention", "PolynormerLocal"]

LOCAL_CONVS = ("gat", "gcn")
AGGREGATES = ("auto", "csr", "scatter")


def _check_beta(owner: str, beta: float | None) -> float | None:
    if beta is None:
        return None
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
        raise ValueError(f"{owner}: beta must be a number in [0, 1] or None (learned), got {beta!r}")
    return float(beta)


def _linear_init(weight: Tensor, bias: Tensor | None, fan_in: int) -> None:
    # torch.nn.Linear's default initialisation, block by block (all blocks have fan_in inputs)
    torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bound = 1.0 / math.sqrt(fan_in)
        torch.nn.init.uniform_(bias, -bound, bound)


def _head_minor(C: int, H: int) -> Tensor:
    """``perm`` with ``ours[r] = pyg[perm[r]]``: row ``h * d + i`` (head-major, ours) is row
    ``i * H + h`` in PyG's Polynormer layout ``view(N, d, H)``."""
    d = C // H
    r = torch.arange(C)
    return (r % d) * H + r // d


# ---------------------------------------------------------------------------------------------
# Attention sums over the edges as sparse CSR matmuls


def _block_csr(rows: Tensor, cols: Tensor, uid: Tensor, N: int, H: int) -> tuple[Tensor, Tensor, Tensor]:
    """CSR of the block-diagonal-per-head matrix ``[N H, N H]`` with entry ``(r H + h, c H + h)``
    for each pair ``(r, c)`` (``rows`` sorted, ``cols`` sorted within a row, pairs distinct) and
    head ``h``: ``(crow [N H + 1], col [U H], q [U H])``; ``q[p]`` is the flat index
    ``uid * H + h`` of the value at CSR position ``p`` in a ``[U, H]`` value table."""
    U, dev = rows.numel(), rows.device
    deg = torch.bincount(rows, minlength=N)
    end = deg.cumsum(0)
    start = end - deg
    if H == 1:
        return torch.cat([end.new_zeros(1), end]), cols, uid
    hs = torch.arange(H, device=dev)
    row_start = H * start.unsqueeze(1) + hs * deg.unsqueeze(1)  # [N, H]: first entry of row (r, h)
    crow = torch.cat([row_start.view(-1), row_start.new_full((1,), H * U)])
    local = torch.arange(U, device=dev) - start.index_select(0, rows)
    pos = (row_start.index_select(0, rows) + local.unsqueeze(1)).view(-1)  # [U H]
    col = torch.empty(U * H, dtype=cols.dtype, device=dev)
    col[pos] = (cols.unsqueeze(1) * H + hs).view(-1)
    q = torch.empty(U * H, dtype=torch.long, device=dev)
    q[pos] = (uid.unsqueeze(1) * H + hs).view(-1)
    return crow, col, q


class _CSRPlan:
    r"""The edges ``j -> i`` of ``edge_index`` as CSR matrices for :math:`\sum_j \alpha_{ij,h}
    v_{j,h}` (rows ``i``) and its transpose (rows ``j``), ``H`` heads as diagonal blocks.
    Repeated edges are merged (their weights add up, which gives the same sum)."""

    def __init__(self, edge_index: Tensor, N: int, H: int) -> None:
        src, dst = edge_index[0].long(), edge_index[1].long()
        uniq, inv = torch.unique(dst * N + src, sorted=True, return_inverse=True)
        self.N, self.H, self.U, self.inv = N, H, uniq.numel(), inv
        u_dst, u_src = uniq // N, uniq % N
        ar = torch.arange(self.U, device=src.device)
        crow, col, q = _block_csr(u_dst, u_src, ar, N, H)
        self.fwd = (crow, col, None if H == 1 else q)  # None: identity
        order = torch.sort(u_src, stable=True).indices  # (src, dst) order: pairs are (dst, src)-sorted
        self.bwd = _block_csr(u_src.index_select(0, order), u_dst.index_select(0, order), order, N, H)

    def values(self, vals_u: Tensor, transposed: bool) -> Tensor:
        q = (self.bwd if transposed else self.fwd)[2]
        return vals_u.reshape(-1) if q is None else vals_u.reshape(-1).index_select(0, q)

    def matrix(self, vals: Tensor, transposed: bool) -> Tensor:
        crow, col, _ = self.bwd if transposed else self.fwd
        n = self.N * self.H
        with warnings.catch_warnings():  # "sparse CSR support is in beta state"
            warnings.simplefilter("ignore")
            return torch.sparse_csr_tensor(crow, col, vals, (n, n), check_invariants=False)


class _CSRAggregate(torch.autograd.Function):
    # out[i, h] = sum_{e: j -> i} alpha[e, h] v[j, h]  as one CSR x dense matmul; backward: the
    # transposed matmul for v and a sampled dense-dense product (SDDMM) for alpha.
    @staticmethod
    def forward(ctx, v: Tensor, alpha: Tensor, plan: _CSRPlan) -> Tensor:  # type: ignore[override]
        N, H, d = v.shape
        vals_u = alpha.new_zeros(plan.U, H).index_add_(0, plan.inv, alpha)  # merged repeats
        A = plan.matrix(plan.values(vals_u, False), False)
        out = (A @ v.reshape(N * H, d)).view(N, H, d)
        ctx.save_for_backward(v, vals_u)
        ctx.plan = plan
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        v, vals_u = ctx.saved_tensors
        plan: _CSRPlan = ctx.plan
        N, H, d = v.shape
        g = grad.contiguous().view(N * H, d)
        gv = ga = None
        if ctx.needs_input_grad[0]:
            gv = (plan.matrix(plan.values(vals_u, True), True) @ g).view(N, H, d)
        if ctx.needs_input_grad[1]:
            pattern = plan.matrix(plan.values(vals_u, False), False)
            s = torch.sparse.sampled_addmm(pattern, g, v.reshape(N * H, d).t(), beta=0.0).values()
            q = plan.fwd[2]
            g_u = s if q is None else torch.empty_like(s).index_copy_(0, q, s)
            ga = g_u.view(plan.U, H).index_select(0, plan.inv)
        return gv, ga, None


class PolynormerAttention(torch.nn.Module):
    r"""Polynormer's global attention layer within each graph (see the module docstring).

    Args:
        channels (int): input/output size :math:`C`.
        heads (int): number of heads (must divide ``channels``); head size :math:`d = C/H`.
        beta (float, optional): the constant :math:`\beta` (PyG's default 0.9); ``None``:
            learned per channel as :math:`\sigma(\theta)` (the official code's default).
        qk_shared (bool): use the keys as queries (:math:`W_Q = W_K`).
        qkv_bias (bool): learn biases of :math:`W_Q, W_K, W_V` (:math:`W_H` always has one).
        dropout (float): dropout on the output.

    Parameters: ``in_proj_weight [P C, C]`` (rows :math:`W_H, W_K`, unless ``qk_shared``
    :math:`W_Q`, then :math:`W_V`), ``h_bias [C]``, ``qkv_bias [(P-1) C]`` or ``None``,
    ``norm`` (``LayerNorm(C)``), ``out_proj`` (``Linear(C, C)``), ``beta_logit [C]`` when
    ``beta=None``.  ``forward(x [N, C], batch [N] = None, num_graphs = None) -> [N, C]``.
    """

    def __init__(
        self,
        channels: int,
        heads: int = 1,
        beta: float | None = 0.9,
        qk_shared: bool = True,
        qkv_bias: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels, heads = check_heads("PolynormerAttention", channels, heads)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"PolynormerAttention: dropout must be in [0, 1), got {dropout}")
        self.channels = channels
        self.heads = heads
        self.head_dim = channels // heads
        self.beta = _check_beta("PolynormerAttention", beta)
        self.qk_shared = bool(qk_shared)
        self.dropout = float(dropout)
        P = 3 if self.qk_shared else 4
        self.in_proj_weight = Parameter(torch.empty(P * channels, channels))
        self.h_bias = Parameter(torch.empty(channels))
        if qkv_bias:
            self.qkv_bias = Parameter(torch.empty((P - 1) * channels))
        else:
            self.register_parameter("qkv_bias", None)
        if self.beta is None:
            self.beta_logit = Parameter(torch.empty(channels))
        else:
            self.register_parameter("beta_logit", None)
        self.norm = LayerNorm(channels)
        self.out_proj = Linear(channels, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _linear_init(self.in_proj_weight, self.h_bias, self.channels)
        if self.qkv_bias is not None:
            bound = 1.0 / math.sqrt(self.channels)
            torch.nn.init.uniform_(self.qkv_bias, -bound, bound)
        if self.beta_logit is not None:  # the official code: xavier_normal_ of a [1, C] row
            torch.nn.init.normal_(self.beta_logit, std=math.sqrt(2.0 / (1 + self.channels)))
        self.norm.reset_parameters()
        self.out_proj.reset_parameters()

    def beta_vector(self) -> Tensor:
        r""":math:`\beta` per channel ``[C]`` (constant or :math:`\sigma(\theta)`)."""
        if self.beta_logit is not None:
            return torch.sigmoid(self.beta_logit)
        return self.h_bias.new_full((self.channels,), self.beta)  # type: ignore[arg-type]

    def _proj_bias(self) -> Tensor:
        # bias of the rows W_H, W_K (, W_Q): b_H + beta (the gate's constant folded into it)
        hb = self.h_bias + (self.beta if self.beta_logit is None else torch.sigmoid(self.beta_logit))
        n = self.in_proj_weight.size(0) - 2 * self.channels
        rest = self.qkv_bias[:n] if self.qkv_bias is not None else hb.new_zeros(n)
        return torch.cat([hb, rest])

    def forward(
        self, x: Tensor, batch: Tensor | None = None, num_graphs: int | None = None
    ) -> Tensor:
        C, H, d = self.channels, self.heads, self.head_dim
        if x.dim() != 2 or x.size(1) != C:
            raise ValueError(
                f"PolynormerAttention: expected x of shape [N, {C}], got {tuple(x.shape)}"
            )
        N = x.size(0)
        if batch is not None:
            check_batch_shape("PolynormerAttention", batch, N)
        if N == 0:
            return self.out_proj(x)
        layout = GraphLayout(batch, N, num_graphs)
        W = self.in_proj_weight
        # one matmul per block (not one [N, (P-1) C] output): contiguous gate / keys / queries
        # keep the elementwise ops on contiguous memory, about twice as fast on CPU
        P = W.size(0) // C
        Ws, bs = W.chunk(P), self._proj_bias().chunk(P - 1)
        gate = F.linear(x, Ws[0], bs[0])  # W_H x + b_H + beta
        k = torch.sigmoid(F.linear(x, Ws[1], bs[1])).view(N, H, d)
        q = k if self.qk_shared else torch.sigmoid(F.linear(x, Ws[2], bs[2])).view(N, H, d)
        # V is used only in sum_j k_j v_j^T = (sum_j k_j x_j^T) W_V^T + (sum_j k_j) b_V^T, so it
        # is never formed: one [C, C] (per graph) instead of an [N, C] projection and [N, C] copy
        kx = layout.context(k.view(N, 1, C), x.reshape(N, 1, C)).view(-1, H, d, C)
        ks = layout.sum(k)  # [B, H, d]
        kv = torch.einsum("bhmc,hec->bhme", kx, W[-C:].view(H, d, C))
        if self.qkv_bias is not None:
            kv = kv + ks.unsqueeze(-1) * self.qkv_bias[-C:].view(H, 1, d)
        # [B, H, d, d+1]: sum_j k_j v_j^T and sum_j k_j side by side (numerator | normaliser)
        ctx = torch.cat([kv, ks.unsqueeze(-1)], dim=-1)
        num, den = layout.apply(q, ctx).split([d, 1], dim=-1)  # [N, H, d], [N, H, 1]
        a = (num * den.clamp_min(torch.finfo(den.dtype).tiny).reciprocal()).reshape(N, C)
        y = F.layer_norm(a, (C,), self.norm.weight, self.norm.bias, self.norm.eps) * gate
        out = F.relu(self.out_proj(y), inplace=True)
        if self.dropout > 0 and self.training:
            out = F.dropout(out, p=self.dropout, training=True)
        return out

    @classmethod
    def from_pyg(cls, module: torch.nn.Module) -> PolynormerAttention:
        """A :class:`PolynormerAttention` with the weights of PyG's
        ``torch_geometric.nn.attention.PolynormerAttention`` (``channels == heads *
        head_channels``), channels permuted from PyG's head-minor layout."""
        H, d = module.heads, module.head_channels
        C = module.h_lins.in_features
        if C != H * d:
            raise ValueError(
                f"PolynormerAttention.from_pyg: needs channels == heads * head_channels, got "
                f"{C} != {H} * {d}"
            )
        qkv_bias = module.k.bias is not None
        out = cls(
            C, heads=H, beta=float(module.beta), qk_shared=module.qk_shared, qkv_bias=qkv_bias,
            dropout=module.dropout.p,
        ).to(device=module.k.weight.device, dtype=module.k.weight.dtype)
        p = _head_minor(C, H).to(module.k.weight.device)
        lins = [module.h_lins, module.k] + ([] if module.qk_shared else [module.q]) + [module.v]
        with torch.no_grad():
            out.in_proj_weight.copy_(torch.cat([lin.weight[p] for lin in lins]))
            out.h_bias.copy_(module.h_lins.bias[p])
            if qkv_bias:
                out.qkv_bias.copy_(torch.cat([lin.bias[p] for lin in lins[1:]]))
            out.norm.weight.copy_(module.lns.weight[p])
            out.norm.bias.copy_(module.lns.bias[p])
            out.out_proj.weight.copy_(module.lin_out.weight[:, p])
            out.out_proj.bias.copy_(module.lin_out.bias)
        return out

    def __repr__(self) -> str:
        beta = "learned" if self.beta is None else self.beta
        return (
            f"{self.__class__.__name__}({self.channels}, heads={self.heads}, beta={beta}, "
            f"qk_shared={self.qk_shared}, dropout={self.dropout})"
        )


class PolynormerLocal(torch.nn.Module):
    r"""One Polynormer local attention layer (see the module docstring).

    Args:
        channels (int): input/output size :math:`C`.
        heads (int): GAT heads (must divide ``channels``); head size :math:`d = C/H`.
        beta (float, optional): the constant :math:`\beta`; ``None``: learned per channel as
            :math:`\sigma(\theta)`.
        conv (str): ``'gat'`` (the paper and official code) or ``'gcn'`` (PyG's default).
        dropout (float): dropout on :math:`\tilde x`.
        batch_norm (bool): ``BatchNorm1d`` before the ReLU of :math:`\tilde x` (PyG's
            ``post_bn``; it mixes the graphs of a batch in training mode).
        negative_slope (float): of the GAT score's LeakyReLU.
        aggregate (str): how :math:`\sum_j \alpha_{ij} W_G x_j` is computed: ``'csr'`` (one
            sparse CSR x dense matmul per pass, a sampled dense-dense product for the scores'
            gradient; no ``[E, C]`` tensor; first-order gradients only), ``'scatter'``
            (:func:`gtpe.nn.ops.edge_aggregate`: gather, scale and scatter-add) or ``'auto'``
            (``'csr'`` for float32/float64 on CPU, else ``'scatter'``).  Same result.

    Parameters: ``in_proj_weight [3C, C]`` (rows :math:`W_H, W_L, W_G`), ``in_proj_bias [2C]``
    (:math:`b_H, b_L`), ``att_src``/``att_dst [H, d]`` (:math:`a_s, a_d`; ``'gat'`` only),
    ``norm`` (``LayerNorm(C)``), ``bn`` (or ``None``), ``beta_logit [C]`` when ``beta=None``.

    ``forward(x [N, C], edge_index [2, E], cache=None) -> [N, C]``; edges are used as given
    (``edge_index[0]`` the source :math:`j`, ``[1]`` the target :math:`i`), a node without
    in-edges gets 0 from the attention sum; repeated edges each count.  A dict ``cache`` keeps
    what depends on ``edge_index`` only (the CSR layout; with ``'gcn'`` the normalised edge
    weights, :class:`gtpe.nn.local.GCN`'s entry) for the layers that get the same
    ``edge_index`` tensor (``GPSLayer`` passes its ``state``).
    """

    def __init__(
        self,
        channels: int,
        heads: int = 1,
        beta: float | None = 0.9,
        conv: str = "gat",
        dropout: float = 0.0,
        batch_norm: bool = False,
        negative_slope: float = 0.2,
        aggregate: str = "auto",
    ) -> None:
        super().__init__()
        channels, heads = check_heads("PolynormerLocal", channels, heads)
        if conv not in LOCAL_CONVS:
            raise ValueError(f"PolynormerLocal: conv must be one of {LOCAL_CONVS}, got {conv!r}")
        if aggregate not in AGGREGATES:
            raise ValueError(
                f"PolynormerLocal: aggregate must be one of {AGGREGATES}, got {aggregate!r}"
            )
        self.aggregate = aggregate
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"PolynormerLocal: dropout must be in [0, 1), got {dropout}")
        self.channels = channels
        self.heads = heads
        self.head_dim = channels // heads
        self.beta = _check_beta("PolynormerLocal", beta)
        self.conv = conv
        self.dropout = float(dropout)
        self.negative_slope = float(negative_slope)
        self.in_proj_weight = Parameter(torch.empty(3 * channels, channels))
        self.in_proj_bias = Parameter(torch.empty(2 * channels))
        if conv == "gat":
            self.att_src = Parameter(torch.empty(heads, self.head_dim))
            self.att_dst = Parameter(torch.empty(heads, self.head_dim))
        else:
            self.register_parameter("att_src", None)
            self.register_parameter("att_dst", None)
        if self.beta is None:
            self.beta_logit = Parameter(torch.empty(channels))
        else:
            self.register_parameter("beta_logit", None)
        self.norm = LayerNorm(channels)
        self.bn = torch.nn.BatchNorm1d(channels) if batch_norm else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        C = self.channels
        with torch.no_grad():
            _linear_init(self.in_proj_weight[: 2 * C], self.in_proj_bias, C)  # W_H, W_L
            torch.nn.init.xavier_uniform_(self.in_proj_weight[2 * C :])  # W_G (as GATConv/GCNConv)
        if self.att_src is not None:  # GATConv: glorot on [1, H, d]
            for a in (self.att_src, self.att_dst):
                bound = math.sqrt(6.0 / (self.heads + self.head_dim))
                torch.nn.init.uniform_(a, -bound, bound)
        if self.beta_logit is not None:
            torch.nn.init.normal_(self.beta_logit, std=math.sqrt(2.0 / (1 + C)))
        self.norm.reset_parameters()
        if self.bn is not None:
            self.bn.reset_parameters()

    def beta_vector(self) -> Tensor:
        r""":math:`\beta` per channel ``[C]`` (constant or :math:`\sigma(\theta)`)."""
        if self.beta_logit is not None:
            return torch.sigmoid(self.beta_logit)
        return self.in_proj_bias.new_full((self.channels,), self.beta)  # type: ignore[arg-type]

    def forward(self, x: Tensor, edge_index: Tensor, cache: dict | None = None) -> Tensor:
        C, H, d = self.channels, self.heads, self.head_dim
        if x.dim() != 2 or x.size(1) != C:
            raise ValueError(f"PolynormerLocal: expected x of shape [N, {C}], got {tuple(x.shape)}")
        check_index_shape("PolynormerLocal", "edge_index", edge_index)
        N = x.size(0)
        W, b = self.in_proj_weight, self.in_proj_bias
        if self.att_src is not None:
            # fold the GAT score vectors into the projection: a^T (W_G x) = (a^T W_G) x
            Wg = W[2 * C :].view(H, d, C)
            w_s = torch.einsum("hd,hdc->hc", self.att_src, Wg)
            w_d = torch.einsum("hd,hdc->hc", self.att_dst, Wg)
            W = torch.cat([W, w_s, w_d])
        b = torch.cat([b, b.new_zeros(W.size(0) - 2 * C)])
        z = F.linear(x, W, b)  # [N, 3C (+2H)]
        # split, not slices: its backward is one cat (slices would each zero-fill [N, 3C + 2H])
        hz, lz, g, *scores = z.split([C, C, C] + ([H, H] if self.att_src is not None else []), dim=1)
        h = F.relu(hz)
        g = g.view(N, H, d)
        if self.conv == "gat":
            src, dst = edge_index[0], edge_index[1]
            s_src, s_dst = scores[0].contiguous(), scores[1].contiguous()  # [N, H] (fast gathers)
            e = s_src.index_select(0, src) + s_dst.index_select(0, dst)
            alpha = scatter_softmax(F.leaky_relu(e, self.negative_slope), dst, N)  # [E, H]
            pairs = edge_index
        else:  # one weight per edge for all heads: aggregate [N, 1, C]
            src, dst, w = self._gcn_norm(edge_index, N, x.dtype, cache)
            alpha, g = w.unsqueeze(-1), g.reshape(N, 1, C)
            pairs = None
        if self._use_csr(x, src.numel()):
            plan = self._csr_plan(edge_index, pairs, src, dst, N, g.size(1), cache)
            agg = _CSRAggregate.apply(g.contiguous(), alpha, plan)
        else:
            agg = edge_aggregate(g, alpha, src, dst, N)
        s = agg.reshape(N, C) + lz
        if self.bn is not None:
            s = self.bn(s)
        xt = F.relu(s)
        if self.dropout > 0 and self.training:
            xt = F.dropout(xt, p=self.dropout, training=True)
        y = F.layer_norm(h * xt, (C,), self.norm.weight, self.norm.bias, self.norm.eps)
        beta = self.beta_vector() if self.beta_logit is not None else self.beta
        return torch.lerp(y, xt, beta)  # (1 - beta) y + beta xt

    def _use_csr(self, x: Tensor, num_edges: int) -> bool:
        if self.aggregate == "auto":  # CSR matmuls (MKL) on CPU; CUDA: untested, scatter
            return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and num_edges > 0
        return self.aggregate == "csr" and num_edges > 0

    @staticmethod
    def _csr_plan(
        edge_index: Tensor,
        pairs: Tensor | None,
        src: Tensor,
        dst: Tensor,
        N: int,
        H: int,
        cache: dict | None,
    ) -> _CSRPlan:
        # keyed by the edge_index tensor (the GCN pairs, with self-loops, derive from it)
        key = "polynormer_csr" if pairs is not None else "polynormer_csr_gcn"
        hit = cache.get(key) if cache is not None else None
        if hit is not None and hit[0] is edge_index and hit[1] == N and hit[2] == H:
            return hit[3]
        plan = _CSRPlan(torch.stack([src, dst]) if pairs is None else pairs, N, H)
        if cache is not None:
            cache[key] = (edge_index, N, H, plan)
        return plan

    @staticmethod
    def _gcn_norm(
        edge_index: Tensor, N: int, dtype: torch.dtype, cache: dict | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        from gtpe.nn.local import GCN

        norm = cache.get(GCN.CACHE_KEY) if cache is not None else None
        if norm is None or norm[0] is not edge_index or norm[1] != N or norm[2] != dtype:
            norm = (edge_index, N, dtype, *GCN.normalize(edge_index, N, dtype))
            if cache is not None:
                cache[GCN.CACHE_KEY] = norm
        return norm[3], norm[4], norm[5]

    def __repr__(self) -> str:
        beta = "learned" if self.beta is None else self.beta
        return (
            f"{self.__class__.__name__}({self.channels}, heads={self.heads}, conv={self.conv!r}, "
            f"beta={beta}, dropout={self.dropout}, batch_norm={self.bn is not None}"
            + ("" if self.aggregate == "auto" else f", aggregate={self.aggregate!r}")
            + ")"
        )
