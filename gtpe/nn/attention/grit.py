r"""GRIT attention over node pairs with pair features and degree injection.

Ma et al., "Graph Inductive Biases in Transformers without Message Passing" (ICML 2023).  For
every pair :math:`j \to i` of ``pair_index`` (``pair_index[0]`` = :math:`j`, the key / source;
``pair_index[1]`` = :math:`i`, the query / target, over whose pairs the softmax runs) with
features :math:`e_{ij}` = ``pair_attr`` of that column (e.g. RRWP encodings), per head:

.. math::
    \hat e_{ij} &= \sigma\big(\rho\big((W_Q x_i + W_K x_j) \odot W_{Ew} e_{ij}\big)
                   + W_{Eb} e_{ij}\big),\qquad \rho(s) = \operatorname{sign}(s)\sqrt{|s|},\\
    \alpha_{ij} &= \operatorname{softmax}_{j}\big(\operatorname{clamp}(w_A^\top \hat e_{ij},
                   \pm c)\big),\\
    \hat x_i &= \sum_j \alpha_{ij}\,\big(W_V x_j + W_{Ev} \hat e_{ij}\big),\\
    x'_i &= W_O\big(\hat x_i \odot \theta_1 + \log(1 + d_i)\, \hat x_i \odot \theta_2\big),\\
    e'_{ij} &= \mathrm{Norm}_e\big(e_{ij} + W_{Oe}\, \mathrm{Dropout}(\hat e_{ij})\big),

with :math:`\sigma` = ReLU and :math:`c` = ``clamp`` (5, as in the official code; ``None``
disables it).  :math:`W_O, W_{Oe}` are the output projections ``out_proj`` / ``pair_out_proj``
of the official GRIT layer (``O_h``, ``O_e``).  The pair update is the official
``GritTransformerLayer``'s in its order (dropout, :math:`O_e`, residual, norm), each part
optional: ``pair_dropout`` (default 0), ``pair_residual`` (the :math:`e_{ij} +`, default off)
and ``pair_norm`` (:math:`\mathrm{Norm}_e`, ``'batch'`` / ``'layer'`` over the :math:`C` pair
channels, default none); the defaults give :math:`e'_{ij} = W_{Oe}\hat e_{ij}`, and
:class:`~gtpe.nn.GPSLayer` sets the three to its ``dropout``, ``residual`` and ``norm``, as the
official layer does.  The degree :math:`d_i` is ``deg`` if given
(GRIT uses the degree of the input graph: its RRWP transform stores the row sums of
:math:`A`, i.e. the out-degree ``torch_geometric.utils.degree(edge_index[0], N)`` of an
unweighted graph, equal to the in-degree on undirected graphs); otherwise the number of input
pairs with target :math:`i` (counted before ``full_pairs`` completion).

**Direction of the pairs.**  Row 0 is the key and row 1 the query, as PyG's ``edge_index``
(message :math:`j \to i`) and the official ``MultiHeadAttentionLayerGritSparse`` (keys
``edge_index[0]``, queries and softmax ``edge_index[1]``).  The RRWP pairs of
:class:`~gtpe.transforms.AddRRWP` / :class:`~gtpe.nn.encoders.RRWPEncoder` store column
:math:`(a, b)` with :math:`[I, P, \dots, P^{K-1}]_{ab}`, :math:`P = D^{-1}A` (row-stochastic:
:math:`P_{ab}` is the probability of the step :math:`a \to b`), as the official
``add_full_rrwp`` does (``(row, col)`` of ``SparseTensor.from_dense``).  Fed those pairs, the
query :math:`i` therefore sees, for the key :math:`j`, :math:`[I, P, \dots]_{ji}` (walks from
the key to the query, i.e. :math:`(P^\top)^k_{ij}`) plus the features of the edge
:math:`j \to i`: exactly the official code.  The paper's notation initialises the
:math:`e_{ij}` of the query :math:`i` from :math:`\mathbf{P}_{ij}`; read literally that is
:math:`P^k_{ij}`, which differs wherever degrees differ (:math:`P \ne P^\top`); gtpe follows
the released code.  Passing
``pair_index.flip(0)`` with the same ``pair_attr`` gives the other reading.

With ``full_pairs=True`` the pair set is completed to all ordered pairs (self pairs included)
within each graph; missing pairs get zero features, duplicate input pairs are summed.  The
completed ``pair_index`` is sorted by target, then source, and returned with the new pair
features so that the next layer continues from them (the residual adds the completed input).
With ``update_pairs=False`` (the last layer of a model, whose pair output nobody reads: the
official last layer computes it too and discards it) neither :math:`W_{Oe}` nor
:math:`\mathrm{Norm}_e` is created and the pair features are returned without update (the
input ``pair_attr``, completed if ``full_pairs``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import Linear, Parameter

from gtpe.nn.ops import edge_aggregate, make_norm, scatter_softmax, scatter_sum, segment_count


class _SignedSqrt(torch.autograd.Function):
    # y = sign(s) sqrt(|s|); dy/ds = 1 / (2 sqrt(|s|)), set to 0 at s = 0 (as the
    # sqrt(relu(s)) - sqrt(relu(-s)) form of the official code), in fewer kernels.
    @staticmethod
    def forward(ctx, s):  # type: ignore[override]
        r = torch.sqrt(torch.abs(s))
        ctx.save_for_backward(r)
        return torch.copysign(r, s)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (r,) = ctx.saved_tensors
        return torch.where(r > 0, 0.5 * grad / r, torch.zeros_like(grad))


class _PairUpdate(torch.autograd.Function):
    # e_hat = relu(rho((q[dst] + k[src]) * e_w) + e_b) for e = [e_w | e_b] ([M, H, 2D]) in one
    # function: the forward reuses its buffers in place, the backward writes the gradients of
    # e_w and e_b into one [M, H, 2D] buffer (no cat of the split) and masks in place.
    @staticmethod
    def forward(ctx, q, k, e, dst, src):  # type: ignore[override]
        D = q.size(-1)
        e_w, e_b = e[..., :D], e[..., D:]
        qk = q.index_select(0, dst)
        qk += k.index_select(0, src)
        s = qk * e_w
        r = s.abs().sqrt_()
        out = torch.copysign(r, s, out=s).add_(e_b).relu_()  # s is not needed any more
        ctx.save_for_backward(q, k, e, dst, src, qk, r, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        q, k, e, dst, src, qk, r, out = ctx.saved_tensors
        D = q.size(-1)
        ge = torch.empty_like(e)
        gb = ge[..., D:]
        # d relu = the gradient of e_b (relu's own backward kernel: boolean masks are slow)
        gb.copy_(torch.ops.aten.threshold_backward(grad, out, 0))
        # d rho(s)/ds = 1 / (2 sqrt|s|), 0 at s = 0 (as the official sqrt(relu) difference):
        # x / 0 is +-inf or nan only where r = 0, and nan_to_num sets exactly those to 0
        gs = torch.div(gb, r).nan_to_num_(0.0, 0.0, 0.0).mul_(0.5)
        torch.mul(gs, qk, out=ge[..., :D])
        gqk = gs.mul_(e[..., :D])
        gq = gk = None
        if ctx.needs_input_grad[0]:
            gq = scatter_sum(gqk, dst, q.size(0))
        if ctx.needs_input_grad[1]:
            gk = scatter_sum(gqk, src, k.size(0))
        return gq, gk, ge, None, None


def signed_sqrt(s: Tensor) -> Tensor:
    r""":math:`\rho(s) = \operatorname{sign}(s)\sqrt{|s|}` (gradient :math:`1/(2\sqrt{|s|})`,
    defined as 0 at :math:`s = 0`)."""
    return _SignedSqrt.apply(s)


def complete_pairs(
    pair_index: Tensor, pair_attr: Tensor, batch: Tensor, num_graphs: int | None = None
) -> tuple[Tensor, Tensor]:
    """All ordered pairs ``(j, i)`` within each graph (sorted by ``i`` then ``j``), with
    ``pair_attr`` scattered in (missing pairs: zeros; duplicates: summed).

    ``batch`` must be sorted (PyG convention).  Raises ``ValueError`` on cross-graph pairs.
    Returns ``(pair_index [2, sum_g n_g^2], pair_attr [sum_g n_g^2, *])``.
    """
    N = batch.numel()
    device = batch.device
    counts = segment_count(batch, num_graphs if num_graphs is not None else 0)
    start = counts.cumsum(0) - counts  # first node of each graph
    n_i = counts.index_select(0, batch)  # [N] size of node i's graph
    row_off = n_i.cumsum(0) - n_i  # first full pair with target i
    P = int(n_i.sum())
    dst = torch.repeat_interleave(torch.arange(N, device=device), n_i, output_size=P)
    src = start.index_select(0, batch).index_select(0, dst) + (
        torch.arange(P, device=device) - row_off.index_select(0, dst)
    )
    if N > 1 and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError("complete_pairs: batch must be sorted (nodes of a graph contiguous)")
    j, i = pair_index[0], pair_index[1]
    if j.numel() > 0 and bool((batch.index_select(0, j) != batch.index_select(0, i)).any()):
        raise ValueError("complete_pairs: pair_index connects nodes of different graphs")
    pos = row_off.index_select(0, i) + (j - start.index_select(0, batch.index_select(0, i)))
    attr = scatter_sum(pair_attr, pos, P)
    return torch.stack([src, dst]), attr


class GRITAttention(torch.nn.Module):
    r"""GRIT multi-head attention over node pairs (see the module docstring for the math).

    Args:
        channels (int): node and pair feature size :math:`C`.
        heads (int): number of heads (must divide ``channels``).
        dropout (float): dropout on the attention weights :math:`\alpha`.
        full_pairs (bool): complete the pairs to all ordered pairs of each graph.
        clamp (float, optional): clamp of the attention logits (default 5.0, official GRIT).
        deg_scaler (bool): degree injection with :math:`\theta_1, \theta_2` (``deg_coef [C, 2]``).
        bias (bool): biases in :math:`W_K, W_V` (the official code uses none; :math:`W_Q`,
            :math:`W_E` and the output projections always have biases).
        update_pairs (bool): compute the updated pair features :math:`e'_{ij}`.  With
            ``False`` there is no ``pair_out_proj`` (nor ``pair_norm``) and ``forward``
            returns the input ``pair_attr`` / ``pair_index`` unchanged (after ``full_pairs``
            completion).
        node_dropout (float): dropout on the aggregated node output, before the degree
            scaler and :math:`W_O` (the official layer's ``h`` dropout; :class:`~gtpe.nn.GPSLayer`
            sets it to its ``dropout`` and does not drop the branch output again).
        pair_dropout (float): dropout on :math:`\hat e_{ij}` before :math:`W_{Oe}`.
        pair_residual (bool): add the input pair features, :math:`e_{ij} + W_{Oe}(\cdot)`.
        pair_norm (str, optional): :math:`\mathrm{Norm}_e` after the residual, ``'batch'``
            (``BatchNorm1d``) or ``'layer'`` (``LayerNorm``) over the :math:`C` channels of the
            pairs, or ``None``.

    ``forward(x [N, C], pair_index [2, M], pair_attr [M, C], batch [N], deg=None, num_graphs=None)``
    returns ``(x_out [N, C], pair_out [M', C], pair_index' [2, M'])`` (``M' = M`` and the same
    ``pair_index`` unless ``full_pairs``; with ``update_pairs=False``, ``pair_out`` is the
    input ``pair_attr``, completed if ``full_pairs``).  ``pair_index[0]`` holds the keys
    :math:`j`, ``pair_index[1]`` the queries :math:`i`: RRWP pairs ``(a, b)`` carry
    :math:`P^k_{ab}`, so the query :math:`i` sees :math:`P^k_{ji}`, as in the official code.
    The computation of :math:`\hat e` is one autograd function with a hand-written
    (``once_differentiable``) backward.
    """

    def __init__(
        self,
        channels: int,
        heads: int = 4,
        dropout: float = 0.0,
        full_pairs: bool = False,
        clamp: float | None = 5.0,
        deg_scaler: bool = True,
        bias: bool = False,
        update_pairs: bool = True,
        node_dropout: float = 0.0,
        pair_dropout: float = 0.0,
        pair_residual: bool = False,
        pair_norm: str | None = None,
    ) -> None:
        super().__init__()
        if channels <= 0 or heads <= 0 or channels % heads != 0:
            raise ValueError(
                f"GRITAttention: channels ({channels}) must be a positive multiple "
                f"of heads ({heads})"
            )
        for name, p in (
            ("dropout", dropout), ("node_dropout", node_dropout), ("pair_dropout", pair_dropout)
        ):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"GRITAttention: {name} must be in [0, 1), got {p}")
        if pair_residual is not True and pair_residual is not False:
            raise ValueError(
                f"GRITAttention: pair_residual must be True or False, got {pair_residual!r}"
            )
        pair_norm_module = make_norm(
            pair_norm, channels, f"GRITAttention: unknown pair_norm {pair_norm!r}; expected "
            "'batch', 'layer' or None"
        )
        if clamp is not None and clamp <= 0:
            raise ValueError(f"GRITAttention: clamp must be positive or None, got {clamp}")
        self.channels = channels
        self.heads = heads
        self.head_dim = channels // heads
        self.dropout = float(dropout)
        self.full_pairs = full_pairs
        self.clamp = None if clamp is None else float(clamp)
        self.deg_scaler = deg_scaler
        self.update_pairs = bool(update_pairs)
        self.node_dropout = float(node_dropout)
        self.pair_dropout = float(pair_dropout)
        self.pair_residual = pair_residual
        self.pair_norm_type = pair_norm
        H, D = heads, self.head_dim
        self.lin_q = Linear(channels, channels, bias=True)
        self.lin_k = Linear(channels, channels, bias=bias)
        self.lin_v = Linear(channels, channels, bias=bias)
        self.lin_e = Linear(channels, 2 * channels, bias=True)  # -> [W_Ew e, W_Eb e]
        self.attn_weight = Parameter(torch.empty(H, D))  # w_A per head
        self.edge_value = Parameter(torch.empty(H, D, D))  # W_Ev per head
        if deg_scaler:
            self.deg_coef = Parameter(torch.empty(channels, 2))  # [theta_1, theta_2]
        else:
            self.register_parameter("deg_coef", None)
        self.out_proj = Linear(channels, channels)
        self.pair_out_proj = Linear(channels, channels) if self.update_pairs else None
        self.pair_norm = pair_norm_module if self.update_pairs else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.lin_q, self.lin_k, self.lin_v, self.lin_e):
            lin.reset_parameters()  # default bias init (as the official code)
            torch.nn.init.xavier_normal_(lin.weight)
        D = self.head_dim
        std = math.sqrt(2.0 / (D + 1))
        torch.nn.init.normal_(self.attn_weight, std=std)
        torch.nn.init.normal_(self.edge_value, std=math.sqrt(2.0 / (2 * D)))
        if self.deg_coef is not None:
            torch.nn.init.xavier_normal_(self.deg_coef.view(1, self.channels, 2))
        self.out_proj.reset_parameters()
        if self.pair_out_proj is not None:
            self.pair_out_proj.reset_parameters()
        if self.pair_norm is not None:
            self.pair_norm.reset_parameters()

    def forward(
        self,
        x: Tensor,
        pair_index: Tensor,
        pair_attr: Tensor,
        batch: Tensor | None = None,
        deg: Tensor | None = None,
        num_graphs: int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        C, H, D = self.channels, self.heads, self.head_dim
        if x.dim() != 2 or x.size(1) != C:
            raise ValueError(f"GRITAttention: expected x of shape [N, {C}], got {tuple(x.shape)}")
        N = x.size(0)
        if pair_index.dim() != 2 or pair_index.size(0) != 2:
            raise ValueError(
                f"GRITAttention: pair_index must be [2, M], got {tuple(pair_index.shape)}"
            )
        if (
            pair_attr.dim() != 2
            or pair_attr.size(0) != pair_index.size(1)
            or pair_attr.size(1) != C
        ):
            raise ValueError(
                f"GRITAttention: pair_attr must be [{pair_index.size(1)}, {C}], "
                f"got {tuple(pair_attr.shape)}"
            )
        if batch is None:
            batch = pair_index.new_zeros(N)
        elif batch.shape != (N,):
            raise ValueError(
                f"GRITAttention: batch must have shape [{N}], got {tuple(batch.shape)}"
            )
        if self.deg_scaler and deg is None:
            deg = segment_count(pair_index[1], N)
        if self.full_pairs:
            pair_index, pair_attr = complete_pairs(pair_index, pair_attr, batch, num_graphs)
        src, dst = pair_index[0], pair_index[1]
        M = src.numel()

        q = self.lin_q(x).view(N, H, D)
        k = self.lin_k(x).view(N, H, D)
        v = self.lin_v(x).view(N, H, D)
        e = self.lin_e(pair_attr).view(M, H, 2 * D)  # [W_Ew e | W_Eb e] per head
        e_hat = _PairUpdate.apply(q, k, e, dst, src)  # [M, H, D]
        score = (e_hat * self.attn_weight).sum(-1)  # [M, H]
        if self.clamp is not None:
            # |score| <= clamp: exp cannot overflow or underflow, so no segment-max shift
            # (the softmax is shift invariant; every nonempty segment has a sum >= e^-clamp)
            ex = score.clamp(-self.clamp, self.clamp).exp()
            alpha = ex / scatter_sum(ex, dst, N).index_select(0, dst)
        else:
            alpha = scatter_softmax(score, dst, N)
        if self.dropout > 0 and self.training:
            alpha = F.dropout(alpha, p=self.dropout, training=True)
        out = edge_aggregate(v, alpha, src, dst, N)  # [N, H, D]
        row_e = scatter_sum(e_hat * alpha.unsqueeze(-1), dst, N)  # [N, H, D]
        # W_Ev per head as one block-diagonal [C, C] matrix: one matmul over the nodes
        eye = torch.eye(H, dtype=x.dtype, device=x.device)
        w_ev = (self.edge_value.unsqueeze(2) * eye.view(H, 1, H, 1)).reshape(C, C)
        out = out.reshape(N, C) + row_e.view(N, C) @ w_ev
        if self.node_dropout > 0 and self.training:
            out = F.dropout(out, p=self.node_dropout, training=True)
        if self.deg_coef is not None:
            log_deg = torch.log1p(deg.to(out.dtype)).view(N, 1)
            out = out * self.deg_coef[:, 0] + log_deg * out * self.deg_coef[:, 1]
        if self.pair_out_proj is None:  # update_pairs=False: pairs pass through
            return self.out_proj(out), pair_attr, pair_index
        # the official pair stream: dropout, O_e, residual, norm
        e_out = e_hat.reshape(M, C)
        if self.pair_dropout > 0 and self.training:
            e_out = F.dropout(e_out, p=self.pair_dropout, training=True)
        e_out = self.pair_out_proj(e_out)
        if self.pair_residual:
            e_out = e_out + pair_attr
        if self.pair_norm is not None:
            e_out = self.pair_norm(e_out)
        return self.out_proj(out), e_out, pair_index

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.channels}, heads={self.heads}, "
            f"dropout={self.dropout}, "
            f"full_pairs={self.full_pairs}, clamp={self.clamp}, deg_scaler={self.deg_scaler}"
            + ("" if self.update_pairs else ", update_pairs=False")
            + (f", node_dropout={self.node_dropout}" if self.node_dropout else "")
            + (f", pair_dropout={self.pair_dropout}" if self.pair_dropout else "")
            + (", pair_residual=True" if self.pair_residual else "")
            + (f", pair_norm={self.pair_norm_type!r}" if self.pair_norm_type else "")
            + ")"
        )
