r"""Magnetic Laplacian positional encoding (MagLapPE) for directed graphs."""
from __future__ import annotations

import math
from numbers import Real

import torch
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from ._eigen import DEFAULT_SPARSE_THRESHOLD, SOLVERS, LaplacianSpec, spectral_pe
from ._sparse import set_attr


class AddMagLapPE(BaseTransform):
    r"""Adds the magnetic Laplacian positional encoding of Geisler et al. (2023),
    "Transformers Meet Directed Graphs" (ICML).

    With :math:`A_s` the symmetrised adjacency (:math:`(A_{uv} + A_{vu})/2` where both
    directions exist, else :math:`A_{uv} + A_{vu}`), :math:`D_s` its degrees and the phases
    :math:`\Theta^{(q)}_{uv} = 2\pi q (\mathbb{1}[u \to v] - \mathbb{1}[v \to u])`,

    .. math::
        L^{(q)} = I - D_s^{-1/2} \left(A_s \odot \exp(i \Theta^{(q)})\right) D_s^{-1/2}

    is Hermitian with spectrum in :math:`[0, 2]`. The encoding is its k eigenvectors with the
    smallest eigenvalues, **including the first one** (for :math:`q > 0` it carries direction
    information; this follows the paper's setting ``excl_k_eigenvectors=0``):

    * ``data.maglap_pe`` [N, k, 2] float32: (real, imaginary) parts;
    * ``data.maglap_eigval`` [N, k] float32: the eigenvalues, repeated for every node.

    ``q_absolute=False`` (default) uses the relative potential of the reference
    implementation, :math:`q / \max(\min(m, N), 1)` with :math:`m` the number of
    non-reciprocal edges (u->v without v->u); ``q_absolute=True`` uses ``q`` as is. The
    phases use the edge *pattern*; edge weights (``data[edge_weight]``) only enter
    :math:`A_s`. Self-loops and zero-weight edges are ignored, duplicates summed, isolated
    nodes get :math:`L_{ii} = 1`.

    **Phase** (canonicalisation, details in :mod:`gtpe.transforms._eigen`): a simple
    eigenvalue's vector is multiplied by the unit complex number that makes its
    largest-modulus entry (first node among those within a relative 1e-6 of the maximum
    modulus) real and positive. (The reference implementation instead fixes the sign by the
    real part and rotates all vectors at one node chosen from the first eigenvector; the
    per-vector pivot is never ill-defined.) Inside a repeated eigenvalue the basis is the
    pivoted Cholesky factor of the Hermitian eigenspace projector :math:`P` (pivot: largest
    residual :math:`R_{pp}`, lowest node on ties; :math:`v = R e_p / \sqrt{R_{pp}}` has a
    real positive pivot entry), the same rule as :class:`AddLapPE`. The output is a function
    of the graph alone: the same numbers alone, anywhere in a Batch and through the dense or
    sparse solver (to float64 rounding); ``Batch.to_data_list()`` returns each graph's rows.
    With :math:`q = 0` the columns are :class:`AddLapPE` ``('sym')``'s shifted by one: column
    0 is the trivial eigenvector :math:`D^{1/2} \mathbf{1} / \sqrt{\mathrm{vol}}` (for a
    disconnected graph one component's, the first pivot of the zero eigenspace), so
    ``AddMagLapPE(k + 1, q=0).maglap_pe[:, 1:, 0]`` equals ``AddLapPE(k).lap_pe`` (to float32
    rounding), padding included.

    **Padding**: a graph with :math:`N < k` has :math:`N` eigenvectors; column j exists iff
    :math:`j < N`, otherwise ``maglap_pe[:, j]`` and ``maglap_eigval[:, j]`` are 0.

    **Several potentials** (multi-q, Huang et al., ICLR 2025, "What are Good Positional
    Encodings for Directed Graphs?"): with ``q=[q_1, ..., q_Q]`` (a list or tuple of
    :math:`Q \ge 2` distinct values) the output is the single-q encodings concatenated in
    the order given, ``maglap_pe`` [N, k·Q, 2] and ``maglap_eigval`` [N, k·Q]: block
    :math:`b` (columns ``b*k:(b+1)*k``) is exactly (bit for bit) ``AddMagLapPE(k,
    q=q_b)``'s output, padding included. Duplicate values are an error (an identical block
    twice adds no information, only cost and tokens, and is most likely a typo). A
    one-element list is the single-q transform: ``q=[0.25]`` is stored, printed and
    cached as ``q=0.25`` (same output, same :func:`gtpe.precompute` cache entry); a longer
    list is stored as a tuple of floats and printed as a list. :attr:`qs` is always the
    tuple of potentials.

    Args:
        k (int): number of eigenvectors. (default: 8)
        q (float or list of float): potential, :math:`q \ge 0`, or several distinct
            potentials (multi-q). (default: 0.25)
        q_absolute (bool): use ``q`` as is instead of relative to the number of
            non-reciprocal edges. (default: ``False``)
        edge_weight (str, optional): name of the edge-weight attribute. (default:
            ``'edge_weight'``)
        sparse_threshold (int): graphs with more nodes use the sparse solver.
            (default: 2000)
        sparse_solver (str): ``'auto'``, ``'shift_invert'`` or ``'lanczos'``.
            (default: ``'auto'``)
    """

    supports_batch = True  # __call__ accepts a whole Batch (see gtpe.precompute)

    def __init__(self, k: int = 8, q: float | list[float] | tuple[float, ...] = 0.25,
                 q_absolute: bool = False,
                 edge_weight: str | None = 'edge_weight',
                 sparse_threshold: int = DEFAULT_SPARSE_THRESHOLD,
                 sparse_solver: str = 'auto') -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        q = _check_q(q)
        if q_absolute is not True and q_absolute is not False:
            raise ValueError(f"q_absolute must be a bool, got {q_absolute!r}")
        if isinstance(sparse_threshold, bool) or not isinstance(sparse_threshold, int) \
                or sparse_threshold < 1:
            raise ValueError(f"sparse_threshold must be a positive integer, "
                             f"got {sparse_threshold!r}")
        if sparse_solver not in SOLVERS:
            raise ValueError(f"sparse_solver must be one of {SOLVERS}, got {sparse_solver!r}")
        self.k = k
        self.q = q  # float, or a tuple of >= 2 distinct floats (multi-q)
        self.q_absolute = q_absolute
        self.edge_weight = edge_weight
        self.sparse_threshold = sparse_threshold
        self.sparse_solver = sparse_solver

    @property
    def qs(self) -> tuple[float, ...]:
        """The potentials, one per block, in output order (``(q,)`` for a single q)."""
        return self.q if isinstance(self.q, tuple) else (self.q,)

    @property
    def batch_keys(self) -> tuple:
        """The attributes :meth:`forward` reads (:func:`gtpe.precompute` collates only these)."""
        return ('edge_index', self.edge_weight)

    def forward(self, data: Data) -> Data:
        pes, vals_all = [], []
        for q in self.qs:  # one pass over the whole Data/Batch per potential
            spec = LaplacianSpec(normalization='sym', q=q, q_absolute=self.q_absolute)
            vals, vecs = spectral_pe(data, spec, self.k, 0, self.edge_weight,
                                     self.sparse_threshold, self.sparse_solver, 'AddMagLapPE')
            pes.append(torch.view_as_real(vecs).float())  # [N, k, 2]
            vals_all.append(vals.float())                 # [N, k]
        pe = pes[0] if len(pes) == 1 else torch.cat(pes, dim=1)        # [N, k*Q, 2]
        val = vals_all[0] if len(vals_all) == 1 else torch.cat(vals_all, dim=1)  # [N, k*Q]
        # on a Batch the per-graph slices are recorded (Batch.to_data_list)
        set_attr(data, 'maglap_pe', pe)
        set_attr(data, 'maglap_eigval', val)
        return data

    def __repr__(self) -> str:
        q = list(self.q) if isinstance(self.q, tuple) else self.q
        return (f'{self.__class__.__name__}(k={self.k}, q={q}, '
                f'q_absolute={self.q_absolute}, edge_weight={self.edge_weight!r}, '
                f'sparse_threshold={self.sparse_threshold}, '
                f'sparse_solver={self.sparse_solver!r})')


def _check_q(q) -> float | tuple[float, ...]:
    """``q`` as a float (one potential) or a tuple of >= 2 distinct floats; one ValueError
    for anything else (a non-number, bool, NaN/inf or negative value, an empty list,
    duplicates)."""
    def ok(v) -> bool:
        return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) and v >= 0

    if isinstance(q, (list, tuple)):
        if len(q) == 0 or not all(ok(v) for v in q):
            raise ValueError(f"q must be a finite number >= 0 or a non-empty list of them, "
                             f"got {q!r}")
        values = tuple(float(v) for v in q)
        if len(set(values)) != len(values):
            raise ValueError(f"q must not repeat a value (an identical block twice), got {q!r}")
        return values[0] if len(values) == 1 else values
    if not ok(q):
        raise ValueError(f"q must be a finite number >= 0 or a non-empty list of them, "
                         f"got {q!r}")
    return float(q)
