r"""TokenGT's tokenizer: every node and every edge of a graph becomes a token of a plain
Transformer (Kim et al., `"Pure Transformers are Powerful Graph Learners"
<https://arxiv.org/abs/2207.02505>`_, NeurIPS 2022).

With node identifiers :math:`\mathbf{P} \in \mathbb{R}^{n\times d_p}` (rows orthonormal when
:math:`n \le d_p`), a projection :math:`\mathbf{W}_p \in \mathbb{R}^{C\times 2d_p}` and type
identifiers :math:`\mathbf{E}^V, \mathbf{E}^E \in \mathbb{R}^C`:

.. math::
    \text{node } v:&\quad \mathbf{X}_v + \mathbf{W}_p[\mathbf{P}_v \,\Vert\, \mathbf{P}_v]
        + \mathbf{E}^V \\
    \text{edge } (u, v):&\quad \mathbf{X}_{uv} + \mathbf{W}_p[\mathbf{P}_u \,\Vert\,
        \mathbf{P}_v] + \mathbf{E}^E

plus one learned graph token per graph (no identifier, no type).  Each graph's tokens are
``[graph token, its node tokens (node order), its edge tokens (edge_index column order)]`` and
the graphs follow each other, so the token ``batch`` is sorted.

Node identifiers: :class:`LapNodeIdentifier` (Laplacian eigenvectors from
:class:`~gtpe.transforms.AddLapPE`, random sign flips in training) or
:class:`ORFNodeIdentifier` (orthonormal random features, :func:`orthonormal_random_features`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import Embedding, Linear, Parameter

from gtpe.nn.ops import check_positive_int

__all__ = [
    "GraphTokenizer",
    "LapNodeIdentifier",
    "ORFNodeIdentifier",
    "TokenLayout",
    "orthonormal_random_features",
    "token_layout",
]


# -- node identifiers ------------------------------------------------------------------------
def orthonormal_random_features(
    sizes: Tensor | list[int],
    dim: int,
    generator: torch.Generator | None = None,
    *,
    seed: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""TokenGT's orthonormal random node identifiers: for a graph with :math:`n` nodes, the
    first ``dim`` columns of a random orthogonal matrix :math:`\mathbf{Q} \in \mathbb{R}^{n
    \times n}` (QR of a standard Gaussian matrix, columns sign-corrected by
    :math:`\mathrm{sign}(R_{jj})`, so :math:`\mathbf{Q}` is Haar distributed); ``dim - n``
    zero columns are appended when :math:`n < d`.  So the rows are orthonormal
    (:math:`\mathbf{P}\mathbf{P}^\top = \mathbf{I}_n`) when :math:`n \le d` and the columns are
    (:math:`\mathbf{P}^\top\mathbf{P} = \mathbf{I}_d`) when :math:`n > d`.

    Args:
        sizes: number of nodes of each graph (the nodes of graph ``g`` are rows
            ``sum(sizes[:g]) ..`` of the output).
        dim: :math:`d`, the number of columns.
        generator: random source of the draws (default: torch's global generator of
            ``device``); graphs of one size are drawn and factorised in one batched QR.
        seed: deterministic mode instead: every graph with :math:`n` nodes gets the same matrix,
            drawn on the CPU from ``torch.Generator().manual_seed(seed + n)`` (so a graph's
            identifiers depend on its size only, not on the other graphs of the batch).
        dtype, device: of the output.

    Returns ``[sum(sizes), dim]``.
    """
    dim = check_positive_int("orthonormal_random_features", "dim", dim)
    sizes_list = [int(n) for n in (sizes.tolist() if isinstance(sizes, Tensor) else sizes)]
    if any(n < 0 for n in sizes_list):
        raise ValueError(f"orthonormal_random_features: sizes must be >= 0, got {sizes_list}")
    if device is None:
        device = sizes.device if isinstance(sizes, Tensor) else torch.device("cpu")
    work = torch.float64 if dtype == torch.float64 or seed is not None else torch.float32
    total = sum(sizes_list)
    out = torch.zeros(total, dim, dtype=dtype, device=device)
    starts: list[int] = []
    acc = 0
    for n in sizes_list:
        starts.append(acc)
        acc += n
    by_size: dict[int, list[int]] = {}
    for g, n in enumerate(sizes_list):
        if n > 0:
            by_size.setdefault(n, []).append(g)
    for n in sorted(by_size):
        ids = by_size[n]
        if seed is not None:
            gen = torch.Generator().manual_seed(int(seed) + n)
            a = torch.randn(1, n, n, generator=gen, dtype=work)
        elif generator is not None:
            a = torch.randn(len(ids), n, n, generator=generator, dtype=work,
                            device=generator.device)
        else:
            a = torch.randn(len(ids), n, n, dtype=work, device=device)
        q, r = torch.linalg.qr(a)
        sign = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(q.dtype)
        m = min(n, dim)
        q = (q * sign.unsqueeze(-2))[..., :m].to(device=device, dtype=dtype)  # [B|1, n, m]
        q = q.expand(len(ids), n, m)
        first = torch.tensor([starts[g] for g in ids], device=device)
        rows = (first.unsqueeze(1) + torch.arange(n, device=device)).reshape(-1)
        out[rows, :m] = q.reshape(-1, m)
    return out


class LapNodeIdentifier(torch.nn.Module):
    r"""Laplacian eigenvectors as TokenGT node identifiers: :math:`\mathbf{P} =`
    ``lap_pe [N, k]`` (:class:`~gtpe.transforms.AddLapPE`; graphs with :math:`N \le k` are
    zero padded).  In training mode each eigenvector of each graph is multiplied by an
    independent random sign (TokenGT's ``lap_node_id_sign_flip``: eigenvectors are defined up
    to sign); in eval mode :math:`\mathbf{P}` is ``lap_pe`` as given.  No parameters."""

    def __init__(self, k: int, sign_flip: bool = True) -> None:
        super().__init__()
        self.k = check_positive_int("LapNodeIdentifier", "k", k)
        self.sign_flip = bool(sign_flip)

    @property
    def dim(self) -> int:
        """:math:`d_p`, the identifier size."""
        return self.k

    def reset_parameters(self) -> None:
        pass

    def forward(self, lap_pe: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        """``lap_pe [N, k]``, ``batch [N]`` -> ``P [N, k]``."""
        if lap_pe.dim() != 2 or lap_pe.size(1) != self.k:
            raise ValueError(
                f"LapNodeIdentifier: expected lap_pe of shape [N, {self.k}], got "
                f"{list(lap_pe.shape)}; compute it with gtpe.transforms.AddLapPE(k={self.k})"
            )
        if self.training and self.sign_flip:
            sign = torch.randint(0, 2, (num_graphs, self.k), device=lap_pe.device) * 2 - 1
            lap_pe = lap_pe * sign.to(lap_pe.dtype).index_select(0, batch)
        return lap_pe

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(k={self.k}, sign_flip={self.sign_flip})"


class ORFNodeIdentifier(torch.nn.Module):
    r"""Orthonormal random features as TokenGT node identifiers
    (:func:`orthonormal_random_features`): a fresh draw for every graph at every training
    forward; in eval mode deterministic (``seed``: every graph of :math:`n` nodes gets the
    matrix of ``torch.Generator().manual_seed(seed + n)``, whatever the batch).  No
    parameters."""

    def __init__(self, dim: int, seed: int = 0) -> None:
        super().__init__()
        self.dim = check_positive_int("ORFNodeIdentifier", "dim", dim)
        self.seed = int(seed)

    def reset_parameters(self) -> None:
        pass

    def forward(self, batch: Tensor, num_graphs: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """``batch [N]`` (sorted graph ids) -> ``P [N, dim]``."""
        if batch.numel() > 1 and bool((batch[1:] < batch[:-1]).any()):
            raise ValueError("ORFNodeIdentifier: batch must be sorted (PyG's Batch is)")
        sizes = torch.bincount(batch, minlength=num_graphs)
        seed = None if self.training else self.seed
        return orthonormal_random_features(sizes, self.dim, seed=seed, dtype=dtype,
                                           device=batch.device)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(dim={self.dim}, seed={self.seed})"


# -- token layout and tokenizer --------------------------------------------------------------
class TokenLayout(NamedTuple):
    """Where each graph's tokens sit: ``graph_pos [G]``, ``node_pos [N]``, ``edge_pos [E]``
    (token rows), ``batch [T]`` (sorted graph id of each token) and ``num_tokens`` T."""

    graph_pos: Tensor
    node_pos: Tensor
    edge_pos: Tensor
    batch: Tensor
    num_tokens: int


def _rank_within(group: Tensor, counts: Tensor) -> Tensor:
    """Position of each element among the elements of its group, in their given order."""
    order = torch.sort(group, stable=True).indices
    first = counts.cumsum(0) - counts
    rank = torch.empty_like(group)
    rank[order] = torch.arange(group.numel(), device=group.device) - first.index_select(
        0, group.index_select(0, order)
    )
    return rank


def token_layout(batch: Tensor, edge_index: Tensor, num_graphs: int) -> TokenLayout:
    """Token rows of graph tokens, nodes and edges: graph ``g`` occupies ``1 + n_g + m_g``
    consecutive rows ``[graph token, nodes, edges]``, graphs in order; nodes and edges keep
    their order within their graph.  Edges must join nodes of one graph."""
    dev = batch.device
    G = int(num_graphs)
    n = torch.bincount(batch, minlength=G)
    if n.numel() > G:
        raise ValueError(f"token_layout: batch has graph ids >= num_graphs ({G})")
    src, dst = edge_index
    eb = batch.index_select(0, src)
    if edge_index.size(1) > 0 and bool((batch.index_select(0, dst) != eb).any()):
        raise ValueError("token_layout: edge_index joins nodes of different graphs")
    m = torch.bincount(eb, minlength=G)
    per = 1 + n + m
    start = per.cumsum(0) - per  # row of each graph token
    node_pos = start.index_select(0, batch) + 1 + _rank_within(batch, n)
    edge_pos = (start + 1 + n).index_select(0, eb) + _rank_within(eb, m)
    token_batch = torch.repeat_interleave(torch.arange(G, device=dev), per)
    return TokenLayout(start, node_pos, edge_pos, token_batch, int(token_batch.numel()))


class GraphTokenizer(torch.nn.Module):
    r"""TokenGT's tokens (module docstring): node and edge features plus the projected
    identifiers :math:`\mathbf{W}_p[\mathbf{P}_u \Vert \mathbf{P}_v]` (``id_proj``, no bias)
    and the type identifiers :math:`\mathbf{E}^V` / :math:`\mathbf{E}^E` (rows 0 / 1 of
    ``type_emb``), a learned ``graph_token`` first in each graph.

    Args:
        channels (int): token size :math:`C`.
        id_dim (int): :math:`d_p`, the node identifier size.
        edge_features (bool): edge tokens get encoded edge features ``edge_attr [E, C]``;
            ``False``: one learned vector ``edge_feature [C]`` instead.
    """

    def __init__(self, channels: int, id_dim: int, edge_features: bool = True) -> None:
        super().__init__()
        self.channels = check_positive_int("GraphTokenizer", "channels", channels)
        self.id_dim = check_positive_int("GraphTokenizer", "id_dim", id_dim)
        self.id_proj = Linear(2 * id_dim, channels, bias=False)
        self.type_emb = Embedding(2, channels)
        self.graph_token = Parameter(torch.empty(channels))
        self.edge_feature = None if edge_features else Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.id_proj.reset_parameters()
        torch.nn.init.normal_(self.type_emb.weight, std=0.02)  # as TokenGT's embeddings
        torch.nn.init.normal_(self.graph_token, std=0.02)
        if self.edge_feature is not None:
            torch.nn.init.normal_(self.edge_feature, std=0.02)

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        batch: Tensor,
        node_id: Tensor,
        edge_attr: Tensor | None = None,
        num_graphs: int | None = None,
    ) -> tuple[Tensor, TokenLayout]:
        """``x [N, C]`` (encoded node features), ``edge_index [2, E]``, ``batch [N]``,
        ``node_id [N, d_p]``, ``edge_attr [E, C]`` -> tokens ``[T, C]`` and their
        :class:`TokenLayout` (``T = G + N + E``)."""
        N, E, C = x.size(0), edge_index.size(1), self.channels
        if x.dim() != 2 or x.size(1) != C:
            raise ValueError(f"GraphTokenizer: expected x of shape [N, {C}], got {list(x.shape)}")
        if node_id.shape != (N, self.id_dim):
            raise ValueError(
                f"GraphTokenizer: expected node_id of shape [{N}, {self.id_dim}], got "
                f"{list(node_id.shape)}"
            )
        if (edge_attr is None) != (self.edge_feature is not None):
            raise ValueError(
                "GraphTokenizer: built with edge_features="
                f"{self.edge_feature is None} but edge_attr is "
                f"{'missing' if edge_attr is None else 'given'}"
            )
        if num_graphs is None:
            num_graphs = int(batch.max()) + 1 if N > 0 else 0
        layout = token_layout(batch, edge_index, num_graphs)
        P = node_id.to(x.dtype)
        src, dst = edge_index
        nodes = x + self.id_proj(torch.cat([P, P], dim=-1)) + self.type_emb.weight[0]
        if edge_attr is None:
            edge_attr = self.edge_feature.expand(E, C)  # type: ignore[union-attr]
        ids = torch.cat([P.index_select(0, src), P.index_select(0, dst)], dim=-1)
        edges = edge_attr + self.id_proj(ids) + self.type_emb.weight[1]
        graphs = self.graph_token.to(x.dtype).expand(num_graphs, C)
        pos = torch.cat([layout.graph_pos, layout.node_pos, layout.edge_pos])
        order = torch.empty_like(pos)
        order[pos] = torch.arange(pos.numel(), device=pos.device)
        tokens = torch.cat([graphs, nodes, edges]).index_select(0, order)
        return tokens, layout

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.channels}, id_dim={self.id_dim}, "
            f"edge_features={self.edge_feature is None})"
        )
