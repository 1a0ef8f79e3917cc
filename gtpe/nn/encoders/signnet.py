r"""SignNet: a sign-invariant encoder of Laplacian eigenvectors (Lim et al., ICLR 2023)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Linear, ModuleList, ReLU, Sequential

from gtpe.nn.encoders.lap import padding_mask
from gtpe.nn.ops import (
    check_index_range,
    check_index_shape,
    check_positive_int,
    checks_enabled,
    scatter_sum,
)

__all__ = ["SignNetEncoder"]


class SignNetEncoder(torch.nn.Module):
    r"""SignNet (Lim et al., ICLR 2023, `"Sign and Basis Invariant Networks for Spectral Graph
    Representation Learning" <https://arxiv.org/abs/2202.13013>`_) over the ``k`` Laplacian
    eigenvectors :math:`\mathbf{v}_1,\ldots,\mathbf{v}_k` of
    :class:`gtpe.transforms.AddLapPE`:

    .. math::
        \mathbf{p} = \rho\Big(\big[\,\phi(\mathbf{v}_j) + \phi(-\mathbf{v}_j)\,\big]_{j=1..k}
        \Big) \in \mathbb{R}^{N \times \mathrm{dim}}

    :math:`\phi` is a GIN over the graph (Xu et al., 2019) whose node input is one eigenvector
    (with ``eigval=True`` also its eigenvalue :math:`\lambda_j`, which is not negated):
    :math:`\mathbf{H}^{(0)} = [\pm\mathbf{v}_j \,\Vert\, \lambda_j\mathbf{1}]`,
    :math:`\mathbf{H}^{(\ell+1)} = \mathrm{MLP}_\ell\big((\mathbf{I} + \mathbf{A})
    \mathbf{H}^{(\ell)}\big)` for ``layers`` layers (``MLP = Linear-ReLU-Linear``, width
    ``hidden``, ReLU between layers, ``phi_dim`` outputs), with
    :math:`\mathbf{A}_{ij}` the number of edges ``j -> i`` in ``edge_index``.
    :math:`\rho` is an MLP (``rho_layers`` layers, width ``hidden``) over the concatenation of the
    ``k`` per-node outputs (``[N, k * phi_dim]``).  Flipping the sign of any eigenvectors gives
    exactly the same output, so no random sign flips are needed in training; the output is
    permutation equivariant and each graph of a batch is encoded from its own nodes and edges.

    :math:`\phi` runs on all ``k`` eigenvectors and on both signs at once (``[N, 2k, hidden]``
    tensors, one edge scatter per layer).  Padded columns (graphs with ``N <= k``: all-zero or
    NaN on every node of the graph, see :func:`~gtpe.nn.encoders.lap.padding_mask`) are set to
    zero after :math:`\phi`, so they contribute nothing to :math:`\rho`'s input and whatever
    their eigenvalue slots hold is ignored.

    Args:
        k: number of eigenvectors (``AddLapPE(k)``).
        dim: output size.
        hidden: width of the GIN and of :math:`\rho` (default ``2 * dim``).
        layers: number of GIN layers of :math:`\phi`.
        phi_dim: output size of :math:`\phi` per eigenvector.
        rho_layers: number of layers of :math:`\rho` (1: linear).
        eigval: feed :math:`\lambda_j` to :math:`\phi` with :math:`\mathbf{v}_j`.
    """

    def __init__(
        self,
        k: int,
        dim: int,
        hidden: int | None = None,
        layers: int = 2,
        phi_dim: int = 4,
        rho_layers: int = 2,
        eigval: bool = True,
    ):
        super().__init__()
        owner = "SignNetEncoder"
        self.k = check_positive_int(owner, "k", k)
        self.dim = check_positive_int(owner, "dim", dim)
        self.hidden = check_positive_int(owner, "hidden", 2 * dim if hidden is None else hidden)
        self.layers = check_positive_int(owner, "layers", layers)
        self.phi_dim = check_positive_int(owner, "phi_dim", phi_dim)
        self.rho_layers = check_positive_int(owner, "rho_layers", rho_layers)
        self.eigval = bool(eigval)
        h = self.hidden
        dims = [2 if self.eigval else 1] + [h] * (self.layers - 1) + [self.phi_dim]
        self.phi = ModuleList(
            [Sequential(Linear(a, h), ReLU(), Linear(h, b)) for a, b in zip(dims[:-1], dims[1:])]
        )
        rho: list[torch.nn.Module] = []
        widths = [self.k * self.phi_dim] + [h] * (self.rho_layers - 1) + [self.dim]
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            rho += [Linear(a, b)] + ([ReLU()] if i < self.rho_layers - 1 else [])
        self.rho = Sequential(*rho)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, Linear):
                m.reset_parameters()

    def forward(
        self,
        lap_pe: Tensor,
        lap_eigval: Tensor,
        edge_index: Tensor,
        batch: Tensor | None = None,
        num_graphs: int | None = None,
    ) -> Tensor:
        """``lap_pe [N, k]``, ``lap_eigval [N, k]``, ``edge_index [2, E]`` (the graph the
        eigenvectors belong to), ``batch [N]`` (optional) -> ``[N, dim]``."""
        if lap_pe.dim() != 2 or lap_pe.size(1) != self.k or lap_eigval.shape != lap_pe.shape:
            raise ValueError(
                f"SignNetEncoder: expected lap_pe and lap_eigval of shape [N, {self.k}], "
                f"got {list(lap_pe.shape)} and {list(lap_eigval.shape)} "
                f"(AddLapPE(k) must match the encoder)"
            )
        N, k = lap_pe.shape
        check_index_shape("SignNetEncoder", "edge_index", edge_index)
        if checks_enabled():
            check_index_range("SignNetEncoder", [("edge_index", edge_index, N, "N")])
        pad = padding_mask(lap_pe, batch, num_graphs)  # [N, k]
        vec = torch.nan_to_num(lap_pe, nan=0.0)
        x = torch.stack([vec, -vec], dim=1).unsqueeze(-1)  # [N, 2, k, 1]: v and -v
        if self.eigval:
            val = torch.nan_to_num(lap_eigval, nan=0.0).masked_fill(pad, 0.0)
            x = torch.cat([x, val.view(N, 1, k, 1).expand(N, 2, k, 1)], dim=-1)
        h = x.reshape(N, 2 * k, x.size(-1))  # [N, 2k, in]: all columns and both signs
        src, dst = edge_index[0], edge_index[1]
        for i, mlp in enumerate(self.phi):
            h = mlp(h + scatter_sum(h.index_select(0, src), dst, N))  # GIN: (I + A) H
            if i < self.layers - 1:
                h = torch.relu(h)
        h = h.view(N, 2, k, self.phi_dim).sum(dim=1)  # phi(v_j) + phi(-v_j): [N, k, phi_dim]
        h = h.masked_fill(pad.unsqueeze(-1), 0.0)
        return self.rho(h.reshape(N, k * self.phi_dim))

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(k={self.k}, dim={self.dim}, hidden={self.hidden}, "
            f"layers={self.layers}, phi_dim={self.phi_dim}, rho_layers={self.rho_layers}, "
            f"eigval={self.eigval})"
        )
