"""Random-walk structural encoding (RWSE) encoder."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["RWSEEncoder"]


class RWSEEncoder(torch.nn.Module):
    r"""Encoder of the random-walk structural encoding of `"Graph Neural Networks with
    Learnable Structural and Positional Representations" <https://arxiv.org/abs/2110.07875>`_
    (Dwivedi et al., 2022), as used by GraphGPS (Rampášek et al., 2022):

    .. math::
        \mathbf{p}_i = \mathbf{W}\,\mathrm{BN}\big([\mathbf{P}_{ii}, (\mathbf{P}^2)_{ii},
        \ldots, (\mathbf{P}^K)_{ii}]\big) + \mathbf{b}, \qquad \mathbf{P} = \mathbf{D}^{-1}\mathbf{A}

    Input ``data.rwse`` ``[N, walk_length]`` (from :class:`gtpe.transforms.AddRWSE`); output
    ``[N, dim]``.  ``batch_norm`` applies ``BatchNorm1d`` to the raw input (GraphGPS'
    ``raw_norm_type='BatchNorm'``).
    """

    def __init__(self, walk_length: int, dim: int, batch_norm: bool = True):
        super().__init__()
        if walk_length < 1 or dim < 1:
            raise ValueError(
                f"RWSEEncoder: walk_length ({walk_length}) and dim ({dim}) must be positive"
            )
        self.walk_length = walk_length
        self.dim = dim
        self.norm = torch.nn.BatchNorm1d(walk_length) if batch_norm else None
        self.lin = torch.nn.Linear(walk_length, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.norm is not None:
            self.norm.reset_parameters()
        self.lin.reset_parameters()

    def forward(self, rwse: Tensor) -> Tensor:
        if rwse.dim() != 2 or rwse.size(1) != self.walk_length:
            raise ValueError(
                f"RWSEEncoder: expected rwse of shape [N, {self.walk_length}], got "
                f"{list(rwse.shape)} (AddRWSE(walk_length) must match the encoder)"
            )
        if self.norm is not None:
            rwse = self.norm(rwse)
        return self.lin(rwse)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(walk_length={self.walk_length}, dim={self.dim}, "
            f"batch_norm={self.norm is not None})"
        )
