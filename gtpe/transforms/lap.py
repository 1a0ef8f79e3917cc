r"""Laplacian eigenvector positional encoding (LapPE)."""
from __future__ import annotations

from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from ._eigen import DEFAULT_SPARSE_THRESHOLD, SOLVERS, LaplacianSpec, spectral_pe
from ._sparse import set_attr


class AddLapPE(BaseTransform):
    r"""Adds the Laplacian eigenvector positional encoding of Dwivedi et al. (2020),
    "Benchmarking Graph Neural Networks", and Kreuzer et al. (2021), "Rethinking Graph
    Transformers with Spectral Attention" (SAN).

    With :math:`L = U \Lambda U^\top` (eigenvalues ascending) the encoding is the k columns
    :math:`U_{:,1}, \dots, U_{:,k}` right after the first (trivial) eigenvector:

    * ``data.lap_pe`` [N, k] float32: the eigenvectors;
    * ``data.lap_eigval`` [N, k] float32: their eigenvalues, repeated for every node.

    ``normalization='sym'``: :math:`L = I - D^{-1/2} A D^{-1/2}` (isolated nodes have
    :math:`L_{ii} = 1`); ``None``: :math:`L = D - A`. Self-loops and zero-weight edges are
    ignored, duplicate edges summed, directed input symmetrised
    (:math:`(A_{uv} + A_{vu})/2` where both directions exist, else :math:`A_{uv} + A_{vu}`).
    Edge weights are read from ``data[edge_weight]`` when that attribute exists
    (``edge_weight=None`` ignores weights).

    Only the first eigenvector (smallest eigenvalue) is skipped: a disconnected graph keeps
    its other zero eigenvalues. **Padding**: a graph with :math:`N \le k` has only
    :math:`N - 1` such eigenvectors; column j exists iff :math:`j < N - 1`, otherwise both
    ``lap_pe[:, j]`` and ``lap_eigval[:, j]`` are 0 (an encoder masks them with
    ``j < N_graph - 1``; a real eigenvector column is never all-zero).

    **Canonical basis** (the output is a function of the graph alone; details in
    :mod:`gtpe.transforms._eigen`): a simple eigenvalue's vector has its sign fixed so that
    its largest-modulus entry (first node among those within a relative 1e-6 of the maximum)
    is positive. Inside a repeated eigenvalue (eigenvalues closer than
    :math:`10^{-6}|\lambda| + 10^{-12}\max_i L_{ii}`) the basis is the pivoted Cholesky factor
    of the eigenspace's projector :math:`P`: repeatedly the node p with the largest residual
    :math:`R_{pp}` (ties within 1e-6: lowest index) gives :math:`v = R e_p / \sqrt{R_{pp}}`, then
    :math:`R \leftarrow R - v v^\top`. The whole cluster is canonicalised before columns are
    kept: a cluster cut by the k-th column gives its first pivots, and the skipped first
    column is the first pivot of its cluster. So a graph gets the same numbers alone, in any
    position of a :class:`~torch_geometric.data.Batch`, and through the dense or sparse
    solver (to float64 rounding, 1e-10 before the float32 cast), and permuting its nodes
    permutes the rows unless a pivot is tied (cycles and other symmetric graphs: ties are
    broken by node index; the eigenspaces are permuted regardless). Repeated calls are
    bit-identical. On a Batch, ``Batch.to_data_list()`` returns each graph's own rows.

    A Batch is computed at once: graphs with at most ``sparse_threshold`` nodes are bucketed
    by size and solved with batched dense ``torch.linalg.eigh`` (float64, on the data's
    device); larger graphs use a sparse solver (``sparse_solver``: ``'auto'``,
    ``'shift_invert'`` or ``'lanczos'``, see :func:`gtpe.transforms._eigen.sparse_smallest`).

    Args:
        k (int): number of eigenvectors. (default: 8)
        normalization (str, optional): ``'sym'`` or ``None``. (default: ``'sym'``)
        edge_weight (str, optional): name of the edge-weight attribute. (default:
            ``'edge_weight'``)
        sparse_threshold (int): graphs with more nodes use the sparse solver.
            (default: 2000)
        sparse_solver (str): ``'auto'``, ``'shift_invert'`` or ``'lanczos'``.
            (default: ``'auto'``)
    """

    supports_batch = True  # __call__ accepts a whole Batch (see gtpe.precompute)

    def __init__(self, k: int = 8, normalization: str | None = 'sym',
                 edge_weight: str | None = 'edge_weight',
                 sparse_threshold: int = DEFAULT_SPARSE_THRESHOLD,
                 sparse_solver: str = 'auto') -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if normalization not in ('sym', None):
            raise ValueError(f"normalization must be 'sym' or None, got {normalization!r}")
        if isinstance(sparse_threshold, bool) or not isinstance(sparse_threshold, int) \
                or sparse_threshold < 1:
            raise ValueError(f"sparse_threshold must be a positive integer, "
                             f"got {sparse_threshold!r}")
        if sparse_solver not in SOLVERS:
            raise ValueError(f"sparse_solver must be one of {SOLVERS}, got {sparse_solver!r}")
        self.k = k
        self.normalization = normalization
        self.edge_weight = edge_weight
        self.sparse_threshold = sparse_threshold
        self.sparse_solver = sparse_solver

    @property
    def batch_keys(self) -> tuple:
        """The attributes :meth:`forward` reads (:func:`gtpe.precompute` collates only these)."""
        return ('edge_index', self.edge_weight)

    def forward(self, data: Data) -> Data:
        spec = LaplacianSpec(normalization=self.normalization)
        vals, vecs = spectral_pe(data, spec, self.k, 1, self.edge_weight,
                                 self.sparse_threshold, self.sparse_solver, 'AddLapPE')
        set_attr(data, 'lap_pe', vecs.float())  # on a Batch: per-graph slices recorded
        set_attr(data, 'lap_eigval', vals.float())
        return data

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(k={self.k}, normalization={self.normalization!r}, '
                f'edge_weight={self.edge_weight!r}, sparse_threshold={self.sparse_threshold}, '
                f'sparse_solver={self.sparse_solver!r})')
