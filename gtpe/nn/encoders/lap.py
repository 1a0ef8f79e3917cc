"""Laplacian eigenvector positional encoding (LapPE) encoder."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Linear, ReLU, Sequential

from gtpe.nn.ops import scatter_max

__all__ = ["LAP_ENCODERS", "EigenSetEncoder", "LapPEEncoder", "padding_mask"]

#: the ``encoder`` choices of :class:`LapPEEncoder` (and ``LapPEConfig.encoder``)
LAP_ENCODERS = ("deepset", "transformer", "signnet")


def padding_mask(vec: Tensor, batch: Tensor | None = None, num_graphs: int | None = None) -> Tensor:
    r"""``[N, k]`` bool mask of padded eigenvector columns.

    ``vec`` is ``[N, k]`` or ``[N, k, d]`` (e.g. real/imag).  A column of a graph is padding iff
    it is zero (or NaN, GraphGPS' convention) on every node of that graph: a true eigenvector
    has unit norm, so it can never be all zero.
    """
    a = torch.nan_to_num(vec, nan=0.0).abs()
    if a.dim() == 3:
        a = a.amax(dim=-1)
    if a.size(0) == 0:  # no nodes: nothing to reduce
        return torch.zeros(a.shape, dtype=torch.bool, device=a.device)
    if batch is None:
        return (a.amax(dim=0, keepdim=True) == 0).expand_as(a)
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if batch.numel() > 0 else 0
    return scatter_max(a, batch, num_graphs).index_select(0, batch) == 0  # a >= 0


class EigenSetEncoder(torch.nn.Module):
    r"""Permutation-invariant encoder of a node's set of ``k`` eigen-tokens
    :math:`\{\mathbf{t}_{i,1},\ldots,\mathbf{t}_{i,k}\}` (token = eigenvector entry(ies) and
    eigenvalue), as in GraphGPS' ``LapPENodeEncoder`` (Rampášek et al., 2022; Kreuzer et al.,
    2021, `"Rethinking Graph Transformers with Spectral Attention"
    <https://arxiv.org/abs/2106.03893>`_):

    * ``'deepset'``: :math:`\mathbf{p}_i = \rho\big(\sum_{j\,\text{not padded}}
      \phi(\mathbf{t}_{i,j})\big)` with MLPs :math:`\phi` (``layers`` layers, width ``hidden``)
      and :math:`\rho` (linear).
    * ``'transformer'``: :math:`\mathbf{p}_i = \rho\big(\sum_j \mathrm{TF}(\mathbf{W}
      \mathbf{t}_{i,\cdot})_j\big)`, a ``layers``-layer Transformer encoder over the ``k`` tokens
      (padded tokens are masked as keys and dropped from the sum).

    With ``sign_invariant=True`` the token map is symmetrised, :math:`\phi(\mathbf{t}) +
    \phi(\mathbf{t}')` where :math:`\mathbf{t}'` has the eigenvector part negated (SignNet,
    Lim et al., 2022), before tokens are mixed, so the output does not depend on the sign of
    any eigenvector.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        encoder: str = "deepset",
        hidden: int | None = None,
        layers: int = 2,
        heads: int = 4,
        sign_invariant: bool = False,
    ):
        super().__init__()
        if encoder not in ("deepset", "transformer"):
            raise ValueError(f"encoder must be 'deepset' or 'transformer', got {encoder!r}")
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        hidden = hidden if hidden is not None else 2 * dim
        self.in_dim, self.dim, self.hidden = in_dim, dim, hidden
        self.encoder, self.layers, self.sign_invariant = encoder, layers, sign_invariant
        if encoder == "deepset":
            mods = [Linear(in_dim, hidden), ReLU()]
            for _ in range(layers - 1):
                mods += [Linear(hidden, hidden), ReLU()]
            self.phi = Sequential(*mods)
            self.transformer = None
        else:
            if hidden % heads != 0:
                raise ValueError(
                    f"transformer eigen-encoder: hidden size {hidden} is not "
                    f"divisible by heads={heads}"
                )
            # GraphGPS embeds each token linearly; the sign-invariant variant needs a
            # non-linear token map (a linear one would cancel in phi(t) + phi(t')).
            self.phi = (
                Sequential(Linear(in_dim, hidden), ReLU(), Linear(hidden, hidden))
                if sign_invariant
                else Linear(in_dim, hidden)
            )
            layer = torch.nn.TransformerEncoderLayer(
                hidden, heads, dim_feedforward=2 * hidden, dropout=0.0, batch_first=True
            )
            self.transformer = torch.nn.TransformerEncoder(
                layer, layers, enable_nested_tensor=False
            )
        self.rho = Linear(hidden, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if m is not self and isinstance(m, (Linear, torch.nn.LayerNorm)):
                m.reset_parameters()
        if self.transformer is not None:
            for layer in self.transformer.layers:
                layer.self_attn._reset_parameters()

    def forward(self, vec: Tensor, val: Tensor, pad: Tensor) -> Tensor:
        """vec ``[N, k, d]`` eigenvector part, val ``[N, k]`` (or ``[N, k, e]``: the eigenvalue
        and further per-token features that are not negated by ``sign_invariant``, e.g. a
        block id), pad ``[N, k]`` -> ``[N, dim]``; ``in_dim`` is ``d + 1`` (or ``d + e``)."""
        rest = val.unsqueeze(-1) if val.dim() == 2 else val
        tok = torch.cat([vec, rest], dim=-1)  # [N, k, d+1]
        h = self.phi(tok)  # [N, k, hidden]
        if self.sign_invariant:  # per token, before any mixing across tokens
            h = h + self.phi(torch.cat([-vec, rest], dim=-1))
        if self.transformer is not None:
            # A node whose k columns are all padding (tiny graph): unmask so attention is
            # defined; its tokens are dropped from the sum below anyway.
            key_pad = pad & ~pad.all(dim=1, keepdim=True)
            h = self.transformer(h, src_key_padding_mask=key_pad)
        h = h.masked_fill(pad.unsqueeze(-1), 0.0).sum(dim=1)
        return self.rho(h)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(in_dim={self.in_dim}, dim={self.dim}, "
            f"encoder={self.encoder!r}, hidden={self.hidden}, layers={self.layers}, "
            f"sign_invariant={self.sign_invariant})"
        )


def _random_signs(k: int, like: Tensor) -> Tensor:
    return torch.randint(0, 2, (k,), device=like.device).to(like.dtype) * 2 - 1


class LapPEEncoder(torch.nn.Module):
    r"""Encoder of Laplacian eigenvector PEs (``data.lap_pe [N,k]``, ``data.lap_eigval [N,k]``
    from :class:`gtpe.transforms.AddLapPE`) into ``[N, dim]``, as GraphGPS' ``LapPE``
    (Rampášek et al., 2022; Dwivedi et al., 2020; Kreuzer et al., 2021).

    With ``'deepset'`` / ``'transformer'`` each node has ``k`` tokens
    :math:`(\mathbf{u}_j[i], \lambda_j)` encoded by a DeepSet or a Transformer
    (:class:`EigenSetEncoder`).  Padded columns (graphs with ``N <= k``, all-zero columns) are
    masked.  In training, the sign of every eigenvector column is flipped at random once per
    mini-batch (:math:`\mathbf{u}_j \mapsto s_j\mathbf{u}_j`, :math:`s_j\in\{\pm1\}`); in
    eval no flip is made.  ``sign_invariant=True`` makes the token encoder itself sign invariant.

    With ``'signnet'`` the encoder is :class:`~gtpe.nn.encoders.signnet.SignNetEncoder` (Lim et
    al., 2023): a GIN :math:`\phi` over the graph applied to :math:`\pm\mathbf{u}_j`, summed,
    and an MLP :math:`\rho` over the ``k`` results.  It is exactly sign invariant, so no random
    flips are made (``sign_flip`` is ignored and no random numbers are drawn), and ``forward``
    needs the graph: ``edge_index=`` (the undirected graph the eigenvectors were computed on).

    Args:
        k: number of eigenvectors (``AddLapPE(k)``).
        dim: output size.
        encoder: ``'deepset'``, ``'transformer'`` or ``'signnet'``.
        hidden, layers, heads: token network sizes (``hidden`` defaults to ``2 * dim``); for
            ``'signnet'`` the width and number of GIN layers of :math:`\phi` (``heads`` unused).
        sign_flip: random sign flips in training (not with ``'signnet'``).
        sign_invariant: SignNet-style symmetrisation of the token map (``'signnet'`` is sign
            invariant anyway).
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
            raise ValueError(f"LapPEEncoder: k ({k}) and dim ({dim}) must be positive")
        if encoder not in LAP_ENCODERS:
            raise ValueError(
                f"LapPEEncoder: encoder must be 'deepset', 'transformer' or 'signnet', "
                f"got {encoder!r}"
            )
        self.k, self.dim, self.encoder = k, dim, encoder
        self.net: torch.nn.Module
        if encoder == "signnet":
            # imported here: signnet.py imports padding_mask from this module
            from gtpe.nn.encoders.signnet import SignNetEncoder

            self.sign_flip, self.sign_invariant = False, True
            self.net = SignNetEncoder(k, dim, hidden=hidden, layers=layers)
        else:
            self.sign_flip, self.sign_invariant = sign_flip, sign_invariant
            self.net = EigenSetEncoder(2, dim, encoder, hidden, layers, heads, sign_invariant)

    def reset_parameters(self) -> None:
        self.net.reset_parameters()

    def forward(
        self,
        lap_pe: Tensor,
        lap_eigval: Tensor,
        batch: Tensor | None = None,
        num_graphs: int | None = None,
        edge_index: Tensor | None = None,
    ) -> Tensor:
        """``lap_pe [N, k]``, ``lap_eigval [N, k]``, ``batch [N]`` (optional), ``edge_index
        [2, E]`` (needed by ``'signnet'``, ignored by the others) -> ``[N, dim]``."""
        if self.encoder == "signnet":
            if edge_index is None:
                raise ValueError(
                    "LapPEEncoder(encoder='signnet') needs the graph: "
                    "forward(..., edge_index=data.edge_index)"
                )
            return self.net(lap_pe, lap_eigval, edge_index, batch, num_graphs)
        if lap_pe.dim() != 2 or lap_pe.size(1) != self.k or lap_eigval.shape != lap_pe.shape:
            raise ValueError(
                f"LapPEEncoder: expected lap_pe and lap_eigval of shape [N, {self.k}], "
                f"got {list(lap_pe.shape)} and {list(lap_eigval.shape)} "
                f"(AddLapPE(k) must match the encoder)"
            )
        pad = padding_mask(lap_pe, batch, num_graphs)
        vec = torch.nan_to_num(lap_pe, nan=0.0)
        val = torch.nan_to_num(lap_eigval, nan=0.0).masked_fill(pad, 0.0)
        if self.training and self.sign_flip:
            vec = vec * _random_signs(self.k, vec)
        return self.net(vec.unsqueeze(-1), val, pad)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(k={self.k}, dim={self.dim}, "
            f"encoder={self.encoder!r}, sign_flip={self.sign_flip}, "
            f"sign_invariant={self.sign_invariant})"
        )
