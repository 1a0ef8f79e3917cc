r"""Global attention to a k-means codebook of node representations: LargeGT's global module
(Dwivedi et al., `"Graph Transformers for Large Graphs" <https://arxiv.org/abs/2312.11109>`_,
2023), after GOAT (Kong et al., ICML 2023).

:class:`EMACodebook` keeps :math:`M` centroids of the (batch-normalised) query vectors, moved by
an exponential moving average (online k-means, as VQ-VAE's EMA codebook);
:class:`CodebookAttention` attends from each node to the centroids, each weighted by the number
of nodes it stands for, so one node sees a summary of the whole graph in :math:`O(M)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import BatchNorm1d, Linear

from gtpe.nn.ops import check_positive_int, scatter_sum, segment_count

__all__ = ["CodebookAttention", "EMACodebook"]


class EMACodebook(torch.nn.Module):
    r"""An online k-means codebook (the paper's code ``VectorQuantizerEMA``, from GOAT).

    A training step with inputs :math:`\mathbf{x}_1..\mathbf{x}_B \in \mathbb{R}^D` (no
    gradient flows through it):

    .. math::
        \mathbf{z}_b &= \mathrm{BN}(\mathbf{x}_b)\quad\text{(batch statistics; running mean }
            \boldsymbol{\mu}\text{, variance }\boldsymbol{\sigma}^2\text{ updated, momentum 0.1)} \\
        a_b &= \arg\min_c \lVert \mathbf{z}_b - \mathbf{e}_c \rVert^2,\qquad
            n_c = |\{b : a_b = c\}| \\
        N_c &\leftarrow \gamma N_c + (1-\gamma) n_c,\quad
            N_c \leftarrow \frac{N_c + \epsilon}{\sum_{c'} N_{c'} + M\epsilon}\sum_{c'} N_{c'} \\
        \mathbf{m}_c &\leftarrow \gamma \mathbf{m}_c + (1-\gamma)\textstyle\sum_{a_b = c}
            \mathbf{z}_b,\qquad \mathbf{e}_c = \mathbf{m}_c / N_c,\qquad
            \hat{\mathbf{e}}_c = \mathbf{e}_c \odot \sqrt{\boldsymbol{\sigma}^2 + 10^{-5}}
            + \boldsymbol{\mu} \\
        \nu_c &\leftarrow \gamma \nu_c + (1-\gamma) n_c

    with :math:`\epsilon = 10^{-5}` (Laplace smoothing). :math:`\hat{\mathbf{e}}_c`
    (``centroids``, in the inputs' scale) are what attention reads; :math:`\nu_c` (``counts``)
    estimates how many nodes each centroid holds: the paper's code counts the current
    assignment of every node of the graph, which needs the node count at construction; a
    centroid never assigned has :math:`\nu_c = 0`. Start: :math:`\mathbf{e}, \hat{\mathbf{e}},
    \mathbf{m}` standard normal (torch's generator), :math:`N = \nu = 0`. Everything is a
    buffer (saved in the ``state_dict``); the step is deterministic given its inputs.

    Args:
        num_codes: :math:`M`.
        dim: :math:`D`.
        decay: :math:`\gamma` (0.99 in the paper's code).
    """

    EPS = 1e-5

    def __init__(self, num_codes: int, dim: int, decay: float = 0.99) -> None:
        super().__init__()
        self.num_codes = check_positive_int("EMACodebook", "num_codes", num_codes)
        self.dim = check_positive_int("EMACodebook", "dim", dim)
        if isinstance(decay, bool) or not 0.0 <= decay < 1.0:
            raise ValueError(f"EMACodebook: decay must be in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.bn = BatchNorm1d(dim, affine=False)
        self.register_buffer("embedding", torch.empty(num_codes, dim))
        self.register_buffer("centroids", torch.empty(num_codes, dim))
        self.register_buffer("ema_sum", torch.empty(num_codes, dim))
        self.register_buffer("cluster_size", torch.zeros(num_codes))
        self.register_buffer("counts", torch.zeros(num_codes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.bn.reset_running_stats()
        for buf in (self.embedding, self.centroids, self.ema_sum):
            torch.nn.init.normal_(buf)
        self.cluster_size.zero_()
        self.counts.zero_()

    @torch.no_grad()
    def update(self, x: Tensor) -> Tensor:
        """One EMA k-means step with ``x [B, D]`` (``B >= 2``, for the batch statistics);
        returns the assignments ``[B]``."""
        if x.dim() != 2 or x.size(1) != self.dim or x.size(0) < 2:
            raise ValueError(f"EMACodebook.update: x must be [B >= 2, {self.dim}], got "
                             f"{list(x.shape)}")
        x = x.detach()
        was_training = self.bn.training
        self.bn.train()
        z = self.bn(x)
        self.bn.train(was_training)
        e = self.embedding
        dist = (z * z).sum(1, keepdim=True) + (e * e).sum(1) - 2 * z @ e.t()
        assign = dist.argmin(dim=1)
        n = segment_count(assign, self.num_codes, dtype=z.dtype)
        g = self.decay
        size = self.cluster_size * g + (1 - g) * n
        total = size.sum()
        self.cluster_size.copy_((size + self.EPS) / (total + self.num_codes * self.EPS) * total)
        self.ema_sum.mul_(g).add_(scatter_sum(z, assign, self.num_codes), alpha=1 - g)
        self.embedding.copy_(self.ema_sum / self.cluster_size.unsqueeze(1))
        std = (self.bn.running_var + 1e-5).sqrt()
        self.centroids.copy_(self.embedding * std + self.bn.running_mean)
        self.counts.mul_(g).add_(n, alpha=1 - g)
        return assign

    def log_counts(self) -> Tensor:
        r""":math:`\log \nu_c` (``-inf`` for a centroid never assigned); all zeros before the
        first update (every centroid weighted alike)."""
        if not bool((self.counts > 0).any()):
            return torch.zeros_like(self.counts)
        return self.counts.log()

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.num_codes}, {self.dim}, decay={self.decay})"


class CodebookAttention(torch.nn.Module):
    r"""LargeGT's global module: attention from each node to an :class:`EMACodebook` of its
    own queries.

    .. math::
        \tilde{\mathbf{q}}_i &= [\mathbf{W}_g \mathbf{x}_i + \mathbf{b}_g \,\Vert\,
            \mathbf{p}_i] \in \mathbb{R}^{g + p} \\
        \mathbf{h}_i &= \Big[\textstyle\sum_{c=1}^{M}\operatorname{softmax}_c\Big(
            \frac{(\mathbf{W}^Q_h\tilde{\mathbf{q}}_i)^\top \mathbf{W}^K_h
            \hat{\mathbf{e}}_c}{\sqrt{C}} + \log\nu_c\Big)\,
            \mathbf{W}^V_h \hat{\mathbf{e}}_{c,1..g}\Big]_{h=1..H}

    (biases in :math:`\mathbf{W}^{Q,K,V}` omitted above), with the centroids
    :math:`\hat{\mathbf{e}}_c \in \mathbb{R}^{g+p}` and the counts :math:`\nu_c` of the
    codebook: a centroid that stands for :math:`\nu_c` nodes weighs as much as they would in
    full attention; the values read only the feature part (first :math:`g` dims).
    :math:`\mathbf{p}_i` is a fixed positional encoding (node2vec in the paper; optional, then
    :math:`p = 0`). Each head has size :math:`C`. In training mode the forward pass first
    attends, then moves the codebook with the :math:`\tilde{\mathbf{q}}_i` (detached; at least
    two rows), so a batch's output does not depend on its own update.

    Args:
        channels: input size and head size :math:`C`.
        global_dim: :math:`g`.
        pe_dim: :math:`p` (0: no positional encoding).
        num_codes: :math:`M`.
        heads: :math:`H`.
        attn_dropout: dropout on the attention weights.
        decay: the codebook's EMA decay.

    Shapes: ``x [B, C]``, ``pe [B, p]`` -> ``[B, H * C]``.
    """

    def __init__(self, channels: int, global_dim: int, num_codes: int, heads: int = 1,
                 pe_dim: int = 0, attn_dropout: float = 0.0, decay: float = 0.99) -> None:
        super().__init__()
        C = self.channels = check_positive_int("CodebookAttention", "channels", channels)
        g = self.global_dim = check_positive_int("CodebookAttention", "global_dim", global_dim)
        H = self.heads = check_positive_int("CodebookAttention", "heads", heads)
        if isinstance(pe_dim, bool) or not isinstance(pe_dim, int) or pe_dim < 0:
            raise ValueError(f"CodebookAttention: pe_dim must be an integer >= 0, got {pe_dim!r}")
        if not 0.0 <= attn_dropout < 1.0:
            raise ValueError(f"CodebookAttention: attn_dropout must be in [0, 1), got "
                             f"{attn_dropout!r}")
        self.pe_dim, self.attn_dropout_p = pe_dim, float(attn_dropout)
        self.proj = Linear(C, g)
        self.query = Linear(g + pe_dim, H * C)
        self.key = Linear(g + pe_dim, H * C)
        self.value = Linear(g, H * C)
        self.codebook = EMACodebook(num_codes, g + pe_dim, decay)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.proj, self.query, self.key, self.value):
            lin.reset_parameters()
        self.codebook.reset_parameters()

    def forward(self, x: Tensor, pe: Tensor | None = None) -> Tensor:
        if (pe is None) != (self.pe_dim == 0) or (
                pe is not None and (pe.shape != (x.size(0), self.pe_dim))):
            got = None if pe is None else list(pe.shape)
            raise ValueError(f"CodebookAttention: pe must be [{x.size(0)}, {self.pe_dim}] "
                             f"(None when pe_dim=0), got {got}")
        q_in = self.proj(x)
        if pe is not None:
            q_in = torch.cat([q_in, pe.to(q_in.dtype)], dim=1)
        B, C, H = x.size(0), self.channels, self.heads
        # a copy: the update below moves the buffer in place, autograd needs these values
        cents = self.codebook.centroids.to(q_in.dtype, copy=True)
        q = self.query(q_in).view(B, H, C).transpose(0, 1)  # [H, B, C]
        k = self.key(cents).view(-1, H, C).transpose(0, 1)  # [H, M, C]
        v = self.value(cents[:, : self.global_dim]).view(-1, H, C).transpose(0, 1)
        logits = q @ k.transpose(1, 2) / math.sqrt(C) + self.codebook.log_counts().to(q.dtype)
        a = F.dropout(torch.softmax(logits, dim=-1), self.attn_dropout_p, self.training)
        out = (a @ v).transpose(0, 1).reshape(B, H * C)
        if self.training and B >= 2:
            self.codebook.update(q_in)
        return out

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.channels}, global_dim={self.global_dim}, "
                f"num_codes={self.codebook.num_codes}, heads={self.heads}, "
                f"pe_dim={self.pe_dim})")
