"""Magnetic Laplacian eigenvector positional encoding encoder (directed graphs)."""

from __future__ import annotations

import torch
from torch import Tensor

from .lap import EigenSetEncoder, _random_signs, padding_mask

__all__ = ["MagLapPEEncoder"]


class MagLapPEEncoder(torch.nn.Module):
    r"""Encoder of magnetic-Laplacian PEs from `"Transformers Meet Directed Graphs"
    <https://arxiv.org/abs/2302.00049>`_ (Geisler et al., 2023).

    Input ``data.maglap_pe [N,k,2]`` (real, imaginary part of the eigenvectors
    :math:`\mathbf{\Gamma}_j` of :math:`\mathbf{L}^{(q)}`) and ``data.maglap_eigval [N,k]``
    (from :class:`gtpe.transforms.AddMagLapPE`).  Each node has ``k`` tokens
    :math:`(\mathrm{Re}\,\Gamma_j[i], \mathrm{Im}\,\Gamma_j[i], \lambda_j)` which are encoded by
    a DeepSet or a Transformer over the eigenvectors (:class:`~gtpe.nn.encoders.lap.EigenSetEncoder`)
    into ``[N, dim]``; all-zero (padded) columns are masked.  Complex eigenvectors are defined
    up to a phase :math:`e^{i\theta}`; the transform canonicalises it, and in training the
    encoder applies random sign flips (:math:`\theta\in\{0,\pi\}`) per column and mini-batch.
    """

    def __init__(
        self,
        k: int,
        dim: int,
        encoder: str = "deepset",
        hidden: int | None = None,
        layers: int = 2,
        heads: int = 4,
        sign_flip: bool = True,
        sign_invariant: bool = False,
    ):
        super().__init__()
        if k < 1 or dim < 1:
            raise ValueError(f"MagLapPEEncoder: k ({k}) and dim ({dim}) must be positive")
        self.k, self.dim, self.sign_flip = k, dim, sign_flip
        self.net = EigenSetEncoder(3, dim, encoder, hidden, layers, heads, sign_invariant)

    def reset_parameters(self) -> None:
        self.net.reset_parameters()

    def forward(
        self,
        maglap_pe: Tensor,
        maglap_eigval: Tensor,
        batch: Tensor | None = None,
        num_graphs: int | None = None,
    ) -> Tensor:
        if (
            maglap_pe.dim() != 3
            or maglap_pe.shape[1:] != (self.k, 2)
            or maglap_eigval.shape != maglap_pe.shape[:2]
        ):
            raise ValueError(
                f"MagLapPEEncoder: expected maglap_pe [N, {self.k}, 2] and "
                f"maglap_eigval [N, {self.k}], got {list(maglap_pe.shape)} and "
                f"{list(maglap_eigval.shape)} (AddMagLapPE(k) must match)"
            )
        pad = padding_mask(maglap_pe, batch, num_graphs)
        vec = torch.nan_to_num(maglap_pe, nan=0.0)
        val = torch.nan_to_num(maglap_eigval, nan=0.0).masked_fill(pad, 0.0)
        if self.training and self.sign_flip:
            vec = vec * _random_signs(self.k, vec).view(1, -1, 1)
        return self.net(vec, val, pad)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(k={self.k}, dim={self.dim}, "
            f"encoder={self.net.encoder!r}, sign_flip={self.sign_flip})"
        )
