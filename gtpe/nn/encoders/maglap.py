"""Magnetic Laplacian eigenvector positional encoding encoder (directed graphs)."""

from __future__ import annotations

import torch
from torch import Tensor

from .lap import EigenSetEncoder, _random_signs, padding_mask

__all__ = ["MagLapPEEncoder"]

PHASES = ("canonical", "invariant")


class MagLapPEEncoder(torch.nn.Module):
    r"""Encoder of magnetic-Laplacian PEs from `"Transformers Meet Directed Graphs"
    <https://arxiv.org/abs/2302.00049>`_ (Geisler et al., 2023), single- or multi-q
    (`"What are Good Positional Encodings for Directed Graphs?"
    <https://arxiv.org/abs/2407.20912>`_, Huang et al., ICLR 2025).

    Input ``data.maglap_pe [N, k*num_q, 2]`` (real, imaginary part of the eigenvectors
    :math:`\mathbf{\Gamma}_c` of :math:`\mathbf{L}^{(q)}`) and ``data.maglap_eigval
    [N, k*num_q]`` from :class:`gtpe.transforms.AddMagLapPE` (``k`` eigenvectors per
    potential, ``num_q`` potentials; block :math:`b(c) = \lfloor c / k \rfloor` holds the
    columns of the :math:`b`-th q).  Each node :math:`i` has one token
    :math:`\mathbf{t}_{i,c}` per column :math:`c`; the tokens are encoded by a DeepSet or a
    Transformer over the columns (:class:`~gtpe.nn.encoders.lap.EigenSetEncoder`) into
    ``[N, dim]``; padded columns (zero on every node of the graph: graphs with fewer than
    ``k`` nodes) are masked.  With ``num_q > 1`` every token also carries its block index
    as a one-hot vector :math:`\mathbf{e}_{b(c)} \in \{0,1\}^{num\_q}` (appended to the
    token; for the token network this is a learned bias per block in its first layer).
    ``num_q = 1`` appends nothing.

    A complex eigenvector is only defined up to a phase, :math:`\mathbf{\Gamma}_c \mapsto
    e^{i\theta_c}\mathbf{\Gamma}_c`.  Two ways to deal with it (``phase``):

    * ``'canonical'`` (default): :math:`\mathbf{t}_{i,c} = (\mathrm{Re}\,\Gamma_c[i],
      \mathrm{Im}\,\Gamma_c[i], \lambda_c)`; the transform canonicalises the phase, and in
      training the encoder applies random sign flips (:math:`\theta_c \in \{0,\pi\}`) per
      column and mini-batch (``sign_flip``); ``sign_invariant=True`` symmetrises the token
      map over :math:`\pm\mathbf{\Gamma}_c` (SignNet).  With ``num_q=1`` this is the
      original encoder, unchanged.
    * ``'invariant'``: tokens built only from phase-invariant quantities, so the output is
      exactly invariant to :math:`\mathbf{\Gamma}_c \mapsto e^{i\theta_c}\mathbf{\Gamma}_c`
      for any angle per column (hence to the sign and to the canonicalisation rule), up to
      float rounding.  With the directed ``edge_index`` (edges :math:`j \to i`),

      .. math::
          \mathbf{t}_{i,c} = \Big(|\Gamma_c[i]|,\;
          \mathrm{Re}, \mathrm{Im}\ \sum_{j \to i} \Gamma_c[i]\,\overline{\Gamma_c[j]},\;
          \mathrm{Re}, \mathrm{Im}\ \sum_{i \to j} \Gamma_c[i]\,\overline{\Gamma_c[j]},\;
          \lambda_c\Big)

      (in-edges, then out-edges; :math:`e^{i\theta}\,\overline{e^{i\theta}} = 1` makes each
      product invariant).  The sums run over the edges of ``edge_index`` as given (a
      duplicate edge counts twice, a self-loop adds :math:`|\Gamma_c[i]|^2`) and are not
      degree-normalised, so the in- and out-degree stay visible.  No random sign flips are
      made in training (they would change nothing); ``sign_flip`` is ignored and
      ``sign_invariant`` is not allowed.  The phase *difference* along every edge is kept
      (this is where the magnetic Laplacian stores direction), but not the phase relation
      :math:`\Gamma_c[i]\overline{\Gamma_c[j]}` between nodes that are not adjacent, nor
      the relative phase of two columns at one node (which is not invariant); inside a
      repeated eigenvalue the output still depends on the chosen basis (only a phase per
      column is factored out, not a unitary mixing of the eigenspace as BasisNet would).
      Design context: the phase ambiguity of Geisler et al. 2023 (who canonicalise and use
      a SignNet-style encoder), Huang et al. 2025 (multi-q, stable/invariant PEs) and
      SignNet/BasisNet (Lim et al., 2022, "Sign and Basis Invariant Networks for Spectral
      Graph Representation Learning"), here for complex vectors via edge-wise products.

    The output is permutation-equivariant and, in a Batch, each graph's rows depend on that
    graph only.

    Args:
        k: eigenvectors per potential (``AddMagLapPE(k)``).
        dim: output size.
        encoder: ``'deepset'`` or ``'transformer'``.
        hidden, layers, heads: token network sizes (``hidden`` defaults to ``2 * dim``).
        sign_flip: random sign flips in training (``'canonical'`` only).
        sign_invariant: SignNet-style symmetrisation (``'canonical'`` only).
        num_q: number of potentials (``len(q)`` of ``AddMagLapPE(k, q=[...])``).
        phase: ``'canonical'`` or ``'invariant'`` (needs ``edge_index`` in forward).
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
        num_q: int = 1,
        phase: str = "canonical",
    ):
        super().__init__()
        if k < 1 or dim < 1:
            raise ValueError(f"MagLapPEEncoder: k ({k}) and dim ({dim}) must be positive")
        if isinstance(num_q, bool) or not isinstance(num_q, int) or num_q < 1:
            raise ValueError(f"MagLapPEEncoder: num_q must be a positive integer, got {num_q!r}")
        if phase not in PHASES:
            raise ValueError(f"MagLapPEEncoder: phase must be one of {PHASES}, got {phase!r}")
        if phase == "invariant" and sign_invariant:
            raise ValueError(
                "MagLapPEEncoder: sign_invariant=True is for phase='canonical'; "
                "phase='invariant' is already invariant to any phase (hence sign)"
            )
        self.k, self.dim, self.sign_flip = k, dim, sign_flip
        self.num_q, self.phase = num_q, phase
        vec_dim = 2 if phase == "canonical" else 5
        extra = num_q if num_q > 1 else 0  # block one-hot
        self.net = EigenSetEncoder(
            vec_dim + 1 + extra, dim, encoder, hidden, layers, heads, sign_invariant
        )

    def reset_parameters(self) -> None:
        self.net.reset_parameters()

    def forward(
        self,
        maglap_pe: Tensor,
        maglap_eigval: Tensor,
        batch: Tensor | None = None,
        num_graphs: int | None = None,
        edge_index: Tensor | None = None,
    ) -> Tensor:
        """``maglap_pe [N, k*num_q, 2]``, ``maglap_eigval [N, k*num_q]``, ``batch [N]``
        (optional), ``edge_index [2, E]`` (directed; needed by ``phase='invariant'``,
        ignored by ``'canonical'``) -> ``[N, dim]``."""
        K = self.k * self.num_q
        if (
            maglap_pe.dim() != 3
            or maglap_pe.shape[1:] != (K, 2)
            or maglap_eigval.shape != maglap_pe.shape[:2]
        ):
            q = f" x num_q={self.num_q}" if self.num_q > 1 else ""
            raise ValueError(
                f"MagLapPEEncoder: expected maglap_pe [N, {K}, 2] and "
                f"maglap_eigval [N, {K}] (k={self.k}{q}), got {list(maglap_pe.shape)} and "
                f"{list(maglap_eigval.shape)} (AddMagLapPE(k, q) must match)"
            )
        pad = padding_mask(maglap_pe, batch, num_graphs)
        vec = torch.nan_to_num(maglap_pe, nan=0.0)
        val = torch.nan_to_num(maglap_eigval, nan=0.0).masked_fill(pad, 0.0)
        if self.phase == "invariant":
            vec = _phase_invariant_features(vec, _check_edges(edge_index, vec.size(0)))
        elif self.training and self.sign_flip:
            vec = vec * _random_signs(K, vec).view(1, -1, 1)
        if self.num_q > 1:  # [N, K, 1 + num_q]: eigenvalue, block one-hot
            block = torch.eye(self.num_q, dtype=val.dtype, device=val.device)
            block = block.repeat_interleave(self.k, dim=0).expand(val.size(0), K, self.num_q)
            val = torch.cat([val.unsqueeze(-1), block], dim=-1)
        return self.net(vec, val, pad)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(k={self.k}, dim={self.dim}, "
            f"encoder={self.net.encoder!r}, sign_flip={self.sign_flip}, "
            f"num_q={self.num_q}, phase={self.phase!r})"
        )


def _check_edges(edge_index: Tensor | None, num_nodes: int) -> Tensor:
    if edge_index is None:
        raise ValueError(
            "MagLapPEEncoder(phase='invariant') needs the directed edge_index "
            "(forward(..., edge_index=data.edge_index))"
        )
    if (
        not isinstance(edge_index, Tensor)
        or edge_index.dim() != 2
        or edge_index.size(0) != 2
        or edge_index.is_floating_point()
        or edge_index.is_complex()
        or edge_index.dtype == torch.bool
    ):
        shape = list(edge_index.shape) if isinstance(edge_index, Tensor) else type(edge_index)
        raise ValueError(
            f"MagLapPEEncoder: edge_index must be an integer tensor [2, E], got {shape}"
        )
    if edge_index.numel() and (
        int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes
    ):
        raise ValueError(
            f"MagLapPEEncoder: edge_index holds node ids outside [0, {num_nodes})"
        )
    return edge_index.long()


def _phase_invariant_features(vec: Tensor, edge_index: Tensor) -> Tensor:
    """``vec [N, K, 2]`` (re, im) -> ``[N, K, 5]``: ``|z_i|`` and (re, im) of
    ``z_i * conj(sum_{j->i} z_j)`` and of ``z_i * conj(sum_{i->j} z_j)``."""
    src, dst = edge_index[0], edge_index[1]
    into = torch.zeros_like(vec).index_add_(0, dst, vec.index_select(0, src))
    out = torch.zeros_like(vec).index_add_(0, src, vec.index_select(0, dst))
    a, b = vec[..., 0], vec[..., 1]

    def times_conj(w: Tensor) -> tuple[Tensor, Tensor]:  # (a + ib)(c - id)
        c, d = w[..., 0], w[..., 1]
        return a * c + b * d, b * c - a * d

    return torch.stack([torch.hypot(a, b), *times_conj(into), *times_conj(out)], dim=-1)
